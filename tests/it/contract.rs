//! The event contract against real Kafka and the real Schema Registry: every event type round-trips,
//! the wire format is Confluent's with the id the registry assigned, keys land where Java puts them,
//! and a client that is not ours decodes what we write, as `kassa tail` shows it.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Isolation, read_from, setup};
use kassa_schemas::events::samples::{self, Sample};
use kassa_schemas::{Codec, Envelope, Payload, Topic, codec, kafka::java_partition};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Where a produced event landed.
struct Landed {
    topic: Topic,
    key: String,
    partition: i32,
    offset: i64,
    bytes: Vec<u8>,
}

async fn produce<P: Payload>(
    codec: &Codec,
    producer: &FutureProducer,
    event: &Envelope<P>,
) -> Landed {
    let bytes = codec.encode(event).await.expect("encode");
    let key = key_of(event);
    let delivery = producer
        .send(
            FutureRecord::to(P::TOPIC.name()).key(&key).payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .expect("Kafka acknowledged");
    Landed {
        topic: P::TOPIC,
        key,
        partition: delivery.partition,
        offset: delivery.offset,
        bytes,
    }
}

/// The message key the topic's contract asks for: the SKU on SKU-keyed topics, else the order id.
fn key_of<P: Payload>(event: &Envelope<P>) -> String {
    match P::TOPIC.key() {
        kassa_schemas::KeyKind::OrderId => event.correlation_id.clone(),
        kassa_schemas::KeyKind::Sku => {
            let json = serde_json::to_value(&event.payload).expect("payload as JSON");
            let record = json
                .as_object()
                .and_then(|o| o.values().next())
                .expect("one variant");
            record["sku"]
                .as_str()
                .expect("SKU-keyed payloads carry a sku")
                .to_owned()
        }
    }
}

async fn decode_same<P: Payload + PartialEq>(codec: &Codec, bytes: &[u8], sent: &Envelope<P>) {
    let back: Envelope<P> = codec.decode(bytes).await.expect("decode");
    assert_eq!(&back, sent, "{} round trip", P::TOPIC.name());
}

async fn registered_ids(settings: &kassa::settings::Settings) -> HashMap<String, u64> {
    // Each answer within 10 s, retried until a deadline: another test restarts Postgres under the
    // registry, and a request caught in that must not wait forever.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut ids = HashMap::new();
    for topic in Topic::ALL {
        let url = format!(
            "{}/subjects/{}/versions/latest",
            settings.schema_registry_url,
            topic.subject()
        );
        let started = std::time::Instant::now();
        let body: serde_json::Value = loop {
            let answer = match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            };
            if let Some(body) = answer {
                break body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the registry did not give {url} within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await; // retry until the deadline
        };
        ids.insert(topic.name().to_owned(), body["id"].as_u64().expect("id"));
    }
    ids
}

#[tokio::test]
async fn every_event_type_round_trips_through_kafka_and_the_registry() {
    let settings = setup().await;
    let codec = Codec::new(&settings.schema_registry_url).unwrap();
    let producer = kassa::kafka::producer(&settings).unwrap();
    let ids = registered_ids(&settings).await;
    let sent = samples::all();
    let sampled: std::collections::BTreeSet<_> = sent.iter().map(Sample::event_type).collect();
    assert_eq!(
        sampled,
        samples::event_types(),
        "every event type the schemas define is sent"
    );

    let mut landed = Vec::new();
    for sample in &sent {
        landed.push(match sample {
            Sample::Checkout(e) => produce(&codec, &producer, e).await,
            Sample::InventoryCommand(e) => produce(&codec, &producer, e).await,
            Sample::InventoryEvent(e) => produce(&codec, &producer, e).await,
            Sample::OrderRequest(e) => produce(&codec, &producer, e).await,
            Sample::OrderEvent(e) => produce(&codec, &producer, e).await,
            Sample::PaymentEvent(e) => produce(&codec, &producer, e).await,
            Sample::PaymentWebhook(e) => produce(&codec, &producer, e).await,
            Sample::ExpiryEvent(e) => produce(&codec, &producer, e).await,
        });
    }

    for (sample, at) in sent.iter().zip(&landed) {
        // Read it back from Kafka, as a consumer would.
        let messages = read_from(
            &settings,
            at.topic.name(),
            at.partition,
            at.offset,
            Isolation::Committed,
            Duration::from_secs(30),
            |m| !m.is_empty(),
        );
        let message = &messages[0];
        assert_eq!(message.offset(), at.offset);
        let bytes = message.payload().expect("a value");
        assert_eq!(bytes, at.bytes.as_slice());
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(
            codec::schema_id(bytes).map(u64::from),
            Some(ids[at.topic.name()]),
            "{}: the id on the wire is the one the registry assigned",
            at.topic.name()
        );
        assert_eq!(common::key_of(message), at.key);
        match sample {
            Sample::Checkout(e) => decode_same(&codec, bytes, e).await,
            Sample::InventoryCommand(e) => decode_same(&codec, bytes, e).await,
            Sample::InventoryEvent(e) => decode_same(&codec, bytes, e).await,
            Sample::OrderRequest(e) => decode_same(&codec, bytes, e).await,
            Sample::OrderEvent(e) => decode_same(&codec, bytes, e).await,
            Sample::PaymentEvent(e) => decode_same(&codec, bytes, e).await,
            Sample::PaymentWebhook(e) => decode_same(&codec, bytes, e).await,
            Sample::ExpiryEvent(e) => decode_same(&codec, bytes, e).await,
        }
    }
}

#[tokio::test]
async fn keys_land_on_the_partition_a_java_client_would_choose() {
    let settings = setup().await;
    let producer = kassa::kafka::producer(&settings).unwrap();
    let partitions = 12;
    let topic =
        common::ensure_scratch_topic(&settings, "kassa-test.partitioning", partitions).await;
    let mut used = std::collections::HashSet::new();
    for i in 0..200 {
        let key = format!("SKU-{i}-{}", uuid::Uuid::new_v4().simple());
        let delivery = producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload("partition probe"),
                Duration::from_secs(30),
            )
            .await
            .expect("Kafka acknowledged");
        assert_eq!(
            delivery.partition as u32,
            java_partition(key.as_bytes(), partitions as u32),
            "key {key}"
        );
        used.insert(delivery.partition);
    }
    assert!(used.len() > 1, "200 keys spread over several partitions");
}

#[tokio::test]
async fn a_client_that_is_not_ours_decodes_every_event_type() {
    let settings = setup().await;
    let codec = Codec::new(&settings.schema_registry_url).unwrap();
    let producer = kassa::kafka::producer(&settings).unwrap();
    let mut expected = Vec::new();
    let mut wanted = Vec::new();
    for sample in samples::all() {
        let (landed, json) = match &sample {
            Sample::Checkout(e) => (produce(&codec, &producer, e).await, serde_json::to_value(e)),
            Sample::InventoryCommand(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
            Sample::InventoryEvent(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
            Sample::OrderRequest(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
            Sample::OrderEvent(e) => (produce(&codec, &producer, e).await, serde_json::to_value(e)),
            Sample::PaymentEvent(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
            Sample::PaymentWebhook(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
            Sample::ExpiryEvent(e) => {
                (produce(&codec, &producer, e).await, serde_json::to_value(e))
            }
        };
        expected.push(serde_json::json!({ "key": landed.key, "value": json.unwrap() }));
        wanted.push(common::foreign::place(
            landed.topic.name(),
            landed.partition,
            landed.offset,
        ));
    }

    let decoded = common::foreign::read(&settings, &wanted, false).await;
    assert_eq!(decoded.len(), expected.len());
    for (theirs, ours) in decoded.iter().zip(&expected) {
        assert_eq!(
            theirs, ours,
            "confluent-kafka's Avro deserializer reads what kassa wrote"
        );
    }

    // `kassa tail` shows each record as the foreign client decodes it.
    for (place, theirs) in wanted.iter().zip(&decoded) {
        let options = kassa::tail::Options {
            topics: vec![place["topic"].as_str().unwrap().to_owned()],
            start: kassa::tail::Start::Offset(place["offset"].as_i64().unwrap()),
            key: None,
            order: None,
            event_type: None,
            follow: false,
            limit: Some(1),
            partition: Some(place["partition"].as_i64().unwrap() as i32),
            until: None,
        };
        let mut shown = Vec::new();
        kassa::tail::tail(&settings, &options, |r| shown.push(r.clone()))
            .await
            .expect("kassa tail reads the topic");
        let [record] = shown.as_slice() else {
            panic!("kassa tail shows the record at {place}: {shown:?}");
        };
        assert_eq!(record.offset, place["offset"].as_i64().unwrap());
        assert_eq!(record.key.as_deref(), theirs["key"].as_str(), "{place}");
        assert_eq!(
            record.event.as_ref(),
            Some(&theirs["value"]),
            "kassa tail decodes {place} as confluent-kafka does"
        );
    }
}

/// Runs the AsyncAPI validator (`tests/asyncapi_validate.js`) on `file`: whether it passed, and
/// what it printed.
async fn asyncapi_valid(file: &std::path::Path) -> (bool, String) {
    std::env::var("KASSA_TEST_ASYNCAPI_VALIDATOR").expect(
        "KASSA_TEST_ASYNCAPI_VALIDATOR: the AsyncAPI validator `scripts/dev up` installs (see `scripts/dev env`)",
    );
    let output = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/asyncapi_validate.js"
        ))
        .arg(file)
        .output()
        .await
        .expect("run node");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn the_asyncapi_document_validates_and_names_every_topic_and_event_type() {
    let committed =
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.json"));
    let (valid, printed) = asyncapi_valid(committed).await;
    assert!(valid, "docs/asyncapi.json is valid AsyncAPI 3.0: {printed}");

    // The validator refuses a document that breaks the specification.
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
    broken["channels"]["ordersEvents"]["address"] = serde_json::json!(42);
    let file = std::env::temp_dir().join(format!("kassa-asyncapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, broken.to_string()).unwrap();
    let (valid, _) = asyncapi_valid(&file).await;
    let _ = std::fs::remove_file(&file);
    assert!(!valid, "a channel address must be a string");

    // Served by the API as committed, naming every topic and event type of the code.
    let api = common::api::start(|_| {}).await;
    let served: serde_json::Value = reqwest::get(format!("{}/asyncapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
    assert_eq!(served, committed);
    let addresses: Vec<&str> = served["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    for topic in Topic::ALL {
        assert!(addresses.contains(&topic.base_name()), "{topic:?}");
        for (event, _) in kassa::asyncapi::event_types(topic) {
            assert!(
                served["components"]["messages"][&event]["payload"].is_object(),
                "{event} of {topic:?} is a message"
            );
        }
    }
    for sample in samples::all() {
        let event_type = match &sample {
            Sample::Checkout(e) => e.event_type.clone(),
            Sample::InventoryCommand(e) => e.event_type.clone(),
            Sample::InventoryEvent(e) => e.event_type.clone(),
            Sample::OrderRequest(e) => e.event_type.clone(),
            Sample::OrderEvent(e) => e.event_type.clone(),
            Sample::PaymentEvent(e) => e.event_type.clone(),
            Sample::PaymentWebhook(e) => e.event_type.clone(),
            Sample::ExpiryEvent(e) => e.event_type.clone(),
        };
        assert!(
            served["components"]["messages"][&event_type].is_object(),
            "the event type {event_type} kassa writes is in the document"
        );
    }
}
