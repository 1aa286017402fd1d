//! A Kafka client that is not kassa's: confluent-kafka's Python client and its Avro deserializer
//! (`tests/foreign_consumer.py`, in the venv `scripts/dev up` installs), reading records as a
//! downstream team would.

use std::time::Duration;

use kassa::settings::Settings;
use serde_json::Value;

/// Where a record is: `{"topic", "partition", "offset"}`.
pub fn place(topic: &str, partition: i32, offset: i64) -> Value {
    serde_json::json!({ "topic": topic, "partition": partition, "offset": offset })
}

/// The records at `places` as confluent-kafka decodes them: `{"key", "value"}` each, and
/// `"headers"` (name → text) with `headers`.
pub async fn read(settings: &Settings, places: &[Value], headers: bool) -> Vec<Value> {
    let python = std::env::var("KASSA_TEST_PYTHON")
        .expect("KASSA_TEST_PYTHON: the Python with confluent-kafka that `scripts/dev up` installs (see `scripts/dev env`)");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/foreign_consumer.py"
        ))
        .arg(&settings.kafka_brokers)
        .arg(&settings.schema_registry_url);
    if headers {
        command.arg("--headers");
    }
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the Python consumer");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(places).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the Python consumer finishes within 2 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "Python consumer failed: {:?}",
        output.status
    );
    let read: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON from Python");
    assert_eq!(read.len(), places.len());
    read
}

/// Every record about `order` on every kassa topic since `since` (found by key or correlation
/// id), read by the foreign client: its topic and the trace id of its `traceparent` header.
pub async fn order_traces(
    settings: &Settings,
    order: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Option<String>)> {
    let options = kassa::tail::Options {
        topics: kassa_schemas::Topic::ALL
            .iter()
            .map(|t| t.name().to_owned())
            .collect(),
        start: kassa::tail::Start::Time(since),
        key: None,
        order: Some(order.to_owned()),
        event_type: None,
        follow: false,
        limit: None,
        partition: None,
        until: None,
    };
    let mut places = Vec::new();
    kassa::tail::tail(settings, &options, |r| {
        places.push(place(&r.topic, r.partition, r.offset));
    })
    .await
    .expect("kassa tail reads every topic");
    let read = read(settings, &places, true).await;
    places
        .iter()
        .zip(read)
        .map(|(place, record)| {
            let trace = record["headers"]["traceparent"]
                .as_str()
                .and_then(kassa_schemas::trace::trace_id)
                .map(str::to_owned);
            (place["topic"].as_str().unwrap().to_owned(), trace)
        })
        .collect()
}
