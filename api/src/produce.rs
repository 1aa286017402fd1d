//! Sending one event to Kafka from a request: encoded, acks=all, a problem if it cannot be done.

use std::time::Duration;

use kassa_schemas::trace::{TRACEPARENT, child_of, continue_trace, header_for, of_span};
use kassa_schemas::{Envelope, Payload};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::AppState;
use crate::error::ApiError;
use crate::problem::Problem;

/// How long a request waits for Kafka's acknowledgement before answering 503.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes `event` for its topic (503 if the registry cannot be reached).
pub async fn encode<P: Payload>(
    state: &AppState,
    event: &Envelope<P>,
) -> Result<Vec<u8>, ApiError> {
    Ok(state.codec.encode(event).await?)
}

/// Sends encoded values to `topic`, each with a child span of the order's trace (`parent`, the
/// `traceparent` kept with the order), and waits for every acknowledgement (503 if any fails).
pub async fn send_all(
    state: &AppState,
    topic: &str,
    parent: Option<&str>,
    records: &[(String, Vec<u8>)],
) -> Result<(), ApiError> {
    // Exported: a span for the send, in the order's trace; each record is its child.
    let span = tracing::info_span!("send", otel.name = %format!("api sends to {topic}"));
    continue_trace(&span, parent);
    let sent_by = of_span(&span);
    let sends = records.iter().map(|(key, bytes)| {
        let traceparent = sent_by.clone().unwrap_or_else(|| child_of(parent));
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(traceparent.as_str()),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(bytes)
            .headers(headers);
        state.producer.send(record, ACK_TIMEOUT)
    });
    for result in futures::future::join_all(sends).await {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, topic, "Kafka did not acknowledge");
            return Err(Problem::unavailable("Kafka cannot take writes right now", 2).into());
        }
    }
    Ok(())
}

/// Encodes and sends one event keyed by `key`, in the trace of `parent` (None: a new trace).
pub async fn send<P: Payload>(
    state: &AppState,
    key: &str,
    parent: Option<&str>,
    event: &Envelope<P>,
) -> Result<(), ApiError> {
    let bytes = encode(state, event).await?;
    send_all(state, P::TOPIC.name(), parent, &[(key.to_owned(), bytes)]).await
}

/// The trace an order starts: the storefront's (when it sent a well-formed `traceparent`) or a
/// new one; exported, the request's span is its root here.
pub fn order_trace(headers: &axum::http::HeaderMap) -> String {
    header_for(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
}

/// The `traceparent` kept with order `order_id` (None: no such order, or none kept).
pub async fn trace_of(state: &AppState, order_id: &str) -> Result<Option<String>, ApiError> {
    let Ok(order_id) = uuid::Uuid::try_parse(order_id) else {
        return Ok(None);
    };
    let kept: Option<Option<String>> =
        sqlx::query_scalar("SELECT traceparent FROM api.orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&state.pool)
            .await?;
    Ok(kept.flatten())
}
