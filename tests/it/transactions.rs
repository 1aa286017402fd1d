//! Kafka transactions on this broker (single node, replication factor 1): a committed transaction
//! is visible to a read_committed consumer, an aborted one is not, though it was written.

use crate::common;

use std::time::Duration;

use common::{Isolation, read_from, setup};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[tokio::test]
async fn read_committed_sees_committed_transactions_only() {
    let settings = setup().await;
    let topic = common::ensure_scratch_topic(&settings, "kassa-test.transactions", 1).await;
    let run = uuid::Uuid::new_v4().to_string();

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("transactional.id", format!("kassa-test-{run}"))
        .set("enable.idempotence", "true")
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init transactions (transaction state log works with RF 1)");

    // Note the offset the first write gets, so both consumers start exactly there.
    let start = high_watermark(&settings, &topic);
    for (value, commit) in [
        ("committed-1", true),
        ("aborted", false),
        ("committed-2", true),
    ] {
        producer.begin_transaction().expect("begin");
        producer
            .send(BaseRecord::to(&topic).key(&run).payload(value))
            .map_err(|(e, _)| e)
            .expect("send");
        producer.flush(timeout).expect("flush");
        if commit {
            producer.commit_transaction(timeout).expect("commit");
        } else {
            producer.abort_transaction(timeout).expect("abort");
        }
    }

    let values_of = |isolation, until: &'static str| -> Vec<String> {
        read_from(
            &settings,
            &topic,
            0,
            start,
            isolation,
            Duration::from_secs(30),
            |seen| seen.iter().any(|m| m.payload() == Some(until.as_bytes())),
        )
        .iter()
        .filter(|m| m.key() == Some(run.as_bytes()))
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
    };
    assert_eq!(
        values_of(Isolation::Committed, "committed-2"),
        ["committed-1", "committed-2"]
    );
    assert_eq!(
        values_of(Isolation::Uncommitted, "committed-2"),
        ["committed-1", "aborted", "committed-2"],
        "the aborted write reached the log; only read_committed hides it"
    );
}

fn high_watermark(settings: &kassa::settings::Settings, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks")
        .1
}
