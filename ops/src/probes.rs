//! The operations endpoints of a running processor, on `KASSA_OPS_ADDR` (the API serves its own
//! on its address): `/metrics` (this process's Prometheus metrics, each processor's lag per
//! partition and outbox backlog among them, sampled every few seconds), `/health` (every loop of
//! the process makes progress: a consume loop, relay, worker or ticker stuck in one step longer
//! than `KASSA_STALL_SECONDS` is not) and `/ready` (Postgres and Kafka answer, and every consumer
//! holds its assignment).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kassa_api::problem::Problem;
use kassa_processors::ConsumerGroup;
use kassa_processors::runtime::liveness;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

use crate::databases::Databases;
use crate::settings::Settings;

/// How often lag and outbox backlog are sampled into the metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How far past its deadline an undecided order counts as stuck (as `kassa reconcile`'s default).
const STUCK_MARGIN: Duration = Duration::from_secs(300);

/// What the endpoints read.
#[derive(Clone)]
struct Probes {
    groups: Vec<ConsumerGroup>,
    stall: Duration,
    databases: Databases,
    kafka: Arc<BaseConsumer>,
}

/// Why the endpoints could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    /// The address could not be bound.
    #[error("cannot serve /metrics, /health and /ready on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A client could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The server failed while running.
    #[error("ops endpoints: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the endpoints for the processors `groups` of this process until `shutdown`
/// completes, and samples their lag and outbox backlog meanwhile.
pub async fn serve(
    settings: &Settings,
    groups: Vec<ConsumerGroup>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProbesError> {
    kassa_api::telemetry::handle();
    let databases = Databases::lazy(settings, 2, Duration::from_secs(2))
        .map_err(|e| ProbesError::Setup(e.to_string()))?;
    let kafka: BaseConsumer = kassa_schemas::kafka_link::client_config(&settings.kafka_brokers)
        .create()
        .map_err(|e| ProbesError::Setup(format!("Kafka client: {e}")))?;
    let probes = Probes {
        groups,
        stall: settings.process.stall,
        databases,
        kafka: Arc::new(kafka),
    };
    let addr = settings.process.ops_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ProbesError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    let names: Vec<&str> = probes.groups.iter().map(|g| g.name()).collect();
    tracing::info!(addr = %bound, processors = ?names, "serving /metrics, /health and /ready");
    let sampler = tokio::spawn(sample(settings.clone(), probes.clone()));
    let app = Router::new()
        .route("/metrics", get(kassa_api::telemetry::render))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(|| async { Problem::not_found("route") })
        .with_state(probes);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    Ok(served?)
}

/// The URL of `/health` at `addr` as a process on the same host reaches it (a wildcard listen
/// address is asked on loopback).
pub fn health_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/health", addr.port())
}

/// Asks `url` (a component's `/health`) once, within `limit`: Ok when it answers 200, else what
/// it answered or why it could not be asked (for container health checks: `kassa health`).
pub async fn check_health(url: &str, limit: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url} does not answer: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(format!("{url} answered {status}: {body}"))
}

/// `GET /health`: 200 while every loop makes progress; 503 naming each one stuck.
async fn health(State(probes): State<Probes>) -> Response {
    let stalled = liveness::stalled(probes.stall);
    if stalled.is_empty() {
        return Json(json!({ "status": "ok", "loops": liveness::loops() })).into_response();
    }
    let named: Vec<String> = stalled
        .iter()
        .map(|(name, busy)| format!("{name}: {} s in one step", busy.as_secs()))
        .collect();
    tracing::error!(stalled = ?named, "a loop makes no progress");
    let mut problem = Problem::unavailable("a loop makes no progress", 5);
    problem.detail = format!("stuck: {}", named.join("; "));
    problem.into_response()
}

/// `GET /ready`: 200 when the processors' Postgres databases and Kafka answer within 2 s and every consumer of this
/// process holds its assignment; 503 saying which does not.
async fn ready(State(probes): State<Probes>) -> Response {
    let (ready, checks) = readiness(&probes).await;
    if ready {
        Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        let mut problem = Problem::unavailable("not ready", 2);
        problem.detail = format!("checks: {checks}");
        problem.into_response()
    }
}

/// Whether the process is ready, and each check's verdict.
async fn readiness(probes: &Probes) -> (bool, serde_json::Value) {
    let limit = Duration::from_secs(2);
    let postgres = tokio::time::timeout(limit, async {
        for pool in probes.databases.of_groups(&probes.groups) {
            sqlx::query("SELECT 1").execute(pool).await?;
        }
        Ok::<_, sqlx::Error>(())
    });
    let kafka = probes.kafka.clone();
    let kafka = tokio::task::spawn_blocking(move || kafka.fetch_metadata(None, limit).is_ok());
    let (postgres, kafka) = tokio::join!(postgres, kafka);
    let mut checks = serde_json::Map::new();
    let verdict = |ok: bool| json!(if ok { "ok" } else { "failing" });
    checks.insert("postgres".into(), verdict(matches!(postgres, Ok(Ok(_)))));
    checks.insert("kafka".into(), verdict(matches!(kafka, Ok(true))));
    for group in &probes.groups {
        let assigned = liveness::assigned(group.name());
        let state = if assigned { "assigned" } else { "not assigned" };
        checks.insert(format!("{} consumer", group.name()), json!(state));
    }
    let ready = checks.values().all(|v| v == "ok" || v == "assigned");
    (ready, serde_json::Value::Object(checks))
}

/// Samples into gauges, every [`SAMPLE_EVERY`]: the lag of every input partition and the outbox
/// backlog of `probes.groups` (`kassa_consumer_lag{group,topic,partition}`,
/// `kassa_outbox_unsent{group}`, `kassa_outbox_oldest_unsent_seconds{group}`), readiness
/// (`kassa_ready{component="processors"}`: 1 or 0, what `/ready` answers) and, where the orders
/// processor runs, the orders undecided 5 minutes past their deadline (`kassa_orders_stuck`).
async fn sample(settings: Settings, probes: Probes) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (ready, _) = readiness(&probes).await;
        metrics::gauge!("kassa_ready", "component" => "processors").set(if ready {
            1.0
        } else {
            0.0
        });
        if probes.groups.contains(&ConsumerGroup::Orders) {
            let orders = probes.databases.of(ConsumerGroup::Orders);
            match crate::reconcile::stuck_count(orders, STUCK_MARGIN).await {
                Ok(n) => metrics::gauge!("kassa_orders_stuck").set(n as f64),
                Err(e) => tracing::warn!(error = %e, "counting stuck orders failed"),
            }
        }
        let markers = crate::lag::Markers::Near(2);
        match crate::lag::measure_with(&settings, &probes.databases, &probes.groups, markers).await
        {
            Ok(groups) => {
                for g in groups {
                    for p in &g.partitions {
                        metrics::gauge!("kassa_consumer_lag", "group" => g.group, "topic" => p.topic.clone(), "partition" => p.partition.to_string())
                            .set(p.lag as f64);
                    }
                    metrics::gauge!("kassa_outbox_unsent", "group" => g.group)
                        .set(g.outbox_unsent as f64);
                    metrics::gauge!("kassa_outbox_oldest_unsent_seconds", "group" => g.group)
                        .set(g.outbox_oldest_unsent_seconds.unwrap_or(0.0));
                }
            }
            Err(e) => tracing::warn!(error = %e, "sampling lag and outbox backlog failed"),
        }
    }
}
