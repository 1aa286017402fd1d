//! `POST /webhooks/stripe` against localstripe (the Stripe test server `scripts/dev` starts) and
//! real Kafka: a genuinely signed webhook lands on `payments.webhooks` keyed by the order id;
//! unsigned, tampered and stale ones are refused with 400; the same event twice is accepted twice.

use crate::common;

use std::time::Duration;

use common::inventory::{end_offsets, read_until};
use kassa_api::webhooks::signature_header;
use kassa_schemas::events::payments::PaymentWebhook;
use kassa_schemas::{Codec, Envelope, Topic};
use rdkafka::Message;
use serde_json::{Value, json};

struct Api {
    base: String,
    secret: String,
    http: reqwest::Client,
    settings: kassa::settings::Settings,
}

impl Api {
    async fn start() -> Self {
        let secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
        let api = common::api::start(|c| {
            c.stripe_webhook_secret = Some(kassa_api::webhooks::Secret::new(secret.clone()))
        })
        .await;
        Self {
            base: api.base,
            secret,
            http: reqwest::Client::new(),
            settings: api.settings,
        }
    }

    async fn deliver(&self, body: &str, signature: Option<String>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        request.send().await.unwrap()
    }
}

fn stripe_base() -> String {
    std::env::var("KASSA_STRIPE_API_BASE").unwrap_or_else(|_| "http://127.0.0.1:18420".into())
}

async fn decoded(
    api: &Api,
    messages: &[rdkafka::message::OwnedMessage],
) -> Vec<kassa_schemas::events::payments::WebhookReceived> {
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let mut out = Vec::new();
    for m in messages {
        let event: Envelope<PaymentWebhook> = codec.decode(m.payload().unwrap()).await.unwrap();
        let PaymentWebhook::WebhookReceived(w) = event.payload;
        out.push(w);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn localstripes_signed_webhook_reaches_payments_webhooks_keyed_by_order() {
    let api = Api::start().await;
    let order_id = uuid::Uuid::now_v7().to_string();
    let from = end_offsets(&api.settings, Topic::PaymentsWebhooks.name());
    let stripe = reqwest::Client::new();
    // Point localstripe at this API, with this secret, then pay: it signs and sends the event.
    let hook = stripe
        .post(format!(
            "{}/_config/webhooks/kassa-{}",
            stripe_base(),
            uuid::Uuid::new_v4().simple()
        ))
        .form(&[
            ("url", format!("{}/webhooks/stripe", api.base)),
            ("secret", api.secret.clone()),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        hook.status().is_success(),
        "localstripe webhook config: {}",
        hook.status()
    );
    let intent: Value = stripe
        .post(format!("{}/v1/payment_intents", stripe_base()))
        .basic_auth("sk_test_kassa", Some(""))
        .form(&[
            ("amount", "1999"),
            ("currency", "eur"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
            ("metadata[order_id]", order_id.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intent["status"], "succeeded");

    let messages = read_until(
        &api.settings,
        Topic::PaymentsWebhooks.name(),
        &from,
        Duration::from_secs(30),
        |m| m.key() == Some(order_id.as_bytes()),
        |n| n >= 1,
    );
    let webhook = &decoded(&api, &messages).await[0];
    assert_eq!(webhook.provider_event_type, "payment_intent.succeeded");
    assert_eq!(webhook.order_id.as_deref(), Some(order_id.as_str()));
    assert_eq!(webhook.payment_intent_id.as_deref(), intent["id"].as_str());
    assert!(webhook.provider_event_id.starts_with("evt_"));
    let body: Value = serde_json::from_str(&webhook.body).unwrap();
    assert_eq!(
        body["data"]["object"]["id"], intent["id"],
        "the verified body, verbatim"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_tampered_and_stale_webhooks_are_refused_and_a_repeat_is_accepted() {
    let api = Api::start().await;
    let order_id = uuid::Uuid::now_v7().to_string();
    let event = json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "type": "payment_intent.payment_failed",
        "data": {"object": {"id": "pi_test", "object": "payment_intent", "metadata": {"order_id": order_id}}}
    })
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let code = crate::common::api::problem_code;
    let invalid = (401, "invalid_signature".to_owned());
    assert_eq!(
        code(api.deliver(&event, None).await).await,
        invalid,
        "unsigned"
    );
    let tampered = event.replace("payment_failed", "succeeded");
    assert_eq!(
        code(
            api.deliver(
                &tampered,
                Some(signature_header(&api.secret, now, event.as_bytes()))
            )
            .await
        )
        .await,
        invalid,
        "tampered"
    );
    assert_eq!(
        code(
            api.deliver(
                &event,
                Some(signature_header(&api.secret, now - 600, event.as_bytes()))
            )
            .await
        )
        .await,
        invalid,
        "stale"
    );
    assert_eq!(
        code(
            api.deliver(
                &event,
                Some(signature_header("whsec_wrong", now, event.as_bytes()))
            )
            .await
        )
        .await,
        invalid,
        "wrong secret"
    );

    let from = end_offsets(&api.settings, Topic::PaymentsWebhooks.name());
    for _ in 0..2 {
        let ok = api
            .deliver(
                &event,
                Some(signature_header(&api.secret, now, event.as_bytes())),
            )
            .await;
        assert_eq!(ok.status().as_u16(), 200);
    }
    let messages = read_until(
        &api.settings,
        Topic::PaymentsWebhooks.name(),
        &from,
        Duration::from_secs(30),
        |m| m.key() == Some(order_id.as_bytes()),
        |n| n >= 2,
    );
    let received = decoded(&api, &messages).await;
    assert_eq!(
        received.len(),
        2,
        "the same event twice is accepted twice (payments deduplicates)"
    );
    assert_eq!(received[0].provider_event_id, received[1].provider_event_id);
    assert!(
        received
            .iter()
            .all(|w| w.provider_event_type == "payment_intent.payment_failed")
    );
}
