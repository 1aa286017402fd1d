//! The checkout saga with the Stripe gateway (async-stripe) against localstripe, the Stripe test
//! server `scripts/dev` starts: a card payment completes and is captured at the provider, a
//! declining card cancels the order, and 3-D Secure completed through localstripe's authenticate
//! call completes it; localstripe's signed webhooks reach kassa and agree with it; `kassa
//! reconcile --provider` reads the intents back from it and names one kassa does not know.

use crate::common;

use std::time::Duration;

use common::saga::{Saga, start_processors, stock, wait_for};
use serde_json::{Value, json};

const SECRET: &str = "whsec_saga_stripe_test";
const KEY: &str = "sk_test_kassa";
const DONE: Duration = Duration::from_secs(60);

fn stripe_base() -> String {
    std::env::var("KASSA_STRIPE_API_BASE").unwrap_or_else(|_| "http://127.0.0.1:18420".into())
}

/// Processors charging through localstripe, and localstripe's webhooks pointed at this test's API.
async fn saga() -> Saga {
    let base = stripe_base();
    let turn = start_processors(&[
        ("KASSA_PAYMENT_GATEWAY", "stripe"),
        ("KASSA_STRIPE_SECRET_KEY", KEY),
        ("KASSA_STRIPE_API_BASE", &base),
        ("KASSA_PAYMENT_RECHECK_SECONDS", "1"),
    ])
    .await;
    let saga = Saga::new(turn, Some(SECRET), None).await;
    let registered = saga
        .http
        // One hook per test: localstripe delivers every event to every hook, so each test's API
        // hears its own events even after another test (and its API) has finished.
        .post(format!(
            "{base}/_config/webhooks/kassa-saga-stripe-{}",
            saga.run
        ))
        .form(&[
            ("url", format!("{}/webhooks/stripe", saga.api.base)),
            ("secret", SECRET.to_owned()),
        ])
        .send()
        .await
        .expect("localstripe is up (scripts/dev up)");
    assert!(registered.status().is_success());
    saga
}

/// GET on localstripe's API.
async fn stripe_get(saga: &Saga, path: &str) -> Value {
    saga.http
        .get(format!("{}{path}", stripe_base()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The intent kassa recorded for `order`.
async fn intent_of(saga: &Saga, order: &str) -> String {
    sqlx::query_scalar("SELECT provider_ref FROM payments.payments WHERE order_id = $1")
        .bind(order)
        .fetch_one(saga.pool())
        .await
        .unwrap()
}

/// Waits until kassa has recorded a webhook of `kind` for `order`; returns its outcome.
async fn webhook_outcome(saga: &Saga, order: &str, kind: &str) -> String {
    let pool = saga.pool().clone();
    let (order, kind) = (order.to_owned(), kind.to_owned());
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
    let found = outcome.clone();
    wait_for(DONE, &format!("a {kind} webhook for {order}"), || {
        let (pool, order, kind, found) = (pool.clone(), order.clone(), kind.clone(), found.clone());
        async move {
            let row: Option<Option<String>> = sqlx::query_scalar(
                "SELECT outcome FROM payments.webhooks WHERE order_id = $1 AND event_type = $2",
            )
            .bind(&order)
            .bind(&kind)
            .fetch_optional(&pool)
            .await
            .unwrap();
            let applied = row.flatten();
            let done = applied.is_some();
            *found.lock().unwrap() = applied;
            done
        }
    })
    .await;
    outcome.lock().unwrap().clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_card_payment_is_authorized_then_captured_at_stripe() {
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let saga = saga().await;
    let sku = saga.sku("STRIPE");
    saga.product(&sku, 2599, 5).await;
    let order = saga.place("pm_card_visa", &[(&sku, 2)]).await;

    saga.wait_status(&order, "completed", DONE).await;
    assert_eq!(stock(saga.pool(), &sku).await, Some((3, 0, 2)));
    let intent = stripe_get(
        &saga,
        &format!("/v1/payment_intents/{}", intent_of(&saga, &order.id).await),
    )
    .await;
    assert_eq!(intent["status"], "succeeded", "{intent}");
    assert_eq!(intent["amount"], 5198);
    assert_eq!(intent["capture_method"], "manual");
    assert_eq!(intent["metadata"]["order_id"], order.id.as_str());
    // localstripe signs and sends payment_intent.succeeded after the capture: it agrees.
    assert_eq!(
        webhook_outcome(&saga, &order.id, "payment_intent.succeeded").await,
        "agrees"
    );

    // `kassa reconcile --provider` reads Stripe's intents back: this order's squares with
    // kassa's books; an intent for an order kassa has no payment for is reported.
    let stray = format!("stray-{}", saga.run);
    let created: Value = saga
        .http
        .post(format!("{}/v1/payment_intents", stripe_base()))
        .bearer_auth(KEY)
        .form(&[
            ("amount", "100"),
            ("currency", "eur"),
            ("capture_method", "manual"),
            ("metadata[order_id]", stray.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stray_intent = created["id"].as_str().expect("an intent id").to_owned();
    // The provider's clock may run ahead of ours (localstripe's does, by a second): the intent
    // counts as settled once it is older than the margin there, so ask until it is.
    let reconcile = || async {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
            .args([
                "reconcile",
                "--provider",
                "--json",
                "--margin-seconds",
                "0",
                "--since",
                &since,
            ])
            .env("KASSA_PAYMENT_GATEWAY", "stripe")
            .env("KASSA_STRIPE_SECRET_KEY", KEY)
            .env("KASSA_STRIPE_API_BASE", stripe_base())
            .output()
            .await
            .unwrap();
        let found: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "JSON from kassa reconcile ({e}): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), found)
    };
    let started = std::time::Instant::now();
    let (code, found) = loop {
        let (code, found) = reconcile().await;
        let named = found.iter().any(|d| d.to_string().contains(&stray_intent));
        if named || started.elapsed() > Duration::from_secs(30) {
            break (code, found);
        }
    };
    let about = |id: &str| -> Vec<&Value> {
        found
            .iter()
            .filter(|d| {
                d["class"] == "payments_provider"
                    && d["ids"].as_array().unwrap().iter().any(|i| i == id)
            })
            .collect()
    };
    assert_eq!(code, Some(1), "{found:?}");
    let reported = about(&stray_intent);
    assert_eq!(reported.len(), 1, "{found:?}");
    assert_eq!(reported[0]["ids"], serde_json::json!([stray, stray_intent]));
    assert!(
        reported[0]["detail"]
            .as_str()
            .unwrap()
            .contains("unknown to kassa"),
        "{reported:?}"
    );
    assert!(
        about(&order.id).is_empty(),
        "kassa's own intent squares: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declining_card_at_stripe_cancels_the_order_and_releases_the_stock() {
    let saga = saga().await;
    let sku = saga.sku("STRIPE-DECLINE");
    saga.product(&sku, 1000, 3).await;
    let order = saga.place("pm_card_chargeCustomerFail", &[(&sku, 1)]).await;

    let cancelled = saga.wait_status(&order, "cancelled", DONE).await;
    assert_eq!(cancelled["reason"], "payment_declined");
    saga.wait_stock(&sku, (3, 0, 0)).await;
    let intent = stripe_get(
        &saga,
        &format!("/v1/payment_intents/{}", intent_of(&saga, &order.id).await),
    )
    .await;
    assert_eq!(
        intent["status"], "requires_payment_method",
        "declined, nothing to capture: {intent}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_d_secure_completed_through_stripe_completes_the_order() {
    let saga = saga().await;
    let sku = saga.sku("STRIPE-3DS");
    saga.product(&sku, 7500, 2).await;
    // A card that needs 3-D Secure, created at the provider as Stripe.js would.
    let method: Value = saga
        .http
        .post(format!("{}/v1/payment_methods", stripe_base()))
        .bearer_auth(KEY)
        .form(&[
            ("type", "card"),
            ("card[number]", "4000002760003184"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let method = method["id"].as_str().expect("a payment method id");
    let order = saga.place(method, &[(&sku, 1)]).await;

    let waiting = saga.wait_status(&order, "action_required", DONE).await;
    let secret = waiting["next_action"]["client_secret"]
        .as_str()
        .expect("client secret")
        .to_owned();
    let intent = intent_of(&saga, &order.id).await;
    let authenticated = saga
        .http
        .post(format!(
            "{}/v1/payment_intents/{intent}/_authenticate",
            stripe_base()
        ))
        .bearer_auth(KEY)
        .form(&[("client_secret", secret.as_str()), ("success", "true")])
        .send()
        .await
        .unwrap();
    assert!(
        authenticated.status().is_success(),
        "{}",
        authenticated.text().await.unwrap()
    );

    saga.wait_status(&order, "completed", DONE).await;
    assert_eq!(stock(saga.pool(), &sku).await, Some((1, 0, 1)));
    let intent = stripe_get(&saga, &format!("/v1/payment_intents/{intent}")).await;
    assert_eq!(
        (intent["status"].as_str(), intent["amount"].as_i64()),
        (Some("succeeded"), Some(7500))
    );
    assert_eq!(
        webhook_outcome(&saga, &order.id, "payment_intent.succeeded").await,
        "agrees"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_look_up_after_a_refund_sees_the_refund_as_stripe_answers_it() {
    use kassa_processors::payments::gateway::stripe::{StripeConfig, StripeGateway};
    use kassa_processors::payments::gateway::{Gateway, IntentRequest, IntentStatus};
    // localstripe behind a proxy that, like Stripe, sends `latest_charge` as a bare id unless
    // the request expands it (localstripe alone always sends it whole).
    let base = common::stripe_like::start(stripe_base()).await;
    let config = StripeConfig {
        secret_key: kassa_schemas::secret::Secret::new(KEY),
        api_base: Some(base),
        timeout: Duration::from_secs(10),
    };
    let gateway = StripeGateway::new(&config).expect("gateway");
    let order = uuid::Uuid::new_v4().to_string();
    let key = |step: &str| format!("kassa-test-{order}-{step}");
    let request = IntentRequest {
        order_id: &order,
        amount_minor: 4200,
        currency: "EUR",
        payment_method_id: "pm_card_visa",
    };
    let intent = gateway
        .create(&request, &key("create"))
        .await
        .expect("create");
    let confirmed = gateway
        .confirm(&intent.id, &key("confirm"))
        .await
        .expect("confirm");
    assert_eq!(confirmed.status, IntentStatus::RequiresCapture);
    let captured = gateway
        .capture(&intent.id, &key("capture"))
        .await
        .expect("capture");
    assert_eq!(
        (captured.status, captured.received_minor),
        (IntentStatus::Succeeded, 4200)
    );
    assert_eq!(
        gateway.refund(&intent.id, 4200, &key("refund")).await,
        Ok(4200)
    );
    // The look-up a worker makes after an unsure refund: it must see the refund, or it would
    // refund again.
    let looked = gateway.retrieve(&intent.id).await.expect("look-up");
    assert_eq!(
        looked.refunded_minor, 4200,
        "the look-up sees what was refunded: {looked:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_order_is_refunded_in_two_parts_at_stripe() {
    let saga = saga().await;
    let sku = saga.sku("REFUND");
    saga.product(&sku, 2599, 5).await;
    let order = saga.place("pm_card_visa", &[(&sku, 2)]).await;
    saga.wait_status(&order, "completed", DONE).await;
    let intent = intent_of(&saga, &order.id).await;

    for amount in [1000, 4198] {
        let (status, refund) = crate::refunds::refund(
            &saga,
            &order.id,
            &uuid::Uuid::new_v4().to_string(),
            &json!({"amount_minor": amount, "reason": "returned", "restock": [{"sku": sku, "quantity": 1}]}),
        )
        .await;
        assert_eq!(status, 202, "{refund}");
        crate::refunds::wait_refunded(&saga, &order.id, refund["refund_id"].as_str().unwrap())
            .await;
    }
    // Stripe's books: the charge refunded in full, in the two refunds kassa asked for.
    let charge =
        &stripe_get(&saga, &format!("/v1/payment_intents/{intent}")).await["latest_charge"];
    assert_eq!(charge["amount_refunded"], 5198, "{charge}");
    let refunded: i64 =
        sqlx::query_scalar("SELECT refunded_minor FROM payments.payments WHERE order_id = $1")
            .bind(&order.id)
            .fetch_one(saga.pool())
            .await
            .unwrap();
    assert_eq!(refunded, 5198);
    wait_for(DONE, "both units back in stock", || async {
        stock(saga.pool(), &sku).await.map(|s| s.0) == Some(5)
    })
    .await;
}
