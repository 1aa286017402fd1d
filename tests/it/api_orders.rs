//! `POST /api/orders` and `GET /api/orders/{id}` over HTTP, against real Postgres, Kafka and the
//! registry: server-side prices, idempotency (replays, races, reuse), problem+json errors, auth.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::inventory::{end_offsets, read_until};
use kassa_schemas::events::checkout::CheckoutPayload;
use kassa_schemas::{Codec, Envelope, Topic};
use rdkafka::Message;
use reqwest::Method;
use serde_json::{Value, json};

/// The API on an ephemeral loopback port, with a storefront key and two products of its own.
struct Api {
    test: common::api::TestApi,
    skus: [String; 2],
    settings: kassa::settings::Settings,
    pool: sqlx::PgPool,
}

impl Api {
    async fn start() -> Self {
        let api = common::api::start(|_| {}).await;
        let (settings, pool) = (api.settings.clone(), api.pool.clone());
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let skus = [format!("API-{run}-TEE"), format!("API-{run}-MUG")];
        for (sku, price) in [(&skus[0], 1999_i64), (&skus[1], 1250)] {
            sqlx::query("INSERT INTO api.products (sku, name, price_minor, currency) VALUES ($1, 'test', $2, 'EUR')")
                .bind(sku)
                .bind(price)
                .execute(&pool)
                .await
                .unwrap();
        }
        Self {
            test: api,
            skus,
            settings,
            pool,
        }
    }

    fn order_body(&self, customer: &str) -> Value {
        json!({
            "customer_id": customer,
            "payment_method_id": "pm_card_visa",
            "lines": [
                { "sku": self.skus[0], "quantity": 2, "unit_price_minor": 1 },
                { "sku": self.skus[1], "quantity": 1, "price": 0 }
            ]
        })
    }

    async fn post(&self, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self
            .test
            .as_storefront(Method::POST, "/api/orders")
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// Posts like a storefront that honours 503 + Retry-After: the same key again, a few times.
    async fn post_retrying(&self, key: &str, body: &Value) -> reqwest::Response {
        let request = || {
            self.test
                .as_storefront(Method::POST, "/api/orders")
                .header("Idempotency-Key", key)
                .json(body)
        };
        kassa::http::send_honouring_503(request, 5)
            .await
            .expect("the API answers")
            .0
    }
}

async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_order_is_on_kafka_with_the_servers_prices() {
    let api = Api::start().await;
    let from = end_offsets(&api.settings, Topic::CheckoutRequests.name());
    let response = api.post(Some("order-1"), &api.order_body("cus_a")).await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/orders/{order_id}"));
    assert_eq!(body["status"], "accepted");
    assert_eq!(
        body["total_minor"],
        2 * 1999 + 1250,
        "priced from the catalog, not the body"
    );

    let skus: Vec<&[u8]> = api.skus.iter().map(|s| s.as_bytes()).collect();
    let messages = read_until(
        &api.settings,
        Topic::CheckoutRequests.name(),
        &from,
        Duration::from_secs(30),
        |m| skus.contains(&m.key().unwrap()),
        |n| n >= 2,
    );
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let mut lines = Vec::new();
    for m in &messages {
        let event: Envelope<CheckoutPayload> = codec.decode(m.payload().unwrap()).await.unwrap();
        let CheckoutPayload::Reserve(r) = event.payload;
        assert_eq!(m.key(), Some(r.sku.as_bytes()), "keyed by SKU");
        assert_eq!(r.order_id, order_id);
        lines.push((
            r.line_index,
            r.sku,
            r.quantity,
            r.unit_price_minor,
            r.line_count,
            r.customer_id,
            r.currency,
        ));
    }
    lines.sort();
    assert_eq!(
        lines[0],
        (
            0,
            api.skus[0].clone(),
            2,
            1999,
            2,
            "cus_a".to_owned(),
            "EUR".to_owned()
        )
    );
    assert_eq!(
        lines[1],
        (
            1,
            api.skus[1].clone(),
            1,
            1250,
            2,
            "cus_a".to_owned(),
            "EUR".to_owned()
        )
    );

    // The customer sees it; anyone else gets 404.
    let get = |customer: &'static str| {
        api.test
            .as_storefront(Method::GET, &location)
            .header("X-Customer-Id", customer)
            .send()
    };
    let own: Value = get("cus_a").await.unwrap().json().await.unwrap();
    // `accepted`, or later if processors of another test run meanwhile.
    assert!(own["status"].is_string(), "{own}");
    assert_eq!(own["order_id"], order_id.as_str());
    problem(get("cus_b").await.unwrap(), 404, "not_found").await;
    // Without a customer, or with a malformed one, the request itself is wrong.
    let anonymous = api
        .test
        .as_storefront(Method::GET, &location)
        .send()
        .await
        .unwrap();
    problem(anonymous, 400, "validation_failed").await;
    problem(get("cus b").await.unwrap(), 400, "validation_failed").await;
    let unknown = api
        .test
        .as_storefront(
            Method::GET,
            &format!("/api/orders/{}", uuid::Uuid::new_v4()),
        )
        .header("X-Customer-Id", "cus_a")
        .send()
        .await
        .unwrap();
    problem(unknown, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_and_fifty_racing_requests_make_one_order() {
    let api = Api::start().await;
    let from = end_offsets(&api.settings, Topic::CheckoutRequests.name());
    let body = api.order_body("cus_race");
    // A racer may be told 503 (another holds the key mid-flight) and retries as told.
    let answers =
        futures::future::join_all((0..50).map(|_| api.post_retrying("race-1", &body))).await;
    let mut ids = HashSet::new();
    for response in answers {
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ids.len(),
        1,
        "one order id for 50 identical requests: {ids:?}"
    );
    let order_id = ids.into_iter().next().unwrap();
    let replay: Value = api.post(Some("race-1"), &body).await.json().await.unwrap();
    assert_eq!(
        replay["order_id"],
        order_id.as_str(),
        "a later replay answers the same"
    );
    let orders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api.orders WHERE customer_id = 'cus_race' AND lines->0->>'sku' = $1",
    )
    .bind(&api.skus[0])
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(orders, 1);

    // Racers may each have sent the lines; they are the same events (same ids), which inventory's inbox drops.
    let skus: Vec<&[u8]> = api.skus.iter().map(|s| s.as_bytes()).collect();
    let seen = std::cell::RefCell::new(HashSet::new());
    let messages = read_until(
        &api.settings,
        Topic::CheckoutRequests.name(),
        &from,
        Duration::from_secs(30),
        |m| {
            let mine = skus.contains(&m.key().unwrap());
            if mine {
                seen.borrow_mut().insert(m.key().unwrap().to_vec());
            }
            mine
        },
        |_| seen.borrow().len() == 2,
    );
    let codec = Codec::new(&api.settings.schema_registry_url).unwrap();
    let mut event_ids = std::collections::HashMap::new();
    for m in &messages {
        let event: Envelope<CheckoutPayload> = codec.decode(m.payload().unwrap()).await.unwrap();
        assert_eq!(event.correlation_id, order_id);
        let first = *event_ids
            .entry(m.key().unwrap().to_vec())
            .or_insert(event.event_id);
        assert_eq!(
            first, event.event_id,
            "every copy of a line is the same event"
        );
    }
    assert_eq!(event_ids.len(), 2, "both lines were sent");

    let mut other = body.clone();
    other["lines"][0]["quantity"] = json!(3);
    problem(
        api.post(Some("race-1"), &other).await,
        422,
        "idempotency_key_reused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_problem_json_with_its_code() {
    let api = Api::start().await;
    let body = api.order_body("cus_err");
    let http = reqwest::Client::new();
    let url = format!("{}/api/orders", api.test.base);

    let p = problem(api.post(None, &body).await, 400, "validation_failed").await;
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key");
    let mut bad = body.clone();
    bad["lines"][0]["quantity"] = json!(0);
    bad["customer_id"] = json!("");
    let p = problem(api.post(Some("e-1"), &bad).await, 400, "validation_failed").await;
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["customer_id", "lines[0].quantity"]);

    let mut unknown = body.clone();
    unknown["lines"][1]["sku"] = json!("NO-SUCH-SKU");
    problem(api.post(Some("e-2"), &unknown).await, 422, "unknown_sku").await;
    // The failed request did not burn its key: the corrected one goes through.
    assert_eq!(api.post(Some("e-2"), &body).await.status().as_u16(), 202);

    let no_auth = http
        .post(&url)
        .json(&body)
        .header("Idempotency-Key", "e-3")
        .send()
        .await
        .unwrap();
    problem(no_auth, 401, "unauthorized").await;
    let wrong_key = api
        .test
        .request(Method::POST, "/api/orders", "ks_sf_nope")
        .json(&body)
        .header("Idempotency-Key", "e-3")
        .send()
        .await
        .unwrap();
    problem(wrong_key, 401, "unauthorized").await;
    let text = api
        .test
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", "e-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    problem(text, 415, "unsupported_media_type").await;
    let broken = api
        .test
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", "e-5")
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await
        .unwrap();
    problem(broken, 400, "malformed_request").await;
    let huge = api
        .test
        .as_storefront(Method::POST, "/api/orders")
        .header("Idempotency-Key", "e-6")
        .header("content-type", "application/json")
        .body(vec![b' '; 200_000])
        .send()
        .await
        .unwrap();
    problem(huge, 413, "payload_too_large").await;
    let nowhere = http
        .get(format!("{}/api/nowhere", api.test.base))
        .send()
        .await
        .unwrap();
    problem(nowhere, 404, "not_found").await;
    let wrong_method = http.delete(&url).send().await.unwrap();
    problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_and_rate_limits() {
    let api = common::api::start(|c| {
        c.rate_limits = kassa_api::limits::RateLimits {
            storefront_per_second: 1000,
            customer_per_second: 1,
            unauthenticated_per_second: 20,
        }
    })
    .await;
    let base = &api.base;
    let http = reqwest::Client::new();

    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready: Value = http
        .get(format!("{base}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"],
        json!({"postgres": "ok", "kafka": "ok", "redis": "ok"}),
        "{ready}"
    );

    // One new order a second per customer, bursts of 5: a sixth at once is refused. Sent one after
    // another, a slow request may let a token come back, so send until refused (a bounded number).
    let mut answered = Vec::new();
    let mut refused = None;
    for i in 0..12 {
        let body = json!({"customer_id": "cus_busy", "payment_method_id": "pm_card_visa", "lines": [{"sku": "NO-SUCH", "quantity": 1}]});
        let r = api
            .as_storefront(Method::POST, "/api/orders")
            .header("Idempotency-Key", format!("rl-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            refused = Some(r);
            break;
        }
        answered.push(r.status().as_u16());
    }
    assert!(
        answered.len() >= 5,
        "the burst of 5 is let through first: {answered:?}"
    );
    assert!(
        answered.iter().all(|s| *s == 422),
        "within the limit: answered (unknown SKU here): {answered:?}"
    );
    let last =
        refused.expect("twelve new orders in a row from one customer are refused at some point");
    assert!(
        last.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    problem(last, 429, "rate_limited").await;

    // Every request was counted, by route template (never the raw path) and status.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needle: &[&str]| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("kassa_http_requests_total") && needle.iter().all(|n| l.contains(n))
            })
            .map(str::to_owned)
    };
    let refused = line(&["route=\"/api/orders\"", "status=\"429\""]).expect("the 429 is counted");
    assert!(
        refused
            .split_whitespace()
            .last()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0,
        "{refused}"
    );
    assert!(
        line(&["route=\"/ready\"", "status=\"200\""]).is_some(),
        "{metrics}"
    );
    assert!(
        metrics.contains("kassa_http_request_duration_seconds_bucket"),
        "latency histogram"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let api = common::api::start(|_| {}).await;
    let http = reqwest::Client::new();
    let spec: Value = http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths: HashSet<String> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    // Every route the router serves (read from its source: the API's and the operator's views
    // mounted beside them) is in the generated document.
    let router = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/api/src/lib.rs"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/ops/src/admin_api.rs"),
    ]
    .map(|file| std::fs::read_to_string(file).unwrap())
    .concat();
    let routes: Vec<&str> = router
        .split(".route(")
        .skip(1)
        .filter_map(|r| r.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(routes.len() >= 23, "found the router's routes: {routes:?}");
    assert!(routes.contains(&"/admin/dlq/{group}/{partition}/{offset}/redrive"));
    for route in routes
        .iter()
        .filter(|r| !["/openapi.json", "/docs"].contains(r))
    {
        assert!(
            paths.contains(*route),
            "{route} is served but not in /openapi.json"
        );
    }
    assert!(spec["components"]["securitySchemes"]["storefront"].is_object());
    assert!(spec["components"]["schemas"]["Problem"]["properties"]["code"].is_object());
    let post = &spec["paths"]["/api/orders"]["post"];
    assert!(
        post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key")
    );
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderRequest"
    );
    let docs = http.get(format!("{}/docs", api.base)).send().await.unwrap();
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
}
