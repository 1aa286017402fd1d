//! A processor's stored consumer offsets (the ones that count: in its own Postgres schema), for
//! ops: where each group stands, and moving them (`kassa offsets reset`: to the earliest records,
//! the latest, a time, or given offsets; `skip-to-end` is a reset to the latest, e.g. after a
//! load test left millions of events nobody needs processed; a reset to a time replays, e.g.
//! after a bug fix). A move is never silent: it is refused while the group has live members
//! (unless forced), and every move is recorded in the group's `offset_moves` with who asked, why,
//! from where and to where; a running instance that finds its offsets moved reports the move.

use std::time::Duration;

use kassa_processors::ConsumerGroup;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
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
    /// The topic's end as read_committed reads it (the last stable offset).
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
            // The end a processor can read to: the last stable offset (records of transactions
            // not yet decided are not readable yet).
            let consumer: BaseConsumer = kassa_schemas::kafka_link::client_config(&brokers)
                .set("isolation.level", "read_committed")
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
        let consumer: BaseConsumer = kassa_schemas::kafka_link::client_config(&brokers).create()?;
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

/// Why a move (a skip or a reset) was refused.
#[derive(Debug, thiserror::Error)]
pub enum SkipError {
    /// Reading or moving failed.
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    /// Instances are consuming: moving their offsets under them would pass over records they
    /// are about to process.
    #[error(
        "the {group} group has {} live member(s) ({}): stop them first, or pass --force to move its offsets under them",
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

/// Where a reset moves a group's stored offsets, on every partition of its input topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The first record still kept in each partition (everything is processed again; the
    /// inbox drops what was processed within its retention).
    Earliest,
    /// The end of each partition (the backlog is skipped).
    Latest,
    /// The first record written at or after this time (the end where there is none).
    Time(chrono::DateTime<chrono::Utc>),
    /// These offsets: (topic, partition, offset), at most the partition's end; partitions not
    /// named stay where they are.
    Offsets(Vec<(String, i32, i64)>),
}

/// One partition's move of a stored offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The stored offset before (None: nothing stored).
    pub from: Option<i64>,
    /// The stored offset after.
    pub to: i64,
}

/// The moves a reset of `group` to `target` would make (partitions already there, or with
/// nothing stored and a target of 0, are left out). Nothing is changed.
pub async fn plan(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
    target: &Target,
) -> Result<Vec<Move>, OffsetsError> {
    let current = positions(settings, pool, group).await?;
    let brokers = settings.kafka_brokers.clone();
    let (target, looked_up) = (target.clone(), current.clone());
    let targets = tokio::task::spawn_blocking(move || targets(&brokers, &looked_up, &target))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    Ok(current
        .into_iter()
        .zip(targets)
        .filter_map(|(p, to)| {
            let to = to?;
            // Nothing stored reads from the beginning: a move to offset 0 would change nothing.
            (p.stored.unwrap_or(0) != to).then_some(Move {
                topic: p.topic,
                partition: p.partition,
                from: p.stored,
                to,
            })
        })
        .collect())
}

/// The offset `target` names on each of `positions`' partitions (None: the partition stays).
fn targets(
    brokers: &str,
    positions: &[Position],
    target: &Target,
) -> Result<Vec<Option<i64>>, KafkaError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = kassa_schemas::kafka_link::client_config(brokers).create()?;
    match target {
        Target::Latest => Ok(positions.iter().map(|p| Some(p.end)).collect()),
        Target::Earliest => positions
            .iter()
            .map(|p| {
                let (low, _) = consumer.fetch_watermarks(&p.topic, p.partition, timeout)?;
                Ok(Some(low))
            })
            .collect(),
        Target::Offsets(named) => Ok(positions
            .iter()
            .map(|p| {
                named
                    .iter()
                    .find(|(topic, partition, _)| *topic == p.topic && *partition == p.partition)
                    .map(|&(_, _, offset)| offset.clamp(0, p.end))
            })
            .collect()),
        Target::Time(at) => {
            let mut list = TopicPartitionList::new();
            for p in positions {
                list.add_partition_offset(
                    &p.topic,
                    p.partition,
                    Offset::Offset(at.timestamp_millis()),
                )?;
            }
            let found = consumer.offsets_for_times(list, timeout)?;
            Ok(positions
                .iter()
                .map(|p| {
                    let offset = found
                        .find_partition(&p.topic, p.partition)
                        .map(|e| e.offset());
                    Some(match offset {
                        Some(Offset::Offset(o)) => o.min(p.end),
                        _ => p.end,
                    })
                })
                .collect())
        }
    }
}

/// Moves `group`'s stored offsets to `target` and records each move (who, why, from where to
/// where); returns the moves. Refused while the group has live members unless `request.force`.
/// An instance started afterwards reads from the new offsets; records it reads again are
/// dropped by its inbox when it processed them within the inbox's retention.
pub async fn reset(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
    target: &Target,
    request: &MoveRequest,
) -> Result<Vec<Move>, SkipError> {
    if !request.force {
        let members = live_members(settings, group).await?;
        if !members.is_empty() {
            return Err(SkipError::LiveMembers {
                group: group.name(),
                members,
            });
        }
    }
    let moves = plan(settings, pool, group, target).await?;
    record_and_apply(pool, group, &moves, request).await?;
    for m in &moves {
        tracing::warn!(
            group = group.name(), topic = %m.topic, partition = m.partition, from = ?m.from,
            to = m.to, moved_by = %request.moved_by, reason = %request.reason, "stored offset moved"
        );
    }
    Ok(moves)
}

/// Moves `group`'s stored offsets to the end of its input topics (a reset to [`Target::Latest`]).
pub async fn skip_to_end(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
    request: &MoveRequest,
) -> Result<Vec<Move>, SkipError> {
    reset(settings, pool, group, &Target::Latest, request).await
}

/// Records `moves` in the group's `offset_moves` and applies them, in one transaction: an
/// instance fenced by a move finds it already explained.
async fn record_and_apply(
    pool: &PgPool,
    group: ConsumerGroup,
    moves: &[Move],
    request: &MoveRequest,
) -> Result<(), OffsetsError> {
    let topics: Vec<&str> = moves.iter().map(|m| m.topic.as_str()).collect();
    let partitions: Vec<i32> = moves.iter().map(|m| m.partition).collect();
    let from: Vec<Option<i64>> = moves.iter().map(|m| m.from).collect();
    let to: Vec<i64> = moves.iter().map(|m| m.to).collect();
    let schema = group.name();
    let mut tx = pool.begin().await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.offset_moves (topic, partition, from_offset, to_offset, intended, moved_by, reason)
         SELECT topic, partition, from_offset, to_offset, true, $5, $6
         FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS m(topic, partition, from_offset, to_offset)"
    )))
    .bind(&topics)
    .bind(&partitions)
    .bind(&from)
    .bind(&to)
    .bind(&request.moved_by)
    .bind(&request.reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.consumer_offsets (topic, partition, next_offset)
         SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()"
    )))
    .bind(&topics)
    .bind(&partitions)
    .bind(&to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Parses an RFC 3339 time (`2026-12-02T10:00:00Z`), for `--to-time`.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))
}

/// Parses `TOPIC:PARTITION:OFFSET`, or `PARTITION:OFFSET` for a group with one input topic, for
/// `--to-offset`. The topic is one of `group`'s inputs, named with or without the namespace.
pub fn parse_offset(text: &str, group: ConsumerGroup) -> Result<(String, i32, i64), String> {
    let fields: Vec<&str> = text.rsplitn(3, ':').collect();
    let (topic, partition, offset) = match fields[..] {
        [offset, partition, topic] => (Some(topic), partition, offset),
        [offset, partition] => (None, partition, offset),
        _ => return Err(format!("{text:?}: expected [TOPIC:]PARTITION:OFFSET")),
    };
    let inputs = group.inputs();
    let topic = match topic {
        Some(name) => inputs
            .iter()
            .find(|t| {
                t.name() == name
                    || t.name() == format!("{}{name}", kassa_schemas::topics::namespace())
            })
            .ok_or_else(|| format!("{name:?} is not an input topic of {}", group.name()))?,
        None if inputs.len() == 1 => &inputs[0],
        None => {
            return Err(format!(
                "{text:?}: {} reads {} topics; name the topic (TOPIC:PARTITION:OFFSET)",
                group.name(),
                inputs.len()
            ));
        }
    };
    let partition = partition
        .parse()
        .map_err(|_| format!("{partition:?} is not a partition number"))?;
    let offset: i64 = offset
        .parse()
        .map_err(|_| format!("{offset:?} is not an offset"))?;
    if offset < 0 {
        return Err(format!("{offset} is not an offset"));
    }
    Ok((topic.name().to_owned(), partition, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_name_their_topic_unless_the_group_reads_one() {
        let expiry = ConsumerGroup::Expiry;
        let events = kassa_schemas::Topic::OrdersEvents.name().to_owned();
        assert_eq!(parse_offset("3:120", expiry), Ok((events.clone(), 3, 120)));
        assert_eq!(
            parse_offset("orders.events:3:120", expiry),
            Ok((events, 3, 120))
        );
        assert!(
            parse_offset("3:120", ConsumerGroup::Orders)
                .is_err_and(|e| e.contains("name the topic"))
        );
        assert!(parse_offset("payments.events:3:1", expiry).is_err());
        assert!(parse_offset("3:-1", expiry).is_err());
        assert!(parse_offset("3", expiry).is_err());
        assert!(parse_time("2026-12-02T10:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
