//! W3C trace context (`traceparent`): taken from the storefront's HTTP request (or started by the
//! API), kept with the order, and carried in Kafka headers from each input to the events it
//! causes, so every record about one order is one trace.
//!
//! When spans are exported (OpenTelemetry, see `kassa_ops::logging`), the spans are the links:
//! a span that handles a record is a child of the span that wrote it ([`continue_trace`]), and a
//! record written inside a span carries that span's context ([`header_for`]). When they are not,
//! a record carries a fresh child of its cause's context ([`child_of`]), in the same trace.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// Whether this process exports spans (set once at start).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that this process exports spans: records then carry their spans' contexts.
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The OpenTelemetry context of a remote parent `traceparent` (None: absent or malformed).
fn remote(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.split('-');
    let (_, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    parse(traceparent)?;
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(context))
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent`, when spans are
/// exported and it is well formed.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if !exporting() {
        return;
    }
    if let Some(parent) = traceparent.and_then(remote) {
        let _ = span.set_parent(parent);
    }
}

/// `span`'s own `traceparent`, when spans are exported and it has one.
pub fn of_span(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` of a record written now, caused by `parent`: the current span's own when
/// spans are exported (the record's writer), else a fresh child of `parent`.
pub fn header_for(parent: Option<&str>) -> String {
    of_span(&tracing::Span::current()).unwrap_or_else(|| child_of(parent))
}

/// The Kafka header that carries the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent` for a child span of `parent` (same trace, new span id), or a new trace when
/// `parent` is absent or malformed.
pub fn child_of(parent: Option<&str>) -> String {
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    match parent.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span_id}-{flags}"),
        None => format!("00-{}-{span_id}-01", Uuid::new_v4().simple()),
    }
}

/// The trace id of a well-formed `traceparent` (None: absent or malformed).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace_id, _)| trace_id)
}

/// The trace id and flags of a well-formed version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(span_id, 16)
        && hex(flags, 2);
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_of(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert!(parse(&child).is_some());
    }

    #[test]
    fn a_missing_or_malformed_parent_starts_a_new_trace() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let child = child_of(bad);
            assert!(parse(&child).is_some(), "{child}");
        }
    }
}
