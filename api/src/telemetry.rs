//! Prometheus metrics: the process-wide recorder (installed once; processors run in the same
//! process record into it too), the per-request middleware, and `GET /metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 1 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder's handle, installing the recorder on first use (None if another recorder was
/// installed first, e.g. by a test harness).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Middleware: counts every request and times it, by route template, method and status.
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    // The request's span: its route, and the trace and order it belongs to once known (the
    // storefront's `traceparent`; an order handler records the order's).
    let incoming = request
        .headers()
        .get(kassa_schemas::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let trace_id = incoming.as_deref().and_then(kassa_schemas::trace::trace_id);
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        method = %method,
        route = %route,
        trace_id = trace_id,
        order_id = tracing::field::Empty,
    );
    kassa_schemas::trace::continue_trace(&span, incoming.as_deref());
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("kassa_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("kassa_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: every metric of this process, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn render() -> Response {
    let body = handle().map(|h| h.render()).unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
