//! `kassa lag`: how far each processor is behind. Per group and input partition, Kafka's end
//! offset, the offset stored in Postgres (the one that counts: Kafka's own group offsets are not
//! kassa's) and the records between them not yet processed; per processor, the outbox rows not
//! yet published and the age of the oldest. Thresholds turn it into a check for cron and alerting.
//!
//! A transactional write ends with a commit marker, which takes an offset but is no record (kassa's
//! own writers are idempotent, not transactional, but a producer of another team's may be): a
//! processor that has processed everything stays one offset short of the end of such a
//! partition. So a partition whose stored offset is short of the end is read from there
//! (read_committed): if nothing but markers (or aborted records) is left, its lag is 0.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kassa_processors::ConsumerGroup;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use crate::databases::Databases;
use crate::kafka::EofIsNoError;
use crate::offsets::{OffsetsError, Position, positions};
use crate::settings::Settings;

/// One input partition of a group, as `kassa lag` reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Kafka's end offset as read_committed reads it (the last stable offset: records of
    /// transactions not yet decided are not counted until they are).
    pub end: i64,
    /// The next offset the group reads, as stored in Postgres (None: nothing stored yet).
    pub stored: Option<i64>,
    /// Records not yet processed.
    pub lag: i64,
}

/// One processor's lag and outbox backlog.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupLag {
    /// The processor (consumer group) name.
    #[schema(value_type = String)]
    pub group: &'static str,
    /// Every input partition.
    pub partitions: Vec<PartitionLag>,
    /// The sum of the partitions' lag.
    pub total_lag: i64,
    /// Outbox rows written but not yet published.
    pub outbox_unsent: i64,
    /// Age of the oldest unpublished outbox row, in seconds (None: nothing waits).
    pub outbox_oldest_unsent_seconds: Option<f64>,
}

/// What `kassa lag --json` prints and `GET /admin/lag` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Each processor's lag and outbox backlog.
    pub groups: Vec<GroupLag>,
    /// Every way they are over the thresholds, a sentence each (empty: within them).
    pub breaches: Vec<String>,
}

/// Limits over which `kassa lag` fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// Most records a group may be behind, summed over its partitions.
    pub max_lag: Option<i64>,
    /// Oldest an unpublished outbox row may be.
    pub max_outbox_age: Option<Duration>,
}

impl Thresholds {
    /// Every way `lag` is over these limits, one sentence each (empty: within them).
    pub fn breaches(&self, lag: &[GroupLag]) -> Vec<String> {
        let mut breaches = Vec::new();
        for g in lag {
            if let Some(max) = self.max_lag
                && g.total_lag > max
            {
                breaches.push(format!(
                    "{}: {} records behind (more than {max})",
                    g.group, g.total_lag
                ));
            }
            if let (Some(max), Some(age)) = (self.max_outbox_age, g.outbox_oldest_unsent_seconds)
                && age > max.as_secs_f64()
            {
                breaches.push(format!(
                    "{}: an outbox row has waited {age:.0} s to be published (more than {} s)",
                    g.group,
                    max.as_secs()
                ));
            }
        }
        breaches
    }
}

/// How a partition's lag is told from transaction markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markers {
    /// Read every partition that is short of its end (`kassa lag`: exact, reads the backlog).
    Exact,
    /// Read only partitions at most this many offsets short of their end (the metrics sampler:
    /// a processor keeping up is short of it by a marker or two; one behind has real lag, and
    /// reading its backlog every few seconds would cost a loaded machine what it lacks).
    Near(i64),
}

/// The lag and outbox backlog of `groups`.
pub async fn measure(
    settings: &Settings,
    databases: &Databases,
    groups: &[ConsumerGroup],
) -> Result<Vec<GroupLag>, OffsetsError> {
    measure_with(settings, databases, groups, Markers::Exact).await
}

/// [`measure`], telling markers apart as `markers` says.
pub async fn measure_with(
    settings: &Settings,
    databases: &Databases,
    groups: &[ConsumerGroup],
    markers: Markers,
) -> Result<Vec<GroupLag>, OffsetsError> {
    let mut all = Vec::with_capacity(groups.len());
    for &group in groups {
        let pool = databases.of(group);
        let mut partitions: Vec<PartitionLag> = positions(settings, pool, group)
            .await?
            .into_iter()
            .map(|p: Position| PartitionLag {
                lag: p.lag(),
                topic: p.topic,
                partition: p.partition,
                end: p.end,
                stored: p.stored,
            })
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let brokers = settings.kafka_brokers.clone();
        partitions = tokio::task::spawn_blocking(move || {
            discount_markers(&brokers, &mut partitions, markers).map(|()| partitions)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let (outbox_unsent, outbox_oldest_unsent_seconds): (i64, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
                 FROM {}.outbox WHERE sent_at IS NULL",
                group.name()
            )))
            .fetch_one(pool)
            .await?;
        all.push(GroupLag {
            group: group.name(),
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            outbox_unsent,
            outbox_oldest_unsent_seconds,
        });
    }
    Ok(all)
}

/// Sets to 0 the lag of every partition in `partitions` (of those `markers` says to read) whose
/// offsets from the stored one to the end hold no committed record (only transaction markers, or
/// aborted records). A partition
/// that delivers a record, holds records of a transaction not yet decided, or does not answer
/// within 10 s, keeps its lag.
pub fn discount_markers(
    brokers: &str,
    partitions: &mut [PartitionLag],
    markers: Markers,
) -> Result<(), KafkaError> {
    let read =
        |p: &PartitionLag| p.lag > 0 && !matches!(markers, Markers::Near(most) if p.lag > most);
    let topics: HashSet<String> = partitions
        .iter()
        .filter(|p| read(p))
        .map(|p| p.topic.clone())
        .collect();
    // One consumer a topic: the end-of-partition event names the partition, not the topic.
    for topic in topics {
        let consumer: BaseConsumer<EofIsNoError> =
            kassa_schemas::kafka_link::client_config(brokers)
                .set("group.id", "kassa-lag-probe")
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .create_with_context(EofIsNoError)?;
        let mut list = TopicPartitionList::new();
        let mut open = std::collections::HashMap::new();
        for p in partitions.iter().filter(|p| p.topic == topic && read(p)) {
            // An offset, never `Beginning`: the position read at the end is then an offset too.
            let from = match p.stored {
                Some(stored) => stored,
                None => {
                    let timeout = Duration::from_secs(10);
                    consumer.fetch_watermarks(&topic, p.partition, timeout)?.0
                }
            };
            list.add_partition_offset(&topic, p.partition, Offset::Offset(from))?;
            open.insert(p.partition, p.end);
        }
        consumer.assign(&list)?;
        let mut only_markers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !open.is_empty() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(record)) => {
                    open.remove(&record.partition());
                }
                // The end of what read_committed may read: only markers or aborted records were
                // passed once it is the end measured. Short of it, a transaction is still open
                // (or its markers not yet written): its records count as lag until decided.
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let Some(&end) = open.get(&partition) else {
                        continue;
                    };
                    // Asked by a read_committed consumer, the upper watermark is the last stable
                    // offset: the end of the decided records.
                    let stable = consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(10))?
                        .1;
                    if stable >= end {
                        open.remove(&partition);
                        only_markers.push(partition);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        for p in partitions.iter_mut() {
            if p.topic == topic && only_markers.contains(&p.partition) {
                p.lag = 0;
            }
        }
    }
    Ok(())
}

/// `lag` as a table for people: a row per partition, then a row per processor's outbox.
pub fn table(lag: &[GroupLag]) -> String {
    let mut out = format!(
        "{:<10} {:<28} {:>9} {:>12} {:>12} {:>10}\n",
        "GROUP", "TOPIC", "PARTITION", "END", "STORED", "LAG"
    );
    for g in lag {
        for p in &g.partitions {
            let stored = p.stored.map_or_else(|| "-".to_owned(), |s| s.to_string());
            out += &format!(
                "{:<10} {:<28} {:>9} {:>12} {:>12} {:>10}\n",
                g.group, p.topic, p.partition, p.end, stored, p.lag
            );
        }
    }
    out += &format!(
        "\n{:<10} {:>10} {:>14} {:>22}\n",
        "GROUP", "LAG", "OUTBOX UNSENT", "OLDEST UNSENT (s)"
    );
    for g in lag {
        let oldest = g
            .outbox_oldest_unsent_seconds
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
        out += &format!(
            "{:<10} {:>10} {:>14} {:>22}\n",
            g.group, g.total_lag, g.outbox_unsent, oldest
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(total_lag: i64, oldest: Option<f64>) -> GroupLag {
        GroupLag {
            group: "orders",
            partitions: Vec::new(),
            total_lag,
            outbox_unsent: i64::from(oldest.is_some()),
            outbox_oldest_unsent_seconds: oldest,
        }
    }

    #[test]
    fn thresholds_name_each_group_over_them_and_only_those() {
        let limits = Thresholds {
            max_lag: Some(100),
            max_outbox_age: Some(Duration::from_secs(30)),
        };
        assert!(limits.breaches(&[group(100, Some(30.0))]).is_empty());
        let over = limits.breaches(&[group(101, Some(31.0)), group(0, None)]);
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(over[0].contains("101 records behind"), "{over:?}");
        assert!(over[1].contains("31 s"), "{over:?}");
        assert!(
            Thresholds::default()
                .breaches(&[group(1_000_000, Some(1e6))])
                .is_empty()
        );
    }
}
