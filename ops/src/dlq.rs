//! `kassa dlq`: the dead letters of each processor, and what operators do with them. A dead
//! letter's id is `<group>/<partition>/<offset>` of its record on `<group>.dlq`. `redrive`
//! publishes the original message (key, bytes, trace context) to the partition it came from again, so
//! the processor handles it anew once its cause is fixed; `discard` marks it dealt with. Every
//! redrive and discard is recorded in `ops.dead_letter_actions` (who, why, when, outcome).
//!
//! Exactly once in effect: a message the handler declared invalid has its event id in the
//! processor's inbox, where a copy would be dropped as a duplicate, so the redrive deletes that
//! inbox row (in the processor's database) once it has recorded the redrive as published. A dead
//! letter is redriven once at most (a unique index); a second redrive is refused and recorded as
//! refused; one that fails to forget the event or to publish is recorded as failed, and may be
//! tried again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kassa_processors::ConsumerGroup;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use crate::databases::Databases;
use crate::settings::Settings;
use crate::tail::{self, Record, Start};

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// An id that is not `<group>/<partition>/<offset>`.
    #[error("{0:?} is not a dead letter id (<group>/<partition>/<offset>)")]
    BadId(String),
    /// No record at that id.
    #[error("no dead letter {0}")]
    NotFound(String),
    /// Already redriven.
    #[error("{0} was already redriven (at {1}); it is not published twice")]
    AlreadyRedriven(String, DateTime<Utc>),
    /// The dead letter does not say where it came from.
    #[error("{0} has no origin topic header")]
    NoOrigin(String),
    /// Reading the topic failed.
    #[error(transparent)]
    Tail(#[from] tail::TailError),
    /// Publishing failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A dead letter's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterId {
    /// The processor whose dead letter it is.
    pub group: ConsumerGroup,
    /// The partition of `<group>.dlq`.
    pub partition: i32,
    /// The offset there.
    pub offset: i64,
}

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.group.name(),
            self.partition,
            self.offset
        )
    }
}

impl std::str::FromStr for DeadLetterId {
    type Err = DlqError;

    fn from_str(text: &str) -> Result<Self, DlqError> {
        let bad = || DlqError::BadId(text.to_owned());
        let mut parts = text.split('/');
        let (Some(group), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(DeadLetterId {
            group: ConsumerGroup::from_name(group).ok_or_else(bad)?,
            partition: partition.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
        })
    }
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its id.
    pub id: String,
    /// The record on `<group>.dlq` (headers: reason and origin).
    pub record: Record,
    /// The last action taken on it: `redrive: published`, `discard: discarded`, … (None: none).
    pub status: Option<String>,
}

impl DeadLetter {
    /// The value of header `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it was discarded.
    pub fn discarded(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|s| s.starts_with("discard"))
    }
}

/// The dead letters of `group` since `since` (all of them when None), with their status.
pub async fn list(
    settings: &Settings,
    databases: &Databases,
    group: ConsumerGroup,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<DeadLetter>, DlqError> {
    read(
        settings,
        databases.main(),
        group,
        since.map_or(Start::Beginning, Start::Time),
        None,
    )
    .await
}

/// The dead letter `id`.
pub async fn show(
    settings: &Settings,
    databases: &Databases,
    id: DeadLetterId,
) -> Result<DeadLetter, DlqError> {
    let found = read(
        settings,
        databases.main(),
        id.group,
        Start::Offset(id.offset),
        Some(id.partition),
    )
    .await?;
    found
        .into_iter()
        .find(|d| d.record.offset == id.offset)
        .ok_or_else(|| DlqError::NotFound(id.to_string()))
}

/// Reads `group.dlq` from `start` (one partition, or all) with each letter's last action.
async fn read(
    settings: &Settings,
    pool: &PgPool,
    group: ConsumerGroup,
    start: Start,
    partition: Option<i32>,
) -> Result<Vec<DeadLetter>, DlqError> {
    let options = tail::Options {
        topics: vec![group.dlq_topic()],
        start,
        key: None,
        order: None,
        event_type: None,
        follow: false,
        limit: partition.map(|_| 1),
        partition,
        until: None,
    };
    let mut records = Vec::new();
    tail::tail(settings, &options, |r| records.push(r.clone())).await?;
    let ids: Vec<String> = records
        .iter()
        .map(|r| format!("{}/{}/{}", group.name(), r.partition, r.offset))
        .collect();
    let last: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (dead_letter) dead_letter, action || ': ' || outcome
         FROM ops.dead_letter_actions WHERE dead_letter = ANY($1) ORDER BY dead_letter, id DESC",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(records
        .into_iter()
        .zip(ids)
        .map(|(record, id)| DeadLetter {
            status: last.iter().find(|(d, _)| *d == id).map(|(_, s)| s.clone()),
            id,
            record,
        })
        .collect())
}

/// Records that `actor` discarded `id` because of `reason`.
pub async fn discard(
    settings: &Settings,
    databases: &Databases,
    id: DeadLetterId,
    actor: &str,
    reason: &str,
) -> Result<(), DlqError> {
    show(settings, databases, id).await?;
    record(
        databases.main(),
        &id.to_string(),
        "discard",
        actor,
        reason,
        "discarded",
    )
    .await?;
    Ok(())
}

/// Publishes the original message of dead letter `id` again to the topic it came from (see the
/// module's doc); returns that topic.
pub async fn redrive(
    settings: &Settings,
    databases: &Databases,
    id: DeadLetterId,
    actor: &str,
    reason: &str,
) -> Result<String, DlqError> {
    let pool = databases.main();
    let letter = show(settings, databases, id).await?;
    let origin = letter
        .header("kassa.dlq.topic")
        .ok_or_else(|| DlqError::NoOrigin(id.to_string()))?
        .to_owned();
    let name = id.to_string();
    let already: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT at FROM ops.dead_letter_actions
         WHERE dead_letter = $1 AND action = 'redrive' AND outcome = 'published'",
    )
    .bind(&name)
    .fetch_optional(pool)
    .await?;
    if let Some(at) = already {
        record(
            pool,
            &name,
            "redrive",
            actor,
            reason,
            "refused: already redriven",
        )
        .await?;
        return Err(DlqError::AlreadyRedriven(name, at));
    }
    // The redrive is claimed first (a unique index allows one published redrive a letter), then
    // the processor's inbox forgets the event, in the processor's own database.
    let recorded = sqlx::query(
        "INSERT INTO ops.dead_letter_actions (dead_letter, action, actor, reason, outcome)
         VALUES ($1, 'redrive', $2, $3, 'published')",
    )
    .bind(&name)
    .bind(actor)
    .bind(reason)
    .execute(pool)
    .await;
    if let Err(sqlx::Error::Database(e)) = &recorded
        && e.is_unique_violation()
    {
        return Err(DlqError::AlreadyRedriven(name, Utc::now()));
    }
    recorded?;
    let event_id = letter
        .record
        .event
        .as_ref()
        .and_then(|e| e["event_id"].as_str())
        .and_then(|e| uuid::Uuid::parse_str(e).ok());
    if let Some(event_id) = event_id {
        let forgotten = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.inbox WHERE event_id = $1",
            id.group.name()
        )))
        .bind(event_id)
        .execute(databases.of(id.group))
        .await;
        if let Err(error) = forgotten {
            unclaim(pool, &name, &format!("failed: {error}")).await?;
            return Err(error.into());
        }
    }
    let mut headers = OwnedHeaders::new();
    for (key, value) in letter
        .record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("kassa.dlq."))
    {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let producer = crate::kafka::producer(settings)?;
    let mut message = FutureRecord::to(&origin)
        .payload(&letter.record.value)
        .headers(headers);
    if let Some(key) = &letter.record.key {
        message = message.key(key);
    }
    // Back where it was: the original partition, whatever partitioner its producer used.
    if let Some(partition) = letter
        .header("kassa.dlq.partition")
        .and_then(|p| p.parse::<i32>().ok())
    {
        message = message.partition(partition);
    }
    if let Err((error, _)) = producer.send(message, Duration::from_secs(30)).await {
        unclaim(pool, &name, &format!("failed: {error}")).await?;
        return Err(error.into());
    }
    Ok(origin)
}

/// Marks the published redrive of `dead_letter` as not published after all (`outcome`), so that
/// it may be redriven again.
async fn unclaim(pool: &PgPool, dead_letter: &str, outcome: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ops.dead_letter_actions SET outcome = $2
         WHERE dead_letter = $1 AND action = 'redrive' AND outcome = 'published'",
    )
    .bind(dead_letter)
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(())
}

/// Appends one action to `ops.dead_letter_actions`.
async fn record(
    pool: &PgPool,
    dead_letter: &str,
    action: &str,
    actor: &str,
    reason: &str,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ops.dead_letter_actions (dead_letter, action, actor, reason, outcome)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(dead_letter)
    .bind(action)
    .bind(actor)
    .bind(reason)
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(())
}

/// `letters` as a table for people.
pub fn table(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:<24} {:<24} {:<30} {:<20} {:<22} {}\n",
        "ID", "WHEN", "FROM", "TYPE", "STATUS", "REASON"
    );
    for d in letters {
        let from = format!(
            "{}[{}]@{}",
            d.header("kassa.dlq.topic").unwrap_or("?"),
            d.header("kassa.dlq.partition").unwrap_or("?"),
            d.header("kassa.dlq.offset").unwrap_or("?")
        );
        let kind = d
            .record
            .event
            .as_ref()
            .and_then(|e| e["event_type"].as_str())
            .unwrap_or("(undecodable)");
        let when = d.record.timestamp.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        out += &format!(
            "{:<24} {:<24} {:<30} {:<20} {:<22} {}\n",
            d.id,
            when,
            from,
            kind,
            d.status.as_deref().unwrap_or("pending"),
            d.header("kassa.dlq.reason").unwrap_or("?")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_group_partition_offset() {
        let id: DeadLetterId = "payments/3/17".parse().unwrap();
        assert_eq!(
            id,
            DeadLetterId {
                group: ConsumerGroup::Payments,
                partition: 3,
                offset: 17
            }
        );
        assert_eq!(id.to_string(), "payments/3/17");
        for bad in ["payments/3", "nobody/1/2", "payments/x/1", "payments/1/2/3"] {
            assert!(bad.parse::<DeadLetterId>().is_err(), "{bad}");
        }
    }
}
