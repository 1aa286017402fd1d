//! The deployment's Kafka client properties (`KASSA_KAFKA_CONFIG`, `KASSA_KAFKA__<property>`),
//! against the real broker: they reach a running kassa's clients, and bad ones stop kassa at
//! startup with an error that names the property and never its value.

use crate::common;

use std::time::Instant;

use common::http::wait_until;
use common::processes::Component;

/// Runs `kassa topics create` with `env` added; its exit success and what it wrote.
fn topics_create(env: &[(&str, &str)]) -> (bool, String) {
    common::run_kassa(&["topics", "create"], env)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_kafka_properties_stop_kassa_at_startup_naming_the_property_not_its_value() {
    common::setup().await;
    let started = Instant::now();
    let (ok, text) = topics_create(&[("KASSA_KAFKA__sasl.pasword", "hunter2")]);
    assert!(!ok, "a misspelt property is refused: {text}");
    assert!(
        text.contains("Kafka client properties") && text.contains("sasl.pasword"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the value is never shown: {text}"
    );

    let (ok, text) = topics_create(&[("KASSA_KAFKA__ENABLE_IDEMPOTENCE", "false")]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "enable.idempotence (from KASSA_KAFKA__ENABLE_IDEMPOTENCE) is set by kassa itself"
        ),
        "{text}"
    );

    let file = std::env::temp_dir().join(format!("kassa-bad-{}.properties", uuid::Uuid::new_v4()));
    std::fs::write(&file, "client.id=kassa\nthis line has no value\n").unwrap();
    let (ok, text) = topics_create(&[("KASSA_KAFKA_CONFIG", file.to_str().unwrap())]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok, "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(
        started.elapsed().as_secs() < 20,
        "refused at startup, before any connection is tried"
    );

    // Properties that fit the cluster are taken, from the file and from variables.
    let file = std::env::temp_dir().join(format!("kassa-ok-{}.properties", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        "# the plaintext test broker\nclient.id = kassa-tests\n",
    )
    .unwrap();
    let (ok, text) = topics_create(&[
        ("KASSA_KAFKA_CONFIG", file.to_str().unwrap()),
        ("KASSA_KAFKA__SOCKET_KEEPALIVE_ENABLE", "true"),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_properties_from_a_file_reach_a_running_apis_clients() {
    common::setup().await;
    let http = reqwest::Client::new();
    // SASL against the plaintext listener: if the file reaches the API's producer, Kafka is
    // unreachable for it, and /ready says so, while Postgres and Redis answer.
    let file = std::env::temp_dir().join(format!("kassa-sasl-{}.properties", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=kassa\nsasl.password=not-this-broker\n",
    )
    .unwrap();
    let (api, base) = Component::start_api(&[("KASSA_KAFKA_CONFIG", file.to_str().unwrap())]);
    wait_until(&http, &base, "/health", 200, |_| true).await;
    let problem = wait_until(&http, &base, "/ready", 503, |body| {
        body["detail"].as_str().is_some_and(|d| {
            d.contains(r#""kafka":"failing""#) || d.contains(r#""kafka":"timed out""#)
        }) && body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(r#""postgres":"ok""#))
    })
    .await;
    drop(api);
    let _ = std::fs::remove_file(&file);
    assert!(
        !problem.to_string().contains("not-this-broker"),
        "{problem}"
    );

    // The same API without the file is ready: the failure above was the file's doing.
    let (_api, base) = Component::start_api(&[]);
    wait_until(&http, &base, "/ready", 200, |body| {
        body["checks"]["kafka"] == "ok"
    })
    .await;
}

/// The secured listener `scripts/dev` starts: (brokers, the SCRAM user's password, the CA).
fn secured_listener() -> (String, String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name}: the SASL_SSL listener of `scripts/dev up` (`scripts/dev env --test`)")
        })
    };
    (
        var("KASSA_TEST_KAFKA_SECURE_BROKERS"),
        var("KASSA_TEST_KAFKA_SCRAM_PASSWORD"),
        var("KASSA_TEST_TLS_CA"),
    )
}

/// The settings of a kassa on the SASL_SSL listener with `password` and trusting `ca`.
fn over_sasl_ssl<'a>(brokers: &'a str, password: &'a str, ca: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("KASSA_KAFKA_BROKERS", brokers),
        ("KASSA_KAFKA__security.protocol", "SASL_SSL"),
        ("KASSA_KAFKA__sasl.mechanism", "SCRAM-SHA-512"),
        ("KASSA_KAFKA__sasl.username", "kassa"),
        ("KASSA_KAFKA__sasl.password", password),
        ("KASSA_KAFKA__ssl.ca.location", ca),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn over_sasl_ssl_a_wrong_password_or_an_untrusted_certificate_is_named() {
    common::setup().await;
    let (brokers, password, ca) = secured_listener();
    let (ok, text) = topics_create(&over_sasl_ssl(&brokers, &password, &ca));
    assert!(ok && text.contains("exists"), "over SASL_SSL: {text}");

    let (ok, text) = topics_create(&over_sasl_ssl(&brokers, "not-the-password", &ca));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("Kafka at {brokers} cannot be reached"))
            && text.to_lowercase().contains("authentication"),
        "a refused password is named as such: {text}"
    );
    assert!(
        !text.contains("not-the-password") && !text.contains(&password),
        "{text}"
    );

    // A CA that did not sign the broker's certificate.
    let other = other_ca();
    let other_ca = other.join("ca.pem");
    let (ok, text) = topics_create(&over_sasl_ssl(
        &brokers,
        &password,
        other_ca.to_str().unwrap(),
    ));
    let _ = std::fs::remove_dir_all(&other);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("Kafka at {brokers} cannot be reached"))
            && text.contains("certificate"),
        "an untrusted certificate is named as such: {text}"
    );
}

/// The test database's URL for the TLS-only role `kassa_tls` `scripts/dev` makes, with `sslmode`
/// and the CA `ca`.
fn postgres_tls_url(sslmode: &str, ca: &str) -> String {
    let password = std::env::var("KASSA_TEST_POSTGRES_TLS_PASSWORD").expect(
        "KASSA_TEST_POSTGRES_TLS_PASSWORD: the TLS-only role of `scripts/dev up` (`scripts/dev env --test`)",
    );
    let mut url = reqwest::Url::parse(&std::env::var("KASSA_DATABASE_URL").unwrap()).unwrap();
    url.set_username("kassa_tls").unwrap();
    url.set_password(Some(&password)).unwrap();
    url.query_pairs_mut()
        .clear()
        .append_pair("sslmode", sslmode)
        .append_pair("sslrootcert", ca);
    url.to_string()
}

/// A throw-away CA that signed nothing kassa talks to (its directory, removed by the caller).
fn other_ca() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kassa-other-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=not kassa's CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_is_verified_and_plaintext_or_an_untrusted_certificate_is_refused() {
    common::setup().await;
    let (_, _, ca) = secured_listener();
    let pool = sqlx::PgPool::connect(&postgres_tls_url("verify-full", &ca))
        .await
        .expect("the TLS-only role over verify-full");
    let (ssl, user): (bool, String) = sqlx::query_as(
        "SELECT s.ssl, current_user::text FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(ssl && user == "kassa_tls");
    pool.close().await;

    let plaintext = sqlx::PgPool::connect(&postgres_tls_url("disable", &ca)).await;
    let error = match plaintext {
        Ok(_) => panic!("the TLS-only role got in without TLS"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("no encryption"), "{error}");

    let other = other_ca();
    let other_ca = other.join("ca.pem");
    let url = postgres_tls_url("verify-full", other_ca.to_str().unwrap());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .arg("migrate")
        .env("KASSA_DATABASE_URL", &url)
        .output()
        .expect("kassa runs");
    let _ = std::fs::remove_dir_all(&other);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    let password = std::env::var("KASSA_TEST_POSTGRES_TLS_PASSWORD").unwrap();
    assert!(
        text.to_lowercase().contains("certificate") && !text.contains(&password),
        "an untrusted certificate is named, the password never: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_completes_with_every_connection_secured() {
    let (brokers, password, ca) = secured_listener();
    let database = postgres_tls_url("verify-full", &ca);
    let redis = redis_tls_url(None);
    let registry = common::secured_registry::start("kassa", "registry-password").await;
    let mut secured = over_sasl_ssl(&brokers, &password, &ca);
    secured.push(("KASSA_SCHEMA_REGISTRY_URL", registry.url.as_str()));
    secured.push(("KASSA_SCHEMA_REGISTRY_USERNAME", "kassa"));
    secured.push(("KASSA_SCHEMA_REGISTRY_PASSWORD", "registry-password"));
    secured.push(("KASSA_SCHEMA_REGISTRY_CA", ca.as_str()));
    secured.push(("KASSA_DATABASE_URL", database.as_str()));
    secured.push(("KASSA_REDIS_URL", redis.as_str()));
    secured.push(("KASSA_REDIS_CA", ca.as_str()));
    let saga =
        common::saga::Saga::new(common::saga::start_processors(&secured).await, None, None).await;
    let (_api, api) = Component::start_api(&secured);
    let http = reqwest::Client::new();
    let ready = wait_until(&http, &api, "/ready", 200, |_| true).await;
    assert_eq!(ready["checks"]["kafka"], "ok", "{ready}");
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    let sku = saga.sku("SASL");
    saga.product(&sku, 1200, 3).await;
    let customer = format!("cus_{}_sasl", saga.run);
    let order = saga.place_through(&api, customer, (&sku, 2), None).await;
    saga.wait_status(&order, "completed", std::time::Duration::from_secs(60))
        .await;
    saga.wait_stock(&sku, (1, 0, 2)).await;
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'kassa_tls'",
    )
    .fetch_one(saga.pool())
    .await
    .unwrap();
    assert!(
        tls > 0 && plain == 0,
        "the processors and the API hold their connections over TLS: {tls} over TLS, {plain} not"
    );
}

/// The test suite's Redis database on the TLS port as the ACL user `kassa_tls` (with
/// `password` instead of its own, if given).
fn redis_tls_url(password: Option<&str>) -> String {
    let url = std::env::var("KASSA_TEST_REDIS_TLS_URL").expect(
        "KASSA_TEST_REDIS_TLS_URL: the TLS port of `scripts/dev up` (`scripts/dev env --test`)",
    );
    let mut url = reqwest::Url::parse(&url).unwrap();
    if let Some(password) = password {
        url.set_password(Some(password)).unwrap();
    }
    url.set_path("/1");
    url.to_string()
}

/// Waits until a `kassa run api` with `env` says Redis is `verdict` in /ready.
async fn api_sees_redis(env: &[(&str, &str)], verdict: &str) {
    let (_api, base) = Component::start_api(env);
    let http = reqwest::Client::new();
    wait_until(&http, &base, "/health", 200, |_| true).await;
    let status = if verdict == "ok" { 200 } else { 503 };
    wait_until(&http, &base, "/ready", status, |body| {
        body["checks"]["redis"] == verdict
            || body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!(r#""redis":"{verdict}""#)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_as_an_acl_user_and_a_wrong_password_or_an_untrusted_ca_is_not_let_in() {
    common::setup().await;
    let (_, _, ca) = secured_listener();
    let url = redis_tls_url(None);
    api_sees_redis(&[("KASSA_REDIS_URL", &url), ("KASSA_REDIS_CA", &ca)], "ok").await;

    let wrong = redis_tls_url(Some("not-the-password"));
    api_sees_redis(
        &[("KASSA_REDIS_URL", &wrong), ("KASSA_REDIS_CA", &ca)],
        "failing",
    )
    .await;

    let other = other_ca();
    let other_ca = other.join("ca.pem");
    let untrusted = [
        ("KASSA_REDIS_URL", url.as_str()),
        ("KASSA_REDIS_CA", other_ca.to_str().unwrap()),
    ];
    api_sees_redis(&untrusted, "failing").await;
    let _ = std::fs::remove_dir_all(&other);
}

/// Runs `kassa schemas check` with `env` added; its exit success and what it wrote.
fn schemas_check(env: &[(&str, &str)]) -> (bool, String) {
    common::run_kassa(&["schemas", "check"], env)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_over_https_with_basic_auth_and_a_wrong_password_or_an_untrusted_ca_is_named()
{
    common::setup().await;
    let (_, _, ca) = secured_listener();
    let registry = common::secured_registry::start("kassa", "registry-password").await;
    let with = |password: &'static str, ca: Option<&str>| {
        let mut env = vec![
            ("KASSA_SCHEMA_REGISTRY_URL", registry.url.clone()),
            ("KASSA_SCHEMA_REGISTRY_USERNAME", "kassa".to_owned()),
            ("KASSA_SCHEMA_REGISTRY_PASSWORD", password.to_owned()),
        ];
        if let Some(ca) = ca {
            env.push(("KASSA_SCHEMA_REGISTRY_CA", ca.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tokio::task::block_in_place(|| schemas_check(&env))
    };
    let (ok, text) = with("registry-password", Some(&ca));
    assert!(
        ok && text.contains("compatible"),
        "over HTTPS with basic auth: {text}"
    );

    let (ok, text) = with("not-the-password", Some(&ca));
    assert!(!ok, "{text}");
    assert!(text.contains("401"), "a refused password is named: {text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let (ok, text) = with("registry-password", None);
    assert!(!ok, "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "a certificate nobody vouches for is named: {text}"
    );
}
