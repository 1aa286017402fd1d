//! `kassa reconcile`: square books pass; each class of discrepancy, injected by hand, is named
//! with its ids.

use super::*;

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
