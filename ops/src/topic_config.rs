//! What each topic is created with: partitions, replication and its properties (retention,
//! cleanup policy, `min.insync.replicas`, …). kassa's defaults first, then the settings, then
//! per-topic overrides (`KASSA_TOPIC_CONFIG`), checked so that no event topic keeps or compacts a
//! record past the time the processors' inboxes remember its id.

use std::collections::BTreeMap;
use std::str::FromStr;

use kassa_processors::ConsumerGroup;
use kassa_schemas::kafka::{DEAD_LETTER_RETENTION_MS, EVENT_RETENTION_MS, SEGMENT_MS};
use kassa_schemas::topics::{Topic, namespace};

use crate::settings::TopicSettings;

/// One property set on one topic: `<topic>:<property>=<value>`, the topic by its base name
/// (without `KASSA_NAMESPACE`), e.g. `payments.dlq:retention.ms=-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOverride {
    /// The topic's base name.
    pub topic: String,
    /// The Kafka topic property.
    pub property: String,
    /// Its value, as Kafka reads it.
    pub value: String,
}

impl FromStr for TopicOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shape = || {
            format!(
                "{text:?}: expected <topic>:<property>=<value>, e.g. payments.dlq:retention.ms=-1"
            )
        };
        let (topic, setting) = text.trim().split_once(':').ok_or_else(shape)?;
        let (property, value) = setting.split_once('=').ok_or_else(shape)?;
        let (topic, property, value) = (topic.trim(), property.trim(), value.trim());
        if topic.is_empty() || property.is_empty() || value.is_empty() {
            return Err(shape());
        }
        Ok(TopicOverride {
            topic: topic.to_owned(),
            property: property.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// How one topic is to be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    /// The Kafka topic name, namespace included.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic properties, by name.
    pub config: BTreeMap<String, String>,
}

/// A topic setting kassa refuses, with why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicConfigError {
    /// An override names a topic kassa does not have.
    #[error(
        "KASSA_TOPIC_CONFIG names topic {topic:?}, which kassa does not have (its topics: {known})"
    )]
    UnknownTopic {
        /// The name given.
        topic: String,
        /// kassa's topics' base names.
        known: String,
    },
    /// A setting would make an event topic unsafe for exactly-once processing.
    #[error("{topic}: {property}={value} is refused: {why}")]
    Unsafe {
        /// The topic's base name.
        topic: String,
        /// The property.
        property: String,
        /// The value asked for.
        value: String,
        /// What would go wrong.
        why: &'static str,
    },
}

/// Why a longer-lived record is refused on an event topic.
const OUTLIVES_INBOX: &str = "an event topic may keep a record at most 7 days (retention.ms \
     604800000) in segments of at most 1 day: the processors' inboxes remember an event's id for \
     retention + one segment + a day, and a record delivered again after that would be applied twice";

/// What every topic is created with: the event topics, then one `<group>.dlq` per consumer group.
pub fn plan(settings: &TopicSettings) -> Result<Vec<TopicPlan>, TopicConfigError> {
    let event = Topic::ALL.iter().map(|t| (t.base_name().to_owned(), true));
    let dead_letter = ConsumerGroup::ALL
        .iter()
        .map(|g| (g.dlq_base_name(), false));
    let topics: Vec<(String, bool)> = event.chain(dead_letter).collect();
    for o in &settings.overrides {
        if !topics.iter().any(|(base, _)| *base == o.topic) {
            let known: Vec<&str> = topics.iter().map(|(b, _)| b.as_str()).collect();
            return Err(TopicConfigError::UnknownTopic {
                topic: o.topic.clone(),
                known: known.join(", "),
            });
        }
    }
    topics
        .into_iter()
        .map(|(base, is_event)| {
            let mut config = BTreeMap::new();
            let retention = if is_event {
                settings.retention_ms
            } else {
                settings.dead_letter_retention_ms
            };
            config.insert("retention.ms".to_owned(), retention.to_string());
            config.insert("segment.ms".to_owned(), SEGMENT_MS.to_string());
            config.insert("cleanup.policy".to_owned(), "delete".to_owned());
            if let Some(n) = settings.min_insync_replicas {
                config.insert("min.insync.replicas".to_owned(), n.to_string());
            }
            for o in settings.overrides.iter().filter(|o| o.topic == base) {
                config.insert(o.property.clone(), o.value.clone());
            }
            if is_event {
                check_event_topic(&base, &config)?;
            }
            let min_insync = config.get("min.insync.replicas");
            if min_insync.and_then(|n| n.parse::<i32>().ok()).is_some_and(|n| n > settings.replication) {
                return Err(TopicConfigError::Unsafe {
                    topic: base,
                    property: "min.insync.replicas".to_owned(),
                    value: min_insync.cloned().unwrap_or_default(),
                    why: "more in-sync replicas than the topic has replicas (KASSA_TOPIC_REPLICATION): \
                          every write kassa makes (acks=all) would be refused",
                });
            }
            Ok(TopicPlan {
                name: format!("{}{base}", namespace()),
                partitions: settings.partitions,
                replication: settings.replication,
                config,
            })
        })
        .collect()
}

/// Refuses properties that let an event topic deliver a record after the inboxes forgot its id.
fn check_event_topic(
    base: &str,
    config: &BTreeMap<String, String>,
) -> Result<(), TopicConfigError> {
    let refuse = |property: &str, why: &'static str| TopicConfigError::Unsafe {
        topic: base.to_owned(),
        property: property.to_owned(),
        value: config[property].clone(),
        why,
    };
    let at_most = |property: &str, limit: u64| {
        config[property]
            .parse::<i64>()
            .ok()
            .and_then(|ms| u64::try_from(ms).ok())
            .is_some_and(|ms| ms >= 1 && ms <= limit)
    };
    if !at_most("retention.ms", EVENT_RETENTION_MS) {
        return Err(refuse("retention.ms", OUTLIVES_INBOX));
    }
    if !at_most("segment.ms", SEGMENT_MS) {
        return Err(refuse("segment.ms", OUTLIVES_INBOX));
    }
    if config["cleanup.policy"] != "delete" {
        return Err(refuse(
            "cleanup.policy",
            "an event topic must be cleaned by deletion: compaction keeps a key's last record \
             past its retention, for longer than the inboxes remember its id",
        ));
    }
    Ok(())
}

/// The dead-letter topics' default retention, for the settings' default value.
pub const DEFAULT_DEAD_LETTER_RETENTION_MS: i64 = DEAD_LETTER_RETENTION_MS as i64;
/// The event topics' default retention, for the settings' default value.
pub const DEFAULT_EVENT_RETENTION_MS: i64 = EVENT_RETENTION_MS as i64;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(overrides: &[&str]) -> TopicSettings {
        TopicSettings {
            partitions: 12,
            replication: 3,
            min_insync_replicas: Some(2),
            retention_ms: DEFAULT_EVENT_RETENTION_MS,
            dead_letter_retention_ms: DEFAULT_DEAD_LETTER_RETENTION_MS,
            overrides: overrides.iter().map(|o| o.parse().unwrap()).collect(),
        }
    }

    fn of<'a>(plans: &'a [TopicPlan], base: &str) -> &'a TopicPlan {
        plans.iter().find(|p| p.name.ends_with(base)).unwrap()
    }

    #[test]
    fn defaults_then_settings_then_overrides_apply_per_topic() {
        let plans = plan(&settings(&[
            "payments.dlq:retention.ms=-1",
            "orders.events:retention.ms=86400000",
            "orders.events:retention.bytes=1073741824",
        ]))
        .unwrap();
        assert_eq!(plans.len(), Topic::ALL.len() + ConsumerGroup::ALL.len());
        let orders = of(&plans, "orders.events");
        assert_eq!(orders.config["retention.ms"], "86400000");
        assert_eq!(orders.config["retention.bytes"], "1073741824");
        assert_eq!(orders.config["min.insync.replicas"], "2");
        assert_eq!(orders.config["cleanup.policy"], "delete");
        assert_eq!((orders.partitions, orders.replication), (12, 3));
        assert_eq!(of(&plans, "payments.dlq").config["retention.ms"], "-1");
        assert_eq!(
            of(&plans, "inventory.events").config["retention.ms"],
            EVENT_RETENTION_MS.to_string()
        );
        assert_eq!(
            of(&plans, "orders.dlq").config["retention.ms"],
            DEAD_LETTER_RETENTION_MS.to_string()
        );
    }

    #[test]
    fn an_event_topic_that_would_outlive_the_inboxes_is_refused() {
        for bad in [
            "orders.events:retention.ms=-1",
            "orders.events:retention.ms=604800001",
            "orders.events:segment.ms=172800000",
            "orders.events:cleanup.policy=compact",
            "orders.events:cleanup.policy=compact,delete",
        ] {
            let refused = plan(&settings(&[bad])).unwrap_err();
            assert!(
                matches!(&refused, TopicConfigError::Unsafe { topic, .. } if topic == "orders.events"),
                "{bad}: {refused}"
            );
        }
        let mut too_few = settings(&[]);
        too_few.replication = 1;
        assert!(matches!(
            plan(&too_few).unwrap_err(),
            TopicConfigError::Unsafe { property, .. } if property == "min.insync.replicas"
        ));
        // A dead-letter topic may keep its letters as long as it likes.
        assert!(plan(&settings(&["orders.dlq:cleanup.policy=compact"])).is_ok());
    }

    #[test]
    fn an_override_for_a_topic_kassa_lacks_or_in_the_wrong_shape_is_refused() {
        let unknown = plan(&settings(&["order.events:retention.ms=1"])).unwrap_err();
        assert!(unknown.to_string().contains("orders.events"), "{unknown}");
        for bad in [
            "orders.events",
            "orders.events:retention.ms",
            ":a=b",
            "t:=1",
        ] {
            assert!(bad.parse::<TopicOverride>().is_err(), "{bad}");
        }
    }
}
