//! A JSON body extractor whose every failure is problem+json: size limit, media type, syntax, shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed JSON body, with the raw bytes it came from.
pub struct JsonBody<T> {
    /// The parsed value.
    pub value: T,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let media = v
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase();
                media == "application/json" || media.ends_with("+json")
            });
        if !json {
            return Err(Problem::unsupported_media_type());
        }
        let bytes: Bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| Problem::too_large(MAX_BODY_BYTES))?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| Problem::malformed(e.to_string()))?;
        Ok(Self { value })
    }
}

/// An optional JSON body: absent (empty) is `None`; present, it must be valid like [`JsonBody`].
pub struct MaybeJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MaybeJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| Problem::too_large(MAX_BODY_BYTES))?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        JsonBody::from_request(request, state)
            .await
            .map(|b| Self(Some(b.value)))
    }
}

/// The raw body bytes (up to the limit), for routes that must see exactly what was sent.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Problem> {
        axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map(Self)
            .map_err(|_| Problem::too_large(MAX_BODY_BYTES))
    }
}

/// Middleware: reads every request body (up to [`MAX_BODY_BYTES`], else 413) before routing, so
/// a handler that ignores its body never leaves unread bytes that would cost the connection.
pub async fn buffer_body(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => {
            // The rest of the body is never read, so the connection cannot carry another request:
            // say so, and clients open a fresh one instead of writing into a closed socket.
            let mut response = Problem::too_large(MAX_BODY_BYTES).into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}
