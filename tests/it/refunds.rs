//! Refunds after completion: a partial then a full refund square the money (captured −
//! refunded, at the provider and in kassa's books) and restock the named units; a retried
//! request refunds once; more than remains is 422; an order not completed is 409; the audit
//! trail and the customer's notifications show it.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common;
use crate::common::saga::{Placed, Saga, start_processors, stock, wait_for};

/// Asks for a refund of `order` under `key`; the status and answer.
pub(crate) async fn refund(saga: &Saga, order: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = saga
        .api
        .as_admin(Method::POST, &format!("/admin/orders/{order}/refunds"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn refunds(saga: &Saga, order: &str) -> Value {
    let response = saga
        .api
        .as_admin(Method::GET, &format!("/admin/orders/{order}/refunds"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits until refund `id` of `order` is `refunded`; returns the order's refunds.
pub(crate) async fn wait_refunded(saga: &Saga, order: &str, id: &str) -> Value {
    wait_for(Duration::from_secs(60), "the refund is made", || async {
        refunds(saga, order).await["refunds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["refund_id"] == id && r["state"] == "refunded")
    })
    .await;
    refunds(saga, order).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_then_a_full_refund_square_the_money_and_restock_the_named_units() {
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let (mug, tee) = (saga.sku("MUG"), saga.sku("TEE"));
    saga.product(&mug, 2500, 5).await;
    saga.product(&tee, 1000, 5).await;
    let order: Placed = saga.place("pm_card_visa", &[(&mug, 2), (&tee, 1)]).await;
    saga.wait_status(&order, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(stock(saga.pool(), &mug).await.unwrap().0, 3);

    // A partial refund, one mug back. The same request again (a retry) is the same refund.
    let key = uuid::Uuid::new_v4().to_string();
    let partial = json!({"amount_minor": 1500, "reason": "one mug arrived broken",
                         "restock": [{"sku": mug, "quantity": 1}]});
    let (status, first) = refund(&saga, &order.id, &key, &partial).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = refund(&saga, &order.id, &key, &partial).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        first["refund_id"], again["refund_id"],
        "a retry is the same refund"
    );
    let (status, reused) = refund(
        &saga,
        &order.id,
        &key,
        &json!({"amount_minor": 10, "reason": "x"}),
    )
    .await;
    assert_eq!(
        (status, reused["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let first_id = first["refund_id"].as_str().unwrap();
    let listed = wait_refunded(&saga, &order.id, first_id).await;
    assert_eq!(listed["refunded_minor"], 1500);
    assert_eq!(listed["refundable_minor"], 4500);
    wait_for(
        Duration::from_secs(30),
        "the returned mug is back in stock",
        || async { stock(saga.pool(), &mug).await.unwrap().0 == 4 },
    )
    .await;

    // More than remains is refused before anything is sent.
    let (status, problem) = refund(
        &saga,
        &order.id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 4501, "reason": "too much"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "refund_exceeds_remaining");
    let (status, problem) = refund(
        &saga,
        &order.id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 10, "reason": "two tees", "restock": [{"sku": tee, "quantity": 2}]}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("restock_exceeds_order")),
        "{problem}"
    );

    // The rest: a full refund, the tee back.
    let (status, second) = refund(
        &saga,
        &order.id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 4500, "reason": "the customer sent everything back",
                "restock": [{"sku": tee, "quantity": 1}]}),
    )
    .await;
    assert_eq!(status, 202, "{second}");
    let listed = wait_refunded(&saga, &order.id, second["refund_id"].as_str().unwrap()).await;
    assert_eq!(
        (
            listed["captured_minor"].as_i64(),
            listed["refunded_minor"].as_i64(),
            listed["refundable_minor"].as_i64()
        ),
        (Some(6000), Some(6000), Some(0))
    );
    wait_for(
        Duration::from_secs(30),
        "the tee is back in stock",
        || async { stock(saga.pool(), &tee).await.unwrap().0 == 5 },
    )
    .await;
    assert_eq!(
        stock(saga.pool(), &mug).await.unwrap().0,
        4,
        "only the named units came back"
    );

    // At the provider: captured once, refunded twice, once per refund (the retry sent nothing).
    let effects = saga.sim_effects(&order.id).await;
    let refunded: Vec<i64> = effects
        .iter()
        .filter(|(kind, _)| kind == "refund")
        .map(|(_, amount)| *amount)
        .collect();
    let captured: i64 = effects
        .iter()
        .filter(|(kind, _)| kind == "capture")
        .map(|(_, amount)| *amount)
        .sum();
    assert_eq!(
        (captured, refunded),
        (6000, vec![1500, 4500]),
        "{effects:?}"
    );
    let (status, nothing_left) = refund(
        &saga,
        &order.id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 1, "reason": "one more"}),
    )
    .await;
    assert_eq!(
        (status, nothing_left["code"].as_str()),
        (422, Some("refund_exceeds_remaining"))
    );

    // kassa's books agree: the order is square in `kassa reconcile`.
    let (_, printed) = common::run_kassa(
        &["reconcile", "--json", "--since", &since.to_rfc3339()],
        &[],
    );
    assert!(
        !printed.contains(&order.id),
        "no discrepancy names the refunded order: {printed}"
    );

    // The audit trail shows each step.
    let steps: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT trigger, reason FROM orders.transitions WHERE order_id = $1 ORDER BY id",
    )
    .bind(&order.id)
    .fetch_all(saga.pool())
    .await
    .unwrap();
    let triggers: Vec<&str> = steps
        .iter()
        .filter_map(|(t, _)| t.as_deref())
        .filter(|t| t.starts_with("Refund"))
        .collect();
    assert_eq!(
        triggers,
        ["RefundRequested", "Refunded", "RefundRequested", "Refunded"]
    );
    assert!(steps.iter().any(|(_, r)| {
        r.as_deref()
            .is_some_and(|r| r.contains("6000 in all, the whole order"))
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_not_completed_is_not_refunded() {
    let saga = Saga::new(start_processors(&[]).await, None, None).await;
    let sku = saga.sku("GONE");
    saga.product(&sku, 800, 1).await;
    let declined = saga.place("pm_card_chargeDeclined", &[(&sku, 1)]).await;
    saga.wait_status(&declined, "cancelled", Duration::from_secs(60))
        .await;
    let (status, problem) = refund(
        &saga,
        &declined.id,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 800, "reason": "nothing was taken"}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("cancelled"));
    let (status, _) = refund(
        &saga,
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
        &json!({"amount_minor": 1, "reason": "no such order"}),
    )
    .await;
    assert_eq!(status, 404);
}
