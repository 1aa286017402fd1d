//! RFC 9457 problem details: every 4xx/5xx the API answers, with a stable machine-readable `code`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer-ish path of the field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An error answer: `application/problem+json` with `type`, `title`, `status`, `detail`, `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human-readable summary of the type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// Human-readable explanation of this occurrence.
    pub detail: String,
    /// Stable machine-readable code (`validation_failed`, `unknown_sku`, …).
    pub code: &'static str,
    /// Per-field errors, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("https://kassa.dev/problems/{}", code.replace('_', "-")),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 400: the request does not validate; `errors` says where.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "The request is not valid",
                detail,
            )
        }
    }

    /// 400: one field (a body field, a header, a parameter) breaks its rule, `message`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// 400: the body is not the JSON this endpoint takes.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "The request body cannot be read",
            detail,
        )
    }

    /// 409: the request conflicts with what was already done (`detail` says what).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Already done", detail)
    }

    /// 401: no or an unknown API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            "send a valid API key as `Authorization: Bearer <key>`",
        )
    }

    /// 404: no such resource (also for another customer's: never 403).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            format!("no such {what}"),
        )
    }

    /// 405: the route exists, but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this route does not take that method",
        )
    }

    /// 422: an SKU is not in the catalog (or not active).
    pub fn unknown_sku(skus: &[String]) -> Self {
        let errors = skus
            .iter()
            .map(|s| FieldError {
                field: "lines".into(),
                message: format!("unknown SKU {s}"),
            })
            .collect();
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_sku",
                "Unknown product",
                format!("not in the catalog: {}", skus.join(", ")),
            )
        }
    }

    /// 422: a well-formed request that the catalog or the state of things refuses; `code` names
    /// the rule (`mixed_currencies`, `total_too_large`, `empty_cart`, …).
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "Cannot be processed",
            detail,
        )
    }

    /// 422: the Idempotency-Key was used before with a different request.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used with a different request; use a new key for a new request",
        )
    }

    /// 503: another request with the same Idempotency-Key is mid-flight; retry in a second.
    pub fn same_request_in_flight() -> Self {
        Self::unavailable(
            "the same request is being processed; retry with the same Idempotency-Key",
            1,
        )
    }

    /// 409: a flash sale has no tokens left for the units asked.
    pub fn sold_out(sku: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "sold_out",
            "Sold out",
            format!("{sku} is sold out"),
        )
    }

    /// 409: the customer would go over the sale's per-customer limit.
    pub fn purchase_limit(sku: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "purchase_limit",
            "Purchase limit reached",
            format!("the per-customer limit for {sku} is reached"),
        )
    }

    /// 401 for a missing or storefront key on an admin route.
    pub fn admin_only() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            "this route needs an admin key",
        )
    }

    /// 412: the cart changed since the version the client sent in `If-Match`.
    pub fn stale(current: u64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "stale_version",
            "Changed meanwhile",
            format!(
                "the cart is at version \"{current}\" now; reload it and apply your change again"
            ),
        )
    }

    /// 428: replacing a cart needs `If-Match` with the version the client last saw.
    pub fn precondition_required() -> Self {
        Self::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "If-Match required",
            "send `If-Match` with the cart's ETag, so another device's change is never overwritten",
        )
    }

    /// 401: a webhook whose signature is missing, wrong or stale (the signature is how a
    /// webhook authenticates).
    pub fn bad_signature(detail: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "Signature not valid",
            detail,
        )
    }

    /// 429: too many requests; retry after `seconds`.
    pub fn rate_limited(seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                format!("slow down; retry in {seconds} s"),
            )
        }
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Request too large",
            format!("bodies are limited to {limit} bytes"),
        )
    }

    /// 408: the body did not arrive within `timeout`.
    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request too slow",
            format!("the body must arrive within {} s", timeout.as_secs()),
        )
    }

    /// 415: not a JSON body.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send `Content-Type: application/json`",
        )
    }

    /// 503: a dependency cannot take the request now; retry after `seconds`.
    pub fn unavailable(detail: impl Into<String>, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
                detail,
            )
        }
    }

    /// 500: something failed that the client cannot fix (details are logged, never sent).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request failed; it is safe to retry with the same Idempotency-Key",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The error answers (RFC 9457 problem details) every API operation may give, declared once for
/// the OpenAPI document.
#[derive(utoipa::IntoResponses)]
pub enum CommonErrors {
    /// The request is invalid.
    #[response(
        status = 400,
        description = "invalid request",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
    /// The key is missing or wrong.
    #[response(
        status = 401,
        description = "no or wrong key",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    /// Not found (also another customer's: never 403).
    #[response(
        status = 404,
        description = "not found (also another customer's)",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    /// Too many requests.
    #[response(
        status = 429,
        description = "rate limited",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
    /// A dependency is unavailable (with `Retry-After`).
    #[response(
        status = 503,
        description = "a dependency is unavailable",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}
