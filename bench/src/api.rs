//! `kassa bench api`: `POST /api/orders` driven open-loop. Every request has an intended send
//! time (rate × elapsed); its latency counts from that time, so a server that falls behind is
//! charged for the queue it causes (no coordinated omission). The latencies of the expected
//! answers (202 accepted; 409 sold_out in the flash sale) go to an HDR histogram; any other answer
//! is counted, not timed. Then the sold-out path of a flash sale, the same way.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Mutex;

use kassa_ops::settings::Settings;

/// One rate's figures.
struct Step {
    rate: u32,
    sent: u64,
    ok: u64,
    other: u64,
    histogram: Histogram<u64>,
    elapsed: Duration,
}

/// Sends `rate` requests a second for `duration` (open loop); `request(i)` builds the i-th.
async fn drive(
    rate: u32,
    duration: Duration,
    ok_status: u16,
    request: impl Fn(u64) -> reqwest::RequestBuilder,
) -> Step {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let counts = Arc::new((
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ));
    let total = u64::from(rate) * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let (histogram, counts) = (histogram.clone(), counts.clone());
        let send = request(i).send();
        tasks.push(tokio::spawn(async move {
            let result = send.await;
            let micros = intended.elapsed().as_micros().max(1) as u64;
            let good = matches!(&result, Ok(r) if r.status().as_u16() == ok_status);
            // The latencies are those of the answer this step is about (202, or 409 sold_out):
            // the few buyers a sale admits are slower (they go on to Kafka) and counted as other.
            if good {
                histogram.lock().await.saturating_record(micros);
            }
            let counter = if good { &counts.0 } else { &counts.1 };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let histogram = histogram.lock().await.clone();
    Step {
        rate,
        sent: total,
        ok: counts.0.load(std::sync::atomic::Ordering::Relaxed),
        other: counts.1.load(std::sync::atomic::Ordering::Relaxed),
        histogram,
        elapsed: started.elapsed(),
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn print_step(label: &str, s: &Step) {
    let h = &s.histogram;
    println!(
        "{label:<28} {:>7} {:>8.0} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        s.rate,
        s.sent as f64 / s.elapsed.as_secs_f64(),
        s.ok,
        s.other,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    );
}

/// Puts `skus` in the catalog at 19.99 EUR.
pub(super) async fn catalog(pool: &sqlx::PgPool, skus: &[String]) -> anyhow::Result<()> {
    for sku in skus {
        sqlx::query("INSERT INTO api.products (sku, name, price_minor, currency) VALUES ($1, 'bench', 1999, 'EUR')")
            .bind(sku)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Puts `skus` in the catalog (19.99 EUR each) and starts the API in this process on a free
/// loopback port, its rate limits lifted: a benchmark measures the work, not the limits. Returns
/// the API (to stop once done), its base URL and an HTTP client with room for many connections.
pub(super) async fn serve_catalog(
    settings: &Settings,
    pool: &sqlx::PgPool,
    skus: &[String],
) -> anyhow::Result<(kassa_api::Started, String, reqwest::Client)> {
    catalog(pool, skus).await?;
    let mut config = settings.api_config();
    config.addr = "127.0.0.1:0".parse()?;
    config.rate_limits = kassa_api::limits::RateLimits {
        storefront_per_second: 1_000_000,
        customer_per_second: 1_000_000,
        unauthenticated_per_second: 1_000_000,
    };
    let api = kassa_api::start(&config).await?;
    let base = format!("http://{}", api.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()?;
    Ok((api, base, http))
}

/// Runs the benchmark at `rates` (requests per second), `seconds` each, against an in-process API;
/// then the sold-out path at `flash_rate`.
pub async fn run(
    settings: &Settings,
    rates: &[u32],
    flash_rate: u32,
    seconds: u64,
) -> anyhow::Result<()> {
    let pool = kassa_ops::migrate::connect(settings).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let key = kassa_api::auth::create_key(
        &pool,
        kassa_api::auth::KeyKind::Storefront,
        &format!("bench-{run}"),
    )
    .await?;
    let admin = kassa_api::auth::create_key(
        &pool,
        kassa_api::auth::KeyKind::Admin,
        &format!("bench-admin-{run}"),
    )
    .await?;
    let skus: Vec<String> = (0..20).map(|i| format!("BAPI-{run}-{i}")).collect();
    let (_api, base, http) = serve_catalog(settings, &pool, &skus).await?;

    println!(
        "api bench: POST /api/orders open-loop, {seconds} s per rate, 2 lines per order, API in this process (release build recommended)"
    );
    println!(
        "{:<28} {:>7} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "", "rate/s", "sent/s", "expected", "other", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    // Warm-up: connections, registry ids, prepared statements.
    drive(200, Duration::from_secs(1), 202, |i| {
        order(&http, &base, &key, &skus, &format!("w-{run}"), i)
    })
    .await;
    for &rate in rates {
        let tag = format!("r{rate}-{run}");
        let step = drive(rate, Duration::from_secs(seconds), 202, |i| {
            order(&http, &base, &key, &skus, &tag, i)
        })
        .await;
        print_step("accept (orders → Kafka)", &step);
    }

    // The sold-out path: a sale of 100 tokens, then everyone else is turned away at the gate.
    let drop = &skus[0];
    let sale = http
        .put(format!("{base}/admin/flash-sales/{drop}"))
        .bearer_auth(&admin)
        .json(&json!({"tokens": 100, "hold_seconds": 120, "per_customer_limit": 1}))
        .send()
        .await?;
    anyhow::ensure!(
        sale.status().is_success(),
        "starting the flash sale: {}",
        sale.status()
    );
    let tag = format!("f-{run}");
    let step = drive(flash_rate, Duration::from_secs(seconds), 409, |i| {
        http.post(format!("{base}/api/orders"))
            .bearer_auth(&key)
            .header("Idempotency-Key", format!("{tag}-{i}"))
            .json(&json!({"customer_id": format!("{tag}-c{i}"), "payment_method_id": "pm_card_visa", "lines": [{"sku": drop, "quantity": 1}]}))
    })
    .await;
    print_step("flash sale (409 sold_out)", &step);
    println!("targets: accept p99 < 25 ms at the highest sustained rate; sold-out p99 < 5 ms");
    Ok(())
}

fn order(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    skus: &[String],
    tag: &str,
    i: u64,
) -> reqwest::RequestBuilder {
    let (a, b) = (&skus[(i % 20) as usize], &skus[((i + 7) % 20) as usize]);
    http.post(format!("{base}/api/orders"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("{tag}-{i}"))
        .json(&json!({"customer_id": format!("{tag}-c{}", i % 1000), "payment_method_id": "pm_card_visa", "lines": [{"sku": a, "quantity": 1}, {"sku": b, "quantity": 2}]}))
}
