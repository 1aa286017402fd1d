//! The runtime's tables in a processor's own schema: offsets (with the fence that stops a stale
//! owner), inbox and outbox. Every statement is set-based: one round trip per batch, whatever
//! its size.

use std::collections::{HashMap, HashSet};

use sqlx::AssertSqlSafe;
use sqlx::PgConnection;
use uuid::Uuid;

/// A (topic, partition) pair.
pub type TopicPartition = (String, i32);

/// One row for the outbox: an event (or dead letter) to publish after the transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Destination topic.
    pub topic: String,
    /// Message key.
    pub key: Option<String>,
    /// Message value (Confluent wire format, or the raw bytes of a dead letter).
    pub payload: Vec<u8>,
    /// Kafka headers.
    pub headers: Vec<(String, String)>,
}

/// The stored next offsets of `partitions` (absent: nothing stored yet).
pub async fn load_offsets(
    conn: &mut PgConnection,
    schema: &str,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>, sqlx::Error> {
    let (topics, numbers): (Vec<&str>, Vec<i32>) = partitions.iter().map(|(t, p)| (t.as_str(), *p)).unzip();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT o.topic, o.partition, o.next_offset FROM {schema}.consumer_offsets o
         JOIN unnest($1::text[], $2::int[]) AS w(topic, partition) USING (topic, partition)"
    )))
    .bind(&topics)
    .bind(&numbers)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// Advances the stored offsets, but only where they still hold what this instance last read
/// (`expected`, None = no row yet). Returns the partitions where they did not: another instance
/// has processed them since, so this batch must not commit.
pub async fn advance_offsets(
    conn: &mut PgConnection,
    schema: &str,
    advances: &[(TopicPartition, Option<i64>, i64)],
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    let (known, first): (Vec<_>, Vec<_>) = advances.iter().partition(|(_, expected, _)| expected.is_some());
    let mut moved: HashSet<(String, i32)> = HashSet::new();
    if !known.is_empty() {
        let topics: Vec<&str> = known.iter().map(|a| a.0.0.as_str()).collect();
        let partitions: Vec<i32> = known.iter().map(|a| a.0.1).collect();
        let expected: Vec<i64> = known.iter().map(|a| a.1.unwrap_or_default()).collect();
        let next: Vec<i64> = known.iter().map(|a| a.2).collect();
        let rows: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {schema}.consumer_offsets o SET next_offset = a.next, updated_at = now()
             FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS a(topic, partition, expected, next)
             WHERE o.topic = a.topic AND o.partition = a.partition AND o.next_offset = a.expected
             RETURNING o.topic, o.partition"
        )))
        .bind(&topics)
        .bind(&partitions)
        .bind(&expected)
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        moved.extend(rows);
    }
    if !first.is_empty() {
        let topics: Vec<&str> = first.iter().map(|a| a.0.0.as_str()).collect();
        let partitions: Vec<i32> = first.iter().map(|a| a.0.1).collect();
        let next: Vec<i64> = first.iter().map(|a| a.2).collect();
        let rows: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {schema}.consumer_offsets (topic, partition, next_offset)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
             ON CONFLICT (topic, partition) DO NOTHING
             RETURNING topic, partition"
        )))
        .bind(&topics)
        .bind(&partitions)
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        moved.extend(rows);
    }
    Ok(advances.iter().map(|(tp, _, _)| tp.clone()).filter(|tp| !moved.contains(tp)).collect())
}

/// Records event ids in the inbox; returns the ids that were new (not seen before).
pub async fn record_inbox(
    conn: &mut PgConnection,
    schema: &str,
    entries: &[(Uuid, &str, i32, i64)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = entries.iter().map(|e| e.0).collect();
    let topics: Vec<&str> = entries.iter().map(|e| e.1).collect();
    let partitions: Vec<i32> = entries.iter().map(|e| e.2).collect();
    let offsets: Vec<i64> = entries.iter().map(|e| e.3).collect();
    let new: Vec<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO {schema}.inbox (event_id, topic, partition, \"offset\")
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id"
    )))
    .bind(&ids)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(conn)
    .await?;
    Ok(new.into_iter().map(|(id,)| id).collect())
}

/// Appends rows to the outbox and wakes the relay when the transaction commits.
pub async fn append_outbox(conn: &mut PgConnection, schema: &str, rows: &[OutboxRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::Value::Object(r.headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()))
        .collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.outbox (topic, key, payload, headers)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[])"
    )))
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(outbox_channel(schema)).execute(conn).await?;
    Ok(())
}

/// The LISTEN/NOTIFY channel that wakes a processor's outbox relay.
pub fn outbox_channel(schema: &str) -> String {
    format!("kassa_outbox_{schema}")
}
