//! The payment's books, pure: what kassa believes about a payment, what it must do next at the
//! provider, and which event a newly learnt provider status means. No I/O here; the handler and
//! the worker load payments, call these, and store the result.

use kassa_schemas::events::payments::PaymentStep;

use super::gateway::{Intent, IntentStatus};

/// What kassa believes the payment is at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No intent yet.
    New,
    /// Intent created, not confirmed.
    Created,
    /// The customer must complete 3-D Secure.
    ActionRequired,
    /// Authorized (manual capture).
    Authorized,
    /// Captured.
    Captured,
    /// Authorization cancelled; nothing charged.
    Voided,
    /// Captured, then refunded.
    Refunded,
    /// Authorization declined.
    Declined,
    /// Capture failed; the authorization is to be voided.
    CaptureFailed,
    /// The order was cancelled before anything was asked of the provider.
    Abandoned,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 10] = [
        Status::New,
        Status::Created,
        Status::ActionRequired,
        Status::Authorized,
        Status::Captured,
        Status::Voided,
        Status::Refunded,
        Status::Declined,
        Status::CaptureFailed,
        Status::Abandoned,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Created => "created",
            Status::ActionRequired => "action_required",
            Status::Authorized => "authorized",
            Status::Captured => "captured",
            Status::Voided => "voided",
            Status::Refunded => "refunded",
            Status::Declined => "declined",
            Status::CaptureFailed => "capture_failed",
            Status::Abandoned => "abandoned",
        }
    }

    /// The status stored under `name`.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What the orders processor last said about the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStage {
    /// Stock is held: authorize.
    Reserved,
    /// Stock is committed: capture.
    Confirmed,
    /// The order is cancelled: undo.
    Cancelled,
}

impl OrderStage {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStage::Reserved => "reserved",
            OrderStage::Confirmed => "confirmed",
            OrderStage::Cancelled => "cancelled",
        }
    }

    /// The stage stored under `name`.
    pub fn parse(name: &str) -> Option<OrderStage> {
        [
            OrderStage::Reserved,
            OrderStage::Confirmed,
            OrderStage::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A call to make at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Create the intent if there is none, then confirm it.
    Authorize,
    /// Capture the authorization.
    Capture,
    /// Cancel the intent.
    Void,
    /// Refund the capture.
    Refund,
    /// Read the intent; the provider's answer wins.
    Lookup,
}

impl Work {
    /// Every piece of work.
    pub const ALL: [Work; 5] = [
        Work::Authorize,
        Work::Capture,
        Work::Void,
        Work::Refund,
        Work::Lookup,
    ];

    /// The work stored under `name`.
    pub fn parse(name: &str) -> Option<Work> {
        Work::ALL.into_iter().find(|w| w.as_str() == name)
    }

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Work::Authorize => "authorize",
            Work::Capture => "capture",
            Work::Void => "void",
            Work::Refund => "refund",
            Work::Lookup => "lookup",
        }
    }
}

/// One payment (one per order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The order.
    pub order_id: String,
    /// kassa's payment id.
    pub payment_id: uuid::Uuid,
    /// Gateway name.
    pub provider: String,
    /// Amount to authorize, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Payment method.
    pub payment_method_id: String,
    /// The provider's intent id, once created.
    pub provider_ref: Option<String>,
    /// What kassa believes.
    pub status: Status,
    /// What orders said.
    pub stage: OrderStage,
    /// Secret for 3-D Secure.
    pub client_secret: Option<String>,
    /// Captured so far.
    pub captured_minor: i64,
    /// Refunded so far.
    pub refunded_minor: i64,
    /// The next call must be a look-up (an answer was lost, or a webhook disagreed).
    pub needs_lookup: bool,
    /// Failed attempts of the current work (for backoff).
    pub attempts: i32,
    /// Which idempotency keys the calls use (0 at first): moved on only once a look-up proved
    /// that a call answered with an error did nothing, because Stripe replays a key's first
    /// answer, a 500 included, for a day.
    pub key_generation: i32,
    /// The work whose last call got no sure answer, until a look-up tells what it did.
    pub unsure: Option<Work>,
    /// The W3C trace context of the order event that last changed what is asked of the payment:
    /// what the worker publishes continues that trace.
    pub traceparent: Option<String>,
}

impl Payment {
    /// The idempotency key of `step` for this payment's current key generation.
    pub fn key(&self, step: &str) -> String {
        match self.key_generation {
            0 => idempotency_key(&self.order_id, step),
            n => format!("{}-g{n}", idempotency_key(&self.order_id, step)),
        }
    }
}

/// The next call to make at the provider, if any.
pub fn next_work(p: &Payment) -> Option<Work> {
    if p.needs_lookup && p.provider_ref.is_some() {
        return Some(Work::Lookup);
    }
    use OrderStage as O;
    use Status as S;
    match (p.status, p.stage) {
        (S::New | S::Created, O::Reserved) => Some(Work::Authorize),
        (S::Created | S::ActionRequired | S::Authorized | S::CaptureFailed, O::Cancelled) => {
            Some(Work::Void)
        }
        (S::Authorized, O::Confirmed) => Some(Work::Capture),
        (S::Captured, O::Cancelled) => Some(Work::Refund),
        _ => None,
    }
}

/// An event to publish about the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// Authorized.
    Authorized,
    /// 3-D Secure needed, with the client secret.
    ActionRequired(String),
    /// A step failed for good: (step, code, message).
    Failed(PaymentStep, String, String),
    /// Captured.
    Captured,
    /// Voided.
    Voided,
    /// Refunded this much.
    Refunded(i64),
}

impl Fact {
    /// The event id of the event announcing this fact about `payment_id`: the same every time it
    /// is announced, so a re-announcement (when an order is found stalled) is a duplicate to
    /// everyone who saw the first, and news to whoever lost it.
    pub fn event_id(&self, payment_id: uuid::Uuid) -> uuid::Uuid {
        let name = match self {
            Fact::Authorized => "authorized".to_owned(),
            Fact::ActionRequired(_) => "action_required".to_owned(),
            Fact::Failed(step, _, _) => format!("failed:{step:?}"),
            Fact::Captured => "captured".to_owned(),
            Fact::Voided => "voided".to_owned(),
            Fact::Refunded(amount) => format!("refunded:{amount}"),
        };
        uuid::Uuid::new_v5(&payment_id, name.as_bytes())
    }
}

/// The fact that settled the payment once the order is confirmed, to announce again when the
/// order is found waiting for it (None: nothing settled yet; the worker is on it).
pub fn settled_after_confirmation(p: &Payment) -> Option<Fact> {
    match p.status {
        Status::Captured => Some(Fact::Captured),
        Status::CaptureFailed => Some(Fact::Failed(
            PaymentStep::Capture,
            "capture_failed".into(),
            "capturing the payment failed".into(),
        )),
        _ => None,
    }
}

/// The status an intent's state means, given what kassa asked for.
pub fn observed(p: &Payment, intent: &Intent) -> Option<Status> {
    Some(match intent.status {
        IntentStatus::RequiresConfirmation => Status::Created,
        IntentStatus::RequiresPaymentMethod if intent.last_error.is_some() => Status::Declined,
        IntentStatus::RequiresPaymentMethod => Status::Created,
        IntentStatus::RequiresAction => Status::ActionRequired,
        IntentStatus::Processing => return None,
        IntentStatus::RequiresCapture => Status::Authorized,
        IntentStatus::Succeeded
            if intent.refunded_minor > 0 && intent.refunded_minor >= intent.received_minor =>
        {
            Status::Refunded
        }
        IntentStatus::Succeeded => Status::Captured,
        IntentStatus::Canceled if p.stage == OrderStage::Confirmed => Status::CaptureFailed,
        IntentStatus::Canceled => Status::Voided,
    })
}

/// Moves the payment to `status` (learnt from the provider) and returns the event that means,
/// if any. Statuses only move forward: an older answer never undoes a newer one.
pub fn settle(
    p: &mut Payment,
    status: Status,
    intent: Option<&Intent>,
    failure: Option<(String, String)>,
) -> Option<Fact> {
    if let Some(intent) = intent {
        if intent.client_secret.is_some() {
            p.client_secret.clone_from(&intent.client_secret);
        }
        p.captured_minor = p.captured_minor.max(intent.received_minor);
        p.refunded_minor = p.refunded_minor.max(intent.refunded_minor);
    }
    if status == p.status || rank(status) < rank(p.status) {
        return None;
    }
    let from = p.status;
    p.status = status;
    let (code, message) = failure
        .or_else(|| intent.and_then(|i| i.last_error.clone()))
        .unwrap_or_else(|| ("failed".into(), "the provider refused".into()));
    match status {
        // An authorization for a cancelled order is voided without telling orders it happened.
        Status::Authorized if p.stage == OrderStage::Cancelled => None,
        Status::Authorized => Some(Fact::Authorized),
        Status::ActionRequired if p.stage == OrderStage::Reserved => Some(Fact::ActionRequired(
            p.client_secret.clone().unwrap_or_default(),
        )),
        Status::Declined if from != Status::Declined => {
            Some(Fact::Failed(PaymentStep::Authorize, code, message))
        }
        Status::Captured => {
            p.captured_minor = p.captured_minor.max(p.amount_minor);
            Some(Fact::Captured)
        }
        Status::CaptureFailed => Some(Fact::Failed(PaymentStep::Capture, code, message)),
        Status::Voided => Some(Fact::Voided),
        Status::Refunded => {
            p.refunded_minor = p.refunded_minor.max(p.captured_minor);
            Some(Fact::Refunded(p.refunded_minor))
        }
        _ => None,
    }
}

/// How far along a status is: a payment never moves back.
const fn rank(s: Status) -> u8 {
    match s {
        Status::New => 0,
        Status::Created => 1,
        Status::ActionRequired => 2,
        Status::Authorized | Status::Declined | Status::Abandoned => 3,
        Status::Captured | Status::CaptureFailed => 4,
        Status::Voided => 5,
        Status::Refunded => 6,
    }
}

/// The status a provider webhook of `event_type` implies (None: it implies none).
pub fn implied_by_webhook(event_type: &str) -> Option<Status> {
    Some(match event_type {
        "payment_intent.amount_capturable_updated" => Status::Authorized,
        "payment_intent.requires_action" => Status::ActionRequired,
        "payment_intent.succeeded" => Status::Captured,
        "payment_intent.payment_failed" => Status::Declined,
        "payment_intent.canceled" => Status::Voided,
        "charge.refunded" => Status::Refunded,
        _ => return None,
    })
}

/// The idempotency key of one step of an order's payment: the same on every retry.
pub fn idempotency_key(order_id: &str, step: &str) -> String {
    format!("kassa-{order_id}-{step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: Status, stage: OrderStage) -> Payment {
        Payment {
            order_id: "o1".into(),
            payment_id: uuid::Uuid::nil(),
            provider: "simulated".into(),
            amount_minor: 4998,
            currency: "EUR".into(),
            payment_method_id: "pm_card_visa".into(),
            provider_ref: Some("pi_1".into()),
            status,
            stage,
            client_secret: None,
            captured_minor: 0,
            refunded_minor: 0,
            needs_lookup: false,
            attempts: 0,
            key_generation: 0,
            unsure: None,
            traceparent: None,
        }
    }

    fn intent(status: IntentStatus) -> Intent {
        Intent {
            id: "pi_1".into(),
            status,
            amount_minor: 4998,
            received_minor: if status == IntentStatus::Succeeded {
                4998
            } else {
                0
            },
            refunded_minor: 0,
            client_secret: Some("pi_1_secret".into()),
            last_error: None,
        }
    }

    #[test]
    fn work_follows_the_order_and_a_lookup_comes_first() {
        use OrderStage as O;
        use Status as S;
        let cases = [
            (S::New, O::Reserved, Some(Work::Authorize)),
            (S::Created, O::Reserved, Some(Work::Authorize)),
            (S::ActionRequired, O::Reserved, None),
            (S::Authorized, O::Reserved, None),
            (S::Authorized, O::Confirmed, Some(Work::Capture)),
            (S::Authorized, O::Cancelled, Some(Work::Void)),
            (S::ActionRequired, O::Cancelled, Some(Work::Void)),
            (S::Captured, O::Cancelled, Some(Work::Refund)),
            (S::Captured, O::Confirmed, None),
            (S::CaptureFailed, O::Cancelled, Some(Work::Void)),
            (S::Declined, O::Cancelled, None),
            (S::Abandoned, O::Cancelled, None),
        ];
        for (status, stage, work) in cases {
            assert_eq!(
                next_work(&payment(status, stage)),
                work,
                "{status:?} {stage:?}"
            );
        }
        let mut unsure = payment(S::Authorized, O::Confirmed);
        unsure.needs_lookup = true;
        assert_eq!(next_work(&unsure), Some(Work::Lookup));
    }

    #[test]
    fn a_learnt_status_is_told_once_and_never_goes_back() {
        let mut p = payment(Status::Created, OrderStage::Reserved);
        let authorized = intent(IntentStatus::RequiresCapture);
        assert_eq!(
            settle(&mut p, Status::Authorized, Some(&authorized), None),
            Some(Fact::Authorized)
        );
        assert_eq!(
            settle(&mut p, Status::Authorized, Some(&authorized), None),
            None,
            "told once"
        );
        assert_eq!(
            settle(&mut p, Status::Created, None, None),
            None,
            "an older answer changes nothing"
        );
        assert_eq!(p.status, Status::Authorized);
    }

    #[test]
    fn a_late_authorization_of_a_cancelled_order_is_voided_silently() {
        let mut p = payment(Status::Created, OrderStage::Cancelled);
        assert_eq!(
            settle(
                &mut p,
                Status::Authorized,
                Some(&intent(IntentStatus::RequiresCapture)),
                None
            ),
            None
        );
        assert_eq!(next_work(&p), Some(Work::Void));
    }

    #[test]
    fn the_provider_status_maps_to_ours() {
        let p = payment(Status::Authorized, OrderStage::Confirmed);
        let mut declined = intent(IntentStatus::RequiresPaymentMethod);
        assert_eq!(observed(&p, &declined), Some(Status::Created));
        declined.last_error = Some(("card_declined".into(), "no".into()));
        assert_eq!(observed(&p, &declined), Some(Status::Declined));
        assert_eq!(
            observed(&p, &intent(IntentStatus::Canceled)),
            Some(Status::CaptureFailed),
            "cancelled under a capture"
        );
        assert_eq!(
            observed(&p, &intent(IntentStatus::Processing)),
            None,
            "not known yet"
        );
        let mut refunded = intent(IntentStatus::Succeeded);
        refunded.refunded_minor = 4998;
        assert_eq!(observed(&p, &refunded), Some(Status::Refunded));
        assert_eq!(
            implied_by_webhook("payment_intent.amount_capturable_updated"),
            Some(Status::Authorized)
        );
        assert_eq!(implied_by_webhook("customer.created"), None);
        assert_eq!(idempotency_key("o1", "confirm"), "kassa-o1-confirm");
        let mut p = payment(Status::Created, OrderStage::Reserved);
        assert_eq!(
            p.key("confirm"),
            "kassa-o1-confirm",
            "generation 0 keeps the first keys"
        );
        p.key_generation = 2;
        assert_eq!(p.key("confirm"), "kassa-o1-confirm-g2");
        assert_eq!(Work::parse(Work::Capture.as_str()), Some(Work::Capture));
    }
}
