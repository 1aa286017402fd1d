//! The deployment's Kafka client properties (`KASSA_KAFKA_CONFIG`, `KASSA_KAFKA__<property>`),
//! against the real broker: they reach a running kassa's clients, and bad ones stop kassa at
//! startup with an error that names the property and never its value.

use crate::common;

use std::time::Instant;

use common::http::{free_port, wait_until};
use common::processes::Component;

/// Runs `kassa topics create` with `env` added; its exit success and what it wrote.
fn topics_create(env: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .args(["topics", "create"])
        .envs(env.iter().copied())
        .output()
        .expect("kassa runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
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
    let addr = format!("127.0.0.1:{}", free_port());
    let api = Component::start(
        "api",
        &[
            ("KASSA_HTTP_ADDR", addr.as_str()),
            ("KASSA_KAFKA_CONFIG", file.to_str().unwrap()),
        ],
    );
    let base = format!("http://{addr}");
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
    let addr = format!("127.0.0.1:{}", free_port());
    let _api = Component::start("api", &[("KASSA_HTTP_ADDR", addr.as_str())]);
    wait_until(&http, &format!("http://{addr}"), "/ready", 200, |body| {
        body["checks"]["kafka"] == "ok"
    })
    .await;
}
