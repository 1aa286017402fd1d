//! One batch, one Postgres transaction: decode, drop what the inbox has seen, handle, append the
//! outbox (events and dead letters), advance the fenced offsets, commit.

use std::collections::{HashMap, HashSet};

use kassa_schemas::{CodecError, Topic};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;

use super::outbox::Caused;
use super::store::{self, Advance, OutboxRow, TopicPartition};
use super::{Delivered, HandleError, Handler};
use kassa_schemas::trace::TRACEPARENT;

/// What happened to a batch.
pub(super) enum Outcome {
    /// Committed; the partitions' stored offsets are now these.
    Committed(Vec<(TopicPartition, i64)>),
    /// Rolled back: another instance advanced these partitions' offsets first.
    Fenced(Vec<TopicPartition>),
}

/// Why a batch must be retried.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The handler failed.
    #[error("{0}")]
    Handler(#[from] HandleError),
    /// The registry could not be asked for a writer schema.
    #[error("schema registry: {0}")]
    Registry(CodecError),
    /// The handler panicked (a bug, met again on every retry).
    #[error("the handler panicked: {0}")]
    Panicked(String),
}

impl BatchError {
    /// Whether retrying the same batch may succeed: connections, timeouts, serialization
    /// failures, deadlocks, an unreachable registry, state changed under the handler. Anything
    /// else (a constraint or data error, a value that cannot be encoded, a panic) comes back on
    /// every retry: the message causing it is isolated and, after a few attempts, dead-lettered.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            BatchError::Database(e) | BatchError::Handler(HandleError::Database(e)) => {
                transient_database(e)
            }
            BatchError::Registry(_) | BatchError::Handler(HandleError::Conflict(_)) => true,
            BatchError::Handler(HandleError::Codec(e)) => e.is_transient(),
            BatchError::Panicked(_) => false,
        }
    }
}

/// Whether a database failure may pass: a lost or refused connection, a pool timeout, or a
/// SQLSTATE of class 08 (connection), 40 (serialization failure, deadlock), 53 (insufficient
/// resources), 57 (operator intervention: shutdown, cancel), 58 (system error), 55P03 (lock not
/// available) or XX (internal error).
pub(super) fn transient_database(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_none_or(|code| {
            ["08", "40", "53", "57", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Header names on dead letters.
pub(super) mod dlq_headers {
    /// Why the message was dead-lettered.
    pub const REASON: &str = "kassa.dlq.reason";
    /// Where it was read from.
    pub const TOPIC: &str = "kassa.dlq.topic";
    /// Source partition.
    pub const PARTITION: &str = "kassa.dlq.partition";
    /// Source offset.
    pub const OFFSET: &str = "kassa.dlq.offset";
}

/// Processes `messages` (all from partitions this instance owns, at offsets after `stored`).
pub(super) async fn process<H: Handler>(
    pool: &PgPool,
    handler: &mut H,
    messages: &[OwnedMessage],
    stored: &HashMap<TopicPartition, Option<i64>>,
) -> Result<Outcome, BatchError> {
    let group = handler.group();
    let schema = group.name();

    let clock = std::time::Instant::now();
    let lap = |since: &mut std::time::Instant| {
        let ms = since.elapsed().as_secs_f64() * 1000.0;
        *since = std::time::Instant::now();
        ms
    };
    let mut since = clock;
    // Decode; what cannot be decoded is a dead letter, unless the registry itself is unreachable.
    let mut decoded = Vec::with_capacity(messages.len());
    let mut dead = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let topic = Topic::from_name(message.topic()).expect("subscribed topics are kassa topics");
        match handler
            .decode(topic, message.payload().unwrap_or_default())
            .await
        {
            Ok(input) => decoded.push((index, delivered(message, topic, input))),
            Err(e) if e.is_transient() => {
                return Err(BatchError::Registry(e));
            }
            Err(e) => dead.push((index, format!("undecodable: {e}"))),
        }
    }

    let decode_ms = lap(&mut since);
    let entries: Vec<_> = decoded
        .iter()
        .map(|(_, d)| (H::event_id(&d.input), d.topic.name(), d.partition, d.offset))
        .collect();
    let (mut tx, new_ids) = store::begin_with_inbox(pool, schema, &entries).await?;
    let mut taken = HashSet::new();
    let (fresh_index, fresh): (Vec<usize>, Vec<Delivered<H::Input>>) = decoded
        .into_iter()
        .filter(|(_, d)| {
            let id = H::event_id(&d.input);
            new_ids.contains(&id) && taken.insert(id)
        })
        .unzip();
    let skipped = messages.len() - dead.len() - fresh.len();
    let inbox_ms = lap(&mut since);

    // Exported spans: one a message, each a child of the span that wrote its record (the
    // handler handles the batch at once: each lasts as long as the batch).
    let spans: Vec<tracing::Span> = if kassa_schemas::trace::exporting() {
        fresh
            .iter()
            .map(|d| {
                let span = tracing::info_span!(
                    "handle",
                    otel.name = %format!("{schema} handles {}", d.topic.base_name()),
                    partition = d.partition,
                    offset = d.offset,
                    key = d.key.as_deref(),
                    trace_id = d.traceparent.as_deref().and_then(kassa_schemas::trace::trace_id),
                );
                kassa_schemas::trace::continue_trace(&span, d.traceparent.as_deref());
                span
            })
            .collect()
    } else {
        Vec::new()
    };
    let handled = handler.handle(&mut tx, &fresh).await?;
    let handle_ms = lap(&mut since);
    let mut rows = Vec::with_capacity(handled.emit.len() + dead.len() + handled.invalid.len());
    for emit in handled.emit {
        let parent = fresh[emit.cause].traceparent.as_deref();
        let caused = Caused {
            topic: emit.topic,
            key: emit.key,
            payload: emit.payload,
            parent,
            writer: spans
                .get(emit.cause)
                .and_then(kassa_schemas::trace::of_span),
        };
        rows.push(caused.into_row());
    }
    dead.extend(
        handled
            .invalid
            .into_iter()
            .map(|(i, reason)| (fresh_index[i], format!("invalid: {reason}"))),
    );
    for (index, reason) in &dead {
        rows.push(dead_letter(group.dlq_topic(), &messages[*index], reason));
    }
    if !dead.is_empty() {
        metrics::counter!("kassa_dead_letters_total", "group" => schema)
            .increment(dead.len() as u64);
    }
    store::append_outbox(&mut tx, schema, &rows).await?;
    let outbox_ms = lap(&mut since);

    // Each partition advances from where this instance expects its stored offset (the sync made
    // the batch start there) past the batch's highest offset.
    let mut span: Vec<(TopicPartition, (i64, i64))> = Vec::new();
    for message in messages {
        let offset = message.offset();
        match span.iter_mut().find(|(tp, _)| store::is_from(tp, message)) {
            Some((_, range)) => {
                range.0 = range.0.min(offset);
                range.1 = range.1.max(offset + 1);
            }
            None => span.push((
                (message.topic().to_owned(), message.partition()),
                (offset, offset + 1),
            )),
        }
    }
    let advances: Vec<Advance> = span
        .iter()
        .map(|(tp, (first, next))| Advance {
            partition: tp.clone(),
            expected: stored.get(tp).copied().flatten(),
            first: *first,
            next: *next,
        })
        .collect();
    let fenced = store::advance_offsets(&mut tx, schema, &advances).await?;
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Ok(Outcome::Fenced(fenced));
    }
    tx.commit().await?;
    let commit_ms = lap(&mut since);
    tracing::debug!(
        group = schema,
        size = messages.len(),
        fresh = fresh.len(),
        skipped,
        dead = dead.len(),
        decode_ms,
        inbox_ms,
        handle_ms,
        outbox_ms,
        offsets_and_commit_ms = commit_ms,
        "batch committed"
    );
    Ok(Outcome::Committed(
        advances
            .into_iter()
            .map(|a| (a.partition, a.next))
            .collect(),
    ))
}

/// Dead-letters one message that failed for good (with `reason`) and moves its partition past it,
/// in one transaction, fenced like a batch.
pub(super) async fn dead_letter_one(
    pool: &PgPool,
    group: crate::ConsumerGroup,
    message: &OwnedMessage,
    reason: &str,
    stored: &HashMap<TopicPartition, Option<i64>>,
) -> Result<Outcome, BatchError> {
    let schema = group.name();
    let tp = (message.topic().to_owned(), message.partition());
    let advance = Advance {
        partition: tp.clone(),
        expected: stored.get(&tp).copied().flatten(),
        first: message.offset(),
        next: message.offset() + 1,
    };
    let mut tx = pool.begin().await?;
    store::append_outbox(
        &mut tx,
        schema,
        &[dead_letter(group.dlq_topic(), message, reason)],
    )
    .await?;
    let fenced = store::advance_offsets(&mut tx, schema, std::slice::from_ref(&advance)).await?;
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Ok(Outcome::Fenced(fenced));
    }
    tx.commit().await?;
    metrics::counter!("kassa_dead_letters_total", "group" => schema).increment(1);
    Ok(Outcome::Committed(vec![(tp, advance.next)]))
}

fn delivered<I>(message: &OwnedMessage, topic: Topic, input: I) -> Delivered<I> {
    let traceparent = message.headers().and_then(|headers| {
        headers.iter().find(|h| h.key == TRACEPARENT).and_then(|h| {
            h.value
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        })
    });
    Delivered {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        traceparent,
        input,
    }
}

/// A dead letter: the original key and bytes, with the reason and source in headers.
fn dead_letter(dlq: String, message: &OwnedMessage, reason: &str) -> OutboxRow {
    tracing::warn!(
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        reason,
        "dead-lettered"
    );
    OutboxRow {
        topic: dlq,
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers: vec![
            (dlq_headers::REASON.to_owned(), reason.to_owned()),
            (dlq_headers::TOPIC.to_owned(), message.topic().to_owned()),
            (
                dlq_headers::PARTITION.to_owned(),
                message.partition().to_string(),
            ),
            (dlq_headers::OFFSET.to_owned(), message.offset().to_string()),
        ],
    }
}
