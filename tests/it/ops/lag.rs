//! `kassa lag` and `kassa offsets reset`: a processor falling behind and catching up, and a
//! replay from a time that moves no stock or money twice.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_while_a_processor_is_stopped_and_drains_to_zero_after_it_restarts() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let sku = saga.sku("LAG");
    saga.product(&sku, 1_000, 100).await;
    let only_orders = ["--group", "orders", "--max-lag", "0"];

    stop_processor("orders");
    let mut placed = Vec::new();
    for _ in 0..10 {
        placed.push(saga.place("pm_card_visa", &[(&sku, 1)]).await);
    }
    // Inventory answers each on inventory.events, which the stopped orders processor does not
    // read: its lag grows by (at least) those ten, and the check fails.
    let started = std::time::Instant::now();
    let seen = loop {
        let (code, report) = lag(&only_orders).await;
        if code == 1 && report["groups"][0]["total_lag"].as_i64() >= Some(10) {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "kassa lag did not report the orders processor 10 records behind (exit {code}): {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll the report until the deadline
    };
    assert_eq!(seen["groups"][0]["group"], "orders");
    let breaches = seen["breaches"].as_array().expect("breaches");
    assert!(
        breaches
            .iter()
            .any(|b| b.as_str().is_some_and(|b| b.starts_with("orders: "))),
        "the breach names the processor: {breaches:?}"
    );
    let partitions = seen["groups"][0]["partitions"].as_array().expect("rows");
    assert!(
        partitions
            .iter()
            .all(|p| p["end"].as_i64() >= p["stored"].as_i64()),
        "a row per input partition, with Kafka's end and the stored offset: {partitions:?}"
    );

    start_processor("orders", ENV);
    wait_for(
        Duration::from_secs(90),
        "kassa lag --max-lag 0 to pass once orders caught up",
        || async { lag(&only_orders).await.0 == 0 },
    )
    .await;
    for order in &placed {
        saga.wait_status(order, "completed", Duration::from_secs(60))
            .await;
    }
    let (code, report) = lag(&["--group", "orders"]).await;
    assert_eq!(code, 0, "no threshold, no failure: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_to_a_time_replays_from_it_and_the_inboxes_keep_every_effect_once() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let sku = saga.sku("REPLAY");
    saga.product(&sku, 1_500, 50).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(saga.place("pm_card_visa", &[(&sku, 2)]).await);
    }
    let mut before = Vec::new();
    for order in &placed {
        saga.wait_status(order, "completed", Duration::from_secs(60))
            .await;
        before.push((
            saga.trail(&order.id).await,
            saga.sim_effects(&order.id).await,
        ));
    }
    let stock_before = stock(saga.pool(), &sku).await;
    assert_eq!(
        stock_before,
        Some((40, 0, 10)),
        "five orders of two committed"
    );

    // A replay of inventory and orders from before the orders, as after a bug fix.
    let reason = format!("replay test {}", saga.run);
    let since = since.to_rfc3339();
    for group in ["inventory", "orders"] {
        stop_processor(group);
        let args = [
            "offsets",
            "reset",
            group,
            "--to-time",
            &since,
            "--reason",
            &reason,
        ];
        let started = std::time::Instant::now();
        loop {
            // Refused (exit 1) while the stopped instance is still listed in its group.
            let (code, out, err) = kassa(&args).await;
            if code == 0 {
                assert!(out.contains(" moved "), "{out}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60) && err.contains("live member"),
                "kassa offsets reset failed (exit {code}): {err}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await; // poll the group until it is empty or the deadline
        }
        let back: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {group}.offset_moves WHERE reason = $1 AND intended AND to_offset < from_offset"
        )))
        .bind(&reason)
        .fetch_one(saga.pool())
        .await
        .unwrap();
        assert!(
            back > 0,
            "{group}'s offsets were moved back, and the moves recorded"
        );
    }
    for group in ["inventory", "orders"] {
        start_processor(group, ENV);
    }
    for group in ["inventory", "orders"] {
        wait_for(
            Duration::from_secs(90),
            &format!("{group} to process the replayed records (kassa lag --max-lag 0)"),
            || async move { lag(&["--group", group, "--max-lag", "0"]).await.0 == 0 },
        )
        .await;
    }

    // Read again and dropped by the inboxes: no stock moved, no step taken, no call made.
    assert_eq!(stock(saga.pool(), &sku).await, stock_before);
    for (order, (trail, effects)) in placed.iter().zip(&before) {
        assert_eq!(
            &saga.trail(&order.id).await,
            trail,
            "{}'s audit trail",
            order.id
        );
        assert_eq!(
            &saga.sim_effects(&order.id).await,
            effects,
            "{} at the provider",
            order.id
        );
        assert_eq!(saga.get(order, "").await["status"], "completed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_markers_and_aborted_records_are_no_lag_but_a_committed_record_is() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let settings = common::setup().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("kassa-test.lag-markers-{run}");
    let topic = common::ensure_scratch_topic(&settings, &name, 4).await;
    let timeout = Duration::from_secs(30);
    let transactional = |id: &str| {
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("transactional.id", format!("kassa-test-lag-{id}-{run}"))
            .create()
            .expect("a transactional producer");
        producer.init_transactions(timeout).unwrap();
        producer
    };
    // Another team's transactional producers: partition 0 gets a committed record, 1 two
    // aborted ones, 2 a committed one, 3 one of a transaction left open.
    let producer = transactional("decided");
    for (partitions, commit) in [(&[0, 2][..], true), (&[1, 1][..], false)] {
        producer.begin_transaction().unwrap();
        for &partition in partitions {
            let record = BaseRecord::to(&topic)
                .partition(partition)
                .key("k")
                .payload("v");
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        // Written before the outcome: an abort purges what is still queued.
        producer.flush(timeout).unwrap();
        if commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.abort_transaction(timeout).unwrap();
        }
    }
    let open = transactional("open");
    open.begin_transaction().unwrap();
    let record = BaseRecord::to(&topic)
        .partition(3)
        .key("k")
        .payload("undecided");
    open.send(record).map_err(|(e, _)| e).unwrap();
    open.flush(timeout).unwrap();
    let ends = |isolation: &str| -> Vec<i64> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        (0..4)
            .map(|p| consumer.fetch_watermarks(&topic, p, timeout).unwrap().1)
            .collect()
    };
    assert_eq!(
        ends("read_uncommitted"),
        [2, 3, 2, 1],
        "records and markers where the test put them"
    );

    // As a processor would have stored them: past the committed record on 0 (a marker left),
    // nothing on 1 (aborted records and a marker left), before the committed record on 2,
    // nothing on 3. The coordinator writes the markers after the commit or abort returns: the
    // end kassa measures (the last stable offset, as read_committed reads) reaches them once
    // it has. Partition 2's record is lag throughout; 3's, undecided, is not readable yet.
    let stored = [Some(1), None, Some(0), None];
    let started = std::time::Instant::now();
    loop {
        let ends = ends("read_committed");
        let mut partitions: Vec<kassa::lag::PartitionLag> = (0..4)
            .map(|p| kassa::lag::PartitionLag {
                topic: topic.clone(),
                partition: p as i32,
                end: ends[p],
                stored: stored[p],
                lag: ends[p] - stored[p].unwrap_or(0).min(ends[p]),
            })
            .collect();
        let brokers = settings.kafka_brokers.clone();
        let partitions = tokio::task::spawn_blocking(move || {
            kassa::lag::discount_markers(&brokers, &mut partitions, kassa::lag::Markers::Exact)
                .map(|()| partitions)
        })
        .await
        .unwrap()
        .expect("Kafka answers");
        let lags: Vec<i64> = partitions.iter().map(|p| p.lag).collect();
        assert_eq!(
            lags[2], ends[2],
            "a committed record not yet processed is lag"
        );
        if ends == [2, 3, 2, 0] && lags == [0, 0, 2, 0] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "markers and aborted records still counted as lag after 30 s: ends {ends:?}, lags {lags:?}"
        );
    }
    open.abort_transaction(timeout).unwrap();
}
