//! Traces through the real binary: `spillway serve --otlp-endpoint` exports to a real OTLP/gRPC
//! collector (`spillway_testkit::otlp`), and the decision's span joins the caller's trace
//! (same trace id, the caller's span as parent) whether the request came over HTTP
//! (`/v1/check`, `/v1/authorize`) or over Envoy's gRPC service, with a child span for the store
//! call. Without the flag nothing is exported, even with the SDK's own variables set.
//!
//! Over TLS: a collector whose certificate comes from the CA of `--otlp-ca-file` receives the
//! spans; one with a certificate nobody trusts receives nothing, and the lost spans are
//! logged and counted. A full queue (`--otlp-queue`) in front of a collector that never
//! answers drops spans and counts them too. The TLS fixtures are in `fixtures/otlp-tls/`.

mod common;

use common::{metric, wait_until_async, Server, PATIENCE};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use spillway_testkit::otlp::{any_value::Value, Collector, Received};

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

/// A caller's `-00` flag keeps its decision out of the traces when followed (the default);
/// with `--trace-parent-sampling ignore` the server's own ratio decides, and the span still
/// joins the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_callers_sampled_flag_can_be_ignored() {
    let unsampled = |trace: &str| format!("00-{trace}-{SPAN_ID}-00");
    for (args, traced_at_all) in [
        (&[][..], false),
        (&["--trace-parent-sampling", "ignore"][..], true),
    ] {
        let collector = Collector::start();
        let server = traced(&collector).args(args).start();
        let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
        let answer = (server.http.post(server.url("/v1/check")))
            .header("traceparent", unsampled(trace))
            .body(r#"{"tenant":"acme","user":"dave"}"#)
            .send()
            .await
            .expect("check");
        assert_eq!(answer.status(), 200);
        if traced_at_all {
            let (decision, store) = decision_and_store(&collector, trace);
            assert_joined(&decision, &store, trace);
        } else {
            // A root after it is exported, so the unsampled one would have been by then.
            let root = server
                .post("/v1/check", r#"{"tenant":"acme","user":"erin"}"#)
                .await;
            assert_eq!(root.status(), 200);
            let seen = collector.wait_for(PATIENCE, |s| s.parent_span_id().is_empty());
            assert!(seen.is_some(), "the root's span");
            assert!(
                collector.spans().iter().all(|s| s.trace_id() != trace),
                "the caller's -00 kept its decision out"
            );
        }
    }
    // Ignored, with a ratio below 1: the caller's trace id does not decide either (the SDK's
    // ratio sampler reads its low bits: all zero always sampled, all ones never).
    let collector = Collector::start();
    let server = traced(&collector)
        .args(&["--trace-parent-sampling", "ignore", "--trace-sample", "0.5"])
        .start();
    let chosen = |i: usize, low: &str| format!("{:016x}{low}", i + 1);
    for (i, low) in (0..40).flat_map(|i| [(i, "0000000000000000"), (i, "ffffffffffffffff")]) {
        let answer = (server.http.post(server.url("/v1/check")))
            .header("traceparent", format!("00-{}-{SPAN_ID}-01", chosen(i, low)))
            .body(r#"{"tenant":"acme","user":"frank"}"#)
            .send()
            .await
            .expect("check");
        assert!(answer.status().is_success() || answer.status() == 429);
    }
    // Exported in order: once a later marker has arrived, so have all of them.
    let marker = "99999999999999999999999999999999";
    for _ in 0..20 {
        let answer = (server.http.post(server.url("/v1/check")))
            .header("traceparent", format!("00-{marker}-{SPAN_ID}-01"))
            .body(r#"{"tenant":"acme","user":"gina"}"#)
            .send()
            .await
            .expect("check");
        assert!(answer.status().is_success() || answer.status() == 429);
    }
    let seen = collector.wait_for(PATIENCE, |s| s.trace_id() == marker);
    assert!(
        seen.is_some(),
        "a marker span (1 in 2^20 to miss by chance)"
    );
    let traced = |low: &str| {
        (0..40)
            .filter(|&i| {
                let trace = chosen(i, low);
                (collector.spans().iter())
                    .any(|s| s.span.name == "spillway.decision" && s.trace_id() == trace)
            })
            .count()
    };
    let (zeros, ones) = (traced("0000000000000000"), traced("ffffffffffffffff"));
    assert!(
        (1..40).contains(&zeros),
        "{zeros} of 40 always-sampled ids traced"
    );
    assert!(
        (1..40).contains(&ones),
        "{ones} of 40 never-sampled ids traced"
    );
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
    // A traced server exports what is queued when it shuts down, so once this one has exited
    // cleanly, nothing can arrive any more.
    let mut server = server;
    server.signal("TERM");
    let status = tokio::task::block_in_place(|| server.wait_exit(PATIENCE)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(collector.exports(), 0);
    assert!(collector.spans().is_empty());
    assert!(!server.logs().iter().any(|l| l.contains("traces on")));
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/otlp-tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// The dropped-span counter for `reason`, once it is at least `at_least`.
async fn dropped_at_least(server: &Server, reason: &str, at_least: f64) -> Option<f64> {
    wait_until_async(PATIENCE, || async {
        let text = server.metrics().await;
        metric(
            &text,
            "spillway_trace_spans_dropped_total",
            &[("reason", reason)],
        )
        .filter(|n| *n >= at_least)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_collector_signed_by_the_ca_file_receives_the_spans() {
    let collector = Collector::start_tls(
        &read_fixture("collector.pem"),
        &read_fixture("collector.key"),
    );
    assert!(collector.endpoint().starts_with("https://"));
    let server = traced(&collector)
        .args(&["--otlp-ca-file", &fixture("ca.pem")])
        .start();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let answer = server
        .http
        .post(server.url("/v1/check"))
        .header("traceparent", traceparent(trace))
        .body(r#"{"tenant":"acme","user":"tls"}"#)
        .send()
        .await
        .expect("check");
    assert_eq!(answer.status(), 200);
    let (decision, store) = decision_and_store(&collector, trace);
    assert_joined(&decision, &store, trace);
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "spillway_trace_spans_dropped_total",
            &[("reason", "export_failed")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_collector_gets_nothing_and_the_loss_is_logged_and_counted() {
    // Signed by a CA that is neither in the webpki roots nor in --otlp-ca-file.
    let collector = Collector::start_tls(&read_fixture("rogue.pem"), &read_fixture("rogue.key"));
    let server = traced(&collector)
        .args(&["--otlp-ca-file", &fixture("ca.pem")])
        .start();
    for user in ["u1", "u2", "u3"] {
        let body = format!(r#"{{"tenant":"acme","user":"{user}"}}"#);
        assert_eq!(server.post("/v1/check", &body).await.status(), 200);
    }
    // Three decisions, each with its store-call child.
    let dropped = dropped_at_least(&server, "export_failed", 6.0).await;
    assert!(dropped.is_some(), "{}", server.metrics().await);
    let text = server.metrics().await;
    assert!(metric(&text, "spillway_trace_export_errors_total", &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        server.wait_for_log("trace export failed").is_some(),
        "{:#?}",
        server.logs()
    );
    assert_eq!(collector.exports(), 0);
    assert!(collector.spans().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_spans_a_silent_collector_cannot_take() {
    // A port that completes TCP handshakes (the listen backlog) but never answers: each export
    // waits for its timeout, and meanwhile the queue of four fills up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("address"));
    let server = Server::with_policy(POLICY)
        .args(&["--otlp-endpoint", &endpoint, "--otlp-queue", "4"])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start();
    for i in 0..20 {
        let body = format!(r#"{{"tenant":"acme","user":"q{i}"}}"#);
        assert_eq!(server.post("/v1/check", &body).await.status(), 200);
    }
    // 40 spans: at most 4 queued plus one batch (at most 4) being exported.
    let full = dropped_at_least(&server, "queue_full", 32.0).await;
    assert!(full.is_some(), "{}", server.metrics().await);
    // The batch stuck in the silent export is lost when its timeout passes.
    let failed = dropped_at_least(&server, "export_failed", 1.0).await;
    assert!(failed.is_some(), "{}", server.metrics().await);
    drop(silent);
}
