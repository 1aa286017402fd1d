//! kassa's storefront HTTP API (axum): orders (server-side pricing, Idempotency-Key, one
//! `checkout.requests` message per line; status from the orders processor's read model, with long
//! polling), cancellation and hold renewal, carts, the flash-sale gate, admin, Stripe webhooks,
//! storefront and admin API keys, RFC 9457 errors, the OpenAPI document, `/health`, `/ready`,
//! served by an HTTP server that hostile clients cannot hold (server.rs).

pub mod accepted;
pub mod admin;
pub mod auth;
pub mod body;
pub mod carts;
pub mod cursor;
pub mod domain;
pub mod error;
pub mod flash;
pub mod fulfilment;
pub mod idempotency;
pub mod limits;
pub mod openapi;
pub mod order_events;
pub mod order_history;
pub mod order_requests;
pub mod order_status;
pub mod orders;
pub mod pricing;
pub mod problem;
pub mod produce;
pub mod query;
pub mod refunds;
pub mod server;
pub mod status_feed;
pub mod telemetry;
pub mod unpublished;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, response::IntoResponse};
use kassa_schemas::Codec;
use kassa_schemas::redis_link::RedisLink;
use rdkafka::producer::FutureProducer;
use serde_json::json;
use sqlx::PgPool;

use problem::Problem;

/// What the API needs to run.
/// (Not `Debug`: it holds the database URL, password included.)
#[derive(Clone)]
pub struct ApiConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// PostgreSQL URL (the `api` schema).
    pub database_url: kassa_schemas::secret::Secret,
    /// PostgreSQL URL of the orders processor's schema, whose order status the API reads (the
    /// same as `database_url` unless the orders processor has a database of its own).
    pub orders_database_url: kassa_schemas::secret::Secret,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema Registry URL.
    pub registry_url: String,
    /// Redis URL (carts, flash-sale gate).
    pub redis_url: String,
    /// Reservation hold the API asks for, in seconds.
    pub hold_seconds: i32,
    /// The longest hold a renewal may ask for, in seconds.
    pub max_hold_seconds: i32,
    /// How long carts live after their last use.
    pub cart_ttl: carts::CartTtl,
    /// The Stripe webhook endpoint's signing secret (None: webhooks are refused).
    pub stripe_webhook_secret: Option<webhooks::Secret>,
    /// Rate limits.
    pub rate_limits: limits::RateLimits,
    /// Timeouts and the connection cap of the HTTP server.
    pub server: server::ServerLimits,
    /// Routes mounted beside the API's own (the operator's views, from kassa-ops).
    pub extension: Extension,
}

/// Routes another crate mounts beside the API's own, with their part of the OpenAPI document:
/// how the operator's views (kassa-ops, which depends on this crate) join the same server.
#[derive(Clone, Default)]
pub struct Extension {
    /// The routes; their handlers may use [`AppState`] and the [`auth::Admin`] extractor.
    pub routes: Router<AppState>,
    /// Their paths and schemas, merged into `GET /openapi.json`.
    pub openapi: utoipa::openapi::OpenApi,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Database pool (the `api` schema).
    pub pool: PgPool,
    /// The orders processor's database (its read model of order status): `pool` unless the
    /// orders processor has a database of its own.
    pub orders_pool: PgPool,
    /// Idempotent, acks=all producer.
    pub producer: FutureProducer,
    /// Event codec.
    pub codec: Arc<Codec>,
    /// Redis, connected in the background (while it cannot be reached the gate fails open).
    pub redis: RedisLink,
    /// Reservation hold, in seconds.
    pub hold_seconds: i32,
    /// The longest hold a renewal may ask for, in seconds.
    pub max_hold_seconds: i32,
    /// Recent API key lookups.
    pub keys: Arc<auth::KeyCache>,
    /// How long carts live after their last use.
    pub cart_ttl: carts::CartTtl,
    /// The Stripe webhook endpoint's signing secret (None: webhooks are refused).
    pub stripe_webhook_secret: Option<webhooks::Secret>,
    /// Rate limiters.
    pub limits: Arc<limits::Limits>,
    /// Orders read lately (a stored order never changes).
    pub recent_orders: accepted::Recent,
    /// Order status changes, for long polls.
    pub status_feed: status_feed::StatusFeed,
    /// The OpenAPI document: the API's paths and the extension's, serialised once.
    pub openapi: Arc<str>,
    /// The longest a request's body may take to arrive.
    pub body_timeout: Duration,
    /// Idempotency-Key answers being stored.
    pub answers: idempotency::Answers,
}

/// Why the API server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
    /// A client could not be set up.
    #[error("setup: {0}")]
    Setup(String),
}

/// The API's routes, and `extra`'s, over `state`.
pub fn router(state: AppState, extra: Router<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(telemetry::render))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs))
        .route("/api/orders", post(orders::create).get(order_history::list))
        .route("/api/orders/{id}/events", get(order_events::stream))
        .route(
            "/api/orders/{id}",
            get(order_status::get).delete(order_requests::cancel),
        )
        .route("/api/orders/{id}/hold", post(order_requests::renew_hold))
        .route("/api/carts", post(carts::create))
        .route(
            "/api/carts/me",
            get(carts::get_mine)
                .put(carts::put_mine)
                .delete(carts::delete_mine),
        )
        .route("/api/carts/me/items", post(carts::add_mine))
        .route(
            "/api/carts/me/items/{sku}",
            axum::routing::put(carts::set_mine).delete(carts::remove_mine),
        )
        .route("/api/carts/me/checkout", post(carts::checkout_mine))
        .route("/api/carts/me/merge", post(carts::merge))
        .route(
            "/api/carts/{cart_id}",
            get(carts::get).put(carts::put).delete(carts::delete),
        )
        .route("/api/carts/{cart_id}/items", post(carts::add_item))
        .route(
            "/api/carts/{cart_id}/items/{sku}",
            axum::routing::put(carts::set_item).delete(carts::remove_item),
        )
        .route("/api/carts/{cart_id}/checkout", post(carts::checkout))
        .route("/webhooks/stripe", post(webhooks::stripe))
        .route(
            "/admin/products/{sku}",
            get(admin::get_product).put(admin::put_product),
        )
        .route("/admin/stock/{sku}", post(admin::post_stock))
        .route(
            "/admin/orders/{id}/refunds",
            post(refunds::create).get(refunds::list),
        )
        .route(
            "/admin/flash-sales/{sku}",
            get(admin::get_sale)
                .put(admin::put_sale)
                .delete(admin::delete_sale),
        )
        .merge(extra)
        .fallback(|| async { Problem::not_found("route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.body_timeout,
            body::buffer_body,
        ))
        .route_layer(axum::middleware::from_fn(telemetry::record))
        .with_state(state)
}

/// The answer of `GET /health`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// The answer of `GET /ready` when every dependency answers.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// Each dependency (`postgres`, `kafka`, `redis`): `ok`, `failing` or `timed out`.
    pub checks: std::collections::BTreeMap<String, String>,
}

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations", responses((status = 200, description = "up", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready when Postgres, Kafka and Redis all answer within 2 s; the body says which did not.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations", responses((status = 200, description = "every dependency answers", body = Readiness), (status = 503, description = "a dependency does not", body = Problem, content_type = "application/problem+json")))]
async fn ready(State(state): State<AppState>) -> axum::response::Response {
    let limit = Duration::from_secs(2);
    let postgres = async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let kafka = async {
        let producer = state.producer.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    };
    let redis = async {
        let Some(mut conn) = state.redis.get() else {
            return Err("not connected".to_owned());
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let (postgres, kafka, redis) = tokio::join!(
        tokio::time::timeout(limit, postgres),
        tokio::time::timeout(limit, kafka),
        tokio::time::timeout(limit, redis)
    );
    let verdict = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok",
        Ok(Err(_)) => "failing",
        Err(_) => "timed out",
    };
    let checks: std::collections::BTreeMap<String, String> = [
        ("postgres", verdict(postgres)),
        ("kafka", verdict(kafka)),
        ("redis", verdict(redis)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let all_ok = checks.values().all(|v| v == "ok");
    metrics::gauge!("kassa_ready", "component" => "api").set(if all_ok { 1.0 } else { 0.0 });
    if all_ok {
        Json(Readiness {
            status: "ready".into(),
            checks,
        })
        .into_response()
    } else {
        let checks = json!(checks);
        tracing::warn!(%checks, "not ready");
        let mut problem = Problem::unavailable(format!("not ready: {checks}"), 2);
        problem.detail = format!("dependencies: {checks}");
        problem.into_response()
    }
}

/// Builds the state: database pool, producer, codec.
pub async fn state(config: &ApiConfig) -> Result<AppState, ServeError> {
    telemetry::handle();
    let options = kassa_schemas::postgres_link::pool_options()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(3));
    let pool = options
        .clone()
        .connect_lazy(config.database_url.expose())
        .map_err(|e| ServeError::Setup(format!("database URL: {e}")))?;
    // Order status is the orders processor's read model: read where that processor keeps it.
    let orders_pool = if config.orders_database_url.expose() == config.database_url.expose() {
        pool.clone()
    } else {
        options
            .connect_lazy(config.orders_database_url.expose())
            .map_err(|e| ServeError::Setup(format!("orders database URL: {e}")))?
    };
    let mut producer_config = kassa_schemas::kafka_link::client_config(&config.brokers);
    // A request waits for its acknowledgement: send at once (what is queued meanwhile still goes
    // together). `kassa bench api` at 1,000/s: publish p50 1.0 ms, against 2.4 ms with 1 ms.
    kassa_schemas::kafka_link::default_unless_set(&mut producer_config, &[("linger.ms", "0")]);
    for (key, value) in kassa_schemas::kafka::PRODUCER_SETTINGS {
        producer_config.set(*key, *value);
    }
    let producer: FutureProducer = producer_config
        .create()
        .map_err(|e| ServeError::Setup(format!("Kafka producer: {e}")))?;
    let codec = Codec::new(&config.registry_url).map_err(|e| ServeError::Setup(e.to_string()))?;
    // The client's default 500 ms answer deadline is shorter than a burst of a flash sale can make
    // a busy API wait for its turn to read Redis' answer: the gate would then fail open while
    // Redis is up, and let more buyers in than it has tokens. A refused connection still fails at once.
    let redis = RedisLink::start(&config.redis_url, Duration::from_secs(5));
    // Give Redis a moment at start so the first requests meet the gate; never wait longer.
    if redis.wait(Duration::from_secs(3)).await.is_none() {
        tracing::warn!("Redis not reachable at start: the flash-sale gate fails open until it is");
    }
    Ok(AppState {
        pool: pool.clone(),
        producer,
        codec: Arc::new(codec),
        redis,
        hold_seconds: config.hold_seconds,
        max_hold_seconds: config.max_hold_seconds,
        keys: Arc::default(),
        cart_ttl: config.cart_ttl,
        stripe_webhook_secret: config.stripe_webhook_secret.clone(),
        limits: Arc::new(limits::Limits::new(config.rate_limits)),
        recent_orders: accepted::Recent::default(),
        status_feed: status_feed::StatusFeed::start(orders_pool.clone()),
        orders_pool,
        openapi: openapi::document_of(&config.extension, config.max_hold_seconds).into(),
        body_timeout: config.server.body_timeout,
        answers: idempotency::Answers::start(pool),
    })
}

/// Serves the API until `shutdown` completes, then drains in-flight requests. Prunes expired
/// Idempotency-Key records every 10 minutes meanwhile.
pub async fn serve(
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = state(&config).await?;
    let pool = state.pool.clone();
    let limits = state.limits.clone();
    let pruning = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            limits.forget_idle();
            match idempotency::prune(&pool).await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "expired Idempotency-Key records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning Idempotency-Key records failed"),
            }
        }
    });
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(%addr, "API listening");
    let served = serve_on(
        listener,
        state,
        config.extension.routes,
        config.server,
        shutdown,
    )
    .await;
    pruning.abort();
    served?;
    Ok(())
}

/// Starts the API on `config.addr` (port 0: any free port) in the background, for tests and
/// benchmarks; returns the address it listens on. It runs until the process ends.
pub async fn spawn(config: &ApiConfig) -> Result<SocketAddr, ServeError> {
    Ok(start(config).await?.addr)
}

/// Starts the API like [`spawn`]; the answer also stops it (dropped, the API runs on).
pub async fn start(config: &ApiConfig) -> Result<Started, ServeError> {
    let state = state(config).await?;
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    let routes = config.extension.routes.clone();
    let limits = config.server;
    let pools = vec![state.pool.clone(), state.orders_pool.clone()];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_on(listener, state, routes, limits, async move {
        // Only an explicit stop: a dropped `Started` leaves the API running.
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    }));
    Ok(Started {
        addr: bound,
        stop,
        task,
        pools,
    })
}

/// An API started by [`start`].
pub struct Started {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pools: Vec<PgPool>,
}

impl Started {
    /// Stops it: no new connections, the requests in flight answered, then its idle database
    /// connections closed (a benchmark that starts an API per run would otherwise hold every
    /// earlier run's connections, until Postgres refused new ones).
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        let served = self
            .task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        for pool in &self.pools {
            // Idle connections close at once; one held elsewhere (a long-poll listener) is not
            // waited for beyond this.
            let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
        }
        served
    }
}

/// Serves the API's routes (and `extra`) on a bound listener within `limits` until `shutdown`
/// completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    extra: Router<AppState>,
    limits: server::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampling = tokio::spawn(sample(state.clone()));
    let sweeping = tokio::spawn(unpublished::sweep(state.clone()));
    let served = server::serve(listener, router(state, extra), limits, shutdown).await;
    sampling.abort();
    sweeping.abort();
    served
}

/// Reports every 10 s, while the API serves: its database pool's saturation
/// (`kassa_db_pool_connections{pool="api",state}`, `kassa_db_pool_max{pool="api"}`) and whether
/// Redis is connected (`kassa_redis_connected`).
async fn sample(state: AppState) {
    let max = f64::from(state.pool.options().get_max_connections());
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        let (size, idle) = (state.pool.size(), state.pool.num_idle() as u32);
        metrics::gauge!("kassa_db_pool_connections", "pool" => "api", "state" => "in_use")
            .set(f64::from(size.saturating_sub(idle)));
        metrics::gauge!("kassa_db_pool_connections", "pool" => "api", "state" => "idle")
            .set(f64::from(idle));
        metrics::gauge!("kassa_db_pool_max", "pool" => "api").set(max);
        let connected = if state.redis.get().is_some() {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("kassa_redis_connected").set(connected);
    }
}
