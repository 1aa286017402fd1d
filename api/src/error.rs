//! The one error type of the HTTP edge. A handler fails with a [`Problem`] meant for the client
//! (answered as it is), or with a dependency's error (`?` on sqlx, Redis, Kafka, the codec or
//! JSON): that cause is logged, never shown, and answered 503 with `Retry-After` when waiting
//! helps (the database, Redis, Kafka or the registry cannot be reached), else 500.

use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An answer for the client, as it is.
    #[error("{} {}", .0.status, .0.code)]
    Problem(Problem),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Kafka did not take a write.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An event could not be encoded.
    #[error("encoding: {0}")]
    Codec(#[from] kassa_schemas::CodecError),
    /// A stored JSON document could not be read or written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A writer the request handed a write to has stopped (the API is shutting down).
    #[error("{0}")]
    Stopped(#[from] kassa_schemas::gather::Stopped),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError::Problem(problem)
    }
}

impl ApiError {
    /// The answer: the problem itself, or (the cause logged) 503 or 500.
    pub fn into_problem(self) -> Problem {
        let unavailable = |what: &str, seconds: u32| {
            Problem::unavailable(format!("{what} is unavailable"), seconds)
        };
        match self {
            ApiError::Problem(problem) => problem,
            ApiError::Database(
                e @ (sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)),
            ) => {
                tracing::warn!(error = %e, "database unreachable");
                unavailable("the database", 1)
            }
            ApiError::Redis(e) => {
                tracing::warn!(error = %e, "Redis failed");
                unavailable("Redis", 2)
            }
            ApiError::Kafka(e) => {
                tracing::warn!(error = %e, "Kafka did not take a write");
                unavailable("Kafka", 2)
            }
            ApiError::Stopped(e) => {
                tracing::warn!(error = %e, "a write was not done: the API is stopping");
                unavailable("the API (stopping)", 1)
            }
            ApiError::Codec(e) if e.is_transient() => {
                tracing::warn!(error = %e, "the schema registry failed");
                unavailable("the schema registry", 2)
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_problem().into_response()
    }
}
