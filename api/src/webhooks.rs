//! `POST /webhooks/stripe`: verifies the `Stripe-Signature` (HMAC-SHA256 over `"{t}.{body}"` with
//! the endpoint's secret, timestamp within 5 minutes), then writes the event to
//! `payments.webhooks` keyed by the order id in the intent's metadata, and answers 200. The same
//! event twice is accepted twice: deduplication is the payments processor's job.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use kassa_schemas::Envelope;
use kassa_schemas::events::payments::{PaymentWebhook, WebhookReceived};
use serde_json::Value;

use crate::AppState;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::problem::Problem;

pub use kassa_schemas::secret::Secret;
pub use kassa_schemas::signature::{SignatureError, TOLERANCE_SECONDS, signature_header, verify};

/// The answer to a verified webhook.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Received {
    /// Always true: the event is on `payments.webhooks`.
    pub received: bool,
}

/// `POST /webhooks/stripe`.
#[utoipa::path(post, path = "/webhooks/stripe", operation_id = "stripeWebhook", tag = "webhooks",
    request_body(content = String, content_type = "application/json", description = "the Stripe event, verbatim"),
    security(("stripe_signature" = [])),
    responses(
        (status = 200, description = "verified and on `payments.webhooks`", body = Received),
        (status = 400, description = "`malformed_request`: signed, but not a Stripe event", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_signature`: `Stripe-Signature` missing, wrong or outside the tolerance", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the webhook secret unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.stripe_webhook_secret else {
        return Err(Problem::unavailable(
            "Stripe webhooks are not configured (KASSA_STRIPE_WEBHOOK_SECRET)",
            60,
        )
        .into());
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(e) = verify(secret.expose(), header, &body, Utc::now().timestamp()) {
        tracing::warn!(reason = ?e, "webhook refused");
        return Err(Problem::bad_signature(match e {
            SignatureError::Malformed => "missing or malformed Stripe-Signature header",
            SignatureError::Stale => "the signature's timestamp is outside the tolerance",
            SignatureError::Mismatch => "the signature does not match",
        })
        .into());
    }
    let event: Value =
        serde_json::from_slice(&body).map_err(|e| Problem::malformed(e.to_string()))?;
    let id = event["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Problem::malformed("the event has no id"))?;
    let kind = event["type"].as_str().unwrap_or_default();
    let object = &event["data"]["object"];
    let order_id = object["metadata"]["order_id"].as_str().map(str::to_owned);
    let intent = (object["object"] == "payment_intent")
        .then(|| object["id"].as_str().map(str::to_owned))
        .flatten();
    // The order's trace, when the intent names one of kassa's orders.
    let trace = match &order_id {
        Some(order) => crate::produce::trace_of(&state, order).await?,
        None => None,
    };
    let key = order_id
        .clone()
        .or_else(|| intent.clone())
        .unwrap_or_else(|| id.to_owned());
    let received = WebhookReceived {
        provider: "stripe".into(),
        provider_event_id: id.to_owned(),
        provider_event_type: kind.to_owned(),
        order_id,
        payment_intent_id: intent,
        received_at: Utc::now(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let envelope = Envelope::new(key.clone(), None, PaymentWebhook::WebhookReceived(received));
    crate::produce::send(&state, &key, trace.as_deref(), &envelope).await?;
    Ok(Json(Received { received: true }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_is_checked_against_body_secret_and_time() {
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header(SECRET, 1_800_000_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_800_000_000), Ok(()));
        assert_eq!(
            verify(SECRET, &header, body, 1_800_000_000 + TOLERANCE_SECONDS),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_800_000_000 + TOLERANCE_SECONDS + 1),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(SECRET, &header, br#"{"id":"evt_2"}"#, 1_800_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, 1_800_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "", body, 1_800_000_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=1800000000", body, 1_800_000_000),
            Err(SignatureError::Malformed)
        );
        // A rolled secret: one of several v1 signatures matching is enough.
        let v1 = header.split_once(",v1=").unwrap().1;
        let two = format!("t=1800000000,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, &two, body, 1_800_000_000), Ok(()));
    }

    #[test]
    fn any_header_is_answered_without_a_panic_and_only_a_true_signature_passes() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            let header = format!("t={t},v1={}", "ab".repeat(32));
            assert_eq!(
                verify(SECRET, &header, body, now),
                Err(SignatureError::Stale),
                "{t}"
            );
        }
        // Random headers from the pieces of real ones (a fixed seed: the same run every time).
        let pieces = [
            "t=",
            "v1=",
            "v0=",
            ",",
            " ",
            "=",
            "-",
            "9223372036854775807",
            "-9223372036854775808",
            "1800000000",
            "00",
            "ab",
            "zz",
            "é",
            "t",
            "v1",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let mut header = String::new();
            for _ in 0..(next() % 12) {
                header.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            assert!(verify(SECRET, &header, body, now).is_err(), "{header:?}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        assert_eq!(format!("{:?}", Secret::new("whsec_live")), "Secret(***)");
    }
}
