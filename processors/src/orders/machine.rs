//! The order state machine, pure: every legal transition is one row of [`TRANSITIONS`], and
//! [`apply`] turns one input into the steps taken, the events to publish and the inventory
//! commands to send. No I/O here; the handler loads orders, calls this in arrival order, stores.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use kassa_schemas::events::RejectReason;
use kassa_schemas::events::expiry::{DeadlineKind, ExpiryEvent};
use kassa_schemas::events::inventory::{
    Commit, InventoryCommand, InventoryEvent, LineOrder, Release, Restock,
};
use kassa_schemas::events::orders::{
    CancelReason, HoldRenewed, OrderActionRequired, OrderAuthorized, OrderCancelled,
    OrderCompleted, OrderConfirmed, OrderEvent, OrderLine, OrderRejected, OrderRequest,
    OrderReserved, OrderStalled,
};
use kassa_schemas::events::payments::{PaymentEvent, PaymentStep};

mod classify;
mod effects;

use classify::{Classified, Update, classify};
use effects::enter;

/// Where an order stands (DESIGN.md, "Order states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Lines are being reserved.
    Pending,
    /// Every line is held.
    Reserved,
    /// Payments is authorizing the total.
    Authorizing,
    /// The customer must complete 3-D Secure.
    ActionRequired,
    /// The total is authorized; stock is being committed.
    Authorized,
    /// Stock is committed; the payment is being captured.
    Confirmed,
    /// Paid and committed: final.
    Completed,
    /// A line could not be reserved: final.
    Rejected,
    /// Undone: final.
    Cancelled,
}

impl State {
    /// Every state.
    pub const ALL: [State; 9] = [
        State::Pending,
        State::Reserved,
        State::Authorizing,
        State::ActionRequired,
        State::Authorized,
        State::Confirmed,
        State::Completed,
        State::Rejected,
        State::Cancelled,
    ];

    /// The name stored and served (snake case).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Reserved => "reserved",
            State::Authorizing => "authorizing",
            State::ActionRequired => "action_required",
            State::Authorized => "authorized",
            State::Confirmed => "confirmed",
            State::Completed => "completed",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
        }
    }

    /// The state stored under `name`.
    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the order's fate is decided.
    pub const fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Rejected | State::Cancelled)
    }
}

/// What moves an order: an input, classified against the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A line is held; others are still open.
    LineReserved,
    /// The last open line is held.
    AllLinesReserved,
    /// Payment is asked for (follows `AllLinesReserved` at once).
    PaymentRequested,
    /// A line could not be reserved.
    LineRejected,
    /// A line was held after the order failed: it is released at once.
    LateLineReserved,
    /// A held line went back to stock.
    LineReleased,
    /// A line's stock is committed; others are still held.
    LineCommitted,
    /// The last held line is committed.
    AllLinesCommitted,
    /// Committed units came back (compensation).
    LineRestocked,
    /// The total is authorized.
    PaymentAuthorized,
    /// The customer must complete 3-D Secure.
    PaymentActionRequired,
    /// Authorization failed for good.
    PaymentDeclined,
    /// The payment is captured.
    PaymentCaptured,
    /// Capture failed for good.
    CaptureFailed,
    /// The authorization was voided.
    PaymentVoided,
    /// The capture was refunded.
    PaymentRefunded,
    /// A void or refund failed (for ops to follow up).
    PaymentUndoFailed,
    /// The reservation hold ran out.
    HoldExpired,
    /// 3-D Secure was not completed in time.
    ActionExpired,
    /// The customer cancels.
    CancelRequested,
    /// The customer keeps the reservation longer.
    HoldRenewed,
    /// The order waited in `authorized` or `confirmed` past its progress deadline: whoever it
    /// waits on is asked again.
    ProgressDue,
}

use State::*;
use Trigger as T;

/// Every legal transition: (from, trigger, to). Anything else is recorded and ignored.
pub const TRANSITIONS: &[(State, Trigger, State)] = &[
    (Pending, T::LineReserved, Pending),
    (Pending, T::AllLinesReserved, Reserved),
    (Pending, T::LineRejected, Rejected),
    (Pending, T::CancelRequested, Cancelled),
    (Reserved, T::PaymentRequested, Authorizing),
    (Reserved, T::CancelRequested, Cancelled),
    (Reserved, T::HoldExpired, Cancelled),
    (Reserved, T::HoldRenewed, Reserved),
    (Authorizing, T::PaymentAuthorized, Authorized),
    (Authorizing, T::PaymentActionRequired, ActionRequired),
    (Authorizing, T::PaymentDeclined, Cancelled),
    (Authorizing, T::CancelRequested, Cancelled),
    (Authorizing, T::HoldExpired, Cancelled),
    (Authorizing, T::HoldRenewed, Authorizing),
    (ActionRequired, T::PaymentAuthorized, Authorized),
    (ActionRequired, T::PaymentDeclined, Cancelled),
    (ActionRequired, T::ActionExpired, Cancelled),
    (ActionRequired, T::HoldExpired, Cancelled),
    (ActionRequired, T::CancelRequested, Cancelled),
    (ActionRequired, T::HoldRenewed, ActionRequired),
    (Authorized, T::LineCommitted, Authorized),
    (Authorized, T::ProgressDue, Authorized),
    (Authorized, T::AllLinesCommitted, Confirmed),
    (Confirmed, T::PaymentCaptured, Completed),
    (Confirmed, T::ProgressDue, Confirmed),
    (Confirmed, T::CaptureFailed, Cancelled),
    (Rejected, T::LineRejected, Rejected),
    (Rejected, T::LateLineReserved, Rejected),
    (Rejected, T::LineReleased, Rejected),
    (Cancelled, T::LineRejected, Cancelled),
    (Cancelled, T::LateLineReserved, Cancelled),
    (Cancelled, T::LineReleased, Cancelled),
    (Cancelled, T::LineRestocked, Cancelled),
    (Cancelled, T::PaymentVoided, Cancelled),
    (Cancelled, T::PaymentRefunded, Cancelled),
    (Cancelled, T::PaymentUndoFailed, Cancelled),
];

/// The state `trigger` leads to from `from`, if that is legal.
pub fn next(from: State, trigger: Trigger) -> Option<State> {
    TRANSITIONS
        .iter()
        .find(|(f, t, _)| *f == from && *t == trigger)
        .map(|(_, _, to)| *to)
}

/// Where one order line stands, as orders knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStatus {
    /// Units are held.
    Reserved,
    /// Not held, for this reason.
    Rejected(RejectReason),
    /// Held units went back.
    Released,
    /// Units are sold.
    Committed,
    /// Committed units came back.
    Restocked,
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Unit price in minor units.
    pub unit_price_minor: i64,
    /// Where it stands.
    pub status: LineStatus,
    /// When its hold runs out (held lines).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the order is, learnt from its first line result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Lines in the order.
    pub line_count: i32,
    /// ISO 4217 currency.
    pub currency: String,
    /// Payment method to authorize.
    pub payment_method_id: String,
    /// Where it ships and whom to tell (None when the order gave none).
    pub fulfilment: Option<Box<kassa_schemas::events::fulfilment::Fulfilment>>,
    /// The storefront it was placed at (None from writers before it was carried).
    pub storefront: Option<String>,
}

/// The payment as orders knows it (for the status read model).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentView {
    /// Gateway.
    pub provider: Option<String>,
    /// Provider's id.
    pub provider_ref: Option<String>,
    /// Secret the storefront needs for 3-D Secure.
    pub client_secret: Option<String>,
}

/// One order, as the orders processor keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Order id.
    pub id: String,
    /// Where it stands.
    pub state: State,
    /// Customer.
    pub customer_id: String,
    /// Known from the first line result (None when a cancel came first).
    pub terms: Option<Terms>,
    /// Lines with a result so far, by index.
    pub lines: BTreeMap<i32, Line>,
    /// When the reservation hold runs out (from `reserved` on).
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// When 3-D Secure must be done by.
    pub action_due_at: Option<DateTime<Utc>>,
    /// Why it failed (reject or cancel reason), snake case.
    pub reason: Option<String>,
    /// Human-readable detail of the failure.
    pub detail: Option<String>,
    /// The payment.
    pub payment: PaymentView,
}

impl Order {
    /// A new order, before any input.
    pub fn new(id: &str, customer_id: &str) -> Self {
        Self {
            id: id.to_owned(),
            state: Pending,
            customer_id: customer_id.to_owned(),
            terms: None,
            lines: BTreeMap::new(),
            hold_expires_at: None,
            action_due_at: None,
            reason: None,
            detail: None,
            payment: PaymentView::default(),
        }
    }

    /// The order total in minor units. A line whose total would not fit is never taken (see
    /// [`Order::total_with`]), so this never saturates in practice.
    pub fn total_minor(&self) -> i64 {
        self.total_with(None).unwrap_or(i64::MAX)
    }

    /// The order total with one more line of `quantity` × `unit_price_minor`, checked: None when
    /// it does not fit in 64 bits of minor units.
    fn total_with(&self, extra: Option<(i32, i64)>) -> Option<i64> {
        self.lines
            .values()
            .map(|l| (l.quantity, l.unit_price_minor))
            .chain(extra)
            .try_fold(0i64, |sum, (quantity, price)| {
                sum.checked_add(price.checked_mul(i64::from(quantity))?)
            })
    }

    fn order_lines(&self) -> Vec<OrderLine> {
        self.lines
            .iter()
            .map(|(index, l)| OrderLine {
                line_index: *index,
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
                line_total_minor: l.unit_price_minor.saturating_mul(i64::from(l.quantity)),
            })
            .collect()
    }

    fn count(&self, status: LineStatus) -> i32 {
        self.lines.values().filter(|l| l.status == status).count() as i32
    }
}

/// One input to the machine: an event read from one of the orders processor's topics.
#[derive(Debug, Clone, Copy)]
pub enum Signal<'a> {
    /// From `inventory.events`.
    Inventory(&'a InventoryEvent),
    /// From `payments.events`.
    Payment(&'a PaymentEvent),
    /// From `expiry.events`.
    Expiry(&'a ExpiryEvent),
    /// From `orders.requests`.
    Request(&'a OrderRequest),
}

/// Settings of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long the customer has for 3-D Secure.
    pub action_window: Duration,
    /// The longest hold a renewal may ask for.
    pub max_hold: Duration,
}

/// A state change (or a self-loop) taken by one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// What moved it.
    pub trigger: Trigger,
}

/// What one input did to an order.
#[derive(Debug, Default)]
pub struct Applied {
    /// Steps taken, in order (empty when ignored).
    pub steps: Vec<Step>,
    /// Why the input changed nothing (illegal, duplicate or stale).
    pub ignored: Option<String>,
    /// Order events to publish.
    pub events: Vec<OrderEvent>,
    /// Inventory commands to send.
    pub commands: Vec<InventoryCommand>,
}

impl Applied {
    fn ignored(reason: impl Into<String>) -> Self {
        Self {
            ignored: Some(reason.into()),
            ..Self::default()
        }
    }
}

/// The order id an input is about (None: a stock-only event).
pub fn order_of(signal: Signal<'_>) -> Option<&str> {
    match signal {
        Signal::Inventory(e) => e.order_id(),
        Signal::Payment(e) => Some(e.order_id()),
        Signal::Expiry(ExpiryEvent::DeadlinePassed(d)) => Some(&d.order_id),
        Signal::Request(r) => Some(r.order_id()),
    }
}

/// A new order for an input about an order not seen yet, if that input may create one: a line
/// result (which carries the order's terms) or a cancel (which may overtake the line results).
pub fn first(signal: Signal<'_>) -> Option<Order> {
    match signal {
        Signal::Inventory(InventoryEvent::Reserved(r)) => r
            .order
            .as_ref()
            .map(|o| Order::new(&r.order_id, &o.customer_id)),
        Signal::Inventory(InventoryEvent::Rejected(r)) => r
            .order
            .as_ref()
            .map(|o| Order::new(&r.order_id, &o.customer_id)),
        Signal::Request(OrderRequest::CancelRequested(c)) => {
            Some(Order::new(&c.order_id, &c.customer_id))
        }
        _ => None,
    }
}

/// Applies one input to `order` (changed in place when legal) at `now`.
pub fn apply(
    order: &mut Order,
    signal: Signal<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Applied {
    let (trigger, update) = match classify(order, signal, policy, now) {
        Classified::Fire(trigger, update) => (trigger, update),
        Classified::Ignore(reason) => return Applied::ignored(reason),
    };
    let from = order.state;
    let Some(to) = next(from, trigger) else {
        let reason =
            if from.is_final() || matches!(trigger, T::PaymentAuthorized | T::PaymentCaptured) {
                format!("{trigger:?} when {} (illegal or repeated)", from.as_str())
            } else {
                format!("{trigger:?} is not legal when {}", from.as_str())
            };
        return Applied::ignored(reason);
    };
    let mut out = Applied::default();
    match update {
        Update::None => {}
        Update::Line(index, line, terms) => {
            if order.terms.is_none() {
                order.terms = terms;
            }
            order.lines.insert(index, line);
        }
        Update::LineStatus(index, status) => {
            if let Some(line) = order.lines.get_mut(&index) {
                line.status = status;
            }
        }
        Update::Payment {
            provider,
            provider_ref,
            client_secret,
        } => {
            order.payment.provider = Some(provider);
            if provider_ref.is_some() {
                order.payment.provider_ref = provider_ref;
            }
            if client_secret.is_some() {
                order.payment.client_secret = client_secret;
            }
        }
        Update::Failure(code, message) => {
            if to != from {
                order.reason = Some(code);
                order.detail = Some(message);
            }
        }
        Update::Hold(until) => {
            order.hold_expires_at = Some(until);
            out.events.push(
                HoldRenewed {
                    order_id: order.id.clone(),
                    hold_expires_at: until,
                }
                .into(),
            );
        }
    }
    order.state = to;
    out.steps.push(Step { from, to, trigger });
    enter(order, trigger, signal, policy, now, &mut out);
    if trigger == T::AllLinesReserved {
        let to = next(Reserved, T::PaymentRequested).expect("reserved asks for payment");
        order.state = to;
        out.steps.push(Step {
            from: Reserved,
            to,
            trigger: T::PaymentRequested,
        });
    }
    out
}

/// `at` truncated to milliseconds, the precision events carry: a deadline read back from an
/// event must compare equal to the one stored.
fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

#[cfg(test)]
mod tests;
