//! Carts over HTTP against real Redis (and Postgres, Kafka for checkout): the same cart on every
//! device, sliding expiry, stale writes refused, guest merge, checkout.

use crate::common;
use crate::common::api::problem_code;

use std::time::Duration;

use serde_json::{Value, json};

struct Api {
    test: common::api::TestApi,
    skus: [String; 2],
}

impl Api {
    /// The API with cart lifetimes of `guest_ttl` and 60 s (customer).
    async fn start(guest_ttl: u64) -> Self {
        let api = common::api::start(|c| {
            c.cart_ttl = kassa_api::carts::CartTtl {
                guest: guest_ttl,
                customer: 60,
            }
        })
        .await;
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let skus = [format!("CART-{run}-A"), format!("CART-{run}-B")];
        for (sku, price) in [(&skus[0], 500_i64), (&skus[1], 250)] {
            sqlx::query("INSERT INTO api.products (sku, name, price_minor, currency) VALUES ($1, 'cart test', $2, 'EUR')")
                .bind(sku)
                .bind(price)
                .execute(&api.pool)
                .await
                .unwrap();
        }
        Self { test: api, skus }
    }

    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        customer: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut r = self.test.as_storefront(method, path);
        if let Some(c) = customer {
            r = r.header("X-Customer-Id", c);
        }
        r
    }
}

/// A new guest cart (`POST /api/carts`): its path.
async fn new_guest_cart(api: &Api) -> String {
    let created = api
        .req(reqwest::Method::POST, "/api/carts", None)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = created.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/carts/{}", body["cart_id"].as_str().unwrap())
    );
    assert_eq!(
        (body["version"].as_u64(), &body["items"]),
        (Some(1), &json!([]))
    );
    location
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_devices_share_a_customers_cart_and_a_stale_write_is_refused() {
    let api = Api::start(60).await;
    use reqwest::Method;
    let me = "/api/carts/me";
    let phone = api
        .req(Method::PUT, me, Some("frank"))
        .json(&json!({"items": {api.skus[0].as_str(): 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(phone.status().as_u16(), 200);
    let seen_by_phone = etag(&phone);

    // The laptop sees the same cart, and changes it.
    let laptop = api
        .req(Method::GET, me, Some("frank"))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&laptop), seen_by_phone);
    let body: Value = laptop.json().await.unwrap();
    assert_eq!(body["items"][0]["quantity"], 2);
    assert_eq!(
        body["items"][0]["unit_price_minor"], 500,
        "priced from the catalog"
    );
    let changed = api
        .req(Method::PUT, me, Some("frank"))
        .header("If-Match", &seen_by_phone)
        .json(&json!({"items": {api.skus[0].as_str(): 1, api.skus[1].as_str(): 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    assert_ne!(etag(&changed), seen_by_phone);

    // The phone, still at the old version, cannot overwrite it.
    let stale = api
        .req(Method::PUT, me, Some("frank"))
        .header("If-Match", &seen_by_phone)
        .json(&json!({"items": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_code(stale).await, (412, "stale_version".to_owned()));
    let blind = api
        .req(Method::PUT, me, Some("frank"))
        .json(&json!({"items": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(blind).await,
        (428, "precondition_required".to_owned())
    );
    let stale_item = api
        .req(
            Method::DELETE,
            &format!("{me}/items/{}", api.skus[1]),
            Some("frank"),
        )
        .header("If-Match", &seen_by_phone)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(stale_item).await,
        (412, "stale_version".to_owned())
    );

    // Item edits without If-Match apply to the current cart.
    let added: Value = api
        .req(Method::POST, &format!("{me}/items"), Some("frank"))
        .json(&json!({"sku": api.skus[0], "quantity": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let quantities: Vec<i64> = added["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["quantity"].as_i64().unwrap())
        .collect();
    assert_eq!(quantities, [3, 4]);
    assert_eq!(added["subtotal_minor"]["EUR"], 3 * 500 + 4 * 250);

    // Another customer has their own (empty) cart.
    let other: Value = api
        .req(Method::GET, me, Some("gina"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["items"], json!([]));
    let bad = api
        .req(
            Method::PUT,
            &format!("{me}/items/{}", api.skus[0]),
            Some("frank"),
        )
        .json(&json!({"quantity": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(bad).await,
        (400, "validation_failed".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_cart_ids_come_from_the_server_and_made_up_ones_are_refused() {
    let api = Api::start(60).await;
    use reqwest::Method;
    let made_up = [
        "/api/carts/my-cart".to_owned(),
        "/api/carts/guest-1".to_owned(),
        // The server's shape, but never issued: 128 random bits are not guessed.
        format!("/api/carts/gc_{}", uuid::Uuid::new_v4().simple()),
    ];
    for path in &made_up {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let mut request = api.req(method.clone(), path, None);
            if method == Method::PUT {
                request = request.json(&json!({"items": {api.skus[0].as_str(): 1}}));
            }
            assert_eq!(
                problem_code(request.send().await.unwrap()).await,
                (404, "not_found".to_owned()),
                "{method} {path}"
            );
        }
        let add = api
            .req(Method::POST, &format!("{path}/items"), None)
            .json(&json!({"sku": api.skus[0], "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(add.status().as_u16(), 404, "{path}/items");
    }
    let a = new_guest_cart(&api).await;
    let b = new_guest_cart(&api).await;
    assert_ne!(a, b);
    let added: Value = api
        .req(Method::POST, &format!("{a}/items"), None)
        .json(&json!({"sku": api.skus[0], "quantity": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            added["version"].as_u64(),
            added["items"][0]["quantity"].as_i64()
        ),
        (Some(2), Some(2))
    );
    // Deleted, it is gone for good.
    let deleted = api.req(Method::DELETE, &a, None).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(
        problem_code(api.req(Method::GET, &a, None).send().await.unwrap()).await,
        (404, "not_found".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cart_expires_unless_used_and_merges_into_the_customers_cart() {
    let api = Api::start(2).await;
    use reqwest::Method;
    let guest = new_guest_cart(&api).await;
    let created = api
        .req(Method::PUT, &guest, None)
        .json(&json!({"items": {api.skus[1].as_str(): 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 200);
    // Used every 0.5 s for 3 s (longer than its 2 s life): every use slides the expiry.
    let mut every = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        every.tick().await;
        assert_eq!(
            api.req(Method::GET, &guest, None)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            200,
            "kept alive by use"
        );
    }
    // Sign-in: the guest cart folds into the customer's cart.
    api.req(Method::PUT, "/api/carts/me", Some("hana"))
        .json(&json!({"items": {api.skus[1].as_str(): 2}}))
        .send()
        .await
        .unwrap();
    let guest_id = guest.trim_start_matches("/api/carts/");
    let merge = || async {
        api.req(Method::POST, "/api/carts/me/merge", Some("hana"))
            .json(&json!({"guest_cart_id": guest_id}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let merged = merge().await;
    assert_eq!(merged["items"][0]["quantity"], 3);
    let emptied: Value = api
        .req(Method::GET, &guest, None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(emptied["items"], json!([]), "the guest cart is left empty");
    let again = merge().await;
    assert_eq!(
        again["items"][0]["quantity"], 3,
        "a retried merge adds nothing twice"
    );

    // Left alone, a guest cart expires (polled, with a deadline well past its 2 s life).
    let started = std::time::Instant::now(); // before the write that starts its 2 s life
    let lonely = new_guest_cart(&api).await;
    api.req(Method::PUT, &lonely, None)
        .json(&json!({"items": {api.skus[0].as_str(): 1}}))
        .send()
        .await
        .unwrap();
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    poll.tick().await;
    // Peek without sliding: only the expiry may remove it, so wait for Redis to say it is gone.
    let settings = common::settings();
    let mut redis = redis::Client::open(settings.redis_url.expose())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pattern = format!(
        "kassa:cart:*:guest:{}",
        lonely.trim_start_matches("/api/carts/")
    );
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut redis)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the guest cart outlived its 2 s expiry"
        );
        poll.tick().await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before its time"
    );
    assert_eq!(
        problem_code(api.req(Method::GET, &lonely, None).send().await.unwrap()).await,
        (404, "not_found".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_places_the_carts_items_and_empties_it_once() {
    let api = Api::start(60).await;
    use reqwest::Method;
    api.req(Method::PUT, "/api/carts/me", Some("ivan"))
        .json(&json!({"items": {api.skus[0].as_str(): 2, api.skus[1].as_str(): 1}}))
        .send()
        .await
        .unwrap();
    let checkout = || {
        api.req(Method::POST, "/api/carts/me/checkout", Some("ivan"))
            .header("Idempotency-Key", "cart-co-1")
            .json(&json!({"customer_id": "ivan", "payment_method_id": "pm_card_visa"}))
            .send()
    };
    let first = checkout().await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let order: Value = first.json().await.unwrap();
    assert_eq!(order["total_minor"], 2 * 500 + 250);
    let cart: Value = api
        .req(Method::GET, "/api/carts/me", Some("ivan"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!([]), "emptied by the accepted order");
    let again: Value = checkout().await.unwrap().json().await.unwrap();
    assert_eq!(
        again["order_id"], order["order_id"],
        "a retry replays the order"
    );
    // The answer is stored behind the 202, after the cart is emptied: a retry in between finds
    // the key's order without its answer, and is answered with that order, not empty_cart.
    let forget_answer =
        "UPDATE api.idempotency_keys SET response_status = NULL, response_body = NULL
         WHERE storefront = $1 AND key = 'cart-co-1'";
    let forgotten = sqlx::query(forget_answer)
        .bind(&api.test.storefront_name)
        .execute(&api.test.pool)
        .await
        .unwrap();
    assert_eq!(forgotten.rows_affected(), 1);
    let pending = checkout().await.unwrap();
    assert_eq!(pending.status().as_u16(), 202, "a pending key is finished");
    let pending: Value = pending.json().await.unwrap();
    assert_eq!(pending["order_id"], order["order_id"]);
    assert_eq!(pending["total_minor"], order["total_minor"]);
    let (stored,): (Option<i32>,) = sqlx::query_as(
        "SELECT response_status FROM api.idempotency_keys WHERE storefront = $1 AND key = 'cart-co-1'",
    )
    .bind(&api.test.storefront_name)
    .fetch_one(&api.test.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        Some(202),
        "and its answer stored for the next retry"
    );
    let someone_else = api
        .req(Method::POST, "/api/carts/me/checkout", Some("ivan"))
        .header("Idempotency-Key", "cart-co-2")
        .json(&json!({"customer_id": "judy", "payment_method_id": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(someone_else).await,
        (404, "not_found".to_owned())
    );
}
