//! Stored offsets that move under a running processor, against real Kafka and Postgres: a move
//! nobody recorded is reported (an error, a metric, a row in `offset_moves`), an operator's is
//! taken as intended, and `kassa offsets skip-to-end` refuses a consuming group unless forced.

use crate::common;

use std::time::{Duration, Instant};

use common::inventory::{Feed, Outcomes, Processor, end_offsets, reserve};
use kassa_schemas::Topic;

/// Asserts that no record of `checkout.requests`/`partition` from `from` up to inventory's stored
/// offset was passed over silently: each one's event id is in the inbox or a recorded move
/// (intended or reported) covers its offset.
async fn assert_nothing_passed_over_silently(
    settings: &kassa::settings::Settings,
    pool: &sqlx::PgPool,
    partition: i32,
    from: i64,
) {
    use rdkafka::Message;
    let to: i64 = sqlx::query_scalar(
        "SELECT next_offset FROM inventory.consumer_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(Topic::CheckoutRequests.name())
    .bind(partition)
    .fetch_one(pool)
    .await
    .unwrap();
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
    assert!(
        silent.is_empty(),
        "records passed over without a trace: offsets {silent:?}"
    );
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
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    for i in 0..30 {
        feed.send(sku, &reserve(&format!("{run}-moved-{i}"), 0, sku, 1))
            .await;
    }
    // Wait until the processor's batch is blocked on the row this transaction holds: a backend
    // that this transaction blocks (any other test's lock waits do not count).
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE $1 = ANY(pg_blocking_pids(pid)) AND query LIKE '%inventory.consumer_offsets%'",
        )
        .bind(holder)
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
    // An operator's replay of this partition, recorded earlier: a move back. The audit below
    // must read past it (it once failed on such a row and then forgot what it expected).
    sqlx::query(
        "INSERT INTO inventory.offset_moves (topic, partition, from_offset, to_offset, intended, moved_by, reason)
         VALUES ($1, $2, $3 + 1, $3, true, 'kassa tests', 'a replay: the stored offset moved back')",
    )
    .bind(topic)
    .bind(partition)
    .bind(first)
    .execute(&pool)
    .await
    .unwrap();

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
    assert_nothing_passed_over_silently(&settings, &pool, partition, first).await;

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
    assert_nothing_passed_over_silently(&settings, &pool, partition, first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skipping_a_backlog_is_refused_while_the_group_consumes_unless_forced_and_is_recorded() {
    use kassa::offsets::{MoveRequest, SkipError, skip_to_end};
    use kassa_processors::ConsumerGroup;
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
    let moved = skip_to_end(&settings, &pool, ConsumerGroup::Inventory, &request(true))
        .await
        .expect("a forced skip")
        .len();
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

/// The records a processor dropped unprocessed since it started (`kassa_consumer_records_dropped_total`
/// on its /metrics; absent: none).
async fn records_dropped(ops: &str) -> u64 {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("kassa_consumer_records_dropped_total{")
                && l.contains("group=\"inventory\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_processor_seeks_to_its_stored_offset_instead_of_reading_the_history() {
    const HISTORY: usize = 1_000;
    let _exclusive = common::inventory::exclusive().await;
    let settings = common::setup().await;
    let feed = Feed::new(&settings);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("SEEK-{run}");
    let outcomes = Outcomes::collect(
        &settings,
        end_offsets(&settings, Topic::InventoryEvents.name()),
        run.clone(),
    );
    // Fetches of 1 KiB: what a first fetch brings from before the stored offset is a few records
    // a partition, far fewer than the history below.
    let small_fetches = [("KASSA_KAFKA__MAX_PARTITION_FETCH_BYTES", "1024")];
    let mut first = Processor::start("inventory", &small_fetches);
    feed.set_stock(&settings, &[(sku.as_str(), 10_000)]).await;
    let sends = (0..HISTORY).map(|i| {
        let (feed, sku, run) = (&feed, &sku, &run);
        async move {
            feed.send(sku, &reserve(&format!("{run}-history-{i}"), 0, sku, 1))
                .await
        }
    });
    futures::future::join_all(sends).await;
    outcomes
        .wait_for_lines(HISTORY, Duration::from_secs(120))
        .await;
    first.kill();

    // Started again, it must seek to the stored offsets, not read the partitions from the
    // beginning and drop the history it processed before.
    let second = Processor::start("inventory", &small_fetches);
    feed.send(&sku, &reserve(&format!("{run}-after"), 0, &sku, 1))
        .await;
    outcomes
        .wait_for_lines(HISTORY + 1, Duration::from_secs(60))
        .await;
    let dropped = records_dropped(&second.ops).await;
    assert!(
        dropped < HISTORY as u64 / 2,
        "the restarted processor dropped {dropped} records before its stored offsets (its partition held {HISTORY} processed ones): it read the history instead of seeking"
    );
}
