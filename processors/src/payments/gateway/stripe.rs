//! The Stripe gateway, through async-stripe: PaymentIntents with `capture_method=manual`, the
//! order id in the metadata, an idempotency key on every call that changes something, and a
//! configurable API base (so tests reach the localstripe server `scripts/dev` starts).
//!
//! async-stripe builds, signs and sends the requests and reads Stripe's errors; the answers are
//! read leniently (as JSON, the fields kassa needs), because test servers such as localstripe
//! leave out fields the typed `PaymentIntent` requires.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::PaymentIntentCaptureMethod;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CapturePaymentIntent, ConfirmPaymentIntent, CreatePaymentIntent,
    ListPaymentIntent, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_types::Currency;

use super::{Gateway, GatewayError, Intent, IntentRequest, IntentStatus};

/// How to reach Stripe. (Not `Debug`: it holds the secret key.)
#[derive(Clone)]
pub struct StripeConfig {
    /// The secret API key (`sk_…`).
    pub secret_key: kassa_schemas::secret::Secret,
    /// API base, e.g. `http://127.0.0.1:18420` for localstripe (None: Stripe itself).
    pub api_base: Option<String>,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// The Stripe gateway.
pub struct StripeGateway {
    client: Client,
}

impl StripeGateway {
    /// A gateway for `config`; fails on a malformed key or API base.
    pub fn new(config: &StripeConfig) -> Result<Self, String> {
        let mut builder = ClientBuilder::new(config.secret_key.expose().to_owned())
            .timeout(config.timeout)
            .request_strategy(RequestStrategy::Once);
        if let Some(base) = &config.api_base {
            builder = builder.url(base.clone());
        }
        // The error text never holds the key.
        let client = builder
            .build()
            .map_err(|e| format!("Stripe client: {}", describe(&e)))?;
        Ok(Self { client })
    }

    /// Sends a request built by async-stripe with `key` (if any) and reads the answer as JSON.
    async fn send(
        &self,
        request: stripe_client_core::RequestBuilder,
        key: Option<&str>,
    ) -> Result<Value, GatewayError> {
        let mut request = request.customize::<miniserde::json::Value>();
        if let Some(key) = key {
            let key = IdempotencyKey::new(key)
                .map_err(|e| GatewayError::Refused(format!("idempotency key: {e:?}")))?;
            request = request.request_strategy(RequestStrategy::Idempotent(key));
        }
        let answer = request.send(&self.client).await.map_err(|e| classify(&e))?;
        serde_json::from_str(&miniserde::json::to_string(&answer))
            .map_err(|e| GatewayError::Ambiguous(format!("answer: {e}")))
    }

    async fn intent(
        &self,
        request: stripe_client_core::RequestBuilder,
        key: Option<&str>,
    ) -> Result<Intent, GatewayError> {
        let value = self.send(request, key).await?;
        read_intent(&value)
            .ok_or_else(|| GatewayError::Ambiguous("the answer is not a PaymentIntent".into()))
    }
}

/// An intent as the provider's list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedIntent {
    /// The intent id (`pi_…`).
    pub id: String,
    /// The order id in its metadata (None: not one of kassa's).
    pub order_id: Option<String>,
    /// Its status, as Stripe names it.
    pub status: String,
    /// When it was created, in Unix seconds.
    pub created: i64,
}

/// Most intents one list request returns (Stripe's limit).
const PAGE: i64 = 100;

impl StripeGateway {
    /// Every intent at the provider created at or after `since` (Unix seconds; None: all of
    /// them), read a page at a time. The creation time is filtered here, not by the server (test
    /// servers such as localstripe refuse the `created` filter); reading stops at the first page
    /// that ends older than `since` when the pages come newest first, as Stripe's do.
    pub async fn list_intents(&self, since: Option<i64>) -> Result<Vec<ListedIntent>, GatewayError> {
        let since = since.unwrap_or(i64::MIN);
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListPaymentIntent::new().limit(PAGE);
            if let Some(id) = after.take() {
                request = request.starting_after(id);
            }
            let page = self.send(request.build(), None).await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            let read: Vec<ListedIntent> = data
                .iter()
                .filter_map(|v| {
                    Some(ListedIntent {
                        id: v["id"].as_str()?.to_owned(),
                        order_id: v["metadata"]["order_id"].as_str().map(str::to_owned),
                        status: v["status"].as_str().unwrap_or("unknown").to_owned(),
                        created: v["created"].as_i64().unwrap_or(0),
                    })
                })
                .collect();
            let newest_first_and_past = match (read.first(), read.last()) {
                (Some(first), Some(last)) => first.created > last.created && last.created < since,
                _ => false,
            };
            after = read.last().map(|i| i.id.clone());
            listed.extend(read.into_iter().filter(|i| i.created >= since));
            if !page["has_more"].as_bool().unwrap_or(false) || after.is_none() || newest_first_and_past {
                return Ok(listed);
            }
        }
    }
}

/// A Stripe error as a gateway error: a decline (402), a refusal (other 4xx), nothing done
/// (429, idempotency conflicts), or unknown (5xx, timeouts, broken connections).
fn classify(e: &StripeError) -> GatewayError {
    match e {
        StripeError::Stripe(error, status) => {
            let code = error
                .code
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into());
            let message = error.message.clone().unwrap_or_default();
            match *status {
                402 => GatewayError::Declined(error.decline_code.clone().unwrap_or(code), message),
                409 | 429 => GatewayError::Transient(format!("{status} {code}: {message}")),
                s if s >= 500 => GatewayError::Ambiguous(format!("{status} {code}: {message}")),
                _ => GatewayError::Refused(format!("{status} {code}: {message}")),
            }
        }
        StripeError::ConfigError(_) => GatewayError::Refused(describe(e)),
        StripeError::Timeout | StripeError::ClientError(_) | StripeError::JSONDeserialize(_) => {
            GatewayError::Ambiguous(describe(e))
        }
    }
}

fn describe(e: &StripeError) -> String {
    match e {
        StripeError::Stripe(error, status) => {
            format!("{status}: {}", error.message.clone().unwrap_or_default())
        }
        StripeError::JSONDeserialize(m) => format!("unreadable answer: {m}"),
        StripeError::ClientError(m) => format!("connection: {m}"),
        StripeError::ConfigError(m) => format!("configuration: {m}"),
        StripeError::Timeout => "timed out".into(),
    }
}

/// What every intent answer expands: Stripe sends `latest_charge` as a bare id unless asked,
/// and the refunded amount is only on the charge.
fn expanded() -> Vec<String> {
    vec!["latest_charge".to_owned()]
}

/// Reads the fields kassa needs from a PaymentIntent's JSON.
fn read_intent(v: &Value) -> Option<Intent> {
    let id = v.get("id")?.as_str()?.to_owned();
    // A status this build does not know is read as still in progress: the next look-up tells.
    let status =
        IntentStatus::parse(v.get("status")?.as_str()?).unwrap_or(IntentStatus::Processing);
    let amount_minor = v.get("amount").and_then(Value::as_i64).unwrap_or(0);
    let charge = v.get("latest_charge").filter(|c| c.is_object());
    let received_minor = v
        .get("amount_received")
        .and_then(Value::as_i64)
        .or_else(|| {
            charge
                .filter(|c| c["captured"] == true)
                .and_then(|c| c["amount"].as_i64())
        })
        .unwrap_or(if status == IntentStatus::Succeeded {
            amount_minor
        } else {
            0
        });
    let refunded_minor = charge
        .and_then(|c| c["amount_refunded"].as_i64())
        .unwrap_or(0);
    let last_error = v
        .get("last_payment_error")
        .filter(|e| e.is_object())
        .map(|e| {
            let code = e["decline_code"]
                .as_str()
                .or(e["code"].as_str())
                .unwrap_or("declined")
                .to_owned();
            (code, e["message"].as_str().unwrap_or_default().to_owned())
        });
    Some(Intent {
        id,
        status,
        amount_minor,
        received_minor,
        refunded_minor,
        client_secret: v
            .get("client_secret")
            .and_then(Value::as_str)
            .map(str::to_owned),
        last_error,
    })
}

impl Gateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create(&self, request: &IntentRequest<'_>, key: &str) -> Result<Intent, GatewayError> {
        let currency = Currency::from_str(&request.currency.to_ascii_lowercase())
            .unwrap_or_else(|e| match e {});
        let metadata = HashMap::from([("order_id".to_owned(), request.order_id.to_owned())]);
        let create = CreatePaymentIntent::new(request.amount_minor, currency)
            .capture_method(PaymentIntentCaptureMethod::Manual)
            .payment_method(request.payment_method_id)
            .metadata(metadata);
        self.intent(create.build(), Some(key)).await
    }

    async fn confirm(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.intent(
            ConfirmPaymentIntent::new(intent_id)
                .expand(expanded())
                .build(),
            Some(key),
        )
        .await
    }

    async fn capture(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.intent(
            CapturePaymentIntent::new(intent_id)
                .expand(expanded())
                .build(),
            Some(key),
        )
        .await
    }

    async fn cancel(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.intent(
            CancelPaymentIntent::new(intent_id)
                .expand(expanded())
                .build(),
            Some(key),
        )
        .await
    }

    async fn refund(
        &self,
        intent_id: &str,
        amount_minor: i64,
        key: &str,
    ) -> Result<i64, GatewayError> {
        let refund = self
            .send(
                CreateRefund::new()
                    .payment_intent(intent_id)
                    .amount(amount_minor)
                    .build(),
                Some(key),
            )
            .await?;
        Ok(refund
            .get("amount")
            .and_then(Value::as_i64)
            .unwrap_or(amount_minor))
    }

    async fn retrieve(&self, intent_id: &str) -> Result<Intent, GatewayError> {
        self.intent(
            RetrievePaymentIntent::new(intent_id)
                .expand(expanded())
                .build(),
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_read_without_the_fields_test_servers_leave_out() {
        let localstripe = serde_json::json!({
            "id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 4998,
            "client_secret": "pi_1_secret_x", "latest_charge": {"id": "ch_1", "amount": 4998, "captured": true, "amount_refunded": 1000},
        });
        let intent = read_intent(&localstripe).unwrap();
        assert_eq!(
            (intent.status, intent.received_minor, intent.refunded_minor),
            (IntentStatus::Succeeded, 4998, 1000)
        );
        let declined = serde_json::json!({
            "id": "pi_2", "status": "requires_payment_method", "amount": 10,
            "last_payment_error": {"code": "card_declined", "message": "Your card was declined."},
        });
        assert_eq!(
            read_intent(&declined).unwrap().last_error,
            Some(("card_declined".into(), "Your card was declined.".into()))
        );
        assert!(read_intent(&serde_json::json!({"object": "refund"})).is_none());
    }
}
