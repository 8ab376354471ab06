//! Traces through the real binary: `spillway serve --otlp-endpoint` exports to a real OTLP/gRPC
//! collector (`spillway_testkit::otlp`), and the decision's span joins the caller's trace
//! (same trace id, the caller's span as parent) whether the request came over HTTP
//! (`/v1/check`, `/v1/authorize`) or over Envoy's gRPC service, with a child span for the store
//! call. Without the flag nothing is exported, even with the SDK's own variables set.

mod common;

use common::{Server, PATIENCE};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use spillway_testkit::otlp::{any_value::Value, Collector, Received};
use std::time::Duration;

/// Two requests per tenant and user a minute.
const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [tenant, user]
tiers:
  free:
    limits: [user-minute]
"#;

const SPAN_ID: &str = "00f067aa0ba902b7";

/// A server exporting to `collector`, flushing every 50 ms instead of every 5 s.
fn traced(collector: &Collector) -> common::ServerBuilder {
    Server::with_policy(POLICY)
        .args(&[
            "--otlp-endpoint",
            &collector.endpoint(),
            "--node-name",
            "node-a",
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
}

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{SPAN_ID}-01")
}

/// The decision span of trace `trace`, and its store-call child.
fn decision_and_store(collector: &Collector, trace: &str) -> (Received, Received) {
    let decision = collector
        .wait_for(PATIENCE, |s| {
            s.span.name == "spillway.decision" && s.trace_id() == trace
        })
        .unwrap_or_else(|| panic!("no decision span in trace {trace}: {:?}", collector.spans()));
    let store = collector
        .wait_for(PATIENCE, |s| {
            s.span.name == "spillway.store.check" && s.trace_id() == trace
        })
        .unwrap_or_else(|| panic!("no store span in trace {trace}: {:?}", collector.spans()));
    (decision, store)
}

fn string(span: &Received, key: &str) -> String {
    match span.attribute(key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn int(span: &Received, key: &str) -> i64 {
    match span.attribute(key) {
        Some(Value::IntValue(n)) => *n,
        other => panic!("{key}: {other:?}"),
    }
}

fn boolean(span: &Received, key: &str) -> bool {
    match span.attribute(key) {
        Some(Value::BoolValue(b)) => *b,
        other => panic!("{key}: {other:?}"),
    }
}

/// The checks every decision span passes: the caller's trace and parent, the resource, and a
/// store-call child of this span.
fn assert_joined(decision: &Received, store: &Received, trace: &str) {
    assert_eq!(decision.trace_id(), trace);
    assert_eq!(
        decision.parent_span_id(),
        SPAN_ID,
        "parent = the caller's span"
    );
    assert_eq!(decision.span.kind, 2, "SERVER");
    assert_eq!(
        decision.resource_attribute("service.name"),
        Some(&Value::StringValue("spillway".into()))
    );
    assert_eq!(
        decision.resource_attribute("service.instance.id"),
        Some(&Value::StringValue("node-a".into()))
    );
    assert_eq!(store.trace_id(), trace);
    assert_eq!(
        store.parent_span_id(),
        decision.span_id(),
        "child of the decision"
    );
    assert_eq!(store.span.kind, 3, "CLIENT");
    assert_eq!(string(store, "spillway.store"), "memory");
    assert_eq!(int(store, "spillway.store.checks"), 1);
    assert_eq!(string(decision, "spillway.limit"), "user-minute");
    assert!(!boolean(decision, "spillway.degraded"));
    match decision.attribute("spillway.limits") {
        Some(Value::ArrayValue(array)) => {
            let names: Vec<_> = array
                .values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(names, ["user-minute"]);
        }
        other => panic!("spillway.limits: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_decisions_join_the_callers_trace() {
    let collector = Collector::start();
    let server = traced(&collector).start();

    // /v1/check, twice in one trace (allowed, remaining 1 then 0), then denied in another.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let check = |trace: &str| {
        server
            .http
            .post(server.url("/v1/check"))
            .header("traceparent", traceparent(trace))
            .header("tracestate", "gw=1")
            .body(r#"{"tenant":"acme","user":"alice"}"#)
            .send()
    };
    assert_eq!(check(trace).await.expect("check").status(), 200);
    let (decision, store) = decision_and_store(&collector, trace);
    assert_joined(&decision, &store, trace);
    assert_eq!(decision.span.trace_state, "gw=1", "tracestate carried on");
    assert_eq!(string(&decision, "spillway.outcome"), "allowed");
    assert_eq!(int(&decision, "spillway.remaining"), 1);
    assert_eq!(string(&decision, "spillway.tenant"), "acme");
    assert!(boolean(&store, "spillway.allowed"));

    let denied_trace = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(check(denied_trace).await.expect("check").status(), 200);
    assert_eq!(check(denied_trace).await.expect("check").status(), 429);
    let denied = collector
        .wait_for(PATIENCE, |s| {
            s.span.name == "spillway.decision"
                && s.trace_id() == denied_trace
                && matches!(s.attribute("spillway.outcome"), Some(Value::StringValue(o)) if o == "denied")
        })
        .expect("a denied decision span");
    assert_eq!(int(&denied, "spillway.remaining"), 0);
    assert!(int(&denied, "spillway.retry_after_ms") > 0);

    // /v1/authorize reads the same headers from the proxy's subrequest.
    let authorize_trace = "11112222333344445555666677778888";
    let answer = server
        .http
        .get(server.url("/v1/authorize"))
        .header("traceparent", traceparent(authorize_trace))
        .header("x-tenant-id", "acme")
        .header("x-user-id", "bob")
        .send()
        .await
        .expect("authorize");
    assert_eq!(answer.status(), 200);
    let (decision, store) = decision_and_store(&collector, authorize_trace);
    assert_joined(&decision, &store, authorize_trace);
    assert_eq!(string(&decision, "spillway.outcome"), "allowed");

    // A request without traceparent is a root of its own trace (sampled at --trace-sample 1).
    let before = collector.spans().len();
    let root = server
        .post("/v1/check", r#"{"tenant":"acme","user":"carol"}"#)
        .await;
    assert_eq!(root.status(), 200);
    let root = collector
        .wait_for(PATIENCE, |s| {
            s.span.name == "spillway.decision"
                && matches!(s.attribute("spillway.tenant"), Some(Value::StringValue(t)) if t == "acme")
                && s.parent_span_id().is_empty()
        })
        .unwrap_or_else(|| panic!("a root decision span; had {before} spans"));
    assert_eq!(root.trace_id().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_decisions_join_the_callers_trace() {
    let collector = Collector::start();
    let mut rls = common::grpc::start(traced(&collector), &[]).await;
    let trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let mut request = tonic::Request::new(RateLimitRequest {
        domain: "spillway".into(),
        descriptors: vec![common::grpc::descriptor(&[
            ("tenant", "acme"),
            ("user", "dave"),
        ])],
        hits_addend: 0,
    });
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        traceparent(trace).parse().expect("metadata value"),
    );
    metadata.insert("tracestate", "envoy=7".parse().expect("metadata value"));
    let answer = rls
        .client
        .should_rate_limit(request)
        .await
        .expect("a gRPC answer")
        .into_inner();
    assert_eq!(common::grpc::overall(&answer), Code::Ok);
    let (decision, store) = decision_and_store(&collector, trace);
    assert_joined(&decision, &store, trace);
    assert_eq!(decision.span.trace_state, "envoy=7");
    assert_eq!(string(&decision, "spillway.outcome"), "allowed");
    assert_eq!(int(&decision, "spillway.remaining"), 1);
    assert_eq!(string(&decision, "spillway.tier"), "spillway", "the domain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let collector = Collector::start();
    // The SDK's own variables do not turn traces on: only --otlp-endpoint does.
    let server = Server::with_policy(POLICY)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &collector.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start();
    for _ in 0..3 {
        server
            .http
            .post(server.url("/v1/check"))
            .header(
                "traceparent",
                traceparent("4bf92f3577b34da6a3ce929d0e0e4736"),
            )
            .body(r#"{"tenant":"acme","user":"erin"}"#)
            .send()
            .await
            .expect("check");
    }
    // Ten export periods of the traced servers above.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(collector.exports(), 0);
    assert!(collector.spans().is_empty());
    assert!(!server.logs().iter().any(|l| l.contains("traces on")));
}
