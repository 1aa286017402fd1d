//! Every processor process can be watched: `kassa run <processor>` serves `/metrics` (its lag per
//! partition and outbox backlog among them), `/health` (its loops make progress: a consume loop
//! stuck in one step turns it unhealthy, and healthy again once the step ends) and `/ready` (its
//! dependencies answer and its consumer holds its assignment) on `KASSA_OPS_ADDR`. The dashboard
//! and the alerts (`deploy/`) name only metrics a running kassa exports, and each alert names a
//! paragraph of the README's runbook.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::http::{free_port, get, wait_until};
use common::processes::Component;
use common::saga::{Saga, start_processors};
use rdkafka::producer::FutureRecord;
use serde_json::Value;

/// The processors' settings for these tests: a 3-D Secure window of 5 s.
const ENV: &[(&str, &str)] = &[
    ("KASSA_INSTANCE_ID", "observability-tests"),
    ("KASSA_PAYMENT_ACTION_SECONDS", "5"),
];

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

/// The `kassa_…` metric names in `text` (PromQL expressions).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kassa_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Every PromQL expression of the dashboard (its panels' targets).
fn dashboard_exprs(panel: &Value, found: &mut Vec<String>) {
    match panel {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => dashboard_exprs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_alerts_name_only_metrics_a_running_kassa_exports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/kassa.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "the dashboard's queries: {exprs:?}");
    let alert_exprs: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    let alert_count = alerts.matches("- alert: ").count();
    assert_eq!(alert_exprs.len(), alert_count, "one expression an alert");
    for (field, wanted) in [("summary: ", alert_count), ("runbook_url: ", alert_count)] {
        assert_eq!(
            alerts.matches(field).count(),
            wanted,
            "every alert has a {field}"
        );
    }
    for runbook in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
    {
        let title = runbook.trim_matches('"');
        assert!(
            readme.contains(&format!("**{title}.**")),
            "the README's runbook has a paragraph {title:?}"
        );
    }
    let named: BTreeSet<String> = exprs
        .iter()
        .map(String::as_str)
        .chain(alert_exprs.iter().copied())
        .flat_map(metric_names)
        .collect();
    assert!(named.len() >= 15, "the metrics named: {named:?}");

    // A kassa at work: an order completes through a flash sale, a card is declined, a 3-D
    // Secure window runs out, a message is dead-lettered.
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let sku = saga.sku("WATCH");
    saga.product(&sku, 900, 10).await;
    let sale = saga
        .api
        .as_admin(reqwest::Method::PUT, &format!("/admin/flash-sales/{sku}"))
        .json(&serde_json::json!({"tokens": 5, "hold_seconds": 60, "per_customer_limit": 0}))
        .send()
        .await
        .unwrap();
    assert!(sale.status().is_success());
    let completed = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    let declined = saga.place("pm_card_chargeDeclined", &[(&sku, 1)]).await;
    let expired = saga
        .place("pm_card_threeDSecure2Required", &[(&sku, 1)])
        .await;
    let feed = common::inventory::Feed::new(&saga.api.settings);
    feed.send(
        &format!("not-{sku}"),
        &common::inventory::reserve("o-watch", 0, &sku, 1),
    )
    .await;
    saga.wait_status(&completed, "completed", Duration::from_secs(60))
        .await;
    saga.wait_status(&declined, "cancelled", Duration::from_secs(60))
        .await;
    saga.wait_status(&expired, "cancelled", Duration::from_secs(60))
        .await;

    // Scraped from the API and every processor, until every name is exported (the gauges are
    // sampled every 10 s).
    let processors: Vec<String> = common::turns::RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|c| c.ops.clone())
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let mut exported = BTreeSet::new();
        for base in std::iter::once(&saga.api.base).chain(&processors) {
            if let Some((200, Value::String(text))) = get(&http, base, "/metrics").await {
                exported.extend(
                    text.lines()
                        .filter(|l| l.starts_with("kassa_"))
                        .filter_map(|l| l.split(['{', ' ']).next())
                        .map(str::to_owned),
                );
            }
        }
        let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "named by the dashboard or an alert, not exported by a running kassa: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await; // poll the scrapes until the deadline
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_at_a_real_collector() {
    let jaeger = std::env::var("KASSA_TEST_JAEGER").expect(
        "KASSA_TEST_JAEGER: Jaeger's query API (`scripts/dev up jaeger`, `scripts/dev env`)",
    );
    let otlp = std::env::var("KASSA_TEST_OTLP_ENDPOINT").expect("KASSA_TEST_OTLP_ENDPOINT");
    // The processors and the API as processes of their own, exporting their spans.
    let exporting = [
        ("KASSA_INSTANCE_ID", "trace-export-tests"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
    ];
    let saga = Saga::new(start_processors(&exporting).await, None, None).await;
    let (_api, api) = Component::start_api(&[exporting[1]]);
    let http = reqwest::Client::new();
    wait_until(&http, &api, "/health", 200, |_| true).await;
    let sku = saga.sku("TRACED");
    saga.product(&sku, 1500, 5).await;

    let trace = uuid::Uuid::new_v4().simple().to_string();
    let storefront_span = "00f067aa0ba902b7";
    let customer = format!("cus_{}_traced", saga.run);
    let traceparent = format!("00-{trace}-{storefront_span}-01");
    let order = saga
        .place_through(&api, customer, (&sku, 2), Some(&traceparent))
        .await;
    saga.wait_status(&order, "completed", Duration::from_secs(60))
        .await;

    // Every hop's span reaches the collector, in the storefront's trace.
    let wanted = [
        "POST /api/orders",
        "api sends to",
        "inventory handles",
        "inventory publishes to",
        "orders handles",
        "orders publishes to",
        "payments handles",
        "payments works on",
        "simulated authorize",
        "simulated capture",
        "payments publishes to",
        "expiry handles",
    ];
    let started = Instant::now();
    let spans = loop {
        let found = get(&http, &jaeger, &format!("/api/traces/{trace}")).await;
        let spans: Vec<Value> = found
            .as_ref()
            .and_then(|(_, body)| body["data"][0]["spans"].as_array().cloned())
            .unwrap_or_default();
        let names: Vec<&str> = spans
            .iter()
            .filter_map(|s| s["operationName"].as_str())
            .collect();
        if wanted
            .iter()
            .all(|w| names.iter().any(|n| n.starts_with(w)))
        {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the collector holds every hop of the order's trace within 60 s; it has {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await; // poll the collector until the deadline
    };
    // Linked: each span's parent is in the trace, but the first's, which is the storefront's.
    let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
    for span in &spans {
        for parent in span["references"].as_array().unwrap() {
            let parent = parent["spanID"].as_str().unwrap();
            assert!(
                ids.contains(parent)
                    || (span["operationName"] == "POST /api/orders" && parent == storefront_span),
                "{} has its parent {parent} outside the trace",
                span["operationName"]
            );
        }
        assert_eq!(span["traceID"], trace.as_str());
    }
}
