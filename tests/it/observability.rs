//! Every processor process can be watched: `kassa run <processor>` serves `/metrics` (its lag per
//! partition and outbox backlog among them), `/health` (its loops make progress: a consume loop
//! stuck in one step turns it unhealthy, and healthy again once the step ends) and `/ready` (its
//! dependencies answer and its consumer holds its assignment) on `KASSA_OPS_ADDR`.

use crate::common;

use std::time::{Duration, Instant};

use common::processes::Component;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET base + path`: the status and the body (JSON, or the text as a string).
async fn get(http: &reqwest::Client, base: &str, path: &str) -> Option<(u16, Value)> {
    let response = http.get(format!("{base}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Waits until `GET base + path` answers `status` and `check` holds for the body; returns it.
async fn wait_until(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    status: u16,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let answer = get(http, base, path).await;
        if let Some((got, body)) = &answer
            && *got == status
            && check(body)
        {
            return body.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "GET {path} did not answer {status} as expected within 60 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll the endpoint until the deadline
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_serves_metrics_health_and_ready_and_a_stuck_loop_is_unhealthy() {
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    // A namespace of its own: this orders processor consumes only what this test writes.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let namespace = format!("kassa-probes-{run}.");
    let topic = common::prepare_namespace(&namespace, 1);
    let port = free_port();
    let _orders = Component::start(
        "orders",
        &[
            ("KASSA_NAMESPACE", &namespace),
            ("KASSA_OPS_ADDR", &format!("127.0.0.1:{port}")),
            ("KASSA_STALL_SECONDS", "2"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let ready = wait_until(&http, &base, "/ready", 200, |_| true).await;
    assert_eq!(ready["checks"]["orders consumer"], "assigned", "{ready}");
    assert_eq!(ready["checks"]["postgres"], "ok");
    let health = wait_until(&http, &base, "/health", 200, |_| true).await;
    let loops = health["loops"].as_array().expect("the loops");
    for expected in ["orders consumer", "orders outbox relay"] {
        assert!(
            loops.iter().any(|l| l == expected),
            "{expected} in {health}"
        );
    }
    // Lag per partition of each input, and the outbox backlog, sampled into the metrics.
    let metrics = wait_until(&http, &base, "/metrics", 200, |m| {
        m.as_str().is_some_and(|m| {
            m.contains("kassa_consumer_lag{") && m.contains("kassa_outbox_unsent{")
        })
    })
    .await;
    let metrics = metrics.as_str().unwrap();
    let events = topic("inventory.events");
    assert!(
        metrics.contains(&format!(
            "kassa_consumer_lag{{group=\"orders\",topic=\"{events}\",partition=\"0\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("kassa_outbox_oldest_unsent_seconds{group=\"orders\"}"));

    // The consume loop stuck in one step: its batch waits on a row this test holds.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO orders.consumer_offsets (topic, partition, next_offset) VALUES ($1, 0, 0)",
    )
    .bind(&events)
    .execute(&mut *blocker)
    .await
    .unwrap();
    let producer = kassa::kafka::producer(&settings).unwrap();
    producer
        .send(
            FutureRecord::to(&events)
                .partition(0)
                .key("probe")
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .expect("Kafka takes the record");
    let unhealthy = wait_until(&http, &base, "/health", 503, |_| true).await;
    assert!(
        unhealthy["detail"]
            .as_str()
            .is_some_and(|d| d.contains("orders consumer")),
        "the stuck loop is named: {unhealthy}"
    );
    blocker.rollback().await.unwrap();
    wait_until(&http, &base, "/health", 200, |_| true).await;
}
