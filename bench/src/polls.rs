//! `kassa bench polls`: long polls at scale. The orders are placed while the orders processor is
//! stopped; `--waiters` requests, spread evenly over them, long-poll `GET /api/orders/{id}?wait=30`
//! until their order is final; once every waiter is parked the orders processor starts, and every
//! order moves through its states while they wait. The bench LISTENs on the status channel itself
//! and notes when each order's change was announced (at its commit); an answer's delay is its
//! arrival minus the last announcement for its order before it. When half the waiters have seen
//! their order end, the API loses its status listener (its backend terminated) or, with
//! `--restart-postgres`, Postgres itself is restarted (`scripts/dev down/up postgres`).
//!
//! The API runs as its own process (`kassa run api`), as deployed: the waiters' sockets and the
//! API's would not both fit one process's file limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kassa_ops::settings::Settings;
use kassa_ops::supervisor::Component;
use kassa_processors::ConsumerGroup;
use kassa_schemas::read_model::ORDER_STATUS_CHANNEL;

/// SKUs the orders spread over.
const SKUS: usize = 20;
/// The longest the whole run may take once the orders processor starts.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The application name of the bench's own listener.
const BENCH_LISTENER: &str = "kassa-bench-polls";
/// The delay the issue holds each answer to.
const TARGET: Duration = Duration::from_millis(100);

/// What one waiter's answer was.
enum Answer {
    /// A new status for `order`, received at `at`.
    Changed { order: Arc<str>, at: Instant },
    /// The wait ran out with nothing new.
    Unchanged,
    /// Not 200: the status code (0: no answer at all).
    Failed(u16),
}

/// What the waiters share.
#[derive(Default)]
struct Tally {
    answers: Mutex<Vec<Answer>>,
    parked: AtomicUsize,
    ended: AtomicUsize,
}

/// Runs `orders` orders with `waiters` long-polling them (see the module doc).
pub async fn run(
    settings: &Settings,
    orders: usize,
    waiters: usize,
    restart_postgres: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        orders > 0 && waiters >= orders,
        "--orders must be positive and --waiters at least --orders"
    );
    let pool = kassa_ops::migrate::connect(settings).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let key = kassa_api::auth::create_key(
        &pool,
        kassa_api::auth::KeyKind::Storefront,
        &format!("bench-polls-{run}"),
    )
    .await?;
    let skus: Vec<String> = (0..SKUS).map(|i| format!("BPOLL-{run}-{i}")).collect();
    super::api::catalog(&pool, &skus).await?;

    let others: Vec<Component> = [
        ConsumerGroup::Inventory,
        ConsumerGroup::Payments,
        ConsumerGroup::Expiry,
    ]
    .into_iter()
    .map(Component::Processor)
    .collect();
    let running = super::start_here(settings, &others)?;
    let stock: Vec<(String, i64)> = skus.iter().map(|s| (s.clone(), orders as i64)).collect();
    super::orders::stock(settings, &stock, &format!("BPOLL-{run}")).await?;
    let (base, _api) = api_process().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(waiters + 64)
        .timeout(Duration::from_secs(45))
        .build()?;

    println!(
        "polls bench: {orders} orders, {waiters} waiters ({} per order) long-polling until final; \
         API as its own process, processors in this one; {}",
        waiters / orders,
        if restart_postgres {
            "Postgres restarted when half the waiters saw their order end"
        } else {
            "the API's status listener cut when half the waiters saw their order end"
        }
    );
    // Orders wait at the orders processor (not running yet): every one is `accepted`.
    let bodies: Vec<serde_json::Value> = (0..orders)
        .map(|i| {
            serde_json::json!({"customer_id": format!("bpoll-{run}-c{i}"), "payment_method_id": "pm_card_visa",
                               "lines": [{"sku": skus[i % skus.len()], "quantity": 1}]})
        })
        .collect();
    let (placed, not_accepted) =
        super::orders::place(&http, &base, &key, &format!("bpoll-{run}"), &bodies, 500).await;
    anyhow::ensure!(
        placed.len() == orders,
        "only {} of {orders} orders accepted; the others were answered {not_accepted:?}",
        placed.len()
    );

    let announced = listen(settings).await?;
    let tally = Arc::new(Tally::default());
    let mut tasks = tokio::task::JoinSet::new();
    let placed: Vec<(Arc<str>, String)> = placed
        .into_iter()
        .map(|(id, placed)| (Arc::from(id.as_str()), placed.customer))
        .collect();
    for w in 0..waiters {
        let (order, customer) = placed[w % orders].clone();
        let (http, base, key, tally) = (http.clone(), base.clone(), key.clone(), tally.clone());
        tasks.spawn(async move { wait(&http, &base, &key, order, &customer, &tally).await });
    }
    let parked_by = Instant::now() + Duration::from_secs(120);
    while tally.parked.load(Ordering::SeqCst) < waiters {
        anyhow::ensure!(
            Instant::now() < parked_by,
            "only {} of {waiters} waiters parked within 120 s",
            tally.parked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll the parked count until all are or the deadline
    }
    println!("{waiters} waiters parked; starting the orders processor");
    let started = Instant::now();
    let orders_processor =
        super::start_here(settings, &[Component::Processor(ConsumerGroup::Orders)])?;

    // The fault, once half the waiters have seen their order end.
    while tally.ended.load(Ordering::SeqCst) < waiters / 2 && started.elapsed() < RUN_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await; // poll the ended count until half or the limit
    }
    if restart_postgres {
        let down = std::process::Command::new("scripts/dev")
            .args(["down", "postgres"])
            .status()?;
        let up = std::process::Command::new("scripts/dev")
            .args(["up", "postgres"])
            .status()?;
        anyhow::ensure!(
            down.success() && up.success(),
            "restarting Postgres with scripts/dev (run from the repository)"
        );
        println!(
            "Postgres restarted at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        let cut: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN%' AND query LIKE '%' || $1 || '%' AND application_name <> $2",
        )
        .bind(ORDER_STATUS_CHANNEL)
        .bind(BENCH_LISTENER)
        .fetch_all(&pool)
        .await?;
        println!(
            "{} status listener(s) cut at {:.1} s",
            cut.len(),
            started.elapsed().as_secs_f64()
        );
    }

    let limit = tokio::time::sleep(RUN_LIMIT.saturating_sub(started.elapsed()));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            done = tasks.join_next() => if done.is_none() { break },
            () = &mut limit => {
                println!("stopped at the {RUN_LIMIT:?} limit with {} waiters still waiting", tasks.len());
                tasks.abort_all();
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let api_side = histogram(&http, &base, "kassa_order_status_wake_seconds").await;
    let reads = histogram(&http, &base, "kassa_order_status_read_seconds").await;
    orders_processor.stop();
    orders_processor.wait().await?;
    running.stop();
    running.wait().await?;

    report(&tally, &announced, waiters, elapsed);
    match api_side {
        Ok(buckets) => println!(
            "the API, from hearing a change to answering (kassa_order_status_wake_seconds): {buckets}"
        ),
        Err(e) => println!("the API's wake histogram could not be read: {e}"),
    }
    match reads {
        Ok(buckets) => println!(
            "the API's status reads, each one statement for the orders asked meanwhile (kassa_order_status_read_seconds): {buckets}"
        ),
        Err(e) => println!("the API's read histogram could not be read: {e}"),
    }
    Ok(())
}

/// The share of the API's `name` histogram within each bucket.
async fn histogram(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<String> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
        .ok_or_else(|| anyhow::anyhow!("{name} not exported"))?
        .trim()
        .parse()?;
    let shares: Vec<String> = ["0.01", "0.025", "0.05", "0.1", "0.25", "1"]
        .iter()
        .filter_map(|le| {
            let prefix = format!("{name}_bucket{{le=\"{le}\"}} ");
            let n: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))?
                .trim()
                .parse()
                .ok()?;
            Some(format!(
                "<= {} ms {:.1}%",
                (le.parse::<f64>().ok()? * 1000.0),
                100.0 * n / count
            ))
        })
        .collect();
    Ok(format!("{} of {count}", shares.join(", ")))
}

/// One waiter: reads its order, then long-polls it until it is final.
async fn wait(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    order: Arc<str>,
    customer: &str,
    tally: &Tally,
) {
    let mut since: Option<String> = None;
    loop {
        let url = match &since {
            None => format!("{base}/api/orders/{order}"),
            Some(s) => format!("{base}/api/orders/{order}?wait=30&since={s}"),
        };
        let answer = http
            .get(url)
            .bearer_auth(key)
            .header("X-Customer-Id", customer)
            .send()
            .await;
        let at = Instant::now();
        let response = match answer {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r,
            Ok(r) => {
                tally.push(Answer::Failed(r.status().as_u16()));
                tokio::time::sleep(Duration::from_secs(1)).await; // Retry-After
                continue;
            }
            Err(_) => {
                tally.push(Answer::Failed(0));
                tokio::time::sleep(Duration::from_secs(1)).await; // back off before asking again
                continue;
            }
        };
        let Ok(body) = response.json::<serde_json::Value>().await else {
            tally.push(Answer::Failed(0));
            continue;
        };
        let status = body["status"].as_str().unwrap_or_default().to_owned();
        match &since {
            None => {
                tally.parked.fetch_add(1, Ordering::SeqCst);
            }
            Some(s) if *s == status => tally.push(Answer::Unchanged),
            Some(_) => tally.push(Answer::Changed {
                order: order.clone(),
                at,
            }),
        }
        if ["completed", "rejected", "cancelled"].contains(&status.as_str()) {
            tally.ended.fetch_add(1, Ordering::SeqCst);
            return;
        }
        since = Some(status);
    }
}

impl Tally {
    fn push(&self, answer: Answer) {
        self.answers.lock().expect("answers").push(answer);
    }
}

/// When each order's changes were announced on the status channel, as this process heard them.
type Announced = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// Listens on the status channel in the background; returns what it has heard so far.
async fn listen(settings: &Settings) -> anyhow::Result<Announced> {
    // Named, so the cut of the API's listener spares this one.
    let options: sqlx::postgres::PgConnectOptions = settings.database_url.expose().parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.application_name(BENCH_LISTENER))
        .await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(ORDER_STATUS_CHANNEL).await?;
    let announced: Announced = Arc::default();
    let heard = announced.clone();
    tokio::spawn(async move {
        // recv reconnects after a lost connection; it errs only when it cannot.
        while let Ok(n) = listener.recv().await {
            let at = Instant::now();
            heard
                .lock()
                .expect("announced")
                .entry(n.payload().to_owned())
                .or_default()
                .push(at);
        }
    });
    Ok(announced)
}

/// Starts `kassa run api` (this binary) on a free port with limits for the crowd; returns its
/// base URL and the process (killed when dropped).
async fn api_process() -> anyhow::Result<(String, tokio::process::Child)> {
    let free = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, ops_port) = (free()?, free()?);
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["run", "api"])
        .env("KASSA_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("KASSA_OPS_ADDR", format!("127.0.0.1:{ops_port}"))
        .env("KASSA_HTTP_MAX_CONNECTIONS", "19000")
        .env("KASSA_RATE_STOREFRONT_PER_SECOND", "1000000")
        .env("KASSA_RATE_CUSTOMER_PER_SECOND", "1000000")
        .env("KASSA_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok((base, child));
        }
        anyhow::ensure!(
            Instant::now() < ready_by,
            "the API was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll /ready until it answers or the deadline
    }
}

/// Prints the delays and the failures.
fn report(tally: &Tally, announced: &Announced, waiters: usize, elapsed: Duration) {
    let answers = tally.answers.lock().expect("answers");
    let announced = announced.lock().expect("announced");
    let mut delays: Vec<Duration> = Vec::new();
    let (mut unchanged, mut unheard) = (0usize, 0usize);
    let mut failed: HashMap<u16, usize> = HashMap::new();
    for answer in answers.iter() {
        match answer {
            Answer::Changed { order, at } => {
                let before = announced
                    .get(order.as_ref())
                    .and_then(|times| times.iter().filter(|t| *t <= at).max());
                match before {
                    Some(t) => delays.push(*at - *t),
                    None => unheard += 1,
                }
            }
            Answer::Unchanged => unchanged += 1,
            Answer::Failed(code) => *failed.entry(*code).or_default() += 1,
        }
    }
    delays.sort_unstable();
    let at = |q: f64| super::quantile(&delays, q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let over = delays.iter().filter(|d| **d > TARGET).count();
    println!(
        "ended: {} of {waiters} waiters saw their order's end, in {:.1} s",
        tally.ended.load(Ordering::SeqCst),
        elapsed.as_secs_f64()
    );
    println!(
        "answers bringing a new status: {}; delay after the order's announcement: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; over {} ms: {over}",
        delays.len(),
        at(0.5),
        at(0.99),
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        TARGET.as_millis()
    );
    println!(
        "waits that ran out unchanged: {unchanged}; new statuses whose announcement this process did not hear: {unheard}; failed answers (status: count, 0 = no answer): {failed:?}"
    );
    println!("target: every waiter answered within 100 ms of its order's change, no 503 burst");
}
