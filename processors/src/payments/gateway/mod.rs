//! Payment gateways behind one trait: PaymentIntents with manual capture, as Stripe has them.
//! [`simulated`] is the default (deterministic by payment method id, with injected faults);
//! [`stripe`] talks to Stripe (or localstripe) through async-stripe.

pub mod simulated;
pub mod stripe;

use std::future::Future;

/// Where a PaymentIntent stands at the provider (Stripe's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    /// Created without a working payment method, or declined.
    RequiresPaymentMethod,
    /// Created, not confirmed yet.
    RequiresConfirmation,
    /// The customer must act (3-D Secure).
    RequiresAction,
    /// The provider is still working on it.
    Processing,
    /// Authorized; the amount may be captured.
    RequiresCapture,
    /// Captured.
    Succeeded,
    /// Cancelled: nothing can be charged.
    Canceled,
}

impl IntentStatus {
    /// Every status.
    pub const ALL: [IntentStatus; 7] = [
        IntentStatus::RequiresPaymentMethod,
        IntentStatus::RequiresConfirmation,
        IntentStatus::RequiresAction,
        IntentStatus::Processing,
        IntentStatus::RequiresCapture,
        IntentStatus::Succeeded,
        IntentStatus::Canceled,
    ];

    /// Stripe's name of the status.
    pub const fn as_str(self) -> &'static str {
        match self {
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::RequiresConfirmation => "requires_confirmation",
            IntentStatus::RequiresAction => "requires_action",
            IntentStatus::Processing => "processing",
            IntentStatus::RequiresCapture => "requires_capture",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::Canceled => "canceled",
        }
    }

    /// The status Stripe names `name`.
    pub fn parse(name: &str) -> Option<IntentStatus> {
        IntentStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A PaymentIntent as the provider answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The provider's id.
    pub id: String,
    /// Where it stands.
    pub status: IntentStatus,
    /// The amount asked for, in minor units.
    pub amount_minor: i64,
    /// Captured amount, in minor units.
    pub received_minor: i64,
    /// Refunded amount, in minor units (when the provider tells).
    pub refunded_minor: i64,
    /// Secret for the customer's browser (3-D Secure).
    pub client_secret: Option<String>,
    /// The last decline: (code, message).
    pub last_error: Option<(String, String)>,
}

/// What a payment needs from the provider to authorize.
#[derive(Debug, Clone)]
pub struct IntentRequest<'a> {
    /// The order (goes into the intent's metadata).
    pub order_id: &'a str,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 currency, upper case.
    pub currency: &'a str,
    /// The payment method to charge.
    pub payment_method_id: &'a str,
}

/// Why a gateway call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider refused the payment for good (a decline): (code, message).
    #[error("declined: {0} ({1})")]
    Declined(String, String),
    /// The provider refused the request (invalid, or the intent is in the wrong state).
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing happened (the provider said so, e.g. a 5xx before work, or no connection): retry.
    #[error("transient: {0}")]
    Transient(String),
    /// It may or may not have happened (timeout, lost answer): retry with the same key or look up.
    #[error("ambiguous: {0}")]
    Ambiguous(String),
}

/// A payment provider. Every call that changes something takes an idempotency key; retrying a
/// call with its key must not repeat its effect where the provider honours keys. kassa's own
/// guard (record the intent before confirming; look up when unsure) must hold where it does not.
pub trait Gateway: Send + Sync + 'static {
    /// The provider's name in events and the payments table.
    fn name(&self) -> &'static str;

    /// Creates an unconfirmed PaymentIntent with manual capture (nothing is charged yet).
    fn create(
        &self,
        request: &IntentRequest<'_>,
        key: &str,
    ) -> impl Future<Output = Result<Intent, GatewayError>> + Send;

    /// Confirms the intent: authorizes it, or asks for 3-D Secure, or declines.
    fn confirm(
        &self,
        intent_id: &str,
        key: &str,
    ) -> impl Future<Output = Result<Intent, GatewayError>> + Send;

    /// Captures the authorized amount.
    fn capture(
        &self,
        intent_id: &str,
        key: &str,
    ) -> impl Future<Output = Result<Intent, GatewayError>> + Send;

    /// Cancels the intent (voids an authorization).
    fn cancel(
        &self,
        intent_id: &str,
        key: &str,
    ) -> impl Future<Output = Result<Intent, GatewayError>> + Send;

    /// Refunds `amount_minor` of a captured intent; returns the amount refunded.
    fn refund(
        &self,
        intent_id: &str,
        amount_minor: i64,
        key: &str,
    ) -> impl Future<Output = Result<i64, GatewayError>> + Send;

    /// Reads the intent as the provider has it.
    fn retrieve(
        &self,
        intent_id: &str,
    ) -> impl Future<Output = Result<Intent, GatewayError>> + Send;
}
