//! The service against a store that is down: failure modes decide the answer.

use super::service::Rls;
use super::RlsState;
use crate::clock::ServerClock;
use crate::failure::{DEGRADED_HEADER, DEGRADED_REASON};
use crate::state::AppState;
use crate::telemetry::decision_log::RequestIds;
use crate::telemetry::trace::{TraceSettings, Tracing};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use spillway_core::envoy_config::EnvoyConfig;
use spillway_testkit::policy::{regions_store, unreachable};
use std::sync::Arc;

use crate::test_support::FailingStore;

const FILES: [&str; 3] = [
    "domain: lenient\nfailure_mode: open\ndescriptors:\n  - {key: user, rate_limit: {unit: second, requests_per_unit: 1}}\n",
    "domain: strict\nfailure_mode: closed\ndescriptors:\n  - {key: user, rate_limit: {unit: second, requests_per_unit: 1}}\n",
    "domain: careful\nfailure_mode: degrade\ndescriptors:\n  - {key: user, rate_limit: {unit: second, requests_per_unit: 3}}\n",
];

fn service() -> Rls {
    service_with(None)
}

fn service_with(tracing: Option<Tracing>) -> Rls {
    service_on(Arc::new(FailingStore::down()), tracing)
}

fn service_on(store: Arc<dyn spillway_core::store::Store>, tracing: Option<Tracing>) -> Rls {
    let app = AppState::for_test(crate::config::BUILTIN_POLICY)
        .clock(ServerClock::manual(1_000))
        .store(store)
        .tracing(tracing)
        .build();
    let sources: Vec<(String, String)> = FILES
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i}.yaml"), t.to_string()))
        .collect();
    Rls(Arc::new(RlsState {
        app: Arc::new(app),
        envoy: ArcSwap::from_pointee(EnvoyConfig::from_sources(&sources).expect("valid")),
        policy_domain: "spillway".into(),
    }))
}

fn ask(domain: &str) -> tonic::Request<RateLimitRequest> {
    tonic::Request::new(RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: "u".into(),
            }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    })
}

#[tokio::test]
async fn an_open_domain_answers_ok_marked_degraded() {
    let answer = service()
        .should_rate_limit(ask("lenient"))
        .await
        .expect("an answer, not an error")
        .into_inner();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(answer.statuses.len(), 1);
    let degraded = &answer.response_headers_to_add[0];
    assert_eq!(
        (degraded.key.as_str(), degraded.value.as_str()),
        (DEGRADED_HEADER, DEGRADED_REASON)
    );
}

/// A node whose queue to the store is full (a flood) answers an `open` domain from its
/// emergency quotas, as `degrade` would: filling the queue must not buy unlimited admission.
#[tokio::test]
async fn an_open_domain_on_a_full_queue_is_held_to_its_emergency_quota() {
    let rls = service_on(
        Arc::new(crate::test_support::FailingStore::full_queue()),
        None,
    );
    let mut codes = Vec::new();
    for _ in 0..3 {
        let answer = rls
            .should_rate_limit(ask("lenient"))
            .await
            .expect("an answer, not an error")
            .into_inner();
        assert_eq!(header(&answer, DEGRADED_HEADER), Some(DEGRADED_REASON));
        codes.push(answer.overall_code);
    }
    // 1 per second over the default 3 expected nodes: 1 per second here.
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    assert_eq!(codes, [ok, over, over]);
}

#[tokio::test]
async fn a_closed_domain_answers_unavailable() {
    let status = service()
        .should_rate_limit(ask("strict"))
        .await
        .expect_err("closed fails");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("fails closed"), "{status:?}");
}

/// The value of header `name` in `answer`, if it was sent.
fn header<'a>(answer: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    answer
        .response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn a_degrade_domain_is_held_to_its_emergency_quota() {
    // 3 per second split over the default 3 expected nodes: 1 per second on this node.
    let rls = service();
    let first = rls
        .should_rate_limit(ask("careful"))
        .await
        .expect("an answer, not an error")
        .into_inner();
    assert_eq!(first.overall_code, Code::Ok as i32);
    assert_eq!(first.statuses[0].code, Code::Ok as i32);
    assert_eq!(first.statuses[0].limit_remaining, 0);
    // The status names the quota that decided, not the configured 3 per second.
    let current = first.statuses[0].current_limit.as_ref().expect("a limit");
    assert_eq!(current.requests_per_unit, 1);
    assert_eq!(current.unit, RateLimitUnit::Second as i32);
    assert_eq!(header(&first, DEGRADED_HEADER), Some(DEGRADED_REASON));

    let second = rls
        .should_rate_limit(ask("careful"))
        .await
        .expect("an answer, not an error")
        .into_inner();
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    assert_eq!(second.statuses.len(), 1);
    assert_eq!(second.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(header(&second, DEGRADED_HEADER), Some(DEGRADED_REASON));
    assert!(
        header(&second, spillway_core::headers::RETRY_AFTER).is_some(),
        "{second:?}"
    );
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A call joins the caller's trace from its metadata (here through the typed entry, whose
/// metadata reaches [`Rls::answer`] as the direct path's headers do); with the store down,
/// the store-call span carries the error and a failover span shows the emergency quota deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_joins_the_callers_trace_through_a_failover() {
    use spillway_testkit::otlp::{any_value::Value, Collector};
    let collector = Collector::start();
    let settings = TraceSettings {
        endpoint: collector.endpoint(),
        tls: None,
        queue: crate::telemetry::trace::settings::DEFAULT_QUEUE,
        sample: 1.0,
        parent_sampling: Default::default(),
        node: "test".into(),
    };
    let (tracing, exporter) = Tracing::start(&settings, "redis").expect("tracing on");
    let rls = service_with(Some(tracing));
    let mut request = ask("careful");
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().expect("metadata"));
    let answer = rls
        .should_rate_limit(request)
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    exporter.finish(std::time::Duration::from_secs(5)).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let wait = std::time::Duration::from_secs(10);
    let named = |name: &'static str| {
        move |s: &spillway_testkit::otlp::Received| s.span.name == name && s.trace_id() == trace
    };
    let decision = collector
        .wait_for_async(wait, named("spillway.decision"))
        .await
        .expect("a decision span");
    assert_eq!(decision.parent_span_id(), "00f067aa0ba902b7");
    let text = |v: &str| Some(Value::StringValue(v.into()));
    assert_eq!(
        decision.attribute("spillway.degraded"),
        Some(&Value::BoolValue(true))
    );
    assert_eq!(
        decision.attribute("spillway.failure_mode").cloned(),
        text("degrade")
    );
    assert_eq!(
        decision.attribute("spillway.outcome").cloned(),
        text("allowed")
    );
    assert_eq!(
        decision.attribute("spillway.remaining"),
        Some(&Value::IntValue(0))
    );

    let store = collector
        .wait_for_async(wait, named("spillway.store.check"))
        .await
        .expect("a store span");
    assert_eq!(store.parent_span_id(), decision.span_id());
    assert_eq!(store.attribute("error.type").cloned(), text("unavailable"));
    assert_eq!(store.attribute("spillway.store").cloned(), text("redis"));
    let status = store.span.status.as_ref().expect("a status");
    assert_eq!(status.code, 2, "ERROR");
    assert!(status.message.contains("connection refused"), "{status:?}");

    let failover = collector
        .wait_for_async(wait, named("spillway.failover"))
        .await
        .expect("a failover span");
    assert_eq!(failover.parent_span_id(), decision.span_id());
    assert_eq!(
        failover.attribute("spillway.failure_mode").cloned(),
        text("degrade")
    );
}

/// With neither tracing nor the decision log on, no trace header is even looked at.
#[test]
fn with_tracing_and_the_log_off_no_trace_header_is_read() {
    let rls = service();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT.parse().expect("header"));
    headers.insert("tracestate", "gw=1".parse().expect("header"));
    let ids = RequestIds::read(&rls.0.app, &headers);
    assert!(ids.traceparent.is_none() && ids.tracestate.is_none() && ids.request_id.is_none());
}

/// With regions, an answer on the policy's domain names the tenant's home region as a header
/// for Envoy to add, next to the verdict, and the tenant's `home` limit is counted there. The
/// home is the catalog's and the tenant is one the hash would keep in `us`, this node's own
/// region: only the catalog sends it to eu, whose store (a real Redis) must hold its counter
/// while the own store holds nothing.
#[tokio::test]
async fn answers_name_the_tenants_home_region_and_it_is_asked() {
    let eu = spillway_testkit::redis::RedisServer::start();
    let policy = |tenants: &str| {
        format!(
            "default_tier: t
{}limits:
  exact: {{algorithm: token_bucket, rate: 10/h, burst: 10, key: [tenant], scope: home}}
tiers:
  t: {{limits: [exact]}}
{tenants}",
            regions_store(&[("us", &unreachable(1)), ("eu", &eu.url())], &[])
        )
    };
    let hashed = AppState::for_test(&policy(""));
    let regions = hashed.policy().regions().expect("regions").clone();
    let tenant = (0..)
        .map(|i| format!("acme{i}"))
        .find(|t| regions.hashed_home(t) == regions.index("us").expect("us"))
        .expect("a tenant the hash keeps in us");
    let clock = ServerClock::manual(1_000);
    let state = AppState::for_test(&policy(&format!(
        "tenants:\n  {tenant}: {{home_region: eu}}\n"
    )))
    .clock(clock.clone());
    let failure = crate::failure::FailureSettings::default();
    let node = crate::region::RegionNode::new(state.policy(), Some("us"), &failure, clock.shared())
        .expect("regions");
    let app = Arc::new(state.failure(failure).regions(node).build());
    let rls = Rls(Arc::new(RlsState {
        app: Arc::clone(&app),
        envoy: ArcSwap::from_pointee(EnvoyConfig::from_sources(&[]).expect("valid")),
        policy_domain: "spillway".into(),
    }));
    let request = || {
        tonic::Request::new(RateLimitRequest {
            domain: "spillway".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "tenant".into(),
                    value: tenant.clone(),
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 1,
        })
    };
    for remaining in [9, 8] {
        let answer = rls
            .should_rate_limit(request())
            .await
            .expect("an answer")
            .into_inner();
        assert_eq!(answer.overall_code, Code::Ok as i32);
        assert_eq!(answer.statuses[0].limit_remaining, remaining);
        let home: Vec<(&str, &str)> = answer
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert!(
            home.contains(&(crate::region::HOME_HEADER, "eu")),
            "{home:?}"
        );
    }
    // Counted in eu's Redis, not in this node's own store.
    let keys = spillway_testkit::redis::command(eu.port(), "DBSIZE");
    assert!(
        keys.as_deref().is_some_and(|k| k != ":0\r\n"),
        "eu holds no counter: {keys:?}"
    );
    assert_eq!(app.store.key_count(), 0, "the own store counted it");
}
