//! The exactly-once runtime every processor plugs a [`Handler`] into, so no processor writes its
//! own Kafka or Postgres plumbing (DESIGN.md, "Exactly-once effects"):
//!
//! - consume with auto-commit off and read_committed; the offsets that count live in the
//!   processor's own schema, and each partition is sought to them when first seen after an
//!   assignment (Kafka's committed offsets are written too, after the database, for lag tools);
//! - one Postgres transaction per batch: skip event ids already in the inbox, run the handler,
//!   append what it emits to the outbox, advance the offsets (fenced, so a stale owner cannot
//!   commit), commit;
//! - undecodable or invalid messages go to `<group>.dlq` through the outbox, with the reason and
//!   source in headers, and the partition moves on; transient failures retry with backoff;
//! - the outbox relay ([`relay`]) publishes in order; SIGTERM finishes the batch, drains, exits.

pub mod backoff;
mod batch;
mod consumer;
pub mod liveness;
pub mod outbox;
mod position;
pub mod relay;
pub mod stats;
pub mod store;

use std::future::Future;
use std::time::Duration;

use kassa_schemas::{CodecError, Topic};

use crate::ConsumerGroup;
use sqlx::PgConnection;
use uuid::Uuid;

pub use consumer::{RuntimeError, connect, run};

/// Runtime settings shared by every processor.
/// (Not `Debug`: it holds the database URL, password included.)
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// PostgreSQL URL (its password never prints).
    pub database_url: kassa_schemas::secret::Secret,
    /// Most messages in one batch.
    pub batch_max: usize,
    /// Longest wait for a batch to fill once its first message arrived.
    pub batch_wait: Duration,
    /// Static group membership id: a restarted instance with the same id gets its partitions
    /// back at once instead of after the session timeout. Unique per running instance.
    pub instance_id: Option<String>,
}

/// An input message, decoded, with where it came from.
#[derive(Debug, Clone)]
pub struct Delivered<I> {
    /// Source topic.
    pub topic: Topic,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<String>,
    /// W3C trace context of the message, if any.
    pub traceparent: Option<String>,
    /// The decoded event.
    pub input: I,
}

impl<I> Delivered<I> {
    /// Whether the message's key is `id` (the order it is about); if not, it is marked
    /// invalid in `handled` (it goes to the dead-letter topic) as input `index` of the batch.
    pub fn keyed_by(&self, index: usize, id: &str, handled: &mut Handled) -> bool {
        if self.key.as_deref() == Some(id) {
            return true;
        }
        handled.invalid.push((
            index,
            format!("message key {:?} is not the order id {id}", self.key),
        ));
        false
    }
}

/// An event to publish, caused by one input of the batch.
#[derive(Debug, Clone)]
pub struct Emit {
    /// Destination topic.
    pub topic: Topic,
    /// Message key.
    pub key: String,
    /// Encoded value (Confluent wire format).
    pub payload: Vec<u8>,
    /// Index in the batch of the input that caused it (its trace context is carried on).
    pub cause: usize,
}

/// What a handler made of a batch.
#[derive(Debug, Default)]
pub struct Handled {
    /// Events to publish, in order.
    pub emit: Vec<Emit>,
    /// Inputs (by batch index) that are invalid, with the reason: they go to the dead-letter topic.
    pub invalid: Vec<(usize, String)>,
}

/// Why a handler could not handle a batch; all of these are retried.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An output event could not be encoded (the registry is unreachable).
    #[error("encoding: {0}")]
    Codec(#[from] CodecError),
    /// State changed under the handler (another instance wrote it): forget, reload, redo.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// Why a round of a processor's background task (the expiry ticker, the payments worker)
/// failed; such rounds are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An event could not be encoded (the registry is unreachable).
    #[error("encoding: {0}")]
    Codec(#[from] CodecError),
    /// A writer the round handed its writes to has stopped (the processor is shutting down).
    #[error("{0}")]
    Stopped(#[from] kassa_schemas::gather::Stopped),
}

/// A processor's logic, plugged into the runtime.
pub trait Handler: Send + 'static {
    /// The decoded form of every input topic's events.
    type Input: Send + Sync + 'static;

    /// The consumer group (and Postgres schema) of this processor.
    fn group(&self) -> ConsumerGroup;

    /// Decodes a message read from `topic`.
    fn decode(
        &self,
        topic: Topic,
        bytes: &[u8],
    ) -> impl Future<Output = Result<Self::Input, CodecError>> + Send;

    /// The event id of an input (what the inbox deduplicates on).
    fn event_id(input: &Self::Input) -> Uuid;

    /// Handles a batch of inputs not seen before, in arrival order, inside the batch's transaction.
    /// In-memory state may change; if the transaction then fails, `forget` is called.
    fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Self::Input>],
    ) -> impl Future<Output = Result<Handled, HandleError>> + Send;

    /// Drops in-memory state for these partitions (revoked, fenced, or a failed transaction).
    fn forget(&mut self, partitions: &[(Topic, i32)]);

    /// Runs after a batch committed (side effects that may be lost but never doubled).
    fn after_commit(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
