//! The whole checkout for end-to-end tests: the API in the test process, the four processors as
//! child processes, and what a user would look at: `POST /api/orders`, `GET /api/orders/{id}`
//! (long polling), stock, payments at the provider, the audit trail.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::api::TestApi;
use super::processes::Component;
use super::turns::{RUNNING as PROCESSORS, Turn};

/// Takes a turn with the four processors running with `env` (see `turns`): the set is started
/// (after its backlog is skipped) unless it already runs with these settings.
pub async fn start_processors(env: &[(&str, &str)]) -> Turn {
    super::turns::take(env, true).await
}

/// Skips `group`'s backlog in the suite's own database and namespace (`scripts/dev env --test`)
/// once no instance of it is consuming: the skip is refused while members are live, and a
/// statically identified member of a killed processor stays listed until its session times out.
pub async fn skip_backlog(
    settings: &kassa::settings::Settings,
    pool: &PgPool,
    group: kassa_processors::ConsumerGroup,
) {
    let request = kassa::offsets::MoveRequest {
        moved_by: "kassa tests".into(),
        reason: "tests start a set of processors without the backlog earlier tests left".into(),
        force: false,
    };
    let started = Instant::now();
    loop {
        match kassa::offsets::skip_to_end(settings, pool, group, &request).await {
            Ok(_) => return,
            Err(kassa::offsets::SkipError::LiveMembers { members, .. })
                if started.elapsed() < Duration::from_secs(60) =>
            {
                eprintln!(
                    "waiting for {} member(s) of {} to leave before skipping its backlog",
                    members.len(),
                    group.name()
                );
                tokio::time::sleep(Duration::from_millis(500)).await; // poll the group until it is empty or the deadline
            }
            Err(e) => panic!("skip the backlog of {}: {e}", group.name()),
        }
    }
}

/// Runs `f` on the running processor `name` (to kill or restart it).
pub fn with_processor(name: &str, f: impl FnOnce(&mut Component)) {
    let mut running = PROCESSORS.lock().unwrap_or_else(|p| p.into_inner());
    let component = running
        .iter_mut()
        .find(|c| c.name == name)
        .expect("processor running");
    f(component);
}

/// Stops the processor `name` (SIGTERM) and forgets it; `start_processor` brings it back.
pub fn stop_processor(name: &str) {
    let mut running = PROCESSORS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(index) = running.iter().position(|c| c.name == name) {
        let status = running.remove(index).terminate(Duration::from_secs(30));
        assert!(status.success(), "{name} exited with {status:?}");
    }
}

/// Starts the processor `name` with `env` (after `stop_processor`).
pub fn start_processor(name: &str, env: &[(&str, &str)]) {
    PROCESSORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Component::start(name, env));
}

/// One saga test's view: its own API, its own SKUs and customers.
pub struct Saga {
    /// The API and its keys.
    pub api: TestApi,
    /// HTTP client.
    pub http: reqwest::Client,
    /// A prefix unique to this test (SKUs, customers).
    pub run: String,
    /// 503 answers met (and retried) placing orders.
    pub unavailable: std::sync::atomic::AtomicUsize,
    /// The turn at the processors this test holds.
    _turn: Turn,
}

/// An order as placed: its id and customer.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Order id.
    pub id: String,
    /// Customer.
    pub customer: String,
}

impl Saga {
    /// An API for this test (webhooks signed with `webhook_secret`, holds of `hold_seconds`).
    pub async fn new(turn: Turn, webhook_secret: Option<&str>, hold_seconds: Option<i32>) -> Self {
        let secret = webhook_secret.map(kassa_api::webhooks::Secret::new);
        Self::with(turn, |c| {
            c.stripe_webhook_secret = secret;
            if let Some(hold) = hold_seconds {
                c.hold_seconds = hold;
            }
        })
        .await
    }

    /// An API for this test with its settings changed by `adjust` (e.g. to reach a service
    /// through a fault proxy).
    pub async fn with(turn: Turn, adjust: impl FnOnce(&mut kassa_api::ApiConfig)) -> Self {
        let api = super::api::start(|c| {
            c.rate_limits.customer_per_second = 1_000;
            adjust(c);
        })
        .await;
        let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_uppercase();
        Self {
            api,
            http: reqwest::Client::new(),
            run,
            unavailable: Default::default(),
            _turn: turn,
        }
    }

    /// The database.
    pub fn pool(&self) -> &PgPool {
        &self.api.pool
    }

    /// A SKU name unique to this test.
    pub fn sku(&self, name: &str) -> String {
        format!("T-{}-{name}", self.run)
    }

    /// Creates product `sku` at `price_minor` EUR with `on_hand` units, and waits until
    /// inventory has counted them.
    pub async fn product(&self, sku: &str, price_minor: i64, on_hand: i64) {
        let put = self
            .api
            .as_admin(Method::PUT, &format!("/admin/products/{sku}"))
            .json(&json!({"name": sku, "price_minor": price_minor, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "product {sku}: {}", put.status());
        let counted = self
            .api
            .as_admin(Method::POST, &format!("/admin/stock/{sku}"))
            .json(&json!({"set": on_hand}))
            .send()
            .await
            .unwrap();
        assert_eq!(counted.status(), 202, "stock {sku}");
        let pool = self.pool().clone();
        let sku_owned = sku.to_owned();
        wait_for(
            Duration::from_secs(60),
            &format!("inventory counts {on_hand} of {sku}"),
            || {
                let (pool, sku) = (pool.clone(), sku_owned.clone());
                async move { stock(&pool, &sku).await.map(|s| s.0) == Some(on_hand) }
            },
        )
        .await;
    }

    /// Places an order (`lines`: SKU and quantity) for a new customer; returns it once accepted.
    pub async fn place(&self, payment_method: &str, lines: &[(&str, i32)]) -> Placed {
        let customer = format!("cus_{}_{}", self.run, uuid::Uuid::new_v4().simple());
        let id = self.place_for(&customer, payment_method, lines).await;
        Placed { id, customer }
    }

    /// Places an order for `customer`; returns its id. A 503 is retried with the same
    /// Idempotency-Key after its Retry-After, as a storefront would (at most 10 times).
    pub async fn place_for(
        &self,
        customer: &str,
        payment_method: &str,
        lines: &[(&str, i32)],
    ) -> String {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
            .collect();
        let key = uuid::Uuid::new_v4().to_string();
        let body =
            json!({"customer_id": customer, "payment_method_id": payment_method, "lines": lines});
        let request = || {
            self.api
                .as_storefront(Method::POST, "/api/orders")
                .header("Idempotency-Key", &key)
                .json(&body)
        };
        let (response, unavailable) = kassa::http::send_honouring_503(request, 10)
            .await
            .expect("the API answers");
        self.unavailable
            .fetch_add(unavailable, std::sync::atomic::Ordering::Relaxed);
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "order of {customer} accepted: {answer}");
        answer["order_id"].as_str().unwrap().to_owned()
    }

    /// Places a `pm_card_visa` order of `quantity` units of `sku` for `customer` through the API
    /// served at `api` (a `kassa run api` process), with the storefront key and, if given, the
    /// storefront's `traceparent`; asserts the 202.
    pub async fn place_through(
        &self,
        api: &str,
        customer: String,
        (sku, quantity): (&str, i32),
        traceparent: Option<&str>,
    ) -> Placed {
        let mut request = reqwest::Client::new()
            .post(format!("{api}/api/orders"))
            .bearer_auth(&self.api.storefront)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({
                "customer_id": customer,
                "payment_method_id": "pm_card_visa",
                "lines": [{"sku": sku, "quantity": quantity}],
            }));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let placed = request.send().await.expect("the API answers");
        assert_eq!(placed.status(), 202);
        let answer: Value = placed.json().await.unwrap();
        Placed {
            id: answer["order_id"].as_str().unwrap().to_owned(),
            customer,
        }
    }

    /// `GET /api/orders/{id}` as its customer.
    pub async fn get(&self, order: &Placed, query: &str) -> Value {
        let response = self
            .api
            .as_storefront(Method::GET, &format!("/api/orders/{}{query}", order.id))
            .header("X-Customer-Id", &order.customer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET order {}", order.id);
        response.json().await.unwrap()
    }

    /// Long-polls the order until its status is `wanted` (panics after `deadline`, or if the
    /// order reaches another final status); returns the order.
    pub async fn wait_status(&self, order: &Placed, wanted: &str, deadline: Duration) -> Value {
        let started = Instant::now();
        let mut body = self.get(order, "").await;
        loop {
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if status == wanted {
                return body;
            }
            assert!(
                !["completed", "rejected", "cancelled"].contains(&status.as_str()),
                "order {} ended {status}, not {wanted}: {body}",
                order.id
            );
            assert!(
                started.elapsed() < deadline,
                "order {} still {status} after {deadline:?}, not {wanted}",
                order.id
            );
            body = self.get(order, &format!("?wait=5&since={status}")).await;
        }
    }

    /// `DELETE /api/orders/{id}` as its customer.
    pub async fn cancel(&self, order: &Placed) {
        let response = self
            .api
            .as_storefront(Method::DELETE, &format!("/api/orders/{}", order.id))
            .header("X-Customer-Id", &order.customer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "cancel accepted");
    }

    /// The steps the audit trail recorded for `order`: (from, to, applied), oldest first.
    pub async fn trail(&self, order: &str) -> Vec<(Option<String>, Option<String>, bool)> {
        sqlx::query_as("SELECT from_state, to_state, applied FROM orders.transitions WHERE order_id = $1 ORDER BY id")
            .bind(order)
            .fetch_all(self.pool())
            .await
            .unwrap()
    }

    /// Sends a Stripe-style event about `intent` of `order` to the API, signed with `secret` as the
    /// provider would; returns the API's answer.
    pub async fn webhook(
        &self,
        secret: &str,
        event_id: &str,
        kind: &str,
        order: &str,
        intent: &str,
    ) -> reqwest::StatusCode {
        let body = json!({
            "id": event_id, "object": "event", "type": kind,
            "data": {"object": {"id": intent, "object": "payment_intent", "metadata": {"order_id": order}}},
        })
        .to_string();
        let signature = kassa_api::webhooks::signature_header(
            secret,
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        self.http
            .post(format!("{}/webhooks/stripe", self.api.base))
            .header("Stripe-Signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Waits until `sku` stands at (on hand, reserved, committed) = `expected`.
    pub async fn wait_stock(&self, sku: &str, expected: (i64, i64, i64)) {
        let pool = self.pool().clone();
        let sku = sku.to_owned();
        wait_for(
            Duration::from_secs(60),
            &format!("{sku} at {expected:?}"),
            || {
                let (pool, sku) = (pool.clone(), sku.clone());
                async move { stock(&pool, &sku).await == Some(expected) }
            },
        )
        .await;
    }

    /// Waits until `sku` has `on_hand` units free again and nothing held or sold, and the simulated
    /// provider's `intent` is cancelled: the order is undone.
    pub async fn wait_undone(&self, sku: &str, on_hand: i64, intent: &str) {
        let pool = self.pool().clone();
        let (sku, intent) = (sku.to_owned(), intent.to_owned());
        wait_for(
            Duration::from_secs(60),
            &format!("{sku} back to {on_hand} on hand and {intent} cancelled"),
            || {
                let (pool, sku, intent) = (pool.clone(), sku.clone(), intent.clone());
                async move {
                    let status: Option<String> =
                        sqlx::query_scalar("SELECT status FROM simulator.intents WHERE id = $1")
                            .bind(intent)
                            .fetch_optional(&pool)
                            .await
                            .unwrap();
                    stock(&pool, &sku).await == Some((on_hand, 0, 0))
                        && status.as_deref() == Some("canceled")
                }
            },
        )
        .await;
    }

    /// Effects at the simulated provider for `order`: (kind, amount), oldest first.
    pub async fn sim_effects(&self, order: &str) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT e.kind, e.amount_minor FROM simulator.effects e JOIN simulator.intents i ON i.id = e.intent_id
             WHERE i.order_id = $1 ORDER BY e.id",
        )
        .bind(order)
        .fetch_all(self.pool())
        .await
        .unwrap()
    }
}

/// (on_hand, reserved, committed) of `sku`, if stocked.
pub async fn stock(pool: &PgPool, sku: &str) -> Option<(i64, i64, i64)> {
    sqlx::query_as("SELECT on_hand, reserved, committed FROM inventory.stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Polls `condition` until it holds; panics with `what` after `deadline`.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval of a deadline-bounded wait
    }
}
