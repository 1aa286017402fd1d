//! The runtime's tables in a processor's own schema: offsets (with the fence that stops a stale
//! owner), inbox and outbox. Every statement is set-based: one round trip per batch, whatever
//! its size.

use std::collections::{HashMap, HashSet};

use kassa_schemas::trace::TRACEPARENT;
use sqlx::AssertSqlSafe;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A (topic, partition) pair.
pub type TopicPartition = (String, i32);

/// Whether `message` was read from the partition `tp` (no key built: this runs per message).
pub fn is_from(tp: &TopicPartition, message: &impl rdkafka::Message) -> bool {
    tp.1 == message.partition() && tp.0 == message.topic()
}

/// One row for the outbox: an event (or dead letter) to publish after the transaction commits.
#[derive(Debug, Clone)]
pub(super) struct OutboxRow {
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
    let (topics, numbers): (Vec<&str>, Vec<i32>) =
        partitions.iter().map(|(t, p)| (t.as_str(), *p)).unzip();
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

/// One partition's advance in a batch: from the stored offset this instance expects (None: no
/// row yet) past the batch's messages, `first` to `next - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The partition.
    pub partition: TopicPartition,
    /// The stored offset this instance expects (None: nothing stored yet).
    pub expected: Option<i64>,
    /// The batch's lowest offset in the partition.
    pub first: i64,
    /// One past the batch's highest offset in the partition.
    pub next: i64,
}

/// Advances the stored offsets, but only where they still hold what this instance expects.
/// Returns the partitions where they did not: another instance (or an operator) has moved them
/// since, so this batch must not commit. The offsets passed (`expected` up to `next`) join the
/// partition's processed ranges, so a later move past offsets nobody processed shows as a hole.
pub async fn advance_offsets(
    conn: &mut PgConnection,
    schema: &str,
    advances: &[Advance],
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    let (known, first): (Vec<&Advance>, Vec<&Advance>) =
        advances.iter().partition(|a| a.expected.is_some());
    let mut moved: HashSet<(String, i32)> = HashSet::new();
    if !known.is_empty() {
        let topics: Vec<&str> = known.iter().map(|a| a.partition.0.as_str()).collect();
        let partitions: Vec<i32> = known.iter().map(|a| a.partition.1).collect();
        let expected: Vec<i64> = known
            .iter()
            .map(|a| a.expected.unwrap_or_default())
            .collect();
        let next: Vec<i64> = known.iter().map(|a| a.next).collect();
        let rows: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {schema}.consumer_offsets o SET next_offset = a.next, updated_at = now(),
                    processed = o.processed + int8multirange(int8range(a.expected, a.next))
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
        let topics: Vec<&str> = first.iter().map(|a| a.partition.0.as_str()).collect();
        let partitions: Vec<i32> = first.iter().map(|a| a.partition.1).collect();
        let from: Vec<i64> = first.iter().map(|a| a.first).collect();
        let next: Vec<i64> = first.iter().map(|a| a.next).collect();
        let rows: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {schema}.consumer_offsets (topic, partition, next_offset, processed)
             SELECT topic, partition, next, int8multirange(int8range(first, next))
             FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS a(topic, partition, first, next)
             ON CONFLICT (topic, partition) DO NOTHING
             RETURNING topic, partition"
        )))
        .bind(&topics)
        .bind(&partitions)
        .bind(&from)
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        moved.extend(rows);
    }
    Ok(advances
        .iter()
        .map(|a| a.partition.clone())
        .filter(|tp| !moved.contains(tp))
        .collect())
}

/// A stretch of a partition that a move of its stored offset passed over without processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// First offset passed over.
    pub from: i64,
    /// One past the last.
    pub to: i64,
    /// The operator moves (`moved_by: reason`) that account for it; empty: nobody said so.
    pub intended_by: Vec<String>,
    /// Whether it was already found and reported as a skip nobody intended.
    pub reported: bool,
}

/// The stretches of `[from, to)` on `partition` that were never processed, each with the
/// operator moves recorded over it.
pub async fn unprocessed(
    conn: &mut PgConnection,
    schema: &str,
    partition: &TopicPartition,
    from: i64,
    to: i64,
) -> Result<Vec<Skipped>, sqlx::Error> {
    let holes: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT lower(h), upper(h) FROM {schema}.consumer_offsets o,
                unnest(int8multirange(int8range($3, $4)) - o.processed) AS h
         WHERE o.topic = $1 AND o.partition = $2 ORDER BY 1"
    )))
    .bind(&partition.0)
    .bind(partition.1)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    let mut skipped = Vec::with_capacity(holes.len());
    for (from, to) in holes {
        let moves: Vec<(bool, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT intended, moved_by || ': ' || reason FROM {schema}.offset_moves
             WHERE topic = $1 AND partition = $2
               AND int8range(coalesce(from_offset, 0), greatest(to_offset, coalesce(from_offset, 0)))
                   && int8range($3, $4)
             ORDER BY id"
        )))
        .bind(&partition.0)
        .bind(partition.1)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await?;
        let reported = moves.iter().any(|(intended, _)| !intended);
        let intended_by = moves
            .into_iter()
            .filter(|(intended, _)| *intended)
            .map(|(_, by)| by)
            .collect();
        skipped.push(Skipped {
            from,
            to,
            intended_by,
            reported,
        });
    }
    Ok(skipped)
}

/// Records a move of a stored offset that was not processing: an operator's (`intended`) or
/// one the runtime found (not intended).
pub async fn record_move(
    conn: &mut PgConnection,
    schema: &str,
    partition: &TopicPartition,
    range: (Option<i64>, i64),
    intended: bool,
    moved_by: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.offset_moves (topic, partition, from_offset, to_offset, intended, moved_by, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )))
    .bind(&partition.0)
    .bind(partition.1)
    .bind(range.0)
    .bind(range.1)
    .bind(intended)
    .bind(moved_by)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Begins a batch's transaction with its event ids recorded in the inbox; returns it and the ids
/// that were new (not seen before). Usually every id is new, and a plain insert records them at
/// about half the cost of `ON CONFLICT DO NOTHING` (measured on 5,000 ids: 6.3 against 12.6 ms).
/// When one was seen before (a record read again, or an instance that lost the partition still
/// writing it), that insert fails on the inbox's key: its transaction, which holds nothing else
/// yet, is rolled back and a new one records them with `ON CONFLICT DO NOTHING`. Postgres logs
/// that failed insert (`duplicate key value violates unique constraint "inbox_pkey"`): on a
/// replay, expected; `kassa_inbox_replayed_batches_total` counts them.
pub async fn begin_with_inbox(
    pool: &PgPool,
    schema: &str,
    entries: &[(Uuid, &str, i32, i64)],
) -> Result<(Transaction<'static, Postgres>, HashSet<Uuid>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if entries.is_empty() {
        return Ok((tx, HashSet::new()));
    }
    let ids: HashSet<Uuid> = entries.iter().map(|e| e.0).collect();
    if ids.len() == entries.len() {
        match insert_inbox(&mut tx, schema, entries, false).await {
            Ok(_) => return Ok((tx, ids)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tracing::debug!(
                    group = schema,
                    "an event id in the batch was seen before: recorded again with ON CONFLICT"
                );
                metrics::counter!("kassa_inbox_replayed_batches_total", "group" => schema.to_owned())
                    .increment(1);
                tx.rollback().await?;
                tx = pool.begin().await?;
            }
            Err(e) => return Err(e),
        }
    }
    let new = insert_inbox(&mut tx, schema, entries, true).await?;
    Ok((tx, new))
}

/// Inserts event ids into the inbox: with `seen_before_possible`, skipping those already there
/// and returning the others; without, failing on the first one already there (and returning
/// nothing).
async fn insert_inbox(
    conn: &mut PgConnection,
    schema: &str,
    entries: &[(Uuid, &str, i32, i64)],
    seen_before_possible: bool,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = entries.iter().map(|e| e.0).collect();
    let topics: Vec<&str> = entries.iter().map(|e| e.1).collect();
    let partitions: Vec<i32> = entries.iter().map(|e| e.2).collect();
    let offsets: Vec<i64> = entries.iter().map(|e| e.3).collect();
    let insert = format!(
        "INSERT INTO {schema}.inbox (event_id, topic, partition, \"offset\")
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[])"
    );
    let sql = if seen_before_possible {
        format!("{insert} ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
    } else {
        insert
    };
    let new: Vec<(Uuid,)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&ids)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(conn)
        .await?;
    Ok(new.into_iter().map(|(id,)| id).collect())
}

/// Appends rows to the outbox and wakes the relay when the transaction commits (the runtime's
/// own writes; processors emit through `runtime::outbox`).
pub(super) async fn append_outbox(
    conn: &mut PgConnection,
    schema: &str,
    rows: &[OutboxRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    // The trace context has a column of its own; any other headers go in `headers` (NULL when
    // there are none: most rows).
    let traceparents: Vec<Option<&str>> = rows
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == TRACEPARENT)
                .map(|(_, v)| v.as_str())
        })
        .collect();
    let headers: Vec<Option<serde_json::Value>> = rows
        .iter()
        .map(|r| {
            let others: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .filter(|(k, _)| k != TRACEPARENT)
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            (!others.is_empty()).then_some(serde_json::Value::Object(others))
        })
        .collect();
    // One round trip: the rows, and the relay's wake-up (sent when the transaction commits).
    sqlx::query(AssertSqlSafe(format!(
        "WITH appended AS (
             INSERT INTO {schema}.outbox (topic, key, payload, traceparent, headers)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::jsonb[]))
         SELECT pg_notify($6, '')"
    )))
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&traceparents)
    .bind(&headers)
    .bind(outbox_channel(schema))
    .execute(conn)
    .await?;
    Ok(())
}

/// The LISTEN/NOTIFY channel that wakes a processor's outbox relay.
pub fn outbox_channel(schema: &str) -> String {
    format!("kassa_outbox_{schema}")
}
