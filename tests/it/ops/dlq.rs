//! `kassa dlq`: dead letters listed, redriven once after the fix (past the inbox), discarded on
//! the record.

use super::*;

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
