//! Creates kassa's topics (and one dead-letter topic per consumer group), idempotently.

use std::time::Duration;

use kassa_processors::ConsumerGroup;
use kassa_schemas::kafka::{DEAD_LETTER_RETENTION_MS, EVENT_RETENTION_MS, SEGMENT_MS};
use kassa_schemas::topics::Topic;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::settings::Settings;

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The Kafka client or request failed as a whole.
    #[error("Kafka admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    /// The brokers cannot be reached with these settings (address, TLS, credentials).
    #[error(transparent)]
    Unreachable(#[from] kassa_schemas::kafka_link::KafkaLinkError),
    /// The broker refused to create one topic.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// What `create_all` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was created now.
    Created(String),
    /// The topic was already there; nothing changed.
    Existed(String),
}

/// Every topic name kassa uses: the event topics, then one `<group>.dlq` per consumer group.
pub fn all_topic_names() -> Vec<String> {
    Topic::ALL
        .iter()
        .map(|t| t.name().to_owned())
        .chain(ConsumerGroup::ALL.iter().map(|g| g.dlq_topic()))
        .collect()
}

/// Creates every topic that does not exist yet, with the configured partitions and replication,
/// and kassa's retention (`kassa_schemas::kafka`). A topic that exists is left as it is.
pub async fn create_all(settings: &Settings) -> Result<Vec<TopicOutcome>, TopicsError> {
    // First whether the brokers answer at all: a refused certificate or password is named here,
    // where the admin request would only time out.
    let brokers = settings.kafka_brokers.clone();
    tokio::task::spawn_blocking(move || {
        kassa_schemas::kafka_link::reach(&brokers, Duration::from_secs(10))
    })
    .await
    .unwrap_or_else(|e| {
        Err(kassa_schemas::kafka_link::KafkaLinkError::Refused(format!(
            "the connection check panicked: {e}"
        )))
    })?;
    let admin: AdminClient<DefaultClientContext> =
        kassa_schemas::kafka_link::client_config(&settings.kafka_brokers).create()?;
    let names = all_topic_names();
    let configs: Vec<(String, String)> = names
        .iter()
        .map(|name| {
            let retention = if name.ends_with(".dlq") {
                DEAD_LETTER_RETENTION_MS
            } else {
                EVENT_RETENTION_MS
            };
            (retention.to_string(), SEGMENT_MS.to_string())
        })
        .collect();
    // Explicit retention, shorter than the processors' inboxes remember event ids: a replay from
    // the beginning never finds an event the inbox has forgotten.
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .zip(&configs)
        .map(|(name, (retention, segment))| {
            NewTopic::new(
                name,
                settings.topics.partitions,
                TopicReplication::Fixed(settings.topics.replication),
            )
            .set("retention.ms", retention)
            .set("segment.ms", segment)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut outcomes = Vec::with_capacity(names.len());
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => outcomes.push(TopicOutcome::Created(topic)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push(TopicOutcome::Existed(topic))
            }
            Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
        }
    }
    Ok(outcomes)
}
