//! `payments.events` (payments → orders) and `payments.webhooks` (API → payments), keyed by order id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::payload_union;
use crate::topics::Topic;

/// Which payment step failed (Avro enum `PaymentStep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStep {
    /// Authorizing the total.
    Authorize,
    /// Capturing the authorization.
    Capture,
    /// Voiding the authorization.
    Void,
    /// Refunding a capture.
    Refund,
}

/// Declares a payment event struct: the common payment fields plus its own.
macro_rules! payment_event {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// The order.
            pub order_id: String,
            /// kassa's payment id.
            #[serde(with = "uuid::serde::hyphenated")]
            pub payment_id: Uuid,
            /// Gateway: `simulated` or `stripe`.
            pub provider: String,
            /// The provider's id (e.g. PaymentIntent id), once known.
            pub provider_ref: Option<String>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }
    };
}

payment_event!(
    /// The order total is authorized (manual capture).
    PaymentAuthorized {
        /// Amount in minor units.
        amount_minor: i64,
        /// ISO 4217 currency.
        currency: String,
    }
);
payment_event!(
    /// The customer must complete 3-D Secure.
    PaymentActionRequired {
        /// Secret the storefront passes to Stripe.js.
        client_secret: String,
    }
);
payment_event!(
    /// A step failed for good.
    PaymentFailed {
        /// Which step.
        step: PaymentStep,
        /// Provider's decline or error code.
        code: String,
        /// Human-readable reason.
        message: String,
    }
);
payment_event!(
    /// The authorized amount was captured.
    PaymentCaptured {
        /// Amount in minor units.
        amount_minor: i64,
        /// ISO 4217 currency.
        currency: String,
    }
);
payment_event!(
    /// The authorization was cancelled; nothing was charged.
    PaymentVoided {}
);
payment_event!(
    /// A captured amount was refunded.
    PaymentRefunded {
        /// Refunded amount in minor units.
        refunded_minor: i64,
        /// ISO 4217 currency.
        currency: String,
        /// The refund an operator asked for (None: the compensation of a cancelled order).
        refund_id: Option<String>,
    }
);
payment_event!(
    /// The provider refused a refund an operator asked for (after retrying what could be
    /// retried).
    PaymentRefundFailed {
        /// The refund.
        refund_id: String,
        /// Amount asked for, in minor units.
        amount_minor: i64,
        /// The provider's code, or kassa's.
        code: String,
        /// The provider's message.
        message: String,
    }
);

payload_union! {
    /// Everything on `payments.events`.
    PaymentEvent for Topic::PaymentsEvents => {
        PaymentAuthorized, PaymentActionRequired, PaymentFailed, PaymentCaptured, PaymentVoided, PaymentRefunded,
        PaymentRefundFailed,
    }
}
order_keyed!(PaymentEvent {
    PaymentAuthorized,
    PaymentActionRequired,
    PaymentFailed,
    PaymentCaptured,
    PaymentVoided,
    PaymentRefunded,
    PaymentRefundFailed,
});

impl PaymentEvent {
    /// The gateway and the provider's id of the payment.
    pub fn provider(&self) -> (&str, Option<&str>) {
        let (provider, reference) = match self {
            Self::PaymentAuthorized(e) => (&e.provider, &e.provider_ref),
            Self::PaymentActionRequired(e) => (&e.provider, &e.provider_ref),
            Self::PaymentFailed(e) => (&e.provider, &e.provider_ref),
            Self::PaymentCaptured(e) => (&e.provider, &e.provider_ref),
            Self::PaymentVoided(e) => (&e.provider, &e.provider_ref),
            Self::PaymentRefunded(e) => (&e.provider, &e.provider_ref),
            Self::PaymentRefundFailed(e) => (&e.provider, &e.provider_ref),
        };
        (provider, reference.as_deref())
    }
}

/// A verified webhook from the payment provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReceived {
    /// Provider that sent it.
    pub provider: String,
    /// Provider's event id, for deduplication.
    pub provider_event_id: String,
    /// e.g. `payment_intent.succeeded`.
    pub provider_event_type: String,
    /// Order id from the intent's metadata.
    pub order_id: Option<String>,
    /// PaymentIntent id, when about one.
    pub payment_intent_id: Option<String>,
    /// When the API accepted it.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub received_at: DateTime<Utc>,
    /// The verified JSON body, verbatim.
    pub body: String,
}

payload_union! {
    /// Everything on `payments.webhooks`.
    PaymentWebhook for Topic::PaymentsWebhooks => { WebhookReceived }
}
