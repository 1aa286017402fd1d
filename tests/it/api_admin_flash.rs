//! Admin routes, the flash-sale gate, and cancel / hold renewal over HTTP, against real Postgres,
//! Kafka, the registry and Redis.

use crate::common;
use crate::common::api::problem_code;

use std::time::Duration;

use common::inventory::{end_offsets, read_until};
use kassa_schemas::events::inventory::InventoryCommand;
use kassa_schemas::events::orders::OrderRequest;
use kassa_schemas::{Codec, Envelope, Topic};
use rdkafka::Message;
use serde_json::{Value, json};

struct Api {
    test: common::api::TestApi,
    settings: kassa::settings::Settings,
    run: String,
}

impl Api {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut kassa_api::ApiConfig)) -> Self {
        let api = common::api::start(adjust).await;
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Self {
            settings: api.settings.clone(),
            run,
            test: api,
        }
    }

    async fn admin_put(&self, path: &str, body: Value) -> reqwest::Response {
        self.test
            .as_admin(reqwest::Method::PUT, path)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn product(&self, name: &str, price: i64) -> String {
        let sku = format!("AF-{}-{name}", self.run);
        let r = self
            .admin_put(
                &format!("/admin/products/{sku}"),
                json!({"name": name, "price_minor": price, "currency": "EUR"}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 200);
        sku
    }

    fn order_request(
        &self,
        key: &str,
        customer: &str,
        sku: &str,
        quantity: i32,
    ) -> reqwest::RequestBuilder {
        self.test
            .as_storefront(reqwest::Method::POST, "/api/orders")
            .header("Idempotency-Key", key)
            .json(&json!({"customer_id": customer, "payment_method_id": "pm_card_visa", "lines": [{"sku": sku, "quantity": quantity}]}))
    }

    async fn order(
        &self,
        key: &str,
        customer: &str,
        sku: &str,
        quantity: i32,
    ) -> reqwest::Response {
        self.order_request(key, customer, sku, quantity)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flash_sale_of_100_admits_exactly_100_of_1000_concurrent_buyers() {
    let api = Api::start().await;
    let sku = api.product("DROP", 14900).await;
    let r = api
        .admin_put(
            &format!("/admin/flash-sales/{sku}"),
            json!({"tokens": 100, "hold_seconds": 120, "per_customer_limit": 0}),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let from = end_offsets(&api.settings, Topic::CheckoutRequests.name());

    let attempts = (0..1000).map(|i| {
        let (api, sku) = (&api, &sku);
        async move {
            let started = std::time::Instant::now();
            // A buyer told 503 (the burst outran the database pool) retries with the same key
            // after Retry-After, as a storefront would; the key makes the retry the same order.
            let (response, _) = kassa::http::send_honouring_503(
                || api.order_request(&format!("flash-{i}"), &format!("buyer-{i}"), sku, 1),
                5,
            )
            .await
            .expect("the API answers");
            (problem_code(response).await, started.elapsed())
        }
    });
    let results = futures::future::join_all(attempts).await;
    let admitted = results.iter().filter(|((s, _), _)| *s == 202).count();
    let sold_out = results
        .iter()
        .filter(|((s, c), _)| *s == 409 && c == "sold_out")
        .count();
    let mut others: Vec<_> = results
        .iter()
        .map(|(o, _)| o.clone())
        .filter(|(s, c)| *s != 202 && !(*s == 409 && c == "sold_out"))
        .collect();
    others.dedup();
    assert_eq!(
        (admitted, sold_out),
        (100, 900),
        "every buyer answered: admitted or sold out; other answers: {others:?}"
    );

    // Only the admitted reached Kafka: exactly 100 requests for this SKU.
    let to = end_offsets(&api.settings, Topic::CheckoutRequests.name());
    let partition = kassa_schemas::kafka::java_partition(sku.as_bytes(), to.len() as u32) as i32;
    let wanted = (to[&partition] - from[&partition]) as usize;
    let only = std::collections::HashMap::from([(partition, from[&partition])]);
    let messages = read_until(
        &api.settings,
        Topic::CheckoutRequests.name(),
        &only,
        Duration::from_secs(30),
        |_| true,
        |n| n >= wanted,
    );
    let ours = messages
        .iter()
        .filter(|m| m.key() == Some(sku.as_bytes()))
        .count();
    assert_eq!(ours, 100);
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let first: Envelope<kassa_schemas::events::checkout::CheckoutPayload> = codec
        .decode(
            messages
                .iter()
                .find(|m| m.key() == Some(sku.as_bytes()))
                .unwrap()
                .payload()
                .unwrap(),
        )
        .await
        .unwrap();
    let kassa_schemas::events::checkout::CheckoutPayload::Reserve(r) = first.payload;
    assert!(
        r.flash_sale,
        "marked as a flash-sale line, so inventory gives tokens back on release"
    );
    assert_eq!(r.hold_seconds, 120, "the sale's hold");

    assert_eq!(api.test.flash_tokens(&sku).await, 0);
    // Sold out now, yet an admitted buyer's retry still gets its order back, not `sold_out`.
    let lucky = results.iter().position(|((s, _), _)| *s == 202).unwrap();
    let retry = api
        .order(
            &format!("flash-{lucky}"),
            &format!("buyer-{lucky}"),
            &sku,
            1,
        )
        .await;
    assert_eq!(
        retry.status().as_u16(),
        202,
        "an admitted order's replay is answered, never turned away"
    );
    let mut slowest_sold_out = results
        .iter()
        .filter(|((s, _), _)| *s == 409)
        .map(|(_, t)| *t)
        .collect::<Vec<_>>();
    slowest_sold_out.sort();
    println!(
        "flash sale: 100 admitted, 900 sold out; sold-out answer p50 {:?}, max {:?} (1,000 at once, debug build)",
        slowest_sold_out[450], slowest_sold_out[899]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_customer_limit_holds_and_a_stopped_sale_stops_gating() {
    let api = Api::start().await;
    let sku = api.product("LIMITED", 5000).await;
    api.admin_put(
        &format!("/admin/flash-sales/{sku}"),
        json!({"tokens": 10, "hold_seconds": 60, "per_customer_limit": 2}),
    )
    .await;
    assert_eq!(
        problem_code(api.order("l-1", "alice", &sku, 2).await)
            .await
            .0,
        202
    );
    assert_eq!(
        problem_code(api.order("l-2", "alice", &sku, 1).await).await,
        (409, "purchase_limit".to_owned())
    );
    assert_eq!(
        problem_code(api.order("l-3", "bob", &sku, 3).await).await,
        (409, "purchase_limit".to_owned())
    );
    assert_eq!(
        problem_code(api.order("l-4", "bob", &sku, 2).await).await.0,
        202
    );
    assert_eq!(
        problem_code(api.order("l-5", "carol", &sku, 11).await).await,
        (409, "sold_out".to_owned())
    );
    let stop = api
        .test
        .as_admin(
            reqwest::Method::DELETE,
            &format!("/admin/flash-sales/{sku}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status().as_u16(), 204);
    assert_eq!(
        problem_code(api.order("l-6", "alice", &sku, 5).await)
            .await
            .0,
        202,
        "no sale, no gate: inventory decides"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_need_an_admin_key_and_write_through_kafka() {
    let api = Api::start().await;
    let sku = api.product("ADM", 700).await;
    // A storefront key is not an admin key, and the other way round.
    let as_storefront = api
        .test
        .as_storefront(reqwest::Method::PUT, &format!("/admin/products/{sku}"))
        .json(&json!({"name": "x", "price_minor": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(as_storefront).await,
        (401, "unauthorized".to_owned())
    );
    let as_admin = api.test.as_admin(reqwest::Method::POST, "/api/orders").header("Idempotency-Key", "a-1")
        .json(&json!({"customer_id": "c", "payment_method_id": "pm_card_visa", "lines": [{"sku": sku, "quantity": 1}]})).send().await.unwrap();
    assert_eq!(
        problem_code(as_admin).await,
        (401, "unauthorized".to_owned())
    );
    let invalid = api
        .admin_put(
            &format!("/admin/products/{sku}"),
            json!({"name": "", "price_minor": -1, "currency": "eur"}),
        )
        .await;
    assert_eq!(
        problem_code(invalid).await,
        (400, "validation_failed".to_owned())
    );

    // A price change applies to the next order.
    api.admin_put(
        &format!("/admin/products/{sku}"),
        json!({"name": "ADM", "price_minor": 800, "currency": "EUR"}),
    )
    .await;
    let order: Value = api
        .order("a-2", "dora", &sku, 2)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["total_minor"], 1600);

    // Stock goes to inventory as a command, keyed by SKU.
    let from = end_offsets(&api.settings, Topic::InventoryCommands.name());
    for body in [json!({"restock": 5}), json!({"set": 40})] {
        let r = api
            .test
            .as_admin(reqwest::Method::POST, &format!("/admin/stock/{sku}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    let bad = api
        .test
        .as_admin(reqwest::Method::POST, &format!("/admin/stock/{sku}"))
        .json(&json!({"restock": 5, "set": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(bad).await,
        (400, "validation_failed".to_owned())
    );
    let messages = read_until(
        &api.settings,
        Topic::InventoryCommands.name(),
        &from,
        Duration::from_secs(30),
        |m| m.key() == Some(sku.as_bytes()),
        |n| n >= 2,
    );
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let mut kinds = Vec::new();
    for m in &messages {
        let command: Envelope<InventoryCommand> = codec.decode(m.payload().unwrap()).await.unwrap();
        kinds.push(match command.payload {
            InventoryCommand::Restock(r) => format!("restock {}", r.quantity),
            InventoryCommand::SetStock(s) => format!("set {}", s.on_hand),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(kinds, ["restock 5", "set 40"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_hold_renewal_go_to_the_orders_processor_for_the_owner_only() {
    let api = Api::start().await;
    let sku = api.product("CAN", 1000).await;
    let order: Value = api
        .order("c-1", "erin", &sku, 1)
        .await
        .json()
        .await
        .unwrap();
    let id = order["order_id"].as_str().unwrap().to_owned();
    let from = end_offsets(&api.settings, Topic::OrdersRequests.name());
    let path = format!("/api/orders/{id}");

    let stranger = api
        .test
        .as_storefront(reqwest::Method::DELETE, &path)
        .header("X-Customer-Id", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(problem_code(stranger).await, (404, "not_found".to_owned()));
    let hold = api
        .test
        .as_storefront(reqwest::Method::POST, &format!("{path}/hold"))
        .header("X-Customer-Id", "erin")
        .json(&json!({"hold_seconds": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(hold.status().as_u16(), 202);
    let too_long = api
        .test
        .as_storefront(reqwest::Method::POST, &format!("{path}/hold"))
        .header("X-Customer-Id", "erin")
        .json(&json!({"hold_seconds": 999999}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(too_long).await,
        (400, "validation_failed".to_owned())
    );
    let cancel = api
        .test
        .as_storefront(reqwest::Method::DELETE, &path)
        .header("X-Customer-Id", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 202);

    let messages = read_until(
        &api.settings,
        Topic::OrdersRequests.name(),
        &from,
        Duration::from_secs(30),
        |m| m.key() == Some(id.as_bytes()),
        |n| n >= 2,
    );
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let mut got = Vec::new();
    for m in &messages {
        let request: Envelope<OrderRequest> = codec.decode(m.payload().unwrap()).await.unwrap();
        got.push(match request.payload {
            OrderRequest::HoldRenewalRequested(h) => {
                format!("hold {} by {}", h.hold_seconds, h.customer_id)
            }
            OrderRequest::CancelRequested(c) => format!("cancel by {}", c.customer_id),
            OrderRequest::RefundRequested(r) => format!("refund {}", r.amount_minor),
        });
    }
    assert_eq!(
        got,
        ["hold 600 by erin", "cancel by erin"],
        "in order, on the order's partition"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_at_start_fails_open_and_the_gate_holds_once_redis_is_back() {
    let mut redis = common::redis_server::PrivateRedis::reserve();
    let url = redis.url();
    let api = Api::start_with(move |config| config.redis_url = url).await;
    let sku = api.product("COMEBACK", 1000).await;
    let sale = json!({"tokens": 2, "hold_seconds": 60, "per_customer_limit": 5});
    let path = format!("/admin/flash-sales/{sku}");

    // Redis is down: no sale can be set up, and orders are not refused for it (fail open).
    assert_eq!(
        problem_code(api.admin_put(&path, sale.clone()).await)
            .await
            .0,
        503
    );
    assert_eq!(
        problem_code(api.order("down-1", "dora", &sku, 1).await)
            .await
            .0,
        202
    );

    // Redis comes up: the API connects by itself, and from then on the gate holds.
    redis.start();
    let started = std::time::Instant::now();
    loop {
        let status = api.admin_put(&path, sale.clone()).await.status();
        if status.is_success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the API never reconnected to Redis: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll the admin route until the deadline
    }
    assert_eq!(
        problem_code(api.order("up-1", "erin", &sku, 1).await)
            .await
            .0,
        202
    );
    assert_eq!(
        problem_code(api.order("up-2", "finn", &sku, 1).await)
            .await
            .0,
        202
    );
    assert_eq!(
        problem_code(api.order("up-3", "gina", &sku, 1).await).await,
        (409, "sold_out".to_owned()),
        "two tokens, two buyers: the third is turned away"
    );
}
