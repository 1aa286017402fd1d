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
