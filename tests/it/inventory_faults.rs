//! The inventory processor under faults, against real Kafka, the registry, Postgres and Redis:
//! killed with SIGKILL while requests stream in, two instances with one killed, a database
//! outage, a message that fails every time, Redis black-holed while flash-sale holds are
//! released. Afterwards every request has exactly one outcome, no SKU is oversold, and the units
//! add up.

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

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_fails_every_time_is_dead_lettered_and_its_partition_moves_on() {
    use kassa_processors::ConsumerGroup;
    use kassa_schemas::Envelope;
    use kassa_schemas::events::inventory::{InventoryCommand, Restock, SetStock};
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
            flash_sale_generation: None,
            fulfilment: None,
            storefront: None,
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
