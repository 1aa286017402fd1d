//! Kafka clients configured the way every kassa component uses them.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::settings::Settings;

/// An idempotent, acks=all producer that partitions keys like Java clients (murmur2).
pub fn producer(settings: &Settings) -> Result<FutureProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.kafka_brokers);
    for (key, value) in kassa_schemas::kafka::PRODUCER_SETTINGS {
        config.set(*key, *value);
    }
    config.create()
}
