//! The checkout saga end to end with the simulated gateway, against real Kafka, the registry,
//! Postgres and Redis: each test posts `POST /api/orders`, long-polls `GET /api/orders/{id}`, and
//! checks what a user would: stock, payments at the provider, the audit trail, the events a
//! downstream team reads.

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::saga::{Placed, Saga, start_processors, stock};
use kassa_processors::payments::gateway::simulated::{authenticate, intent_id_for};
use kassa_processors::payments::ledger::idempotency_key;
use kassa_schemas::events::orders::OrderEvent;
use kassa_schemas::{Codec, Envelope, Topic};
use rdkafka::Message;
use rdkafka::message::Headers;

const SECRET: &str = "whsec_saga_test";
const DONE: Duration = Duration::from_secs(60);

async fn saga() -> Saga {
    // 20 s for 3-D Secure: long enough that a test completing it is never beaten by the deadline
    // on a busy machine, short enough for the test that lets it pass.
    let turn = start_processors(&[
        ("KASSA_PAYMENT_ACTION_SECONDS", "20"),
        ("KASSA_PAYMENT_RECHECK_SECONDS", "1"),
    ])
    .await;
    Saga::new(turn, Some(SECRET), None).await
}

/// The simulated intent of an order (its id derives from the creating idempotency key).
fn intent_of(order: &str) -> String {
    intent_id_for(&idempotency_key(order, "create"))
}

/// Sends a Stripe-style event about `order`'s intent to the API, signed as the provider would.
async fn webhook(saga: &Saga, event_id: &str, kind: &str, order: &str) -> reqwest::StatusCode {
    saga.webhook(SECRET, event_id, kind, order, &intent_of(order))
        .await
}

/// The states an order went through, from its audit trail (applied steps only).
async fn path(saga: &Saga, order: &str) -> Vec<String> {
    let mut states = vec!["pending".to_owned()];
    for (from, to, applied) in saga.trail(order).await {
        if applied && from != to {
            states.push(to.unwrap());
        }
    }
    states
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_completes_with_stock_committed_and_the_payment_captured() {
    let saga = saga().await;
    let (tee, mug) = (saga.sku("TEE"), saga.sku("MUG"));
    saga.product(&tee, 1999, 10).await;
    saga.product(&mug, 850, 5).await;
    let events_from =
        common::inventory::end_offsets(&saga.api.settings, Topic::OrdersEvents.name());
    let payments_from =
        common::inventory::end_offsets(&saga.api.settings, Topic::PaymentsEvents.name());
    let order = saga.place("pm_card_visa", &[(&tee, 2), (&mug, 1)]).await;

    let done = saga.wait_status(&order, "completed", DONE).await;
    assert_eq!(done["total_minor"], 2 * 1999 + 850);
    assert_eq!(done["payment"]["provider"], "simulated");
    assert_eq!(
        done["payment"]["provider_ref"],
        intent_of(&order.id).as_str()
    );
    let steps: Vec<&str> = done["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    let expected = [
        "pending",
        "reserved",
        "authorizing",
        "authorized",
        "authorized",
        "confirmed",
        "completed",
    ];
    assert_eq!(
        steps, expected,
        "the audit trail, served (a line at a time while pending and authorized)"
    );
    assert_eq!(
        stock(saga.pool(), &tee).await,
        Some((8, 0, 2)),
        "two tees sold"
    );
    assert_eq!(
        stock(saga.pool(), &mug).await,
        Some((4, 0, 1)),
        "one mug sold"
    );
    assert_eq!(
        saga.sim_effects(&order.id).await,
        [("authorize".to_owned(), 4848), ("capture".to_owned(), 4848)],
        "authorized once, captured once, the order total"
    );
    assert_eq!(
        path(&saga, &order.id).await,
        [
            "pending",
            "reserved",
            "authorizing",
            "authorized",
            "confirmed",
            "completed"
        ]
    );

    // The fulfilment event a warehouse reads: every line, the total, the customer.
    let key = order.id.clone();
    let codec = Codec::new(&saga.api.settings.schema_registry_url).unwrap();
    let messages = common::inventory::read_until(
        &saga.api.settings,
        Topic::OrdersEvents.name(),
        &events_from,
        DONE,
        |m| m.key() == Some(key.as_bytes()),
        |n| n >= 4,
    );
    let mut completed = None;
    for m in &messages {
        let event: Envelope<OrderEvent> = codec.decode(m.payload().unwrap()).await.unwrap();
        if let OrderEvent::OrderCompleted(c) = event.payload {
            completed = Some(c);
        }
    }
    let completed = completed.expect("an OrderCompleted event");
    assert_eq!(
        (
            completed.customer_id.as_str(),
            completed.total_minor,
            completed.lines.len()
        ),
        (order.customer.as_str(), 4848, 2)
    );

    // One trace: what the payments worker published (outside any batch) continues the trace of
    // the order's events.
    let trace_id = |m: &rdkafka::message::OwnedMessage| -> String {
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .expect("traceparent");
        std::str::from_utf8(header.value.unwrap())
            .unwrap()
            .split('-')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let order_traces: std::collections::HashSet<String> = messages.iter().map(trace_id).collect();
    assert_eq!(
        order_traces.len(),
        1,
        "the order's events are one trace: {order_traces:?}"
    );
    let payment_events = common::inventory::read_until(
        &saga.api.settings,
        Topic::PaymentsEvents.name(),
        &payments_from,
        DONE,
        |m| m.key() == Some(key.as_bytes()),
        |n| n >= 2,
    );
    for m in &payment_events {
        assert!(
            order_traces.contains(&trace_id(m)),
            "a payment event outside the order's trace"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_out_of_stock_rejects_the_order_releases_the_others_and_charges_nothing() {
    let saga = saga().await;
    let (plenty, scarce) = (saga.sku("PLENTY"), saga.sku("SCARCE"));
    saga.product(&plenty, 500, 10).await;
    saga.product(&scarce, 700, 1).await;
    let order = saga
        .place("pm_card_visa", &[(&plenty, 3), (&scarce, 2)])
        .await;

    let rejected = saga.wait_status(&order, "rejected", DONE).await;
    assert_eq!(rejected["reason"], "out_of_stock");
    saga.wait_stock(&plenty, (10, 0, 0)).await;
    assert_eq!(stock(saga.pool(), &scarce).await, Some((1, 0, 0)));
    assert!(
        saga.sim_effects(&order.id).await.is_empty(),
        "no payment was attempted"
    );
    let payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments.payments WHERE order_id = $1")
            .bind(&order.id)
            .fetch_one(saga.pool())
            .await
            .unwrap();
    assert_eq!(payments, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_card_cancels_the_order_and_gives_all_stock_back() {
    let saga = saga().await;
    let sku = saga.sku("DECLINE");
    saga.product(&sku, 1200, 4).await;
    let order = saga.place("pm_card_chargeDeclined", &[(&sku, 3)]).await;

    let cancelled = saga.wait_status(&order, "cancelled", DONE).await;
    assert_eq!(cancelled["reason"], "payment_declined");
    assert_eq!(cancelled["detail"], "Your card was declined.");
    saga.wait_stock(&sku, (4, 0, 0)).await;
    assert!(
        saga.sim_effects(&order.id).await.is_empty(),
        "nothing was authorized"
    );
}

/// The distinct trace ids of `records` (topic, trace id), and the topics they are on (without
/// the namespace).
fn traces_and_topics(
    records: &[(String, Option<String>)],
) -> (HashSet<Option<&str>>, BTreeSet<&str>) {
    let traces = records.iter().map(|(_, t)| t.as_deref()).collect();
    let namespace = kassa_schemas::topics::namespace();
    let topics = records
        .iter()
        .map(|(topic, _)| topic.strip_prefix(namespace).unwrap_or(topic))
        .collect();
    (traces, topics)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_of_an_order_on_every_topic_continues_one_trace() {
    let saga = saga().await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (tee, mug) = (saga.sku("TRACE-TEE"), saga.sku("TRACE-MUG"));
    saga.product(&tee, 1999, 10).await;
    saga.product(&mug, 850, 10).await;

    // The storefront's trace: the API continues it, and so does every processor after it.
    let storefront_trace = uuid::Uuid::new_v4().simple().to_string();
    let placed = saga
        .api
        .as_storefront(reqwest::Method::POST, "/api/orders")
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header(
            "traceparent",
            format!("00-{storefront_trace}-00f067aa0ba902b7-01"),
        )
        .json(&serde_json::json!({
            "customer_id": format!("cus_{}_trace", saga.run),
            "payment_method_id": "pm_card_visa",
            "lines": [{"sku": tee, "quantity": 1}, {"sku": mug, "quantity": 2}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let answer: serde_json::Value = placed.json().await.unwrap();
    let order = Placed {
        id: answer["order_id"].as_str().unwrap().to_owned(),
        customer: answer["customer_id"].as_str().unwrap().to_owned(),
    };
    saga.wait_status(&order, "completed", DONE).await;
    let trace = one_trace(
        &saga,
        &order.id,
        since,
        &[
            "checkout.requests",
            "inventory.events",
            "orders.events",
            "payments.events",
        ],
    )
    .await;
    assert_eq!(trace, Some(storefront_trace), "the storefront's trace");

    // Without the storefront's: one trace the API starts, continued by a cancellation the
    // customer asks for later and by the void it causes.
    let cap = saga.sku("TRACE-CAP");
    saga.product(&cap, 1200, 3).await;
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&cap, 1)])
        .await;
    saga.wait_status(&order, "action_required", DONE).await;
    saga.cancel(&order).await;
    saga.wait_status(&order, "cancelled", DONE).await;
    saga.wait_undone(&cap, 3, &intent_of(&order.id)).await;
    one_trace(
        &saga,
        &order.id,
        since,
        &[
            "checkout.requests",
            "orders.requests",
            "orders.events",
            "payments.events",
        ],
    )
    .await;
}

/// Asserts that every record about `order` since `since` carries one trace id, and that some
/// are on each of `topics`.
async fn one_trace(
    saga: &Saga,
    order: &str,
    since: chrono::DateTime<chrono::Utc>,
    topics: &[&str],
) -> Option<String> {
    let records = common::foreign::order_traces(&saga.api.settings, order, since).await;
    let (traces, on) = traces_and_topics(&records);
    assert_eq!(traces.len(), 1, "one trace: {records:?}");
    assert!(
        !traces.contains(&None),
        "every record carries it: {records:?}"
    );
    for topic in topics {
        assert!(on.contains(topic), "a record on {topic}: {records:?}");
    }
    traces.into_iter().next().flatten().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_d_secure_never_completed_cancels_at_the_deadline_and_voids() {
    let saga = saga().await;
    let sku = saga.sku("3DS-LATE");
    saga.product(&sku, 3000, 2).await;
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;

    let waiting = saga.wait_status(&order, "action_required", DONE).await;
    let secret = waiting["next_action"]["client_secret"]
        .as_str()
        .expect("the client secret for Stripe.js");
    assert!(secret.starts_with(&intent_of(&order.id)), "{secret}");
    assert!(waiting["next_action"]["due_at"].is_string());

    let since = chrono::Utc::now() - chrono::Duration::seconds(60);
    let cancelled = saga.wait_status(&order, "cancelled", DONE).await;
    assert_eq!(cancelled["reason"], "payment_action_expired");
    saga.wait_undone(&sku, 2, &intent_of(&order.id)).await;
    // The deadline the expiry ticker fired continues the order's one trace.
    one_trace(&saga, &order.id, since, &["expiry.events"]).await;
    let (due, fired): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT due_at, fired_at FROM expiry.deadlines WHERE order_id = $1 AND kind = 'payment_action'",
    )
    .bind(&order.id)
    .fetch_one(saga.pool())
    .await
    .unwrap();
    // Never early. The 1 s ticker fires within about 2 s (the target); a test only bounds it
    // loosely, so a stalled machine does not fail it.
    println!(
        "the 3-D Secure deadline fired {} ms after it was due",
        (fired - due).num_milliseconds()
    );
    assert!(
        fired >= due && fired - due < chrono::Duration::seconds(5),
        "fired {} ms after it was due",
        (fired - due).num_milliseconds()
    );
}

/// Waits for 3-D Secure, completes it at the provider as the customer would, and tells kassa
/// with `copies` simultaneous deliveries of one signed webhook.
async fn complete_three_d_secure(saga: &Saga, order: &Placed, copies: usize) {
    saga.wait_status(order, "action_required", DONE).await;
    assert!(
        authenticate(saga.pool(), &intent_of(&order.id), true)
            .await
            .unwrap(),
        "the intent waited for 3-D Secure"
    );
    let event = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let deliveries = (0..copies).map(|_| {
        webhook(
            saga,
            &event,
            "payment_intent.amount_capturable_updated",
            &order.id,
        )
    });
    for status in futures::future::join_all(deliveries).await {
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_d_secure_completed_at_the_provider_completes_the_order() {
    let saga = saga().await;
    let sku = saga.sku("3DS-OK");
    saga.product(&sku, 4500, 3).await;
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    complete_three_d_secure(&saga, &order, 1).await;

    saga.wait_status(&order, "completed", DONE).await;
    assert_eq!(stock(saga.pool(), &sku).await, Some((2, 0, 1)));
    assert_eq!(
        saga.sim_effects(&order.id).await,
        [("authorize".to_owned(), 4500), ("capture".to_owned(), 4500)]
    );
    assert_eq!(
        path(&saga, &order.id).await,
        [
            "pending",
            "reserved",
            "authorizing",
            "action_required",
            "authorized",
            "confirmed",
            "completed"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_webhook_three_times_at_once_is_settled_once() {
    let saga = saga().await;
    let sku = saga.sku("WEBHOOK-3X");
    saga.product(&sku, 999, 3).await;
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    complete_three_d_secure(&saga, &order, 3).await;

    saga.wait_status(&order, "completed", DONE).await;
    let kept: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT provider_event_id, outcome FROM payments.webhooks WHERE order_id = $1",
    )
    .bind(&order.id)
    .fetch_all(saga.pool())
    .await
    .unwrap();
    assert_eq!(kept.len(), 1, "recorded once: {kept:?}");
    assert_eq!(
        saga.sim_effects(&order.id).await,
        [("authorize".to_owned(), 999), ("capture".to_owned(), 999)]
    );
    let authorized_steps = saga
        .trail(&order.id)
        .await
        .iter()
        .filter(|(_, to, a)| *a && to.as_deref() == Some("authorized"))
        .count();
    assert_eq!(authorized_steps, 1, "authorized once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_cancels_while_payment_waits_and_everything_is_undone() {
    let saga = saga().await;
    let sku = saga.sku("CANCEL");
    saga.product(&sku, 2500, 5).await;
    let order = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 2)])
        .await;
    saga.wait_status(&order, "action_required", DONE).await;
    assert_eq!(
        stock(saga.pool(), &sku).await,
        Some((3, 2, 0)),
        "two units held"
    );

    saga.cancel(&order).await;
    let cancelled = saga.wait_status(&order, "cancelled", DONE).await;
    assert_eq!(cancelled["reason"], "customer_requested");
    saga.wait_undone(&sku, 5, &intent_of(&order.id)).await;
    let trail = saga.trail(&order.id).await;
    assert!(trail.iter().any(|(from, to, applied)| *applied
        && from.as_deref() == Some("action_required")
        && to.as_deref() == Some("cancelled")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_payment_method_is_declined_by_the_simulated_gateway() {
    let saga = saga().await;
    let sku = saga.sku("UNKNOWN-PM");
    saga.product(&sku, 1200, 2).await;
    let order = saga.place("pm_somebody_made_this_up", &[(&sku, 1)]).await;
    let cancelled = saga.wait_status(&order, "cancelled", DONE).await;
    assert_eq!(cancelled["reason"], "payment_declined", "{cancelled}");
    saga.wait_stock(&sku, (2, 0, 0)).await;
    assert!(
        saga.sim_effects(&order.id).await.is_empty(),
        "nothing was authorized"
    );
}

#[test]
fn outside_development_the_simulated_gateway_is_never_the_default() {
    let run = |gateway: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kassa"));
        command
            .args(["run", "payments"])
            .env("KASSA_ENVIRONMENT", "production")
            .env_remove("KASSA_PAYMENT_GATEWAY")
            .stdin(std::process::Stdio::null());
        if let Some(gateway) = gateway {
            command
                .env("KASSA_PAYMENT_GATEWAY", gateway)
                .env_remove("KASSA_STRIPE_SECRET_KEY");
        }
        command.output().expect("kassa runs")
    };
    let refused = run(None);
    assert!(
        !refused.status.success(),
        "production without a gateway must not start"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("KASSA_PAYMENT_GATEWAY is not set"), "{said}");
    // Chosen explicitly, the choice is checked as usual: stripe needs its key.
    let stripe = run(Some("stripe"));
    assert!(!stripe.status.success());
    assert!(String::from_utf8_lossy(&stripe.stderr).contains("KASSA_STRIPE_SECRET_KEY"));
}
