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

/// An optional JSON body: absent (empty) or `null` is `None`; present, it must be valid like
/// [`JsonBody`].
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
        JsonBody::<Option<T>>::from_request(request, state)
            .await
            .map(|b| Self(b.value))
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

/// Middleware: reads every request body (up to [`MAX_BODY_BYTES`], else 413; within `timeout`,
/// else 408) before routing, so a handler that ignores its body never leaves unread bytes that
/// would cost the connection, and a client that sends its body slowly holds nothing for long.
pub async fn buffer_body(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let problem =
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
            Ok(Ok(bytes)) => {
                return next
                    .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                    .await;
            }
            Ok(Err(_)) => Problem::too_large(MAX_BODY_BYTES),
            Err(_) => Problem::request_timeout(timeout),
        };
    // The rest of the body is never read, so the connection cannot carry another request: say
    // so, and clients open a fresh one instead of writing into a closed socket.
    let mut response = problem.into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Integer fields as JSON Schema's `integer` has them: any JSON number with no fractional part
/// (`2`, `2.0`, `2e0`), in range of the field's type. Use with `#[serde(deserialize_with)]`.
pub mod whole {
    use serde::de::{Deserialize, Deserializer, Error};

    /// A whole number of type `T`.
    pub fn number<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let value = match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            // i64::MIN is exactly representable; 2^63 (the f64 just above i64::MAX) is excluded.
            (None, Some(f)) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => {
                f as i64
            }
            _ => {
                return Err(D::Error::custom(format!(
                    "{n} is not a whole number in range"
                )));
            }
        };
        T::try_from(value).map_err(|_| D::Error::custom(format!("{n} is out of range")))
    }

    /// An optional whole number of type `T` (`null` or absent: None; needs `#[serde(default)]`).
    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wrapped<T: TryFrom<i64>>(#[serde(deserialize_with = "number")] T);
        Ok(Option::<Wrapped<T>>::deserialize(d)?.map(|w| w.0))
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Line {
            #[serde(deserialize_with = "super::number")]
            quantity: i32,
            #[serde(default, deserialize_with = "super::optional")]
            hold: Option<i32>,
        }

        fn parse(json: &str) -> Result<Line, serde_json::Error> {
            serde_json::from_str(json)
        }

        #[test]
        fn whole_numbers_in_any_spelling_are_integers() {
            for json in [
                r#"{"quantity": 2}"#,
                r#"{"quantity": 2.0}"#,
                r#"{"quantity": 2e0}"#,
            ] {
                assert_eq!(
                    parse(json).unwrap(),
                    Line {
                        quantity: 2,
                        hold: None
                    },
                    "{json}"
                );
            }
            assert_eq!(
                parse(r#"{"quantity": 1, "hold": 60.0}"#).unwrap().hold,
                Some(60)
            );
            assert_eq!(
                parse(r#"{"quantity": 1, "hold": null}"#).unwrap().hold,
                None
            );
            for json in [
                r#"{"quantity": 2.5}"#,
                r#"{"quantity": 1e300}"#,
                r#"{"quantity": 2147483648}"#,
                r#"{"quantity": "2"}"#,
                r#"{"quantity": 9223372036854775808}"#,
            ] {
                assert!(parse(json).is_err(), "{json}");
            }
        }
    }
}
