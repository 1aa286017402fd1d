//! One way to emit: every event a processor publishes goes into its own outbox with a child of
//! its cause's W3C trace context, so one order is one trace across every hop. A batch's handler
//! emits through the runtime (the cause is an input of the batch); a processor's background task
//! (the payments worker, the expiry ticker) emits here, naming the `traceparent` it kept of the
//! input that caused the work.

use kassa_schemas::Topic;

use crate::ConsumerGroup;
use sqlx::PgConnection;

use super::store::{self, OutboxRow};
use kassa_schemas::trace::{TRACEPARENT, header_for};

/// An event to publish, and the trace context of what caused it.
#[derive(Debug, Clone)]
pub struct Caused<'a> {
    /// Destination topic.
    pub topic: Topic,
    /// Message key.
    pub key: String,
    /// Encoded value (Confluent wire format).
    pub payload: Vec<u8>,
    /// The cause's `traceparent` (None, or malformed: the event starts a new trace).
    pub parent: Option<&'a str>,
    /// The `traceparent` of the exported span that wrote it, when there is one (else the span
    /// current when the row is made, or a fresh child of `parent`).
    pub writer: Option<String>,
}

impl Caused<'_> {
    /// The outbox row: the event in its cause's trace, as a child of the span that wrote it.
    pub(super) fn into_row(self) -> OutboxRow {
        let traceparent = self.writer.unwrap_or_else(|| header_for(self.parent));
        OutboxRow {
            topic: self.topic.name().to_owned(),
            key: Some(self.key),
            payload: self.payload,
            headers: vec![(TRACEPARENT.to_owned(), traceparent)],
        }
    }
}

/// Appends `events` to `group`'s outbox in the caller's transaction (the relay publishes them
/// once it commits).
pub async fn append(
    conn: &mut PgConnection,
    group: ConsumerGroup,
    events: Vec<Caused<'_>>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<OutboxRow> = events.into_iter().map(Caused::into_row).collect();
    store::append_outbox(conn, group.name(), &rows).await
}
