//! The inventory processor against real Kafka, the registry and Postgres: decisions, duplicates,
//! poison messages, shutdown. (Crashes, two instances and a database outage: inventory_faults.rs.)

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::inventory::{
    Feed, Processor, decode_events, end_offsets, read_until, reserve, stock_of,
};
use kassa_processors::ConsumerGroup;
use kassa_schemas::events::RejectReason;
use kassa_schemas::events::inventory::{InventoryCommand, InventoryEvent, Release};
use kassa_schemas::{Envelope, Topic};
use rdkafka::Message;
use rdkafka::message::Headers;

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn reserves_rejects_and_repeats_answers_in_arrival_order() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let feed = Feed::new(&settings);
    let run = run_id();
    let (hot, unknown) = (format!("T-{run}-HOT"), format!("T-{run}-NONE"));
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    let _processor = Processor::start_inventory();

    feed.set_stock(&settings, &[(&hot, 5)]).await;
    let order = |n: u32| format!("{run}-order-{n}");
    let first = reserve(&order(1), 0, &hot, 3);
    feed.send(&hot, &first).await;
    feed.send(&hot, &first).await; // the same message twice: the inbox drops the copy
    feed.send(&hot, &reserve(&order(2), 0, &hot, 3)).await; // 2 left: out of stock
    feed.send(&hot, &reserve(&order(3), 0, &hot, 2)).await; // the last 2
    feed.send(&unknown, &reserve(&order(4), 0, &unknown, 1))
        .await;
    feed.send(&hot, &reserve(&order(5), 0, &hot, 0)).await;
    feed.send(&hot, &reserve(&order(1), 0, &hot, 3)).await; // same line, new event id: same answer

    let mine =
        |m: &rdkafka::message::OwnedMessage| m.key().is_some_and(|k| k.starts_with(run.as_bytes()));
    let messages = read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 6,
    );
    let events = decode_events(&feed.codec, &messages).await;
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        let answer = match &e.payload {
            InventoryEvent::Reserved(r) => format!("reserved {}", r.quantity),
            InventoryEvent::Rejected(r) => format!("rejected {:?}", r.reason),
            other => format!("{other:?}"),
        };
        answers
            .entry(e.correlation_id.clone())
            .or_default()
            .push(answer);
    }
    assert_eq!(
        answers[&order(1)],
        ["reserved 3", "reserved 3"],
        "a repeated line gets the first answer again"
    );
    assert_eq!(
        answers[&order(2)],
        [format!("rejected {:?}", RejectReason::OutOfStock)]
    );
    assert_eq!(answers[&order(3)], ["reserved 2"]);
    assert_eq!(
        answers[&order(4)],
        [format!("rejected {:?}", RejectReason::UnknownSku)]
    );
    assert_eq!(
        answers[&order(5)],
        [format!("rejected {:?}", RejectReason::InvalidQuantity)]
    );
    assert_eq!(
        events.len(),
        6,
        "the duplicated message produced no second outcome"
    );
    assert_eq!(stock_of(&pool, &hot).await, Some((0, 5, 0)));

    // Release one hold: stock comes back once, however often the release is asked.
    let release = Envelope::new(
        order(3),
        None,
        InventoryCommand::Release(Release {
            order_id: order(3),
            line_index: 0,
            sku: hot.clone(),
            reason: "test".into(),
        }),
    );
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    feed.send(&hot, &release).await;
    let again = Envelope {
        event_id: uuid::Uuid::now_v7(),
        ..release.clone()
    };
    feed.send(&hot, &again).await;
    let messages = read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 1,
    );
    let events = decode_events(&feed.codec, &messages).await;
    assert!(
        matches!(&events[0].payload, InventoryEvent::Released(r) if r.quantity == 2 && r.order_id == order(3)),
        "{events:?}"
    );
    // The second release follows the first on its partition: it becomes a recorded no-op.
    let started = std::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        let ignored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inventory.ignored_commands WHERE event_id = $1",
        )
        .bind(again.event_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        if ignored == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the second release was not recorded as a no-op"
        );
        poll.tick().await;
    }

    // Kafka orders nothing across topics: reserve again only once the release is done.
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    feed.send_traced(&hot, &reserve(&order(6), 0, &hot, 1), trace)
        .await;
    let messages = read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 1,
    );
    let events = decode_events(&feed.codec, &messages).await;
    assert!(
        matches!(&events[0].payload, InventoryEvent::Reserved(r) if r.order_id == order(6)),
        "{events:?}"
    );
    // The outcome carries the request's trace: same trace id, a new span of its own.
    let header = messages[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
        .expect("traceparent header");
    let value = std::str::from_utf8(header.value.unwrap()).unwrap();
    assert!(
        value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{value}"
    );
    assert_ne!(value, trace, "a child span, not the parent's");
    assert_eq!(
        stock_of(&pool, &hot).await,
        Some((1, 4, 0)),
        "released once, then one unit reserved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let run = run_id();
    let sku = format!("T-{run}-POISON");
    let dlq_from = end_offsets(&settings, &ConsumerGroup::Inventory.dlq_topic());
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    let _processor = Processor::start_inventory();

    feed.set_stock(&settings, &[(&sku, 10)]).await;
    feed.send_raw(
        Topic::CheckoutRequests.name(),
        &sku,
        b"\x00\x00\x00garbage that is not Avro",
    )
    .await;
    // A valid event under the wrong key: inventory declares it invalid.
    let misrouted = reserve(&format!("{run}-order-x"), 0, &sku, 1);
    feed.send(&format!("{sku}-wrong-key"), &misrouted).await;
    let after = reserve(&format!("{run}-order-after"), 0, &sku, 1);
    feed.send(&sku, &after).await;

    let dead = read_until(
        &settings,
        &ConsumerGroup::Inventory.dlq_topic(),
        &dlq_from,
        Duration::from_secs(60),
        |m| m.key().is_some_and(|k| k.starts_with(sku.as_bytes())),
        |n| n >= 2,
    );
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| -> String {
        let headers = m.headers().expect("dead letters carry headers");
        let h = headers
            .iter()
            .find(|h| h.key == name)
            .unwrap_or_else(|| panic!("header {name}"));
        String::from_utf8(h.value.unwrap().to_vec()).unwrap()
    };
    // The two keys live on different partitions: find each dead letter by its key.
    let garbage = dead
        .iter()
        .find(|m| m.key() == Some(sku.as_bytes()))
        .expect("the garbage message");
    let wrong = dead
        .iter()
        .find(|m| m.key() != Some(sku.as_bytes()))
        .expect("the misrouted message");
    assert!(
        header(garbage, "kassa.dlq.reason").starts_with("undecodable"),
        "{}",
        header(garbage, "kassa.dlq.reason")
    );
    assert_eq!(
        garbage.payload(),
        Some(&b"\x00\x00\x00garbage that is not Avro"[..]),
        "the original bytes are kept"
    );
    assert_eq!(
        header(garbage, "kassa.dlq.topic"),
        Topic::CheckoutRequests.name()
    );
    assert!(
        header(garbage, "kassa.dlq.partition")
            .parse::<i32>()
            .is_ok()
    );
    assert!(header(garbage, "kassa.dlq.offset").parse::<i64>().is_ok());
    assert!(
        header(wrong, "kassa.dlq.reason").starts_with("invalid"),
        "{}",
        header(wrong, "kassa.dlq.reason")
    );

    let mine =
        |m: &rdkafka::message::OwnedMessage| m.key().is_some_and(|k| k.starts_with(run.as_bytes()));
    let outcomes = read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 1,
    );
    let events = decode_events(&feed.codec, &outcomes).await;
    assert_eq!(
        events[0].correlation_id,
        format!("{run}-order-after"),
        "the message after the poison is processed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_drains_and_exits_zero() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let run = run_id();
    let sku = format!("T-{run}-TERM");
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    let processor = Processor::start_inventory();
    feed.set_stock(&settings, &[(&sku, 100)]).await;
    for i in 0..50 {
        feed.send(&sku, &reserve(&format!("{run}-o{i}"), 0, &sku, 1))
            .await;
    }
    let mine =
        |m: &rdkafka::message::OwnedMessage| m.key().is_some_and(|k| k.starts_with(run.as_bytes()));
    read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 1,
    );
    let status = processor.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    // Everything it committed was published before it exited.
    let pool = kassa::migrate::connect(&settings).await.unwrap();
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unsent, 0, "the relay drained the outbox before exiting");
    // What the broker acknowledged is not kept: none of this run's answers is left in the outbox.
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.outbox WHERE starts_with(key, $1)")
            .bind(&run)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, 0, "published rows are deleted from the outbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_flash_sale_hold_gives_its_tokens_back_in_redis() {
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let run = run_id();
    let sku = format!("T-{run}-FLASH");
    let order = format!("{run}-flash");
    let mut redis = redis::Client::open(settings.redis_url.expose())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let tokens_key = kassa_schemas::flash_keys::tokens_key(&sku);
    let bought_key = kassa_schemas::flash_keys::bought_key(&sku, "cus_test");
    // The gate (the API, later) took 2 tokens of 10 for this customer.
    let _: () = redis::pipe()
        .set(&tokens_key, 8)
        .set(&bought_key, 2)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _processor = Processor::start_inventory();
    feed.set_stock(&settings, &[(&sku, 10)]).await;

    let mut request = reserve(&order, 0, &sku, 2);
    let kassa_schemas::events::checkout::CheckoutPayload::Reserve(r) = &mut request.payload;
    r.flash_sale = true;
    let from = end_offsets(&settings, Topic::InventoryEvents.name());
    feed.send(&sku, &request).await;
    let mine = |m: &rdkafka::message::OwnedMessage| m.key() == Some(order.as_bytes());
    // Kafka orders nothing across topics: release only once the hold exists, as orders would.
    read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 1,
    );
    let release = Envelope::new(
        order.clone(),
        None,
        InventoryCommand::Release(Release {
            order_id: order.clone(),
            line_index: 0,
            sku: sku.clone(),
            reason: "test".into(),
        }),
    );
    feed.send(&sku, &release).await;
    read_until(
        &settings,
        Topic::InventoryEvents.name(),
        &from,
        Duration::from_secs(60),
        mine,
        |n| n >= 2,
    );

    // The give-back runs right after the batch commits: poll until it shows, with a deadline.
    let started = std::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        let (tokens, bought): (i64, i64) = redis::pipe()
            .get(&tokens_key)
            .get(&bought_key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if tokens == 10 {
            assert_eq!(bought, 0, "the customer's count went down with it");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tokens still {tokens} after the release"
        );
        poll.tick().await;
    }
}
