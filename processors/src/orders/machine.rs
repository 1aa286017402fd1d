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

/// A classified input: the trigger plus what to record on the order when it is legal.
enum Classified {
    Fire(Trigger, Update),
    Ignore(String),
}

/// Changes an input brings to the order besides its state.
enum Update {
    None,
    Line(i32, Line, Option<Terms>),
    LineStatus(i32, LineStatus),
    Payment {
        provider: String,
        provider_ref: Option<String>,
        client_secret: Option<String>,
    },
    Failure(String, String),
    Hold(DateTime<Utc>),
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

fn terms(order: &LineOrder) -> Terms {
    Terms {
        line_count: order.line_count,
        currency: order.currency.clone(),
        payment_method_id: order.payment_method_id.clone(),
    }
}

/// Classifies `signal` against `order`: which trigger it is, or why it is ignored.
fn classify(order: &Order, signal: Signal<'_>, policy: &Policy, now: DateTime<Utc>) -> Classified {
    use Classified::{Fire, Ignore};
    let line_count = order.terms.as_ref().map(|t| t.line_count);
    match signal {
        Signal::Inventory(InventoryEvent::Reserved(r)) => {
            let status = LineStatus::Reserved;
            line_result(
                order,
                r.line_index,
                &r.sku,
                r.quantity,
                r.order.as_ref(),
                status,
                Some(r.expires_at),
                |context| {
                    if order.state.is_final() {
                        T::LateLineReserved
                    } else if order.count(LineStatus::Reserved) + 1 == context.line_count {
                        T::AllLinesReserved
                    } else {
                        T::LineReserved
                    }
                },
            )
        }
        Signal::Inventory(InventoryEvent::Rejected(r)) => {
            let status = LineStatus::Rejected(r.reason);
            line_result(
                order,
                r.line_index,
                &r.sku,
                r.quantity,
                r.order.as_ref(),
                status,
                None,
                |_| T::LineRejected,
            )
        }
        Signal::Inventory(InventoryEvent::Released(r)) => line_moved(
            order,
            r.line_index,
            LineStatus::Reserved,
            LineStatus::Released,
            T::LineReleased,
        ),
        Signal::Inventory(InventoryEvent::Committed(r)) => {
            let trigger = if line_count == Some(order.count(LineStatus::Committed) + 1) {
                T::AllLinesCommitted
            } else {
                T::LineCommitted
            };
            line_moved(
                order,
                r.line_index,
                LineStatus::Reserved,
                LineStatus::Committed,
                trigger,
            )
        }
        Signal::Inventory(InventoryEvent::Restocked(r)) => {
            let Some(index) = order
                .lines
                .iter()
                .find(|(_, l)| l.sku == r.sku && l.status == LineStatus::Committed)
                .map(|(i, _)| *i)
            else {
                return Ignore(format!("no committed line of {} to restock", r.sku));
            };
            line_moved(
                order,
                index,
                LineStatus::Committed,
                LineStatus::Restocked,
                T::LineRestocked,
            )
        }
        Signal::Payment(p) => {
            let (provider, provider_ref) = p.provider();
            let update = |client_secret: Option<String>| Update::Payment {
                provider: provider.to_owned(),
                provider_ref: provider_ref.map(str::to_owned),
                client_secret,
            };
            match p {
                PaymentEvent::PaymentAuthorized(a) => {
                    let total = order.total_minor();
                    let currency = order.terms.as_ref().map(|t| t.currency.as_str());
                    if a.amount_minor != total || currency != Some(a.currency.as_str()) {
                        return Ignore(format!(
                            "authorized {} {} but the order is {total} {}",
                            a.amount_minor,
                            a.currency,
                            currency.unwrap_or("?")
                        ));
                    }
                    Fire(T::PaymentAuthorized, update(None))
                }
                PaymentEvent::PaymentActionRequired(a) => Fire(
                    T::PaymentActionRequired,
                    update(Some(a.client_secret.clone())),
                ),
                PaymentEvent::PaymentFailed(f) => {
                    let trigger = match f.step {
                        PaymentStep::Authorize => T::PaymentDeclined,
                        PaymentStep::Capture => T::CaptureFailed,
                        PaymentStep::Void | PaymentStep::Refund => T::PaymentUndoFailed,
                    };
                    Fire(trigger, Update::Failure(f.code.clone(), f.message.clone()))
                }
                PaymentEvent::PaymentCaptured(_) => Fire(T::PaymentCaptured, update(None)),
                PaymentEvent::PaymentVoided(_) => Fire(T::PaymentVoided, Update::None),
                PaymentEvent::PaymentRefunded(_) => Fire(T::PaymentRefunded, Update::None),
            }
        }
        Signal::Expiry(ExpiryEvent::DeadlinePassed(d)) => match d.kind {
            DeadlineKind::Hold => match order.hold_expires_at {
                Some(hold) if hold > d.due_at => {
                    Ignore(format!("stale: the hold now runs to {hold}"))
                }
                _ => Fire(T::HoldExpired, Update::None),
            },
            DeadlineKind::PaymentAction => match order.action_due_at {
                Some(due) if due > d.due_at => {
                    Ignore(format!("stale: the action is now due at {due}"))
                }
                _ => Fire(T::ActionExpired, Update::None),
            },
            DeadlineKind::Progress => Fire(T::ProgressDue, Update::None),
        },
        Signal::Request(OrderRequest::CancelRequested(c)) => {
            if c.customer_id != order.customer_id {
                return Ignore("cancel asked by another customer".into());
            }
            Fire(
                T::CancelRequested,
                Update::Failure("customer_requested".into(), c.reason.clone()),
            )
        }
        Signal::Request(OrderRequest::HoldRenewalRequested(h)) => {
            if h.customer_id != order.customer_id {
                return Ignore("hold renewal asked by another customer".into());
            }
            let asked = Duration::seconds(i64::from(h.hold_seconds.max(1)));
            Fire(
                T::HoldRenewed,
                Update::Hold(to_millis(now + asked.min(policy.max_hold))),
            )
        }
    }
}

/// Classifies a line result (held or not) carrying the order's terms.
#[allow(clippy::too_many_arguments)]
fn line_result(
    order: &Order,
    index: i32,
    sku: &str,
    quantity: i32,
    context: Option<&LineOrder>,
    status: LineStatus,
    expires_at: Option<DateTime<Utc>>,
    trigger: impl FnOnce(&LineOrder) -> Trigger,
) -> Classified {
    let Some(context) = context else {
        return Classified::Ignore("line result without the order's terms".into());
    };
    if let Some(reason) = line_problem(order, index, quantity, context) {
        return Classified::Ignore(reason);
    }
    let line = Line {
        sku: sku.to_owned(),
        quantity,
        unit_price_minor: context.unit_price_minor,
        status,
        expires_at,
    };
    Classified::Fire(
        trigger(context),
        Update::Line(index, line, Some(terms(context))),
    )
}

/// Why a line result cannot be taken: out of range, disagreeing terms, or a repeat.
fn line_problem(order: &Order, index: i32, quantity: i32, context: &LineOrder) -> Option<String> {
    if index < 0 || index >= context.line_count {
        return Some(format!(
            "line {index} of an order of {} lines",
            context.line_count
        ));
    }
    if let Some(known) = &order.terms
        && (known.line_count != context.line_count || known.currency != context.currency)
    {
        return Some(format!(
            "line {index} disagrees with the order's line count or currency"
        ));
    }
    if let Some(line) = order.lines.get(&index) {
        return Some(format!(
            "duplicate: line {index} already has a result ({:?})",
            line.status
        ));
    }
    if order
        .total_with(Some((quantity, context.unit_price_minor)))
        .is_none()
    {
        return Some(format!(
            "line {index} would take the order total past what 64 bits hold"
        ));
    }
    None
}

fn line_moved(
    order: &Order,
    index: i32,
    from: LineStatus,
    to: LineStatus,
    trigger: Trigger,
) -> Classified {
    match order.lines.get(&index) {
        Some(line) if line.status == from => {
            Classified::Fire(trigger, Update::LineStatus(index, to))
        }
        Some(line) => {
            Classified::Ignore(format!("line {index} is {:?}, not {from:?}", line.status))
        }
        None => Classified::Ignore(format!("line {index} is not known")),
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

/// The effects of a step: events to publish and commands to send.
fn enter(
    order: &mut Order,
    trigger: Trigger,
    signal: Signal<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
    out: &mut Applied,
) {
    let id = order.id.clone();
    let terms = order.terms.clone();
    let (currency, payment_method_id) = terms
        .map(|t| (t.currency, t.payment_method_id))
        .unwrap_or_default();
    match trigger {
        T::AllLinesReserved => {
            let hold = order
                .lines
                .values()
                .filter_map(|l| l.expires_at)
                .min()
                .unwrap_or(now);
            order.hold_expires_at = Some(hold);
            out.events.push(
                OrderReserved {
                    order_id: id,
                    customer_id: order.customer_id.clone(),
                    lines: order.order_lines(),
                    total_minor: order.total_minor(),
                    currency,
                    payment_method_id,
                    hold_expires_at: hold,
                }
                .into(),
            );
        }
        T::LineRejected if order.state == Rejected && order.reason.is_none() => {
            let Signal::Inventory(InventoryEvent::Rejected(r)) = signal else {
                return;
            };
            order.reason = Some(r.reason.as_str().into());
            order.detail = Some(format!(
                "line {} ({}) could not be reserved",
                r.line_index, r.sku
            ));
            out.events.push(
                OrderRejected {
                    order_id: id,
                    reason: r.reason,
                    rejected_line_index: r.line_index,
                }
                .into(),
            );
            release_held(order, "order rejected", out);
        }
        T::LateLineReserved => {
            let Signal::Inventory(InventoryEvent::Reserved(r)) = signal else {
                return;
            };
            let reason = format!("order already {}", order.state.as_str());
            out.commands
                .push(release(&id, r.line_index, &r.sku, &reason));
        }
        T::PaymentAuthorized => {
            out.events.push(
                OrderAuthorized {
                    order_id: id.clone(),
                    total_minor: order.total_minor(),
                    currency,
                }
                .into(),
            );
            for (index, line) in &order.lines {
                out.commands.push(
                    Commit {
                        order_id: id.clone(),
                        line_index: *index,
                        sku: line.sku.clone(),
                    }
                    .into(),
                );
            }
        }
        T::PaymentActionRequired => {
            let mut due = to_millis(now + policy.action_window);
            if let Some(hold) = order.hold_expires_at {
                due = due.min(hold);
            }
            order.action_due_at = Some(due);
            out.events.push(
                OrderActionRequired {
                    order_id: id,
                    action_due_at: due,
                }
                .into(),
            );
        }
        T::ProgressDue => {
            let Signal::Expiry(ExpiryEvent::DeadlinePassed(d)) = signal else {
                return;
            };
            out.events.push(
                OrderStalled {
                    order_id: id.clone(),
                    state: order.state.as_str().to_owned(),
                    since: d.due_at,
                }
                .into(),
            );
            // Stock not committed yet: ask inventory again (a commit is answered once applied,
            // and answered again when repeated).
            if order.state == Authorized {
                for (index, line) in order
                    .lines
                    .iter()
                    .filter(|(_, l)| l.status == LineStatus::Reserved)
                {
                    out.commands.push(
                        Commit {
                            order_id: id.clone(),
                            line_index: *index,
                            sku: line.sku.clone(),
                        }
                        .into(),
                    );
                }
            }
        }
        T::AllLinesCommitted => {
            out.events.push(
                OrderConfirmed {
                    order_id: id,
                    total_minor: order.total_minor(),
                    currency,
                }
                .into(),
            );
        }
        T::PaymentCaptured => {
            out.events.push(
                OrderCompleted {
                    order_id: id,
                    customer_id: order.customer_id.clone(),
                    lines: order.order_lines(),
                    total_minor: order.total_minor(),
                    currency,
                }
                .into(),
            );
        }
        T::PaymentDeclined
        | T::CaptureFailed
        | T::HoldExpired
        | T::ActionExpired
        | T::CancelRequested => {
            let (reason, default_detail) = match trigger {
                T::PaymentDeclined => (CancelReason::PaymentDeclined, "the payment was declined"),
                T::CaptureFailed => (CancelReason::CaptureFailed, "capturing the payment failed"),
                T::HoldExpired => (CancelReason::HoldExpired, "the reservation hold ran out"),
                T::ActionExpired => (
                    CancelReason::PaymentActionExpired,
                    "3-D Secure was not completed in time",
                ),
                _ => (CancelReason::CustomerRequested, "cancelled by the customer"),
            };
            order.reason = Some(reason.as_str().into());
            let detail = order
                .detail
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| default_detail.into());
            order.detail = Some(detail.clone());
            out.events.push(
                OrderCancelled {
                    order_id: id.clone(),
                    reason,
                    detail,
                }
                .into(),
            );
            if trigger == T::CaptureFailed {
                for (index, line) in &order.lines {
                    if line.status == LineStatus::Committed {
                        out.commands.push(
                            Restock {
                                sku: line.sku.clone(),
                                quantity: line.quantity,
                                order_id: Some(id.clone()),
                                line_index: Some(*index),
                                reason: "capture failed".into(),
                            }
                            .into(),
                        );
                    }
                }
            } else {
                release_held(order, reason.as_str(), out);
            }
        }
        _ => {}
    }
}

/// `at` truncated to milliseconds, the precision events carry: a deadline read back from an
/// event must compare equal to the one stored.
fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn release(order_id: &str, line_index: i32, sku: &str, reason: &str) -> InventoryCommand {
    Release {
        order_id: order_id.to_owned(),
        line_index,
        sku: sku.to_owned(),
        reason: reason.to_owned(),
    }
    .into()
}

fn release_held(order: &Order, reason: &str, out: &mut Applied) {
    for (index, line) in &order.lines {
        if line.status == LineStatus::Reserved {
            out.commands
                .push(release(&order.id, *index, &line.sku, reason));
        }
    }
}

#[cfg(test)]
mod tests;
