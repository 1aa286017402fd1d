//! W3C trace context (`traceparent`): taken from the storefront's HTTP request (or started by the
//! API), kept with the order, and carried in Kafka headers from each input to the events it
//! causes, so every record about one order is one trace.

use uuid::Uuid;

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
