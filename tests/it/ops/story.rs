//! `kassa order` and `kassa tail`: an order's story with its diagnosis, and its records found
//! across topics; an undecodable record shown raw.

use super::*;

/// Runs `kassa order --json <id>`: the story's diagnosis, its entries as `source: what` lines
/// and the state.
async fn story(id: &str) -> (String, Vec<String>, Value) {
    let (code, out, err) = kassa(&["order", "--json", id]).await;
    assert_eq!(code, 0, "kassa order {id}: {err}");
    let story: Value = serde_json::from_str(&out).expect("JSON");
    let entries = story["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["source"].as_str().unwrap(),
                e["what"].as_str().unwrap()
            )
        })
        .collect();
    (
        story["diagnosis"].as_str().expect("a diagnosis").to_owned(),
        entries,
        story["state"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orders_story_shows_every_component_and_diagnoses_where_it_stands() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let sku = saga.sku("STORY");
    saga.product(&sku, 1_200, 1).await;
    let completed = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&completed, "completed", Duration::from_secs(60))
        .await;
    let rejected = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&rejected, "rejected", Duration::from_secs(60))
        .await;
    let three_ds = saga.sku("STORY-3DS");
    saga.product(&three_ds, 900, 5).await;
    let cancelled = saga
        .place("pm_card_threeDSecure2Required", &[(&three_ds, 1)])
        .await;
    saga.wait_status(&cancelled, "cancelled", Duration::from_secs(60))
        .await;

    let (diagnosis, entries, state) = story(&completed.id).await;
    assert_eq!(state, "completed");
    assert!(diagnosis.starts_with("completed "), "{diagnosis}");
    for expected in [
        "api: accepted: 1200 EUR",
        "orders: step pending -> reserved",
        "orders: step confirmed -> completed",
        "inventory: line 0: 1 x",
        "provider: authorize: ok",
        "provider: capture: ok",
        "expiry: hold deadline",
        "kafka: ",
    ] {
        assert!(
            entries.iter().any(|e| e.starts_with(expected)),
            "{expected:?} in the story: {entries:#?}"
        );
    }
    for event in [
        "Reserve",
        "Reserved",
        "OrderReserved",
        "PaymentCaptured",
        "OrderCompleted",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e.starts_with("kafka: ") && e.contains(&format!(" {event} "))),
            "the {event} event in the story: {entries:#?}"
        );
    }
    let (diagnosis, entries, _) = story(&rejected.id).await;
    assert!(
        diagnosis.starts_with("rejected ") && diagnosis.contains("out_of_stock"),
        "{diagnosis}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("inventory:") && e.contains("rejected")),
        "{entries:#?}"
    );
    let (diagnosis, entries, _) = story(&cancelled.id).await;
    assert!(
        diagnosis.starts_with("cancelled ") && diagnosis.contains("payment_action_expired"),
        "{diagnosis}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("expiry: payment_action deadline") && e.contains("fired")),
        "{entries:#?}"
    );

    // Stuck: payments stopped, the order waits in authorizing with nobody working on it.
    stop_processor("payments");
    let stuck = saga.place("pm_card_visa", &[(&three_ds, 1)]).await;
    let started = std::time::Instant::now();
    let diagnosis = loop {
        let (diagnosis, _, state) = story(&stuck.id).await;
        if state == "authorizing" {
            break diagnosis;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never authorizing: {diagnosis}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll the story until the deadline
    };
    start_processor("payments", ENV);
    assert!(
        diagnosis.starts_with("authorizing for ") && diagnosis.contains("no payment for it yet"),
        "{diagnosis}"
    );
    saga.wait_status(&stuck, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(
        kassa(&["order", "no-such-order"]).await.0,
        1,
        "an unknown order is an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_finds_an_orders_records_across_topics_and_shows_undecodable_ones_raw() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let sku = saga.sku("TAIL");
    saga.product(&sku, 800, 3).await;
    let order = saga.place("pm_card_visa", &[(&sku, 2)]).await;
    saga.wait_status(&order, "completed", Duration::from_secs(60))
        .await;

    let records = tail(&["all", "--from", &since, "--order", &order.id]).await;
    let ns = kassa_schemas::topics::namespace();
    let seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            assert!(
                r["undecodable"].is_null(),
                "every record of the order decodes: {r}"
            );
            assert_eq!(r["event"]["correlation_id"], order.id.as_str());
            let topic = r["topic"]
                .as_str()
                .unwrap()
                .trim_start_matches(ns)
                .to_owned();
            (topic, r["event"]["event_type"].as_str().unwrap().to_owned())
        })
        .collect();
    for expected in [
        ("checkout.requests", "Reserve"),
        ("inventory.events", "Reserved"),
        ("orders.events", "OrderReserved"),
        ("payments.events", "PaymentAuthorized"),
        ("inventory.commands", "Commit"),
        ("inventory.events", "Committed"),
        ("payments.events", "PaymentCaptured"),
        ("orders.events", "OrderCompleted"),
    ] {
        assert!(
            seen.iter()
                .any(|(t, e)| (t.as_str(), e.as_str()) == expected),
            "{expected:?} among the order's records: {seen:?}"
        );
    }
    let completed = tail(&[
        "orders.events",
        "--from",
        &since,
        "--order",
        &order.id,
        "--type",
        "OrderCompleted",
    ])
    .await;
    assert_eq!(completed.len(), 1, "{completed:?}");

    // Bytes nobody can decode: shown raw with why, on the topic and on the dead-letter topic.
    use rdkafka::producer::FutureRecord;
    let key = format!("garbage-{}", saga.run);
    let garbage = b"not avro at all";
    let webhooks = kassa_schemas::Topic::PaymentsWebhooks.name();
    kassa::kafka::producer(&saga.api.settings)
        .expect("producer")
        .send(
            FutureRecord::to(webhooks).key(&key).payload(&garbage[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("sent");
    let hex: String = garbage.iter().map(|b| format!("{b:02x}")).collect();
    let on_topic = tail(&[webhooks, "--from", &since, "--key", &key]).await;
    assert_eq!(on_topic.len(), 1, "{on_topic:?}");
    assert!(on_topic[0]["event"].is_null());
    assert!(
        on_topic[0]["undecodable"]
            .as_str()
            .is_some_and(|w| !w.is_empty())
    );
    assert_eq!(on_topic[0]["raw"], hex.as_str());
    let dlq = kassa_processors::ConsumerGroup::Payments.dlq_topic();
    let started = std::time::Instant::now();
    let dead = loop {
        let dead = tail(&[&dlq, "--from", &since, "--key", &key]).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // poll the dead-letter topic until the deadline
    };
    let headers: Vec<(String, String)> =
        serde_json::from_value(dead[0]["headers"].clone()).unwrap();
    assert!(
        headers.contains(&("kassa.dlq.topic".to_owned(), webhooks.to_owned())),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "kassa.dlq.reason" && !v.is_empty()),
        "{headers:?}"
    );
    assert_eq!(
        dead[0]["raw"],
        hex.as_str(),
        "the dead letter keeps the bytes"
    );
}
