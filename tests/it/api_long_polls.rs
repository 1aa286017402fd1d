//! Long polls in a crowd, against the real saga: a thousand requests wait on a hundred orders
//! while they flow, and the API loses its status listener halfway (its backend terminated, as a
//! Postgres restart does). Every waiter must see its order end, and none may be told 503.
//! (The delay figures at 10,000 waiters are `kassa bench polls`'s, in a release build.)

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::saga::{Saga, start_processors, wait_for};
use reqwest::Method;
use serde_json::Value;

const ORDERS: usize = 100;
const WAITERS_PER_ORDER: usize = 10;

/// What the waiters saw: final statuses, and answers that were not 200 (by status).
#[derive(Default)]
struct Seen {
    ended: AtomicUsize,
    /// Waits that ran out with nothing new (a change whose wake was lost shows as one).
    ran_out: AtomicUsize,
    failed: std::sync::Mutex<HashMap<u16, usize>>,
}

/// Long-polls `order` (of `customer`) until it is final; returns its final status.
async fn follow(saga: &Saga, order: &str, customer: &str, seen: &Seen) -> String {
    let mut since: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "order {order} not final in 180 s"
        );
        let query = since
            .as_deref()
            .map(|s| format!("?wait=30&since={s}"))
            .unwrap_or_default();
        let response = saga
            .api
            .as_storefront(Method::GET, &format!("/api/orders/{order}{query}"))
            .header("X-Customer-Id", customer)
            .send()
            .await
            .expect("the API answers");
        if response.status() != 200 {
            // Counted, and the test fails on it: the waiter stops here rather than retry.
            let code = response.status().as_u16();
            *seen.failed.lock().unwrap().entry(code).or_default() += 1;
            return format!("answered {code}");
        }
        let body: Value = response.json().await.unwrap();
        let status = body["status"].as_str().unwrap().to_owned();
        if ["completed", "rejected", "cancelled"].contains(&status.as_str()) {
            seen.ended.fetch_add(1, Ordering::SeqCst);
            return status;
        }
        if since.as_deref() == Some(status.as_str()) {
            seen.ran_out.fetch_add(1, Ordering::SeqCst);
        }
        since = Some(status);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_waiters_see_their_orders_end_through_a_lost_listener_without_a_503() {
    let saga = Arc::new(Saga::new(start_processors(&[]).await, None, None).await);
    let sku = saga.sku("POLLED");
    saga.product(&sku, 900, ORDERS as i64).await;
    let seen = Arc::new(Seen::default());

    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..ORDERS {
        let order = saga.place("pm_card_visa", &[(&sku, 1)]).await;
        for _ in 0..WAITERS_PER_ORDER {
            let (saga, seen, order) = (saga.clone(), seen.clone(), order.clone());
            waiters.spawn(async move { follow(&saga, &order.id, &order.customer, &seen).await });
        }
    }
    // Halfway: the API's status listener goes (every API's in this suite: each reconnects).
    let total = ORDERS * WAITERS_PER_ORDER;
    wait_for(
        Duration::from_secs(120),
        "half the waiters saw their order end",
        || {
            let seen = seen.clone();
            async move { seen.ended.load(Ordering::SeqCst) >= total / 2 }
        },
    )
    .await;
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND query LIKE '%kassa_order_status%'",
    )
    .fetch_all(saga.pool())
    .await
    .unwrap();
    assert!(!cut.is_empty(), "a status listener was cut");

    let mut finals: HashMap<String, usize> = HashMap::new();
    while let Some(status) = waiters.join_next().await {
        *finals.entry(status.unwrap()).or_default() += 1;
    }
    let failed = seen.failed.lock().unwrap().clone();
    println!(
        "long polls: {total} waiters on {ORDERS} orders, listener cut halfway: finals {finals:?}, answers other than 200: {failed:?}, waits that ran out: {}",
        seen.ran_out.load(Ordering::SeqCst)
    );
    assert_eq!(
        finals.get("completed"),
        Some(&total),
        "every waiter saw its order complete"
    );
    assert!(
        failed.is_empty(),
        "no waiter was told anything but 200: {failed:?}"
    );
}
