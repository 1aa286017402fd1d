//! Inventory over topics of its own (a namespace beside the suite's): a replay of every input
//! from the beginning after the inbox forgot them changes no stock, and topics of another
//! partition count than configured keep the stock right across rebalances.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::inventory::{Feed, Processor, end_offsets, reserve, stock_of};

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
