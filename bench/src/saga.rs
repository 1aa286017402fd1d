//! `kassa bench saga`: the whole checkout, in one process: the API and every processor with the
//! simulated gateway. Orders go in open-loop over HTTP; each order's accept time (its 202) is
//! compared with the times its audit trail records for `confirmed` and `completed`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kassa_ops::supervisor::Component;
use kassa_processors::ConsumerGroup;
use kassa_schemas::events::inventory::{InventoryCommand, SetStock};
use kassa_schemas::{Codec, Envelope, Topic};
use serde_json::json;

use super::{Outcomes, send};
use kassa_ops::settings::Settings;

/// SKUs the orders spread over.
const SKUS: usize = 20;

/// Runs `orders` single-line orders at `rate` a second through the whole saga.
pub async fn run(settings: &Settings, orders: usize, rate: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        orders > 0 && rate > 0,
        "--orders and --rate must be positive"
    );
    let pool = kassa_ops::migrate::connect(settings).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let key = kassa_api::auth::create_key(
        &pool,
        kassa_api::auth::KeyKind::Storefront,
        &format!("bench-saga-{run}"),
    )
    .await?;
    let skus: Vec<String> = (0..SKUS).map(|i| format!("BSAGA-{run}-{i}")).collect();
    // The machine's limits, on the quiet machine just before the run.
    println!("measuring the machine's limits (Kafka's ProducerPerformance, pgbench) …");
    let limits = super::limits::Limits::measure(settings, &pool).await;

    // Every processor and the API in this process, as `kassa run all` starts them.
    let processors: Vec<Component> = ConsumerGroup::ALL
        .into_iter()
        .map(Component::Processor)
        .collect();
    // Their /metrics, /health and /ready on any free port (logged): a development kassa may hold
    // the configured one.
    let mut on_any_port = settings.clone();
    on_any_port.process.ops_addr.set_port(0);
    let running = kassa_ops::supervisor::start(&on_any_port, &processors)?;
    let (base, http) = super::api::serve_catalog(settings, &pool, &skus).await?;

    // Stock for every order (nothing is rejected), confirmed by inventory before the clock starts.
    stock(settings, &skus, orders as i64, &format!("BSAGA-{run}")).await?;
    println!(
        "saga bench: {orders} orders at {rate}/s over HTTP, one line each, simulated gateway (pm_card_visa), API and processors in this process"
    );

    let before = super::usage::Sample::take(settings, &pool).await;
    let accepted = place(&http, &base, &key, &skus, &run, orders, rate).await;
    let ids: Vec<String> = accepted.keys().cloned().collect();
    let finals = wait_final(&pool, &ids, Duration::from_secs(300)).await?;
    let used = before.until(&super::usage::Sample::take(settings, &pool).await);
    running.stop();
    running.wait().await?;

    // Each order's first time in each stage, from its audit trail.
    let reached: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, to_state, min(at) FROM orders.transitions
         WHERE order_id = ANY($1) AND applied GROUP BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, state, _) in &finals {
        *counts.entry(state.as_str()).or_default() += 1;
    }
    println!(
        "accepted {} of {orders}; final states {counts:?}",
        accepted.len()
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "orders"
    );
    let mut accept: Vec<i64> = accepted
        .values()
        .map(|p| p.accept.as_millis() as i64)
        .collect();
    print_latencies("request -> accepted (202)", &mut accept);
    for stage in ["reserved", "authorized", "confirmed", "completed"] {
        let mut latencies: Vec<i64> = reached
            .iter()
            .filter(|(_, to, _)| to == stage)
            .map(|(id, _, at)| (*at - accepted[id].at).num_milliseconds())
            .collect();
        print_latencies(&format!("accept -> {stage}"), &mut latencies);
    }
    used.print(accepted.len());
    limits.print(&used);
    println!(
        "target: 1,000 orders/s with accept -> completed p99 < 1000 ms and request -> accepted p99 < 25 ms"
    );
    Ok(())
}

/// Prints one row of percentiles (milliseconds) for `label`.
fn print_latencies(label: &str, latencies: &mut [i64]) {
    latencies.sort_unstable();
    let at = |q: f64| super::quantile(latencies, q).unwrap_or(0);
    println!(
        "{label:<26} {:>8} {:>8} {:>8} {:>8} {:>8}",
        at(0.5),
        at(0.99),
        at(0.999),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
}

/// An order the API accepted.
pub(crate) struct Placed {
    /// When its 202 came.
    pub at: DateTime<Utc>,
    /// Its customer.
    pub customer: String,
    /// From sending the request to its 202 (retries after a 503 included).
    pub accept: Duration,
}

/// Sets `units` on hand for each of `skus` (named `<prefix>-…`) and waits until inventory has
/// counted them all.
pub(crate) async fn stock(
    settings: &Settings,
    skus: &[String],
    units: i64,
    prefix: &str,
) -> anyhow::Result<()> {
    let codec = Codec::new(&settings.schema_registry_url)?;
    let producer = kassa_ops::kafka::producer(settings)?;
    let stocked = Outcomes::start(settings, Topic::InventoryEvents.name(), prefix.to_owned());
    for sku in skus {
        let command = InventoryCommand::SetStock(SetStock {
            sku: sku.clone(),
            on_hand: units,
            reason: "bench".into(),
        });
        send(&producer, &codec, sku, &Envelope::new(sku, None, command)).await?;
    }
    stocked.wait(skus.len(), Duration::from_secs(120)).await?;
    Ok(())
}

/// Places the orders open-loop; returns each accepted order by id. A 503 is retried with the
/// same Idempotency-Key after its Retry-After, as a storefront would.
pub(crate) async fn place(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    skus: &[String],
    run: &str,
    orders: usize,
    rate: u32,
) -> HashMap<String, Placed> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..orders {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let request = http
            .post(format!("{base}/api/orders"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("bsaga-{run}-{i}"))
            .json(&json!({"customer_id": format!("bsaga-{run}-c{i}"), "payment_method_id": "pm_card_visa", "lines": [{"sku": skus[i % skus.len()], "quantity": 1}]}));
        let customer = format!("bsaga-{run}-c{i}");
        tasks.spawn(async move {
            let sent = std::time::Instant::now();
            let resend = || request.try_clone().expect("a JSON body can be sent again");
            let (response, _) = crate::http::send_honouring_503(resend, 5).await.ok()?;
            if response.status() != reqwest::StatusCode::ACCEPTED {
                return None;
            }
            let (at, accept) = (Utc::now(), sent.elapsed());
            let body: serde_json::Value = response.json().await.ok()?;
            let placed = Placed {
                at,
                customer,
                accept,
            };
            Some((body["order_id"].as_str()?.to_owned(), placed))
        });
    }
    let mut accepted = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some((id, placed))) = done {
            accepted.insert(id, placed);
        }
    }
    accepted
}

/// Waits until every order is completed, rejected or cancelled; returns (id, state, updated at).
/// Each look asks only for the orders not yet seen final: asking for all of them every time cost
/// Postgres tens of milliseconds a look, counted against the orders it measured.
pub(crate) async fn wait_final(
    pool: &sqlx::PgPool,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<Vec<(String, String, DateTime<Utc>)>> {
    let started = std::time::Instant::now();
    let mut last_report = std::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut pending: Vec<String> = ids.to_vec();
    let mut finals: Vec<(String, String, DateTime<Utc>)> = Vec::with_capacity(ids.len());
    loop {
        let ended: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT order_id, state, updated_at FROM orders.orders
             WHERE order_id = ANY($1) AND state IN ('completed', 'rejected', 'cancelled')",
        )
        .bind(&pending)
        .fetch_all(pool)
        .await?;
        {
            let seen: std::collections::HashSet<&str> =
                ended.iter().map(|e| e.0.as_str()).collect();
            pending.retain(|id| !seen.contains(id.as_str()));
        }
        finals.extend(ended);
        if pending.is_empty() {
            return Ok(finals);
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {} of {} orders ended within {within:?}",
            finals.len(),
            ids.len()
        );
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  … {} / {} orders ended", finals.len(), ids.len());
            last_report = std::time::Instant::now();
        }
        poll.tick().await;
    }
}
