//! A processor's stored consumer offsets (the ones that count: in its own Postgres schema), for
//! ops: show how far each group is behind, or skip a backlog (move a stopped group to the end of
//! its input topics, e.g. after a load test left millions of events nobody needs processed).
//! A skip is never silent: it is refused while the group has live members (unless forced), and
//! every move is recorded in the group's `offset_moves` with who asked, why, from where and to
//! where; a running instance that finds its offsets moved reports the skip.

use std::time::Duration;

use kassa_processors::ConsumerGroup;
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
pub async fn positions(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
) -> Result<Vec<Position>, OffsetsError> {
    let schema = group.name();
    let stored: Vec<(String, i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets"
    )))
    .fetch_all(pool)
    .await?;
    let brokers = settings.kafka_brokers.clone();
    let ends =
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64)>, KafkaError> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()?;
            let mut ends = Vec::new();
            for topic in group.inputs() {
                let metadata =
                    consumer.fetch_metadata(Some(topic.name()), Duration::from_secs(10))?;
                for partition in metadata
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                {
                    let (_, end) = consumer.fetch_watermarks(
                        topic.name(),
                        partition,
                        Duration::from_secs(10),
                    )?;
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
            let stored = stored
                .iter()
                .find(|(t, p, _)| *t == topic && *p == partition)
                .map(|s| s.2);
            Position {
                topic,
                partition,
                stored,
                end,
            }
        })
        .collect())
}

/// A member of a consumer group, as the broker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member id.
    pub id: String,
    /// The client's host.
    pub host: String,
}

/// The live members of `group`'s Kafka consumer group (a statically identified member that
/// stopped stays listed until its session times out).
pub async fn live_members(
    settings: &Settings,
    group: ConsumerGroup,
) -> Result<Vec<Member>, OffsetsError> {
    live_members_of(settings, &group.group_id()).await
}

/// The live members of the Kafka consumer group `id` (of any namespace).
pub async fn live_members_of(settings: &Settings, id: &str) -> Result<Vec<Member>, OffsetsError> {
    let brokers = settings.kafka_brokers.clone();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<Member>, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let list = consumer.fetch_group_list(Some(&id), Duration::from_secs(10))?;
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.name() == id)
            .flat_map(|g| {
                g.members().iter().map(|m| Member {
                    id: m.id().to_owned(),
                    host: m.client_host().to_owned(),
                })
            })
            .collect())
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
    .map_err(OffsetsError::from)
}

/// Who asks for a move of stored offsets, and why (kept in the group's `offset_moves`).
#[derive(Debug, Clone)]
pub struct MoveRequest {
    /// Who moves them (e.g. `alice@ops-host`).
    pub moved_by: String,
    /// Why.
    pub reason: String,
    /// Move them even while the group has live members (their in-flight batches are fenced,
    /// and they report the skip as intended).
    pub force: bool,
}

/// Why a skip was refused.
#[derive(Debug, thiserror::Error)]
pub enum SkipError {
    /// Reading or moving failed.
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    /// Instances are consuming: moving their offsets under them would pass over records they
    /// are about to process.
    #[error(
        "the {group} group has {} live member(s) ({}): stop them first, or pass --force to skip under them",
        members.len(),
        members.iter().map(|m| format!("{} on {}", m.id, m.host)).collect::<Vec<_>>().join(", ")
    )]
    LiveMembers {
        /// The group.
        group: &'static str,
        /// Its live members.
        members: Vec<Member>,
    },
}

/// Moves `group`'s stored offsets to the end of its input topics and records the move (who,
/// why, from where to where, per partition); returns the positions before. Refused while the
/// group has live members unless `request.force`.
pub async fn skip_to_end(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
    request: &MoveRequest,
) -> Result<Vec<Position>, SkipError> {
    if !request.force {
        let members = live_members(settings, group).await?;
        if !members.is_empty() {
            return Err(SkipError::LiveMembers {
                group: group.name(),
                members,
            });
        }
    }
    let before = positions(settings, pool, group).await?;
    let moved: Vec<&Position> = before.iter().filter(|p| p.stored != Some(p.end)).collect();
    let topics: Vec<&str> = moved.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = moved.iter().map(|p| p.partition).collect();
    let from: Vec<Option<i64>> = moved.iter().map(|p| p.stored).collect();
    let ends: Vec<i64> = moved.iter().map(|p| p.end).collect();
    let schema = group.name();
    // The moves are recorded first, in the same transaction: an instance fenced by the move finds
    // it already explained.
    let mut tx = pool.begin().await.map_err(OffsetsError::from)?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.offset_moves (topic, partition, from_offset, to_offset, intended, moved_by, reason)
         SELECT topic, partition, from_offset, to_offset, true, $5, $6
         FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS m(topic, partition, from_offset, to_offset)"
    )))
    .bind(&topics)
    .bind(&partitions)
    .bind(&from)
    .bind(&ends)
    .bind(&request.moved_by)
    .bind(&request.reason)
    .execute(&mut *tx)
    .await
    .map_err(OffsetsError::from)?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.consumer_offsets (topic, partition, next_offset)
         SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()"
    )))
    .bind(&topics)
    .bind(&partitions)
    .bind(&ends)
    .execute(&mut *tx)
    .await
    .map_err(OffsetsError::from)?;
    tx.commit().await.map_err(OffsetsError::from)?;
    for p in &moved {
        tracing::warn!(
            group = schema, topic = %p.topic, partition = p.partition, from = ?p.stored, to = p.end,
            moved_by = %request.moved_by, reason = %request.reason, "stored offset moved to the end"
        );
    }
    Ok(before)
}
