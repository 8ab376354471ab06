use super::*;
use crate::telemetry::decision_log::RequestIds;
use axum::http::HeaderValue;

fn ids(traceparent: &'static str, tracestate: Option<&'static str>) -> RequestIds {
    RequestIds {
        request_id: None,
        traceparent: Some(HeaderValue::from_static(traceparent)),
        tracestate: tracestate.map(HeaderValue::from_static),
    }
}

#[test]
fn the_callers_span_becomes_the_remote_parent() {
    let ids = ids(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("vendor=abc,other=1"),
    );
    let parent = parent_context(Ids::Read(&ids));
    let context = parent.span().span_context().clone();
    assert_eq!(
        context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
    );
    assert_eq!(
        context.span_id(),
        SpanId::from_hex("00f067aa0ba902b7").expect("hex")
    );
    assert!(context.is_remote());
    assert!(context.is_sampled());
    assert_eq!(context.trace_state().get("vendor"), Some("abc"));
}

#[test]
fn an_unsampled_caller_stays_unsampled_and_unknown_flags_are_dropped() {
    let ids = ids(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe",
        Some("not a valid state"),
    );
    let parent = parent_context(Ids::Read(&ids));
    let context = parent.span().span_context().clone();
    assert!(context.is_valid());
    assert!(!context.is_sampled());
    assert_eq!(context.trace_flags(), TraceFlags::default());
    assert_eq!(context.trace_state().header(), "");
}

#[test]
fn no_or_malformed_traceparent_makes_a_root() {
    assert!(!parent_context(Ids::None).has_active_span());
    assert!(!parent_context(Ids::Read(&RequestIds::default())).has_active_span());
    let bad = ids(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        None,
    );
    assert!(!parent_context(Ids::Read(&bad)).has_active_span());
}
