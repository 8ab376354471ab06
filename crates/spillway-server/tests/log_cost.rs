//! What the decision log costs a gRPC decision whose record it does not keep: nothing it
//! has to allocate. The Envoy service answers `ShouldRateLimit` calls in-process (the same
//! `Rls::answer` both gRPC paths call, on the in-memory store, as `bench/grpc.sh` loads it:
//! one Envoy domain, every call allowed), and a counting allocator compares the allocations
//! per call with the log off and with the log on but sampling no allowed decision. The call's
//! metadata carries `x-request-id` and `traceparent`, so reading them up front would show.
//!
//! The allocator counts per thread (the calls run on this test's thread), so the log's writer
//! or anything else running meanwhile does not disturb the count.

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use spillway_core::engine::Engine;
use spillway_core::envoy_config::EnvoyConfig;
use spillway_core::store::{MemoryStore, Store};
use spillway_server::cli::{Cli, Command};
use spillway_server::clock::ServerClock;
use spillway_server::config::{PolicySource, ServerSettings};
use spillway_server::grpc::service::Rls;
use spillway_server::grpc::RlsState;
use spillway_server::state::{AppState, PolicyInfo};
use spillway_server::telemetry::decision_log::privacy::{IpMode, IpPrivacy};
use spillway_server::telemetry::decision_log::settings::{Rotation, DEFAULT_STREAM};
use spillway_server::telemetry::decision_log::{DecisionLog, DecisionLogSettings, Ids, SinkSpec};
use spillway_testkit::alloc::{thread_allocations, Counting};
use std::sync::Arc;
use std::time::Duration;

// Counts this thread's allocations (see `allocations`).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    thread_allocations()
}

const ENVOY: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 100000000}\n";
const POLICY: &str = "default_tier: free\ntiers:\n  free: {}\n";

fn log_settings(sample_allowed: f64) -> DecisionLogSettings {
    DecisionLogSettings {
        sink: SinkSpec::Stdout,
        sample_allowed,
        max_per_second: 1_000,
        ip: IpPrivacy::new(IpMode::Full, None).expect("full addresses"),
        queue: 100_000,
        rotation: Rotation {
            max_size: 1 << 30,
            max_age: Duration::from_secs(3_600),
            keep: 1,
            retention: Duration::from_secs(3_600),
        },
        stream: DEFAULT_STREAM.into(),
        stream_maxlen: 1_000,
        node: "cost".into(),
    }
}

/// `/v1/authorize`'s default settings (unused here, but part of the state).
fn authorize() -> spillway_server::http::settings::AuthorizeSettings {
    use clap::Parser as _;
    let Command::Serve(args) = Cli::parse_from(["spillway", "serve"]).command else {
        unreachable!("serve was asked for");
    };
    ServerSettings::from_args(*args)
        .expect("default settings")
        .authorize
}

/// The service, with the decision log when `log` is given (its writer is not started: kept
/// records wait in the queue).
fn service(log: Option<DecisionLog>) -> Rls {
    let clock = ServerClock::manual(1_800_000_000_000);
    let policy = Arc::new(PolicySource::Builtin.parse(POLICY).expect("policy"));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(100_000, clock.shared()));
    let app = AppState {
        catalog: Arc::new(spillway_server::catalog::CatalogNode::new(
            policy.clone(),
            None,
        )),
        engine: Engine::new(policy, store.clone(), clock.shared()),
        store,
        clock: clock.clone(),
        policy_info: ArcSwap::from_pointee(PolicyInfo {
            source: "test".into(),
            loaded_at: clock.now(),
            limits: 0,
        }),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        authorize: authorize(),
        failover: Arc::new(spillway_server::failure::Failover::new(
            spillway_server::failure::FailureSettings::default(),
            clock.shared(),
        )),
        decision_log: log,
        top: Arc::new(spillway_server::telemetry::top::Top::new("cost")),
        top_board: None,
        tracing: None,
        principals: Default::default(),
        regions: None,
        live: Default::default(),
    };
    let sources = vec![("bench.yaml".to_owned(), ENVOY.to_owned())];
    Rls(Arc::new(RlsState {
        app: Arc::new(app),
        envoy: ArcSwap::from_pointee(EnvoyConfig::from_sources(&sources).expect("envoy config")),
        policy_domain: "spillway".into(),
    }))
}

/// Allocations per call over `calls` calls (after a warm-up that creates the counter).
fn per_call(rls: &Rls, calls: u64) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: "user-0".into(),
            }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 1,
    };
    let mut metadata = http::HeaderMap::new();
    metadata.insert("x-request-id", "req-123".parse().expect("header"));
    metadata.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("header"),
    );
    let call = || {
        let answer = runtime
            .block_on(rls.answer(&request, Ids::Headers(&metadata)))
            .expect("an answer");
        assert_eq!(answer.overall_code, Code::Ok as i32);
    };
    for _ in 0..100 {
        call();
    }
    let before = allocations();
    for _ in 0..calls {
        call();
    }
    (allocations() - before) as f64 / calls as f64
}

#[test]
fn a_record_not_kept_costs_no_allocation() {
    let calls = 2_000;
    let off = per_call(&service(None), calls);
    let (log, _writer) = DecisionLog::new(&log_settings(0.0));
    let on_not_kept = per_call(&service(Some(log)), calls);
    assert_eq!(
        on_not_kept, off,
        "allocations per call: {on_not_kept} with the log on (nothing kept), {off} off"
    );
    // The counter does see the log's work when a record is kept (every allowed decision).
    let (log, _writer) = DecisionLog::new(&log_settings(1.0));
    let on_all_kept = per_call(&service(Some(log)), calls);
    assert!(
        on_all_kept > off,
        "keeping every record allocates: {on_all_kept} vs {off}"
    );
    eprintln!(
        "allocations per call: log off {off}, on and not kept {on_not_kept}, on and all kept {on_all_kept}"
    );
}
