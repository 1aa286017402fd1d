//! An API started in a process of its own making (`kassa_api::start`, as the saga bench starts
//! one per run) and stopped: it answers no more, and its database connections are closed, so
//! APIs started one after another never pile up connections until Postgres refuses new ones.

use crate::common;

use std::time::{Duration, Instant};

use kassa_schemas::secret::Secret;

/// Connections to the database named `application_name`.
async fn connections(pool: &sqlx::PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(application_name)
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_api_answers_no_more_and_closes_its_database_connections() {
    let settings = common::setup().await;
    let pool = kassa::migrate::connect(&settings).await.expect("database");
    let name = format!("api-stop-{}", uuid::Uuid::new_v4().simple());
    let mut config = settings.api_config();
    config.addr = "127.0.0.1:0".parse().expect("address");
    // Its connections carry a name of their own, to be told from every other in the database.
    let url = |secret: &Secret| {
        let url = secret.expose();
        let joiner = if url.contains('?') { '&' } else { '?' };
        Secret::new(format!("{url}{joiner}application_name={name}"))
    };
    config.database_url = url(&config.database_url);
    config.orders_database_url = url(&config.orders_database_url);
    let api = kassa_api::start(&config).await.expect("API starts");
    let base = format!("http://{}", api.addr);
    let http = reqwest::Client::new();

    // Readiness reads the database: the API holds connections of its own now.
    let ready = http
        .get(format!("{base}/ready"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(ready.status().as_u16(), 200, "a started API is ready");
    assert!(
        connections(&pool, &name).await > 0,
        "the API connected to the database"
    );

    drop(http);
    api.stop().await.expect("the API stops cleanly");
    let answer = reqwest::Client::new()
        .get(format!("{base}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "a stopped API still answered: {:?}",
        answer.map(|a| a.status())
    );
    // A backend ends a moment after its client hangs up: wait for it, with a deadline.
    let started = Instant::now();
    loop {
        let left = connections(&pool, &name).await;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{left} database connections of the stopped API still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll pg_stat_activity until the deadline
    }
}
