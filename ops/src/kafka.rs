//! Kafka clients configured the way every kassa component uses them.

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::settings::Settings;

/// An idempotent, acks=all producer that partitions keys like Java clients (murmur2).
pub fn producer(settings: &Settings) -> Result<FutureProducer, KafkaError> {
    let mut config = kassa_schemas::kafka_link::client_config(&settings.kafka_brokers);
    for (key, value) in kassa_schemas::kafka::PRODUCER_SETTINGS {
        config.set(*key, *value);
    }
    config.create()
}

/// A consumer context for readers that ask for end-of-partition events (`enable.partition.eof`):
/// librdkafka also reports those through the error callback, which the default context logs as
/// errors; this one drops them and logs every other error.
pub struct EofIsNoError;

impl rdkafka::ClientContext for EofIsNoError {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofIsNoError {}
