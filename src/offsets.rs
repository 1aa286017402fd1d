//! A processor's stored consumer offsets (the ones that count: in its own Postgres schema), for
//! ops: show how far each group is behind, or skip a backlog (move a stopped group to the end of
//! its input topics, e.g. after a load test left millions of events nobody needs processed).

use std::time::Duration;

use kassa_schemas::ConsumerGroup;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use sqlx::{AssertSqlSafe, PgPool};

use crate::settings::Settings;

/// Why offsets could not be read or moved.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// Kafka did not answer.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// One input partition of a group: where it stands and where the topic ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group will read (None: nothing stored; it starts at the beginning).
    pub stored: Option<i64>,
    /// The topic's end (high watermark).
    pub end: i64,
}

impl Position {
    /// Messages not yet processed.
    pub fn lag(&self) -> i64 {
        self.end - self.stored.unwrap_or(0).min(self.end)
    }
}

/// Where `group` stands on every partition of its input topics.
pub async fn positions(settings: &Settings, pool: &PgPool, group: ConsumerGroup) -> Result<Vec<Position>, OffsetsError> {
    let schema = group.name();
    let stored: Vec<(String, i32, i64)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT topic, partition, next_offset FROM {schema}.consumer_offsets")))
            .fetch_all(pool)
            .await?;
    let brokers = settings.kafka_brokers.clone();
    let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let mut ends = Vec::new();
        for topic in group.inputs() {
            let metadata = consumer.fetch_metadata(Some(topic.name()), Duration::from_secs(10))?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
                let (_, end) = consumer.fetch_watermarks(topic.name(), partition, Duration::from_secs(10))?;
                ends.push((topic.name().to_owned(), partition, end));
            }
        }
        Ok(ends)
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    Ok(ends
        .into_iter()
        .map(|(topic, partition, end)| {
            let stored = stored.iter().find(|(t, p, _)| *t == topic && *p == partition).map(|s| s.2);
            Position { topic, partition, stored, end }
        })
        .collect())
}

/// Moves `group`'s stored offsets to the end of its input topics; returns the positions before.
/// Only for a stopped group: a running instance's next batch would find its offsets moved
/// (the fence) and start again from the new ones.
pub async fn skip_to_end(settings: &Settings, pool: &PgPool, group: ConsumerGroup) -> Result<Vec<Position>, OffsetsError> {
    let before = positions(settings, pool, group).await?;
    let topics: Vec<&str> = before.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = before.iter().map(|p| p.partition).collect();
    let ends: Vec<i64> = before.iter().map(|p| p.end).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.consumer_offsets (topic, partition, next_offset)
         SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()",
        group.name()
    )))
    .bind(&topics)
    .bind(&partitions)
    .bind(&ends)
    .execute(pool)
    .await?;
    Ok(before)
}
