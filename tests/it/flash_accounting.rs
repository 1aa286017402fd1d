//! Exact flash-sale accounting, end to end (the API, the four processors, real Postgres, Kafka,
//! the registry and Redis): each admitted unit leaves the sale once and comes back at most once,
//! to the sale it left — when inventory rejects its line, when the order's store or publish
//! fails half-way, and when its hold is released after the sale was started again.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::proxy::{Fault, FaultProxy};
use common::saga::{Placed, Saga, start_processors, wait_for};
use kassa_processors::inventory::flash::GiveBack;
use kassa_schemas::flash_keys::{bought_key, given_key};
use reqwest::Method;
use serde_json::{Value, json};

const DONE: Duration = Duration::from_secs(60);

/// `url` with its host and port replaced by `proxy`'s, and the address it named.
fn through(url: &str, proxy: Option<SocketAddr>) -> (String, SocketAddr) {
    let mut parsed = reqwest::Url::parse(url).expect("a URL");
    let upstream: SocketAddr = format!(
        "{}:{}",
        parsed.host_str().expect("a host"),
        parsed.port().expect("a port")
    )
    .parse()
    .expect("a loopback address");
    if let Some(proxy) = proxy {
        parsed.set_port(Some(proxy.port())).expect("a port");
    }
    (parsed.to_string(), upstream)
}

/// A proxy in front of the service `url` names, starting with `fault`; and `url` through it.
async fn proxied(url: &str, fault: Fault) -> (FaultProxy, String) {
    let (_, upstream) = through(url, None);
    let proxy = FaultProxy::start(upstream, fault).await;
    let (url, _) = through(url, Some(proxy.addr));
    (proxy, url)
}

/// Starts a sale of `tokens` units of `sku` (holds of 120 s; `limit` units per customer).
async fn start_sale(saga: &Saga, sku: &str, tokens: i64, limit: i32) {
    let r = saga
        .api
        .as_admin(Method::PUT, &format!("/admin/flash-sales/{sku}"))
        .json(&json!({"tokens": tokens, "hold_seconds": 120, "per_customer_limit": limit}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "sale of {sku} started");
}

/// Tokens left in `sku`'s sale.
async fn tokens_left(saga: &Saga, sku: &str) -> i64 {
    saga.api.flash_tokens(sku).await
}

async fn redis(saga: &Saga) -> redis::aio::MultiplexedConnection {
    redis::Client::open(saga.api.settings.redis_url.expose())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Units `customer` holds or bought in `sku`'s sales, as the per-customer limit counts them.
async fn counted(saga: &Saga, sku: &str, customer: &str) -> i64 {
    let n: Option<i64> = redis::cmd("GET")
        .arg(bought_key(sku, customer))
        .query_async(&mut redis(saga).await)
        .await
        .unwrap();
    n.unwrap_or(0)
}

/// Waits until inventory has given back the units of `order`'s first line (its marker in Redis).
async fn wait_given_back(saga: &Saga, sku: &str, order: &str) {
    let marker = given_key(sku, &GiveBack::id_of(order, 0).to_string());
    let conn = redis(saga).await;
    wait_for(DONE, &format!("units of {order} given back"), || {
        let (mut conn, marker) = (conn.clone(), marker.clone());
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&marker)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    })
    .await;
}

/// The sale's settings for these tests' processors (the defaults).
async fn saga_with(adjust: impl FnOnce(&mut kassa_api::ApiConfig)) -> Saga {
    Saga::with(start_processors(&[]).await, adjust).await
}

#[tokio::test(flavor = "multi_thread")]
async fn units_of_a_rejected_line_go_back_to_the_sale_and_the_customers_count() {
    let saga = saga_with(|_| {}).await;
    let sku = saga.sku("FLASH-REJECTED");
    saga.product(&sku, 1500, 1).await;
    start_sale(&saga, &sku, 10, 2).await;

    // The gate admits two units; inventory has one: the line is rejected.
    let customer = format!("cus_{}_rejected", saga.run);
    let order = Placed {
        id: saga
            .place_for(&customer, "pm_card_visa", &[(&sku, 2)])
            .await,
        customer: customer.clone(),
    };
    assert_eq!(tokens_left(&saga, &sku).await, 8, "two units admitted");
    let rejected = saga.wait_status(&order, "rejected", DONE).await;
    assert_eq!(rejected["reason"], "out_of_stock", "{rejected}");

    wait_given_back(&saga, &sku, &order.id).await;
    assert_eq!(
        tokens_left(&saga, &sku).await,
        10,
        "both units back in the sale"
    );
    assert_eq!(
        counted(&saga, &sku, &customer).await,
        0,
        "nothing counts against the customer's limit"
    );
    // So they may buy up to their limit again: the one unit in stock.
    let second = Placed {
        id: saga
            .place_for(&customer, "pm_card_visa", &[(&sku, 1)])
            .await,
        customer,
    };
    saga.wait_status(&second, "completed", DONE).await;
    assert_eq!(tokens_left(&saga, &sku).await, 9, "the unit sold stays out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_cut_off_after_its_commit_keeps_the_units_with_the_stored_order() {
    // The customer id appears first in the statement that stores the order: the proxy cuts that
    // statement's answer, so the API cannot tell whether the order was stored (it was).
    let run = uuid::Uuid::new_v4().simple().to_string();
    let customer: &'static str = Box::leak(format!("cus_cut_{run}").into_boxed_str());
    let settings = common::setup().await;
    let (proxy, database_url) =
        proxied(settings.database_url.expose(), Fault::CutAfter(customer)).await;
    let saga = saga_with(|c| {
        c.database_url = kassa_schemas::secret::Secret::new(database_url);
    })
    .await;
    let sku = saga.sku("FLASH-CUT");
    saga.product(&sku, 1500, 5).await;
    start_sale(&saga, &sku, 10, 0).await;

    let order = Placed {
        id: saga
            .place_for(customer, "pm_card_threeDSecure2Required", &[(&sku, 2)])
            .await,
        customer: customer.to_owned(),
    };
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the store was cut off"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api.orders WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(saga.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1, "the cut came after the commit: one order stored");
    assert_eq!(
        tokens_left(&saga, &sku).await,
        8,
        "the stored order's units stay out of the sale (they were given back before)"
    );

    // The order goes ahead; cancelled, its two units come back, once.
    saga.wait_status(&order, "action_required", DONE).await;
    saga.cancel(&order).await;
    saga.wait_status(&order, "cancelled", DONE).await;
    wait_given_back(&saga, &sku, &order.id).await;
    assert_eq!(tokens_left(&saga, &sku).await, 10, "back to the sale once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_whose_publish_failed_is_published_later_and_its_units_come_back_once() {
    let settings = common::setup().await;
    let (registry, registry_url) = proxied(&settings.schema_registry_url, Fault::Pass).await;
    let saga = saga_with(|c| c.registry_url = registry_url).await;
    let sku = saga.sku("FLASH-UNPUBLISHED");
    saga.product(&sku, 1500, 0).await;
    start_sale(&saga, &sku, 10, 0).await;

    // The registry fails while the order is placed: stored, not published, answered 503.
    registry.set(Fault::Status(503));
    let customer = format!("cus_{}_unpublished", saga.run);
    let body = json!({"customer_id": customer, "payment_method_id": "pm_card_visa",
                      "lines": [{"sku": sku, "quantity": 3}]});
    let place = || {
        saga.api
            .as_storefront(Method::POST, "/api/orders")
            .header("Idempotency-Key", format!("unpublished-{}", saga.run))
            .json(&body)
            .send()
    };
    let refused = place().await.unwrap();
    assert_eq!(refused.status(), 503, "Kafka never got the order");
    let order_id: uuid::Uuid =
        sqlx::query_scalar("SELECT order_id FROM api.orders WHERE customer_id = $1")
            .bind(&customer)
            .fetch_one(saga.pool())
            .await
            .expect("the order was stored");
    assert_eq!(
        tokens_left(&saga, &sku).await,
        7,
        "its units are out of the sale"
    );

    // The customer never retries; the registry comes back; the order goes ahead by itself.
    registry.set(Fault::Pass);
    let order = Placed {
        id: order_id.to_string(),
        customer,
    };
    let rejected = saga
        .wait_status(&order, "rejected", Duration::from_secs(90))
        .await;
    assert_eq!(rejected["reason"], "out_of_stock", "{rejected}");
    wait_given_back(&saga, &sku, &order.id).await;
    assert_eq!(
        tokens_left(&saga, &sku).await,
        10,
        "its units are back, once"
    );

    // A late retry of the request gets the order it placed, and takes nothing.
    let retried = place().await.unwrap();
    assert_eq!(retried.status(), 202);
    let answer: Value = retried.json().await.unwrap();
    assert_eq!(answer["order_id"], order.id.as_str());
    assert_eq!(tokens_left(&saga, &sku).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_released_after_the_sale_restarted_does_not_credit_the_new_sale() {
    let saga = saga_with(|_| {}).await;
    let sku = saga.sku("FLASH-RESTART");
    saga.product(&sku, 1500, 10).await;
    start_sale(&saga, &sku, 10, 0).await;

    // Held in the first sale: the order waits for 3-D Secure.
    let first = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 2)])
        .await;
    saga.wait_status(&first, "action_required", DONE).await;
    assert_eq!(tokens_left(&saga, &sku).await, 8);

    // The operator starts the sale again with 5 units; then the first order is cancelled.
    start_sale(&saga, &sku, 5, 0).await;
    saga.cancel(&first).await;
    saga.wait_status(&first, "cancelled", DONE).await;
    wait_given_back(&saga, &sku, &first.id).await;
    assert_eq!(
        tokens_left(&saga, &sku).await,
        5,
        "units of the first sale do not swell the second"
    );

    // Units of the second sale do come back to it.
    let second = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 2)])
        .await;
    saga.wait_status(&second, "action_required", DONE).await;
    assert_eq!(tokens_left(&saga, &sku).await, 3);
    saga.cancel(&second).await;
    saga.wait_status(&second, "cancelled", DONE).await;
    wait_given_back(&saga, &sku, &second.id).await;
    assert_eq!(tokens_left(&saga, &sku).await, 5);
}
