//! The inventory processor under faults, against real Kafka, the registry and Postgres: killed
//! with SIGKILL while requests stream in, two instances with one killed, a database outage.
//! Afterwards every request has exactly one outcome, no SKU is oversold, and the units add up.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::inventory::{Feed, Outcomes, Processor, end_offsets, reserve, stock_of};
use kassa_schemas::Topic;
use kassa_schemas::events::inventory::InventoryEvent;

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
            .map(|i| {
                (
                    format!("{run}-{i}"),
                    skus[rng.below(skus.len() as u64) as usize].clone(),
                    1 + rng.below(2) as i32,
                )
            })
            .collect();
        Self {
            run,
            skus,
            stocked,
            requests,
        }
    }

    async fn stock(&self, settings: &kassa::settings::Settings, feed: &Feed) {
        let stock: Vec<(&str, i64)> = self
            .skus
            .iter()
            .map(|s| (s.as_str(), self.stocked))
            .collect();
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
    assert_eq!(
        lines.len(),
        load.requests.len(),
        "every request has an outcome"
    );
    let mut duplicates = 0;
    let mut reserved_by_events: HashMap<String, i64> = HashMap::new();
    for ((order, _), events) in &lines {
        assert!(
            asked.contains(order.as_str()),
            "an outcome for an order never asked: {order}"
        );
        let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(
            ids.len(),
            1,
            "order {order}: exactly one decision, got {events:?}"
        );
        duplicates += events.len() - 1;
        match &events[0].payload {
            InventoryEvent::Reserved(r) => {
                *reserved_by_events.entry(r.sku.clone()).or_default() += i64::from(r.quantity)
            }
            InventoryEvent::Rejected(_) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    for sku in &load.skus {
        let (on_hand, reserved, committed) =
            stock_of(pool, sku).await.expect("stocked SKU has a row");
        assert!(
            on_hand >= 0 && reserved >= 0 && committed >= 0,
            "{sku}: ({on_hand}, {reserved}, {committed})"
        );
        assert_eq!(
            on_hand + reserved + committed,
            load.stocked,
            "{sku}: units add up to what was stocked"
        );
        assert_eq!(
            reserved,
            reserved_by_events.get(sku).copied().unwrap_or(0),
            "{sku}: held = announced holds"
        );
        let active: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM inventory.reservations WHERE sku = $1 AND status = 'active'",
        )
        .bind(sku)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            active, reserved,
            "{sku}: reservation rows agree with the stock row"
        );
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_five_times_while_20000_requests_stream_in() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(20, 500, 20_000, &mut rng);
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        load.run.clone(),
    );
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
                assert!(
                    started.elapsed() < Duration::from_secs(240),
                    "stalled at {} outcomes",
                    outcomes.count()
                );
                poll.tick().await;
            }
            processor.kill();
            kills += 1;
            processor = Processor::start_inventory_as(Some(&instance));
        }
        kills
    };
    let ((), kills) = tokio::join!(streaming, killing);
    outcomes
        .wait_for_lines(load.requests.len(), Duration::from_secs(240))
        .await;
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
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(20, 300, 10_000, &mut rng);
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        load.run.clone(),
    );
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
    outcomes
        .wait_for_lines(load.requests.len(), Duration::from_secs(180))
        .await;
    let duplicates = check_books(&pool, &load, &outcomes).await;
    println!(
        "two instances: {} requests, one killed, {duplicates} physical duplicates",
        load.requests.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_database_outage_loses_and_doubles_nothing() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let mut rng = Rng::new();
    let load = Load::new(10, 300, 5_000, &mut rng);
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        load.run.clone(),
    );
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
        let dev_cmd = |args: [&str; 2]| {
            Command::new(dev)
                .args(args)
                .env_remove("KASSA_UP_STARTED_FILE")
                .status()
                .unwrap()
        };
        assert!(dev_cmd(["down", "postgres"]).success());
        let during = outcomes.count();
        tokio::time::sleep(OUTAGE).await; // the fault's length is the test's input, not a wait for a condition
        let after_outage = outcomes.count();
        assert!(dev_cmd(["up", "postgres"]).success());
        (during, after_outage)
    };
    let ((), (during, after_outage)) = tokio::join!(streaming, outage);
    outcomes
        .wait_for_lines(load.requests.len(), Duration::from_secs(180))
        .await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let duplicates = check_books(&pool, &load, &outcomes).await;
    println!(
        "database outage: {} requests; outcomes {during} at the stop, {after_outage} after 10 s down (relay drained what was committed), {duplicates} physical duplicates",
        load.requests.len()
    );
}

/// The records of `topic`/`partition` in `[from, to)` whose event id is in neither the inbox nor
/// a dead letter, and whose offset no recorded move (intended or reported) covers: what was
/// passed over silently.
async fn passed_over_silently(
    settings: &kassa::settings::Settings,
    pool: &sqlx::PgPool,
    partition: i32,
    from: i64,
    to: i64,
) -> Vec<i64> {
    use rdkafka::Message;
    let feed = Feed::new(settings);
    let records = common::read_from(
        settings,
        Topic::CheckoutRequests.name(),
        partition,
        from,
        common::Isolation::Committed,
        Duration::from_secs(30),
        |m| m.last().is_some_and(|m| m.offset() + 1 >= to),
    );
    let mut silent = Vec::new();
    for record in records.iter().filter(|m| m.offset() < to) {
        let event: kassa_schemas::Envelope<kassa_schemas::events::checkout::CheckoutPayload> = feed
            .codec
            .decode(record.payload().expect("value"))
            .await
            .expect("a valid request");
        let inboxed: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inventory.inbox WHERE event_id = $1)")
                .bind(event.event_id)
                .fetch_one(pool)
                .await
                .unwrap();
        let accounted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inventory.offset_moves WHERE topic = $1 AND partition = $2
                             AND $3 >= coalesce(from_offset, 0) AND $3 < to_offset)",
        )
        .bind(Topic::CheckoutRequests.name())
        .bind(partition)
        .bind(record.offset())
        .fetch_one(pool)
        .await
        .unwrap();
        if !inboxed && !accounted {
            silent.push(record.offset());
        }
    }
    silent
}

/// Moves inventory's stored offset of `partition` to the end while the processor is mid-batch:
/// holds the row lock until the processor's batch waits on it, produces `more` requests, then
/// moves the offset (recording the move as an operator would when `intended`) and commits.
/// Returns (the stored offset before, the end it was moved to).
async fn move_offset_under_the_processor(
    settings: &kassa::settings::Settings,
    pool: &sqlx::PgPool,
    feed: &Feed,
    sku: &str,
    partition: i32,
    run: &str,
    intended: bool,
) -> (i64, i64) {
    let topic = Topic::CheckoutRequests.name();
    let mut tx = pool.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT next_offset FROM inventory.consumer_offsets WHERE topic = $1 AND partition = $2 FOR UPDATE")
        .bind(topic)
        .bind(partition)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    for i in 0..30 {
        feed.send(sku, &reserve(&format!("{run}-moved-{i}"), 0, sku, 1))
            .await;
    }
    // Wait until the processor's batch is blocked on the row this transaction holds.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%consumer_offsets%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the processor never tried to advance past the held row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll pg_stat_activity until the deadline
    }
    let end = end_offsets(settings, topic)[&partition];
    if intended {
        sqlx::query(
            "INSERT INTO inventory.offset_moves (topic, partition, from_offset, to_offset, intended, moved_by, reason)
             VALUES ($1, $2, $3, $4, true, 'kassa tests', 'an operator skips a backlog under a running processor')",
        )
        .bind(topic)
        .bind(partition)
        .bind(before)
        .bind(end)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE inventory.consumer_offsets SET next_offset = $3 WHERE topic = $1 AND partition = $2")
        .bind(topic)
        .bind(partition)
        .bind(end)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (before, end)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offset_moved_under_a_running_processor_is_reported_never_taken_silently() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("MOVE-{run}");
    let topic = Topic::CheckoutRequests.name();
    let partitions = end_offsets(&settings, topic).len() as u32;
    let partition = kassa_schemas::kafka::java_partition(sku.as_bytes(), partitions) as i32;
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        run.clone(),
    );
    let _processor = Processor::start_inventory();
    feed.set_stock(&settings, &[(sku.as_str(), 1_000)]).await;
    let first = end_offsets(&settings, topic)[&partition];
    for i in 0..20 {
        feed.send(&sku, &reserve(&format!("{run}-before-{i}"), 0, &sku, 1))
            .await;
    }
    outcomes.wait_for_lines(20, Duration::from_secs(60)).await;

    // Nobody says so: the processor must report the records it was made to pass over.
    let (before, end) =
        move_offset_under_the_processor(&settings, &pool, &feed, &sku, partition, &run, false)
            .await;
    for i in 0..10 {
        feed.send(&sku, &reserve(&format!("{run}-after-{i}"), 0, &sku, 1))
            .await;
    }
    let answered_after = |outcomes: &Outcomes| {
        outcomes
            .lines()
            .keys()
            .filter(|(o, _)| o.contains("-after-"))
            .count()
    };
    let started = Instant::now();
    while answered_after(&outcomes) < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the processor did not go on after the move"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll the outcomes until the deadline
    }
    let reported: Vec<(Option<i64>, i64, bool)> = sqlx::query_as(
        "SELECT from_offset, to_offset, intended FROM inventory.offset_moves WHERE topic = $1 AND partition = $2 AND to_offset > $3",
    )
    .bind(topic)
    .bind(partition)
    .bind(before)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        reported.iter().any(|(from, to, intended)| !intended
            && from.is_some_and(|f| f >= before)
            && *to <= end),
        "the skip of [{before}, {end}) is reported as unintended: {reported:?}"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT next_offset FROM inventory.consumer_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_one(&pool)
    .await
    .unwrap();
    let silent = passed_over_silently(&settings, &pool, partition, first, stored).await;
    assert!(
        silent.is_empty(),
        "records passed over without a trace: offsets {silent:?}"
    );

    // An operator's move, recorded: the processor reports it as intended, and nothing else.
    let (before, end) =
        move_offset_under_the_processor(&settings, &pool, &feed, &sku, partition, &run, true).await;
    for i in 10..20 {
        feed.send(&sku, &reserve(&format!("{run}-after-{i}"), 0, &sku, 1))
            .await;
    }
    let started = Instant::now();
    while answered_after(&outcomes) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the processor did not go on after the operator's move"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll the outcomes until the deadline
    }
    let unintended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory.offset_moves WHERE topic = $1 AND partition = $2 AND NOT intended AND from_offset >= $3",
    )
    .bind(topic)
    .bind(partition)
    .bind(before)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        unintended, 0,
        "an operator's recorded move of [{before}, {end}) is not reported as a fault"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT next_offset FROM inventory.consumer_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_one(&pool)
    .await
    .unwrap();
    let silent = passed_over_silently(&settings, &pool, partition, first, stored).await;
    assert!(
        silent.is_empty(),
        "records passed over without a trace: offsets {silent:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_fails_every_time_is_dead_lettered_and_its_partition_moves_on() {
    use kassa_schemas::events::inventory::{InventoryCommand, Restock, SetStock};
    use kassa_schemas::{ConsumerGroup, Envelope};
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // A stock row the database refuses every time: a trigger stands in for a bug that fails one
    // message deterministically (a constraint violation).
    for statement in [
        "CREATE OR REPLACE FUNCTION inventory.kassa_test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.sku LIKE 'POISON-%' THEN
             RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'check_violation';
           END IF;
           RETURN NEW;
         END $$",
        "DROP TRIGGER IF EXISTS kassa_test_refuse_poison ON inventory.stock",
        "CREATE TRIGGER kassa_test_refuse_poison BEFORE INSERT OR UPDATE ON inventory.stock
         FOR EACH ROW EXECUTE FUNCTION inventory.kassa_test_refuse_poison()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let poison = format!("POISON-{run}");
    let absurd = format!("ABSURD-{run}");
    let topic = Topic::InventoryCommands.name();
    let partitions = end_offsets(&settings, topic).len() as u32;
    let partition_of = |sku: &str| kassa_schemas::kafka::java_partition(sku.as_bytes(), partitions);
    // Good SKUs on the poison's partition: their commands queue behind it.
    let good: Vec<String> = (0..)
        .map(|i| format!("G-{run}-{i}"))
        .filter(|s| partition_of(s) == partition_of(&poison))
        .take(5)
        .collect();
    let dlq = ConsumerGroup::Inventory.dlq_topic();
    let dlq_from = end_offsets(&settings, &dlq);
    let events_from = end_offsets(&settings, Topic::InventoryEvents.name());
    let _processor = Processor::start_inventory();

    let command = |sku: &str, payload: InventoryCommand| Envelope::new(sku, None, payload);
    let set = |sku: &str, on_hand: i64| {
        command(
            sku,
            InventoryCommand::SetStock(SetStock {
                sku: sku.into(),
                on_hand,
                reason: "test".into(),
            }),
        )
    };
    let restock = |sku: &str, quantity: i32| {
        command(
            sku,
            InventoryCommand::Restock(Restock {
                sku: sku.into(),
                quantity,
                order_id: None,
                line_index: None,
                reason: "test".into(),
            }),
        )
    };
    // One burst, so the poison shares batches with good commands before and after it.
    for sku in &good[..2] {
        feed.send(sku, &set(sku, 10)).await;
    }
    feed.send(&poison, &set(&poison, 10)).await;
    for sku in &good[2..] {
        feed.send(sku, &set(sku, 10)).await;
    }
    feed.send(&absurd, &set(&absurd, i64::MAX)).await;
    feed.send(&absurd, &restock(&absurd, 1)).await;
    for sku in &good {
        feed.send(sku, &restock(sku, 5)).await;
    }

    let answered: Vec<&[u8]> = good
        .iter()
        .map(|s| s.as_bytes())
        .chain([absurd.as_bytes()])
        .collect();
    common::inventory::read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &events_from,
        Duration::from_secs(120),
        |m| answered.contains(&m.key().unwrap_or_default()),
        |n| n > 2 * good.len(),
    );
    for sku in &good {
        assert_eq!(
            stock_of(&pool, sku).await,
            Some((15, 0, 0)),
            "{sku}: counted, then restocked"
        );
    }
    assert_eq!(
        stock_of(&pool, &absurd).await,
        Some((1, 0, 0)),
        "an absurd count is refused, the delivery after it taken"
    );
    let dead = common::inventory::read_until(
        &settings,
        &dlq,
        &dlq_from,
        Duration::from_secs(60),
        |m| [poison.as_bytes(), absurd.as_bytes()].contains(&m.key().unwrap_or_default()),
        |n| n >= 2,
    );
    let reason = |m: &rdkafka::message::OwnedMessage| {
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "kassa.dlq.reason"))
            .expect("a reason");
        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned()
    };
    let of = |sku: &str| {
        dead.iter()
            .find(|m| m.key() == Some(sku.as_bytes()))
            .map(reason)
            .unwrap_or_default()
    };
    assert!(
        of(&poison).starts_with("failed 3 times")
            && of(&poison).contains("refused by a test trigger"),
        "{}",
        of(&poison)
    );
    assert!(of(&absurd).starts_with("invalid:"), "{}", of(&absurd));
    sqlx::query("DROP TRIGGER IF EXISTS kassa_test_refuse_poison ON inventory.stock")
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_black_holed_during_a_flash_sales_releases_stalls_nothing_and_gives_each_token_back_once()
 {
    use common::proxy::{Fault, FaultProxy};
    use kassa_schemas::Envelope;
    use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
    use kassa_schemas::events::inventory::{InventoryCommand, Release};
    use kassa_schemas::flash_keys::tokens_key;
    const BUYERS: usize = 1_000;
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("FLASH-{run}");
    let mut redis = common::redis_server::PrivateRedis::reserve();
    redis.start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream, Fault::Pass).await;
    let proxied = format!("redis://{}", proxy.addr);
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        run.clone(),
    );
    let _processor = Processor::start("inventory", &[("KASSA_REDIS_URL", proxied.as_str())]);
    feed.set_stock(&settings, &[(sku.as_str(), BUYERS as i64)])
        .await;

    // A sale of 1,000 units: every buyer holds one (the gate took all the tokens).
    let mut direct = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg(tokens_key(&sku))
        .arg(0)
        .query_async(&mut direct)
        .await
        .unwrap();
    for i in 0..BUYERS {
        let order = format!("{run}-{i}");
        let reserve = Reserve {
            order_id: order.clone(),
            line_index: 0,
            line_count: 1,
            sku: sku.clone(),
            quantity: 1,
            customer_id: format!("cus_{run}_{i}"),
            currency: "EUR".into(),
            unit_price_minor: 1000,
            payment_method_id: "pm_card_visa".into(),
            hold_seconds: 60,
            flash_sale: true,
        };
        feed.send(
            &sku,
            &Envelope::new(order.as_str(), None, CheckoutPayload::Reserve(reserve)),
        )
        .await;
    }
    outcomes
        .wait_for_lines(BUYERS, Duration::from_secs(120))
        .await;

    // Redis takes requests and never answers, while every hold is released.
    proxy.set(Fault::DropReplies);
    let released_from = outcomes.count();
    let started = Instant::now();
    for i in 0..BUYERS {
        let order = format!("{run}-{i}");
        let release = Release {
            order_id: order.clone(),
            line_index: 0,
            sku: sku.clone(),
            reason: "test".into(),
        };
        feed.send(
            &sku,
            &Envelope::new(order.as_str(), None, InventoryCommand::Release(release)),
        )
        .await;
    }
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while outcomes.count() < released_from + BUYERS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "releases stalled behind Redis: {} of {BUYERS} answered",
            outcomes.count() - released_from
        );
        poll.tick().await;
    }
    let releases_took = started.elapsed();
    assert_eq!(
        stock_of(&pool, &sku).await,
        Some((BUYERS as i64, 0, 0)),
        "every unit is back in stock"
    );

    // Redis answers again: every token comes back, exactly once, although Redis already applied
    // the give-backs whose answers it dropped.
    proxy.set(Fault::Pass);
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inventory.flash_give_backs WHERE sku = $1")
                .bind(&sku)
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{pending} give-backs still pending after Redis came back"
        );
        poll.tick().await;
    }
    let tokens: i64 = redis::cmd("GET")
        .arg(tokens_key(&sku))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(
        tokens, BUYERS as i64,
        "each released unit's token came back exactly once"
    );
    println!(
        "flash releases with Redis black-holed: {BUYERS} releases answered in {releases_took:?}; tokens back within {:?} of Redis answering",
        started.elapsed()
    );
}

/// Waits (up to 60 s) until the Kafka consumer group `id` is stable with `members` members.
async fn wait_stable(settings: &kassa::settings::Settings, id: &str, members: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .expect("consumer");
    let started = Instant::now();
    loop {
        let list = consumer
            .fetch_group_list(Some(id), Duration::from_secs(10))
            .expect("group list");
        let group = list.groups().iter().find(|g| g.name() == id);
        if group.is_some_and(|g| g.state() == "Stable" && g.members().len() == members) {
            return;
        }
        let seen = group.map(|g| (g.state().to_owned(), g.members().len()));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{id} not stable with {members} members: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll the group until the deadline
    }
}

/// A test's own namespace of topics (see `common::prepare_namespace`), with what the inventory
/// tests use around it.
struct OwnTopics {
    settings: kassa::settings::Settings,
    pool: sqlx::PgPool,
    feed: Feed,
    run: String,
    topic: Box<dyn Fn(&str) -> String>,
    commands: String,
    requests: String,
    events: String,
}

impl OwnTopics {
    async fn new(namespace: &'static str, partitions: i32) -> Self {
        let settings = common::setup().await;
        let pool = kassa::migrate::connect(&settings).await.unwrap();
        let feed = Feed::new(&settings);
        let topic = common::prepare_namespace(namespace, partitions);
        let (commands, requests, events) = (
            topic("inventory.commands"),
            topic("checkout.requests"),
            topic("inventory.events"),
        );
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Self {
            settings,
            pool,
            feed,
            run,
            topic: Box::new(topic),
            commands,
            requests,
            events,
        }
    }
}

/// Sends an inventory command or reserve, encoded, to a topic of another namespace.
async fn send_to<P: kassa_schemas::Payload>(
    feed: &Feed,
    topic: &str,
    key: &str,
    event: &kassa_schemas::Envelope<P>,
) {
    let bytes = feed.codec.encode(event).await.expect("encode");
    feed.send_raw(topic, key, &bytes).await;
}

/// Waits until `count` outcomes keyed by one of `keys` are on `events` after `from`.
fn wait_outcomes(
    settings: &kassa::settings::Settings,
    events: &str,
    from: &HashMap<i32, i64>,
    keys: &[&str],
    count: usize,
) {
    use rdkafka::Message;
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    common::inventory::read_until(
        settings,
        events,
        from,
        Duration::from_secs(90),
        |m| keys.contains(&m.key().unwrap_or_default()),
        |n| n >= count,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_the_beginning_after_the_inbox_was_pruned_changes_no_stock() {
    use kassa_schemas::Envelope;
    use kassa_schemas::events::inventory::{Commit, InventoryCommand, Release, Restock, SetStock};
    const NAMESPACE: &str = "kassa-test-replay.";
    let _exclusive = common::inventory::exclusive().await;
    let OwnTopics {
        settings,
        pool,
        feed,
        run,
        topic,
        commands,
        requests,
        events,
    } = OwnTopics::new(NAMESPACE, 3).await;
    let sku = format!("REPLAY-{run}");
    let order = |i: usize| format!("{run}-{i}");
    let env = [("KASSA_NAMESPACE", NAMESPACE)];
    let processor = Processor::start("inventory", &env);

    let command = |payload: InventoryCommand| Envelope::new(sku.as_str(), None, payload);
    let from = end_offsets(&settings, &events);
    send_to(
        &feed,
        &commands,
        &sku,
        &command(InventoryCommand::SetStock(SetStock {
            sku: sku.clone(),
            on_hand: 10,
            reason: "count".into(),
        })),
    )
    .await;
    wait_outcomes(&settings, &events, &from, &[&sku], 1);
    let restock = Restock {
        sku: sku.clone(),
        quantity: 5,
        order_id: None,
        line_index: None,
        reason: "delivery".into(),
    };
    send_to(
        &feed,
        &commands,
        &sku,
        &command(InventoryCommand::Restock(restock)),
    )
    .await;
    wait_outcomes(&settings, &events, &from, &[&sku], 2);
    let from = end_offsets(&settings, &events);
    for i in 0..5 {
        send_to(&feed, &requests, &sku, &reserve(&order(i), 0, &sku, 1)).await;
    }
    let orders: Vec<String> = (0..5).map(order).collect();
    let keys: Vec<&str> = orders.iter().map(String::as_str).collect();
    wait_outcomes(&settings, &events, &from, &keys, 5);
    let from = end_offsets(&settings, &events);
    for i in 0..2 {
        let commit = Commit {
            order_id: order(i),
            line_index: 0,
            sku: sku.clone(),
        };
        send_to(
            &feed,
            &commands,
            &sku,
            &command(InventoryCommand::Commit(commit)),
        )
        .await;
    }
    let release = Release {
        order_id: order(2),
        line_index: 0,
        sku: sku.clone(),
        reason: "cancelled".into(),
    };
    send_to(
        &feed,
        &commands,
        &sku,
        &command(InventoryCommand::Release(release)),
    )
    .await;
    wait_outcomes(&settings, &events, &from, &keys, 3);
    let books = (11, 2, 2);
    assert_eq!(stock_of(&pool, &sku).await, Some(books));

    // Stopped, its inbox pruned (as after its retention), its offsets gone: it starts over from
    // the beginning of every input topic of the namespace.
    let status = processor.terminate(Duration::from_secs(30));
    assert!(status.success());
    for statement in [
        "DELETE FROM inventory.inbox WHERE topic LIKE $1",
        "DELETE FROM inventory.consumer_offsets WHERE topic LIKE $1",
    ] {
        sqlx::query(statement)
            .bind(format!("{NAMESPACE}%"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let dead_from = end_offsets(&settings, &topic("inventory.dlq"));
    let _processor = Processor::start("inventory", &env);
    let ends: Vec<(String, i32, i64)> = [&requests, &commands]
        .into_iter()
        .flat_map(|t| {
            end_offsets(&settings, t)
                .into_iter()
                .filter(|(_, end)| *end > 0)
                .map(|(p, end)| (t.clone(), p, end))
        })
        .collect();
    let started = Instant::now();
    loop {
        let stored: Vec<(String, i32, i64)> = sqlx::query_as("SELECT topic, partition, next_offset FROM inventory.consumer_offsets WHERE topic LIKE $1")
            .bind(format!("{NAMESPACE}%"))
            .fetch_all(&pool)
            .await
            .unwrap();
        if ends.iter().all(|end| stored.contains(end)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the replay did not reach the end: {stored:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll the stored offsets until the deadline
    }
    assert_eq!(
        stock_of(&pool, &sku).await,
        Some(books),
        "the replay changed no stock"
    );
    let dead: i64 = end_offsets(&settings, &topic("inventory.dlq"))
        .iter()
        .map(|(p, end)| end - dead_from[p])
        .sum();
    assert_eq!(dead, 0, "a replay dead-letters nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_of_another_partition_count_than_configured_keep_stock_right_across_rebalances() {
    use kassa_schemas::Envelope;
    use kassa_schemas::events::inventory::{InventoryCommand, SetStock};
    use kassa_schemas::kafka::java_partition;
    const NAMESPACE: &str = "kassa-test-p5.";
    let _exclusive = common::inventory::exclusive().await;
    // The topics have 5 partitions; the processors are told 12 (KASSA_TOPIC_PARTITIONS).
    let OwnTopics {
        settings,
        pool,
        feed,
        run,
        commands,
        requests,
        events,
        ..
    } = OwnTopics::new(NAMESPACE, 5).await;
    // One SKU on the first partition and one on the last: a rebalance over two instances moves one.
    // Each cached, by a processor that computes partitions from the configured count, where no
    // revocation of the real partitions ever reaches (12-partition buckets 5 to 11).
    let pick = |partition: u32| {
        (0..)
            .map(|i| format!("P5-{run}-{i}"))
            .find(|s| {
                java_partition(s.as_bytes(), 5) == partition
                    && java_partition(s.as_bytes(), 12) >= 5
            })
            .unwrap()
    };
    let skus = [pick(0), pick(4)];
    // Static members: the range assignor orders them by instance id, so when the second joins,
    // the first keeps partitions 0 to 2 and the second takes 3 and 4.
    let env = |id| {
        [
            ("KASSA_NAMESPACE", NAMESPACE),
            ("KASSA_TOPIC_PARTITIONS", "12"),
            ("KASSA_INSTANCE_ID", id),
        ]
    };
    let first_id = format!("p5-a-{run}");
    let second_id = format!("p5-b-{run}");
    let _first = Processor::start("inventory", &env(&first_id));
    let from = end_offsets(&settings, &events);
    for sku in &skus {
        let count = InventoryCommand::SetStock(SetStock {
            sku: sku.clone(),
            on_hand: 100,
            reason: "count".into(),
        });
        send_to(
            &feed,
            &commands,
            sku,
            &Envelope::new(sku.as_str(), None, count),
        )
        .await;
    }
    let sku_keys: Vec<&str> = skus.iter().map(String::as_str).collect();
    wait_outcomes(&settings, &events, &from, &sku_keys, 2);

    let mut placed = 0;
    let mut reserve_round = |round: &str| {
        let orders: Vec<String> = skus.iter().map(|s| format!("{s}-{round}")).collect();
        placed += orders.len();
        orders
    };
    let answer = async |orders: Vec<String>| {
        let from = end_offsets(&settings, &events);
        for (sku, order) in skus.iter().zip(&orders) {
            send_to(&feed, &requests, sku, &reserve(order, 0, sku, 1)).await;
        }
        let keys: Vec<&str> = orders.iter().map(String::as_str).collect();
        wait_outcomes(&settings, &events, &from, &keys, keys.len());
    };
    answer(reserve_round("a")).await;
    // A second instance joins: one of the SKUs moves to it and changes there.
    let mut second = Processor::start("inventory", &env(&second_id));
    wait_stable(&settings, &format!("{NAMESPACE}inventory"), 2).await;
    answer(reserve_round("b")).await;
    // It dies: its partitions come back to the first (once its session times out), whose cache
    // must not be stale.
    second.kill();
    answer(reserve_round("c")).await;
    for sku in &skus {
        let (on_hand, reserved, committed) = stock_of(&pool, sku).await.unwrap();
        assert_eq!((on_hand + reserved, committed), (100, 0), "{sku}");
        assert_eq!(reserved, 3, "{sku}: three holds, one per round");
    }
    assert_eq!(placed, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn skipping_a_backlog_is_refused_while_the_group_consumes_unless_forced_and_is_recorded() {
    use kassa::offsets::{MoveRequest, SkipError, skip_to_end};
    use kassa_schemas::ConsumerGroup;
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let _processor = Processor::start_inventory();
    // Consuming: it has answered.
    feed.set_stock(&settings, &[(format!("SKIP-{run}").as_str(), 1)])
        .await;
    let request = |force| MoveRequest {
        moved_by: format!("tester-{run}"),
        reason: "a load test's leftovers".into(),
        force,
    };
    match skip_to_end(&settings, &pool, ConsumerGroup::Inventory, &request(false)).await {
        Err(SkipError::LiveMembers { members, .. }) => assert!(!members.is_empty()),
        other => panic!(
            "a skip under a consuming group must be refused: {:?}",
            other.map(|p| p.len())
        ),
    }
    let recorded_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.offset_moves WHERE moved_by = $1")
            .bind(format!("tester-{run}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded_before, 0, "a refused skip moves nothing");
    // Forced, it goes through and says who moved what.
    feed.send(
        &format!("SKIP-{run}"),
        &reserve(&format!("{run}-o"), 0, &format!("SKIP-{run}"), 1),
    )
    .await;
    let before = skip_to_end(&settings, &pool, ConsumerGroup::Inventory, &request(true))
        .await
        .expect("a forced skip");
    let moved = before.iter().filter(|p| p.stored != Some(p.end)).count();
    let moves: Vec<(String, Option<i64>, i64, bool, String)> = sqlx::query_as(
        "SELECT topic, from_offset, to_offset, intended, reason FROM inventory.offset_moves WHERE moved_by = $1",
    )
    .bind(format!("tester-{run}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        moves.len(),
        moved,
        "one record per partition moved: {moves:?}"
    );
    assert!(
        moves.iter().all(|(_, from, to, intended, reason)| *intended
            && reason == "a load test's leftovers"
            && from.is_none_or(|f| f < *to)),
        "{moves:?}"
    );
}
