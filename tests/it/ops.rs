//! The operator's commands, run as an operator runs them (the `kassa` binary, in the suite's own
//! world), against the real services: `kassa lag` sees a stopped processor fall behind, says so
//! in its exit code, and sees it catch up; `kassa offsets reset --to-time` replays from a time
//! and the inboxes keep every effect once; `kassa reconcile` passes on square books and names each
//! discrepancy injected on purpose; `kassa order` tells a completed, a rejected, a cancelled and
//! a stuck order's story with the right diagnosis; `kassa tail` finds an order's records across
//! topics and shows an undecodable record (and its dead letter) with its raw bytes; `kassa dlq`
//! lists dead letters, redrives one once its cause is fixed (once at most, past the inbox) and
//! discards one, on the record.

use crate::common;

use std::time::Duration;

use common::saga::{Saga, start_processor, start_processors, stock, stop_processor, wait_for};
use serde_json::Value;

/// The processors' settings for these tests (a set of their own: they stop some of them).
const ENV: &[(&str, &str)] = &[
    ("KASSA_INSTANCE_ID", "ops-tests"),
    // A 3-D Secure challenge nobody completes cancels the order after 5 s.
    ("KASSA_PAYMENT_ACTION_SECONDS", "5"),
];

/// The tests stop and restart the shared processors: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `kassa` with `args`: its exit code, what it printed and what it logged.
async fn kassa(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .args(args)
        .output()
        .await
        .expect("run kassa");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `kassa lag --json` with `args`: its exit code and what it printed.
async fn lag(args: &[&str]) -> (i32, Value) {
    let (code, out, err) = kassa(&[&["lag", "--json"], args].concat()).await;
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kassa lag printed no JSON ({e}), exit {code}: {err}"));
    (code, report)
}

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

/// Runs `kassa reconcile --json` with `args`: its exit code and the discrepancies.
async fn reconcile(args: &[&str]) -> (i32, Vec<Value>) {
    let (code, out, err) = kassa(&[&["reconcile", "--json"], args].concat()).await;
    let found: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kassa reconcile printed no JSON ({e}), exit {code}: {err}"));
    (code, found.as_array().expect("a list").clone())
}

/// Whether `found` holds a discrepancy of `class` naming `id`.
fn reported(found: &[Value], class: &str, id: &str) -> bool {
    found.iter().any(|d| {
        d["class"] == class
            && d["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == id))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_passes_on_square_books_and_names_each_injected_discrepancy() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let (sku, other) = (saga.sku("BOOKS"), saga.sku("BOOKS2"));
    saga.product(&sku, 2_500, 20).await;
    saga.product(&other, 700, 20).await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(saga.place("pm_card_visa", &[(&sku, 1), (&other, 2)]).await);
    }
    for order in &placed {
        saga.wait_status(order, "completed", Duration::from_secs(60))
            .await;
    }
    let args = ["--since", &since, "--margin-seconds", "60"];
    let (code, found) = reconcile(&args).await;
    assert_eq!(
        (code, &found),
        (0, &Vec::new()),
        "these orders' books square"
    );

    // Each class of discrepancy, injected by hand (test-only SQL), then put back.
    let pool = saga.pool();
    let (a, b) = (&placed[0].id, &placed[1].id);
    let stray = uuid::Uuid::new_v4().to_string();
    let stuck = uuid::Uuid::new_v4().to_string();
    let inject = [
        format!("UPDATE inventory.stock SET reserved = reserved + 1 WHERE sku = '{other}'"),
        format!("UPDATE inventory.reservations SET status = 'released' WHERE order_id = '{a}' AND line_index = 0"),
        format!("UPDATE payments.payments SET captured_minor = captured_minor - 1 WHERE order_id = '{b}'"),
        format!(
            "INSERT INTO payments.payments (order_id, payment_id, provider, amount_minor, currency, payment_method_id, status, stage, created_at)
             VALUES ('{stray}', gen_random_uuid(), 'simulated', 100, 'EUR', 'pm_card_visa', 'authorized', 'reserved', now())"
        ),
        format!(
            "INSERT INTO orders.orders (order_id, state, customer_id, created_at, updated_at)
             VALUES ('{stuck}', 'authorizing', 'cus_stuck', now(), now() - interval '1 hour')"
        ),
    ];
    let put_back = [
        format!("UPDATE inventory.stock SET reserved = reserved - 1 WHERE sku = '{other}'"),
        format!(
            "UPDATE inventory.reservations SET status = 'committed' WHERE order_id = '{a}' AND line_index = 0"
        ),
        format!(
            "UPDATE payments.payments SET captured_minor = captured_minor + 1 WHERE order_id = '{b}'"
        ),
        format!("DELETE FROM payments.payments WHERE order_id = '{stray}'"),
        format!("DELETE FROM orders.orders WHERE order_id = '{stuck}'"),
    ];
    for sql in &inject {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await
            .unwrap();
    }
    let (code, found) = reconcile(&args).await;
    for sql in &put_back {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await
            .unwrap();
    }
    assert_eq!(code, 1, "discrepancies fail the check: {found:?}");
    for (class, id) in [
        ("stock", other.as_str()),
        ("orders_inventory", a.as_str()),
        ("orders_payments", b.as_str()),
        ("orders_payments", stray.as_str()),
        ("stuck", stuck.as_str()),
    ] {
        assert!(
            reported(&found, class, id),
            "{class} discrepancy about {id} reported: {found:?}"
        );
    }
    assert_eq!(
        reconcile(&args).await,
        (0, Vec::new()),
        "put back, the books square again"
    );

    // Against the provider: square, then the provider's ledger disagreeing, and an intent kassa
    // does not know.
    let with_provider = [&args[..], &["--provider"]].concat();
    assert_eq!(reconcile(&with_provider).await, (0, Vec::new()));
    let c = &placed[2].id;
    let unknown = format!("pi_stray_{}", saga.run);
    let inject = [
        format!("UPDATE simulator.intents SET status = 'requires_capture', received_minor = 0 WHERE order_id = '{c}'"),
        format!(
            "INSERT INTO simulator.intents (id, order_id, amount_minor, currency, payment_method, status, updated_at)
             VALUES ('{unknown}', 'stray-{unknown}', 100, 'EUR', 'pm_card_visa', 'requires_capture', now() - interval '1 hour')"
        ),
    ];
    for sql in &inject {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await
            .unwrap();
    }
    let (code, found) = reconcile(&with_provider).await;
    for sql in [
        format!(
            "UPDATE simulator.intents SET status = 'succeeded', received_minor = amount_minor WHERE order_id = '{c}'"
        ),
        format!("DELETE FROM simulator.intents WHERE id = '{unknown}'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    assert_eq!(code, 1, "{found:?}");
    for id in [c.as_str(), unknown.as_str()] {
        assert!(
            reported(&found, "payments_provider", id),
            "the provider's disagreement about {id} reported: {found:?}"
        );
    }
    assert_eq!(reconcile(&with_provider).await, (0, Vec::new()));
}

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

/// Runs `kassa tail --json` with `args`: the records it printed.
async fn tail(args: &[&str]) -> Vec<Value> {
    let (code, out, err) = kassa(&[&["tail", "--json"], args].concat()).await;
    assert_eq!(code, 0, "kassa tail {args:?}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
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

/// Runs `kassa dlq list --json` with `args`: the dead letters.
async fn dead_letters(args: &[&str]) -> Vec<Value> {
    let (code, out, err) = kassa(&[&["dlq", "list", "--json"], args].concat()).await;
    assert_eq!(code, 0, "kassa dlq list {args:?}: {err}");
    serde_json::from_str::<Value>(&out)
        .expect("JSON")
        .as_array()
        .expect("a list")
        .clone()
}

/// Waits until `kassa dlq list` with `args` shows a dead letter keyed `key` (after `skip` of
/// them); returns it.
async fn dead_letter_keyed(args: &[&str], key: &str, skip: usize) -> Value {
    let started = std::time::Instant::now();
    loop {
        let found: Vec<Value> = dead_letters(args)
            .await
            .into_iter()
            .filter(|d| d["record"]["key"] == key)
            .collect();
        if let Some(letter) = found.get(skip) {
            return letter.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no dead letter keyed {key}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // poll the dead letters until the deadline
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_redriven_once_after_the_fix_and_discarded_on_the_record() {
    let _serial = SERIAL.lock().await;
    let saga = Saga::new(start_processors(ENV).await, None, None).await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let pool = saga.pool();

    // A cause that fails every time: the database refuses this SKU's stock commands.
    let sku = saga.sku("DLQ");
    let trigger = format!("refuse_{}", saga.run.to_lowercase());
    for sql in [
        "CREATE OR REPLACE FUNCTION public.kassa_test_refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'refused by a test'; END $$"
            .to_owned(),
        format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT ON inventory.stock_commands FOR EACH ROW
             WHEN (NEW.sku = '{sku}') EXECUTE FUNCTION public.kassa_test_refuse()"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let put = saga
        .api
        .as_admin(reqwest::Method::PUT, &format!("/admin/products/{sku}"))
        .json(&serde_json::json!({"name": sku, "price_minor": 500, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let counted = saga
        .api
        .as_admin(reqwest::Method::POST, &format!("/admin/stock/{sku}"))
        .json(&serde_json::json!({"set": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 202);
    let inventory = ["--group", "inventory", "--since", &since];
    let letter = dead_letter_keyed(&inventory, &sku, 0).await;
    let id = letter["id"].as_str().expect("an id").to_owned();
    assert!(letter["status"].is_null(), "{letter}");
    let reason = letter["record"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "kassa.dlq.reason")
        .map(|h| h[1].as_str().unwrap().to_owned())
        .unwrap();
    assert!(
        reason.starts_with("failed 3 times") && reason.contains("refused by a test"),
        "{reason}"
    );
    let (code, shown, _) = kassa(&["dlq", "show", &id]).await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["record"]["event"]["event_type"], "SetStock");
    assert_eq!(
        stock(pool, &sku).await,
        None,
        "not applied while the cause stands"
    );

    // Fixed: redriven, it applies; redriven again, nothing is published.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER {trigger} ON inventory.stock_commands"
    )))
    .execute(pool)
    .await
    .unwrap();
    let (code, out, err) = kassa(&["dlq", "redrive", &id, "--reason", "trigger dropped"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_for(
        Duration::from_secs(60),
        "the redriven count to apply",
        || async { stock(pool, &sku).await == Some((7, 0, 0)) },
    )
    .await;
    let (code, _, err) = kassa(&["dlq", "redrive", &id, "--reason", "again"]).await;
    assert_eq!(code, 1, "a second redrive is refused");
    assert!(err.contains("already redriven"), "{err}");
    let commands = tail(&["inventory.commands", "--from", &since, "--key", &sku]).await;
    assert_eq!(
        commands.len(),
        2,
        "the command, and one redrive of it: {commands:?}"
    );
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, outcome FROM ops.dead_letter_actions WHERE dead_letter = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            ("redrive".to_owned(), "published".to_owned()),
            ("redrive".to_owned(), "refused: already redriven".to_owned())
        ]
    );

    // A message the handler declared invalid has its event id in the inbox: the redrive gets
    // past it, so the copy is handled anew (here: declared invalid again, a second dead letter
    // of the same event).
    let feed = common::inventory::Feed::new(&saga.api.settings);
    let wrong_key = format!("not-{sku}");
    feed.send(&wrong_key, &common::inventory::reserve("o-dlq", 0, &sku, 1))
        .await;
    let first = dead_letter_keyed(&inventory, &wrong_key, 0).await;
    let first_id = first["id"].as_str().unwrap();
    let (code, out, err) = kassa(&["dlq", "redrive", first_id, "--reason", "handled anew"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let second = dead_letter_keyed(&inventory, &wrong_key, 1).await;
    assert_eq!(
        second["record"]["event"]["event_id"], first["record"]["event"]["event_id"],
        "the same event, handled again rather than dropped as a duplicate"
    );

    // Discarded: no longer listed, on the record with who and why.
    let (code, _, err) = kassa(&[
        "dlq",
        "discard",
        second["id"].as_str().unwrap(),
        "--reason",
        "producer fixed",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kassa(&["dlq", "discard", first_id, "--reason", "producer fixed"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        dead_letters(&inventory)
            .await
            .iter()
            .all(|d| d["record"]["key"] != wrong_key.as_str()),
        "discarded ones are not listed"
    );
    let all = dead_letters(&[&inventory[..], &["--all"]].concat()).await;
    assert!(
        all.iter()
            .filter(|d| d["record"]["key"] == wrong_key.as_str())
            .all(|d| d["status"] == "discard: discarded"),
        "--all lists them as discarded: {all:?}"
    );
    let discards: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ops.dead_letter_actions WHERE action = 'discard' AND reason = 'producer fixed' AND actor <> ''",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(discards >= 2);
}
