//! Creates kassa's topics (and one dead-letter topic per consumer group), idempotently.

use std::collections::HashMap;
use std::time::Duration;

use kassa_processors::ConsumerGroup;
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
    /// A processor consumes topics with different partition counts: one key's records would land
    /// on different partition numbers, so the instance that owns a key in one topic does not own
    /// it in the others.
    #[error(
        "the {group} processor consumes topics with different partition counts ({counts}): \
         give them the same count (kafka-topics --alter --partitions) before running it"
    )]
    PartitionsDisagree {
        /// The consumer group.
        group: String,
        /// `topic: count` for each of its inputs.
        counts: String,
    },
    /// A topic setting is refused before anything is created.
    #[error(transparent)]
    Config(#[from] crate::topic_config::TopicConfigError),
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

/// Creates every topic that does not exist yet, as [`crate::topic_config::plan`] has it
/// (partitions, replication, retention, cleanup, …). A topic that exists is left as it is.
pub async fn create_all(settings: &Settings) -> Result<Vec<TopicOutcome>, TopicsError> {
    let plans = crate::topic_config::plan(&settings.topics)?;
    // The topics there are, with their partitions. Asked first so that a refused certificate or
    // password is named here, where the admin request would only time out.
    let brokers = settings.kafka_brokers.clone();
    let mut counts = tokio::task::spawn_blocking(move || {
        kassa_schemas::kafka_link::partition_counts(&brokers, Duration::from_secs(10))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    let admin: AdminClient<DefaultClientContext> =
        kassa_schemas::kafka_link::client_config(&settings.kafka_brokers).create()?;
    let new_topics: Vec<NewTopic<'_>> = plans
        .iter()
        .map(|plan| {
            let topic = NewTopic::new(
                &plan.name,
                plan.partitions,
                TopicReplication::Fixed(plan.replication),
            );
            plan.config
                .iter()
                .fold(topic, |topic, (key, value)| topic.set(key, value))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut outcomes = Vec::with_capacity(plans.len());
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => outcomes.push(TopicOutcome::Created(topic)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push(TopicOutcome::Existed(topic))
            }
            Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
        }
    }
    // Topics that existed keep the partitions they had: check that every processor's inputs agree.
    for outcome in &outcomes {
        if let TopicOutcome::Created(topic) = outcome {
            counts.insert(topic.clone(), settings.topics.partitions as usize);
        }
    }
    if let Some((group, counts)) = disagreement(&counts).into_iter().next() {
        return Err(TopicsError::PartitionsDisagree { group, counts });
    }
    Ok(outcomes)
}

/// The first consumer group whose input topics (as `counts` knows them) have different partition
/// counts: its name and `topic: count, …`.
fn disagreement(counts: &HashMap<String, usize>) -> Option<(String, String)> {
    ConsumerGroup::ALL.into_iter().find_map(|group| {
        let inputs: Vec<(&str, usize)> = group
            .inputs()
            .iter()
            .filter_map(|t| Some((t.name(), *counts.get(t.name())?)))
            .collect();
        let first = inputs.first()?.1;
        inputs.iter().any(|(_, n)| *n != first).then(|| {
            let listed: Vec<String> = inputs.iter().map(|(t, n)| format!("{t}: {n}")).collect();
            (group.name().to_owned(), listed.join(", "))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_processor_whose_inputs_disagree_on_partitions_is_named() {
        let mut counts: HashMap<String, usize> = Topic::ALL
            .iter()
            .map(|t| (t.name().to_owned(), 12))
            .collect();
        assert_eq!(disagreement(&counts), None);
        let (group, topic) = ConsumerGroup::ALL
            .into_iter()
            .find_map(|g| (g.inputs().len() > 1).then(|| (g, g.inputs()[1])))
            .expect("a processor with more than one input");
        counts.insert(topic.name().to_owned(), 16);
        let (named, listed) = disagreement(&counts).expect("a disagreement");
        assert_eq!(named, group.name());
        assert!(
            listed.contains(&format!("{}: 16", topic.name())),
            "{listed}"
        );
    }
}
