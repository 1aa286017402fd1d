//! Sending one event to Kafka from a request: encoded, acks=all, a problem if it cannot be done.

use std::time::Duration;

use kassa_schemas::{Envelope, Payload};
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

/// Sends encoded values to `topic` and waits for every acknowledgement (503 if any fails).
pub async fn send_all(
    state: &AppState,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Result<(), ApiError> {
    let sends = records.iter().map(|(key, bytes)| {
        state
            .producer
            .send(FutureRecord::to(topic).key(key).payload(bytes), ACK_TIMEOUT)
    });
    for result in futures::future::join_all(sends).await {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, topic, "Kafka did not acknowledge");
            return Err(Problem::unavailable("Kafka cannot take writes right now", 2).into());
        }
    }
    Ok(())
}

/// Encodes and sends one event keyed by `key`.
pub async fn send<P: Payload>(
    state: &AppState,
    key: &str,
    event: &Envelope<P>,
) -> Result<(), ApiError> {
    let bytes = encode(state, event).await?;
    send_all(state, P::TOPIC.name(), &[(key.to_owned(), bytes)]).await
}
