//! Processors in databases of their own (`KASSA_<PROCESSOR>_DATABASE_URL`): `kassa migrate`
//! brings each database up to date, an order completes with the orders and payments processors
//! in a second database (the API reading order status there), their rows are there and not in the
//! main one, the per-processor tools work, and the views that join schemas say why they cannot.

use crate::common;

use std::time::Duration;

use crate::common::saga::{Saga, start_processors};

/// The second database, made once (as the superuser role of `scripts/dev`); its URL.
async fn second_database(main: &sqlx::PgPool) -> String {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'kassa_split')",
    )
    .fetch_one(main)
    .await
    .unwrap();
    if !exists {
        let created = sqlx::query("CREATE DATABASE kassa_split")
            .execute(main)
            .await;
        // Another run may have made it meanwhile.
        if let Err(e) = created {
            assert!(e.to_string().contains("already exists"), "{e}");
        }
    }
    let mut url = reqwest::Url::parse(&std::env::var("KASSA_DATABASE_URL").unwrap()).unwrap();
    url.set_path("/kassa_split");
    url.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_completes_with_orders_and_payments_in_a_database_of_their_own() {
    let settings = common::setup().await;
    let main = kassa::migrate::connect(&settings).await.unwrap();
    let split = second_database(&main).await;
    let env = [
        ("KASSA_ORDERS_DATABASE_URL", split.as_str()),
        ("KASSA_PAYMENTS_DATABASE_URL", split.as_str()),
    ];

    let (ok, migrated) = common::run_kassa(&["migrate"], &env);
    assert!(ok, "{migrated}");
    let lines: Vec<&str> = migrated
        .lines()
        .filter(|l| l.starts_with("migrations:"))
        .collect();
    assert_eq!(lines.len(), 2, "one line a database: {migrated}");
    assert!(
        lines[1].contains("/kassa_split")
            && lines[1].contains("(orders, payments) up to date")
            && lines[0].contains("(api, ops, inventory, expiry, notifications) up to date"),
        "{migrated}"
    );
    assert!(
        !migrated.contains(":kassa@"),
        "no password shown: {migrated}"
    );

    let saga = Saga::with(start_processors(&env).await, |c| {
        c.orders_database_url = kassa_schemas::secret::Secret::new(split.clone());
    })
    .await;
    let sku = saga.sku("SPLIT");
    saga.product(&sku, 900, 4).await;
    let order = saga.place("pm_card_visa", &[(&sku, 1)]).await;
    saga.wait_status(&order, "completed", Duration::from_secs(60))
        .await;
    saga.wait_stock(&sku, (3, 0, 1)).await;

    let split_pool = sqlx::PgPool::connect(&split).await.unwrap();
    let count = |pool: &sqlx::PgPool, table: &'static str| {
        let (pool, id) = (pool.clone(), order.id.clone());
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE order_id::text = $1"
            )))
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(count(&split_pool, "orders.orders").await, 1);
    assert_eq!(count(&split_pool, "payments.payments").await, 1);
    assert_eq!(count(&main, "orders.orders").await, 0);
    assert_eq!(count(&main, "payments.payments").await, 0);
    assert_eq!(count(&main, "inventory.reservations").await, 1);

    // Tools of one processor read its own database; views joining schemas say why they cannot.
    let (ok, lag) = common::run_kassa(&["lag", "--group", "payments"], &env);
    assert!(ok && lag.contains("payments"), "{lag}");
    let (ok, refused) = common::run_kassa(&["reconcile"], &env);
    assert!(!ok, "{refused}");
    assert!(
        refused.contains("kassa reconcile joins several processors' schemas")
            && refused.contains("orders, payments are kept in databases of their own"),
        "{refused}"
    );
}
