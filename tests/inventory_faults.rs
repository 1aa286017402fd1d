//! The inventory processor under faults, against real Kafka, the registry and Postgres: killed
//! with SIGKILL while requests stream in, two instances with one killed, a database outage.
//! Afterwards every request has exactly one outcome, no SKU is oversold, and the units add up.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::inventory::{Feed, Outcomes, Processor, end_offsets, reserve, stock_of};
use kassa_schemas::Topic;
use kassa_schemas::events::inventory::InventoryEvent;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small deterministic generator (xorshift64*), seeded per run.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One test's load: SKUs with stock, and requests (order id, SKU, quantity).
struct Load {
    run: String,
    skus: Vec<String>,
    stocked: i64,
    requests: Vec<(String, String, i32)>,
}

impl Load {
    fn new(skus: usize, stocked: i64, requests: usize, rng: &mut Rng) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let skus: Vec<String> = (0..skus).map(|i| format!("F-{run}-{i}")).collect();
        let requests = (0..requests)
            .map(|i| (format!("{run}-{i}"), skus[rng.below(skus.len() as u64) as usize].clone(), 1 + rng.below(2) as i32))
            .collect();
        Self { run, skus, stocked, requests }
    }

    async fn stock(&self, settings: &kassa::settings::Settings, feed: &Feed) {
        let stock: Vec<(&str, i64)> = self.skus.iter().map(|s| (s.as_str(), self.stocked)).collect();
        feed.set_stock(settings, &stock).await;
    }

    /// Streams the requests at about `per_second`, in acknowledged chunks.
    async fn stream(&self, feed: &Feed, per_second: usize) {
        let chunk = (per_second / 10).max(1);
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for part in self.requests.chunks(chunk) {
            pace.tick().await;
            let sends = part.iter().map(|(order, sku, quantity)| async move {
                feed.send(sku, &reserve(order, 0, sku, *quantity)).await;
            });
            futures::future::join_all(sends).await;
        }
    }
}

/// Checks the books after a run; returns the number of physical duplicates the relay re-sent.
async fn check_books(pool: &sqlx::PgPool, load: &Load, outcomes: &Outcomes) -> usize {
    let lines = outcomes.lines();
    let asked: HashSet<&str> = load.requests.iter().map(|(o, _, _)| o.as_str()).collect();
    assert_eq!(lines.len(), load.requests.len(), "every request has an outcome");
    let mut duplicates = 0;
    let mut reserved_by_events: HashMap<String, i64> = HashMap::new();
    for ((order, _), events) in &lines {
        assert!(asked.contains(order.as_str()), "an outcome for an order never asked: {order}");
        let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), 1, "order {order}: exactly one decision, got {events:?}");
        duplicates += events.len() - 1;
        match &events[0].payload {
            InventoryEvent::Reserved(r) => *reserved_by_events.entry(r.sku.clone()).or_default() += i64::from(r.quantity),
            InventoryEvent::Rejected(_) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    for sku in &load.skus {
        let (on_hand, reserved, committed) = stock_of(pool, sku).await.expect("stocked SKU has a row");
        assert!(on_hand >= 0 && reserved >= 0 && committed >= 0, "{sku}: ({on_hand}, {reserved}, {committed})");
        assert_eq!(on_hand + reserved + committed, load.stocked, "{sku}: units add up to what was stocked");
        assert_eq!(reserved, reserved_by_events.get(sku).copied().unwrap_or(0), "{sku}: held = announced holds");
        let active: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM inventory.reservations WHERE sku = $1 AND status = 'active'",
        )
        .bind(sku)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(active, reserved, "{sku}: reservation rows agree with the stock row");
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_five_times_while_20000_requests_stream_in() {
    let _serial = SERIAL.lock().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(20, 500, 20_000, &mut rng);
    let outcomes = Outcomes::collect(&settings, end_offsets(&settings, Topic::InventoryEvents.name()), load.run.clone());
    let instance = format!("crash-{}", load.run);
    let mut processor = Processor::start_inventory_as(Some(&instance));
    load.stock(&settings, &feed).await;
    let started = Instant::now();

    let streaming = load.stream(&feed, 4_000);
    let killing = async {
        let mut kills = 0;
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        // Kill whenever the answered count crosses a random threshold, while work is in flight.
        while kills < 6 {
            let threshold = (kills + 1) * 2_500 + rng.below(1_500) as usize;
            while outcomes.count() < threshold {
                assert!(started.elapsed() < Duration::from_secs(240), "stalled at {} outcomes", outcomes.count());
                poll.tick().await;
            }
            processor.kill();
            kills += 1;
            processor = Processor::start_inventory_as(Some(&instance));
        }
        kills
    };
    let ((), kills) = tokio::join!(streaming, killing);
    outcomes.wait_for_lines(load.requests.len(), Duration::from_secs(240)).await;
    let duplicates = check_books(&pool, &load, &outcomes).await;
    println!(
        "crash test: {} requests, {kills} SIGKILLs, {} outcome messages, {duplicates} physical duplicates re-sent, {:.1}s",
        load.requests.len(),
        outcomes.count(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_partitions_and_one_is_killed_mid_stream() {
    let _serial = SERIAL.lock().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(20, 300, 10_000, &mut rng);
    let outcomes = Outcomes::collect(&settings, end_offsets(&settings, Topic::InventoryEvents.name()), load.run.clone());
    let _survivor = Processor::start_inventory();
    let mut victim = Processor::start_inventory();
    load.stock(&settings, &feed).await;

    let streaming = load.stream(&feed, 2_000);
    let killing = async {
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        let threshold = 3_000 + rng.below(2_000) as usize;
        while outcomes.count() < threshold {
            poll.tick().await;
        }
        victim.kill();
    };
    tokio::join!(streaming, killing);
    outcomes.wait_for_lines(load.requests.len(), Duration::from_secs(180)).await;
    let duplicates = check_books(&pool, &load, &outcomes).await;
    println!("two instances: {} requests, one killed, {duplicates} physical duplicates", load.requests.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_database_outage_loses_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(10, 300, 5_000, &mut rng);
    let outcomes = Outcomes::collect(&settings, end_offsets(&settings, Topic::InventoryEvents.name()), load.run.clone());
    let _processor = Processor::start_inventory();
    load.stock(&settings, &feed).await;

    const OUTAGE: Duration = Duration::from_secs(10);
    let dev = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev");
    let streaming = load.stream(&feed, 1_000);
    let outage = async {
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        while outcomes.count() < 1_000 {
            poll.tick().await;
        }
        // Not recorded as started by scripts/test: this restart gives back what was running.
        let dev_cmd = |args: [&str; 2]| Command::new(dev).args(args).env_remove("KASSA_UP_STARTED_FILE").status().unwrap();
        assert!(dev_cmd(["down", "postgres"]).success());
        let during = outcomes.count();
        tokio::time::sleep(OUTAGE).await; // the fault's length is the test's input, not a wait for a condition
        let after_outage = outcomes.count();
        assert!(dev_cmd(["up", "postgres"]).success());
        (during, after_outage)
    };
    let ((), (during, after_outage)) = tokio::join!(streaming, outage);
    outcomes.wait_for_lines(load.requests.len(), Duration::from_secs(180)).await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let duplicates = check_books(&pool, &load, &outcomes).await;
    println!(
        "database outage: {} requests; outcomes {during} at the stop, {after_outage} after 10 s down (relay drained what was committed), {duplicates} physical duplicates",
        load.requests.len()
    );
}
