//! The decision log end to end inside one process: requests through the real router (and the
//! Envoy service), the real queue, the real writer and file sink, on a manual clock.

use super::record::Line;
use super::settings::{DecisionLogSettings, Rotation, SinkSpec};
use super::*;
use crate::clock::ServerClock;
use crate::grpc::service::Rls;
use crate::grpc::RlsState;
use crate::test_support::FailingStore;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use spillway_core::store::{MemoryStore, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use tower::ServiceExt;

const POLICY: &str = r#"
default_tier: free
failure_mode: open
limits:
  user-minute: {algorithm: fixed_window, limit: 1, window: 1m, key: [user]}
  tenant-shadow: {algorithm: fixed_window, limit: 1, window: 1m, key: [tenant], shadow: true}
tiers:
  free: {limits: [user-minute, tenant-shadow]}
routes:
  - match: "POST /v1/closed"
    failure_mode: closed
  - match: "POST /v1/generate"
    cost: 1
"#;

mod reports;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Harness {
    app: Arc<AppState>,
    router: Router,
    writer: Option<Writer>,
    path: PathBuf,
    settings: DecisionLogSettings,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(name: &str) -> DecisionLogSettings {
    let dir = std::env::temp_dir().join(format!(
        "spillway-decision-log-unit-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    DecisionLogSettings {
        sink: SinkSpec::File(dir.join("decisions.jsonl")),
        sample_allowed: 1.0,
        max_per_second: 1_000,
        ip: IpPrivacy::new(IpMode::Full, None).expect("full"),
        queue: 1_024,
        rotation: Rotation {
            max_size: 1 << 30,
            max_age: Duration::from_secs(86_400),
            keep: 10,
            retention: Duration::from_secs(86_400),
        },
        stream: settings::DEFAULT_STREAM.into(),
        stream_maxlen: 1_000,
        node: "node-t".into(),
    }
}

fn harness(settings: DecisionLogSettings, store: Arc<dyn Store>) -> Harness {
    harness_with(POLICY, settings, store)
}

fn harness_with(policy: &str, settings: DecisionLogSettings, store: Arc<dyn Store>) -> Harness {
    let (log, writer) = DecisionLog::new(&settings);
    let app = Arc::new(
        AppState::for_test(policy)
            .store(store)
            .decision_log(log)
            .build(),
    );
    let router = crate::app::router(app.clone(), None, &Default::default())
        .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
    let SinkSpec::File(path) = settings.sink.clone() else {
        unreachable!("file sink")
    };
    let dir = path.parent().expect("dir").to_path_buf();
    Harness {
        app,
        router,
        writer: Some(writer),
        path,
        settings,
        dir,
    }
}

fn memory(clock_ms: u64) -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(
        10_000,
        ServerClock::manual(clock_ms).shared(),
    ))
}

impl Harness {
    fn log(&self) -> &DecisionLog {
        self.app.decision_log.as_ref().expect("on")
    }

    /// `POST /v1/check` with `body` and extra headers; answered within a second or fails.
    async fn check(&self, body: &str, headers: &[(&str, &str)]) -> StatusCode {
        let mut request = Request::post("/v1/check");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body.to_owned())).expect("request");
        let answer =
            tokio::time::timeout(Duration::from_secs(1), self.router.clone().oneshot(request))
                .await
                .expect("answered promptly")
                .expect("infallible");
        answer.status()
    }

    /// Runs the writer over everything queued so far, and reads the file back.
    async fn flush(&mut self) -> Vec<Line> {
        if let Some(writer) = self.writer.take() {
            let sink =
                Sink::open(&self.settings, None, self.app.clock.shared()).expect("file sink");
            let (stop, stopped) = oneshot::channel();
            let _ = stop.send(());
            writer.run(sink, stopped).await;
        }
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect()
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_never_holds_a_decision() {
    let mut s = settings("full");
    s.queue = 4;
    let mut h = harness(s, memory(1_800_000_000_000));
    // The writer is not running: nothing leaves the queue.
    for i in 0..50 {
        let body = format!(r#"{{"tenant":"t{i}","user":"u{i}"}}"#);
        assert_eq!(h.check(&body, &[]).await, StatusCode::OK);
    }
    let stats = h.log().stats();
    assert_eq!((stats.queued, stats.dropped_full), (4, 46), "{stats:?}");
    let lines = h.flush().await;
    assert_eq!(lines.len(), 4);
    assert_eq!(h.log().stats().written, 4);
}

#[tokio::test]
async fn a_denial_is_logged_with_everything_support_needs() {
    let mut s = settings("denial");
    s.sample_allowed = 0.0;
    let mut h = harness(s, memory(1_800_000_000_000));
    let body = r#"{"tenant":"acme","user":"alice","ip":"203.0.113.7","method":"POST","path":"/v1/generate"}"#;
    assert_eq!(h.check(body, &[]).await, StatusCode::OK);
    let headers = [("x-request-id", "req-42"), ("traceparent", TRACEPARENT)];
    assert_eq!(h.check(body, &headers).await, StatusCode::TOO_MANY_REQUESTS);
    let lines = h.flush().await;
    assert_eq!(lines.len(), 1, "the allowed one is not sampled: {lines:?}");
    let l = &lines[0];
    assert_eq!(l.time, "2027-01-15T08:00:00.000Z");
    assert_eq!(l.node, "node-t");
    assert_eq!(l.request_id.as_deref(), Some("req-42"));
    assert_eq!(
        l.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!((l.outcome, l.allowed), (record::Kind::Denied, false));
    assert_eq!(l.tenant.as_deref(), Some("acme"));
    assert_eq!(l.user.as_deref(), Some("alice"));
    assert_eq!(l.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(l.route.as_deref(), Some("POST /v1/generate"));
    assert_eq!(l.tier.as_deref(), Some("free"));
    assert_eq!(l.cost, 1);
    let limit = l.limit.as_ref().expect("governing limit");
    assert_eq!(
        (
            limit.name.as_str(),
            limit.remaining,
            limit.quota,
            limit.window_ms
        ),
        ("user-minute", 0, 1, 60_000)
    );
    assert_eq!(l.retry_after_ms, Some(60_000));
    assert_eq!(l.degraded, None);
    assert_eq!(l.policy_version, "test.yaml@2027-01-15T08:00:00.000Z");
    assert_eq!(l.catalog_version, None);
    assert_eq!(l.sample_rate, 1.0);
    // Every field is written, null or not, so collectors see one shape.
    let text = h.text();
    for field in ["\"catalog_version\":null", "\"degraded\":null"] {
        assert!(text.contains(field), "{text}");
    }
}

#[tokio::test]
async fn allowed_decisions_follow_the_sample_rate_and_carry_it() {
    for (rate, expect) in [(0.0, Some(0)), (1.0, Some(40)), (0.5, None)] {
        let mut s = settings(&format!("sample-{rate}"));
        s.sample_allowed = rate;
        let mut h = harness(s, memory(1_800_000_000_000));
        for i in 0..40 {
            let body = format!(r#"{{"tenant":"t{i}","user":"u{i}"}}"#);
            assert_eq!(h.check(&body, &[]).await, StatusCode::OK);
        }
        let lines = h.flush().await;
        match expect {
            Some(n) => assert_eq!(lines.len(), n, "rate {rate}"),
            None => assert!(
                (1..40).contains(&lines.len()),
                "rate {rate}: {}",
                lines.len()
            ),
        }
        for l in &lines {
            assert_eq!((l.outcome, l.sample_rate), (record::Kind::Allowed, rate));
        }
    }
}

#[tokio::test]
async fn denials_are_capped_per_second_of_the_server_clock() {
    let mut s = settings("cap");
    s.max_per_second = 3;
    s.sample_allowed = 0.0;
    let mut h = harness(s, memory(1_800_000_000_000));
    let body = r#"{"tenant":"acme","user":"alice"}"#;
    assert_eq!(h.check(body, &[]).await, StatusCode::OK);
    // Three under the cap, and the counter's first past it in the second.
    for _ in 0..10 {
        assert_eq!(h.check(body, &[]).await, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(h.log().stats().capped, 6);
    let control = h.app.clock.manual_control().expect("manual");
    control.advance(999_999);
    assert_eq!(h.check(body, &[]).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.log().stats().capped, 7, "still the same second");
    control.advance(1);
    for _ in 0..10 {
        assert_eq!(h.check(body, &[]).await, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(h.log().stats().capped, 13);
    let lines = h.flush().await;
    assert_eq!(lines.len(), 8);
    assert!(lines.iter().all(|l| l.outcome == record::Kind::Denied));
}

/// A client filling the cap with its own denials at the start of each second does not keep
/// another counter's denial out of the log (nor out of the dashboard's recent decisions).
#[tokio::test]
async fn a_flood_of_denials_does_not_blind_the_log_to_another_tenant() {
    let mut s = settings("fair");
    s.max_per_second = 5;
    s.sample_allowed = 0.0;
    let mut h = harness(s, memory(1_800_000_000_000));
    let noise = r#"{"tenant":"noise","user":"n"}"#;
    // Two others, each denied once: a seeded hash puts one in the flood's bucket 1 time in
    // 4,096, both about 1 in 17 million.
    let others = [
        r#"{"tenant":"victim-1","user":"a"}"#,
        r#"{"tenant":"victim-2","user":"b"}"#,
    ];
    for other in others {
        assert_eq!(h.check(other, &[]).await, StatusCode::OK);
    }
    assert_eq!(h.check(noise, &[]).await, StatusCode::OK);
    for _ in 0..20 {
        assert_eq!(h.check(noise, &[]).await, StatusCode::TOO_MANY_REQUESTS);
    }
    let control = h.app.clock.manual_control().expect("manual");
    control.advance(500_000);
    for other in others {
        assert_eq!(h.check(other, &[]).await, StatusCode::TOO_MANY_REQUESTS);
    }
    let lines = h.flush().await;
    let logged = |tenant: &str| lines.iter().any(|l| l.tenant.as_deref() == Some(tenant));
    assert!(
        logged("victim-1") || logged("victim-2"),
        "the other tenants' denials were capped out"
    );
    let recent = |tenant| !h.log().recent().of(tenant, None, 1).is_empty();
    assert!(recent("victim-1") || recent("victim-2"));
    // The flood's own records past the cap: its first of each second, no more.
    let noisy = lines
        .iter()
        .filter(|l| l.tenant.as_deref() == Some("noise"))
        .count();
    assert_eq!(noisy, 6, "five under the cap and its first past it");
}

#[tokio::test]
async fn truncate_and_hash_keep_the_address_out_of_the_log() {
    let secret = "a deployment secret";
    for mode in [IpMode::Full, IpMode::Truncate, IpMode::Hash] {
        let mut s = settings(&format!("ip-{mode:?}"));
        s.ip = IpPrivacy::new(mode, Some(secret)).expect("valid");
        let mut h = harness(s, memory(1_800_000_000_000));
        for (tenant, ip) in [
            ("a", "203.0.113.77"),
            ("b", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
        ] {
            let body = format!(r#"{{"tenant":"{tenant}","user":"u{tenant}","ip":"{ip}"}}"#);
            assert_eq!(h.check(&body, &[]).await, StatusCode::OK);
        }
        let request = Request::get("/v1/authorize")
            .header("x-user-id", "proxied")
            .body(Body::empty())
            .expect("request");
        let answer = h.router.clone().oneshot(request).await.expect("infallible");
        assert_eq!(answer.status(), StatusCode::OK);
        let lines = h.flush().await;
        assert_eq!(lines.len(), 3);
        let text = h.text();
        let shown: Vec<&str> = lines.iter().filter_map(|l| l.ip.as_deref()).collect();
        match mode {
            IpMode::Full => {
                assert_eq!(
                    shown,
                    [
                        "203.0.113.77",
                        "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                        "192.0.2.1"
                    ]
                );
            }
            IpMode::Truncate => {
                assert_eq!(
                    shown,
                    ["203.0.113.0/24", "2001:db8:1:2::/64", "192.0.2.0/24"]
                );
            }
            IpMode::Hash => {
                assert!(shown.iter().all(|s| s.starts_with("h:") && s.len() == 34));
            }
        }
        if mode != IpMode::Full {
            for address in ["203.0.113.77", "aaaa:bbbb", "192.0.2.1"] {
                assert!(!text.contains(address), "{mode:?}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn shadow_denials_degraded_and_refused_decisions_are_logged() {
    let mut s = settings("kinds");
    s.sample_allowed = 0.0;
    let mut h = harness(s, memory(1_800_000_000_000));
    assert_eq!(
        h.check(r#"{"tenant":"acme","user":"a"}"#, &[]).await,
        StatusCode::OK
    );
    assert_eq!(
        h.check(r#"{"tenant":"acme","user":"b"}"#, &[]).await,
        StatusCode::OK
    );
    let lines = h.flush().await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].outcome, record::Kind::ShadowDenied);
    assert!(lines[0].allowed);
    assert_eq!(
        lines[0].limit.as_ref().map(|l| l.name.as_str()),
        Some("tenant-shadow")
    );

    let mut s = settings("down");
    s.sample_allowed = 0.0;
    let mut h = harness(s, Arc::new(FailingStore::down()));
    assert_eq!(h.check(r#"{"user":"a"}"#, &[]).await, StatusCode::OK);
    let closed = r#"{"user":"a","method":"POST","path":"/v1/closed"}"#;
    assert_eq!(h.check(closed, &[]).await, StatusCode::SERVICE_UNAVAILABLE);
    let lines = h.flush().await;
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0].outcome,
            lines[0].degraded.as_deref(),
            lines[0].allowed
        ),
        (record::Kind::Degraded, Some("open"), true)
    );
    assert_eq!(
        (
            lines[1].outcome,
            lines[1].degraded.as_deref(),
            lines[1].allowed
        ),
        (record::Kind::Refused, Some("closed"), false)
    );
    assert_eq!(lines[1].route.as_deref(), Some("POST /v1/closed"));
    assert!(lines[1].retry_after_ms.is_some_and(|ms| ms > 0));
}

/// Asks the Envoy service on the policy domain `request` twice with `headers` (the second
/// call is denied: the policy's user limit is 1), and reads back what the log wrote.
async fn envoy_twice(
    h: &mut Harness,
    request: &RateLimitRequest,
    headers: &axum::http::HeaderMap,
) -> Vec<Line> {
    let rls = Rls(Arc::new(RlsState {
        app: h.app.clone(),
        envoy: ArcSwap::from_pointee(
            spillway_core::envoy_config::EnvoyConfig::from_sources(&[]).expect("empty"),
        ),
        policy_domain: "spillway".into(),
    }));
    for _ in 0..2 {
        rls.answer(request, Ids::Headers(headers))
            .await
            .expect("answered");
    }
    h.flush().await
}

#[tokio::test]
async fn envoy_calls_log_their_domain_and_descriptors() {
    // Envoy's address alone, or as a network (`masked_remote_address`, a /32 being a host).
    for (key, value) in [
        ("remote_address", "203.0.113.77"),
        ("masked_remote_address", "203.0.113.77/32"),
    ] {
        let mut s = settings("envoy");
        s.sample_allowed = 0.0;
        s.ip = IpPrivacy::new(IpMode::Truncate, None).expect("truncate");
        let mut h = harness(s, memory(1_800_000_000_000));
        let entry = |key: &str, value: &str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let request = RateLimitRequest {
            domain: "spillway".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    entry("tenant", "acme"),
                    entry("user", "alice"),
                    entry(key, value),
                ],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-request-id", "envoy-7".parse().expect("value"));
        let lines = envoy_twice(&mut h, &request, &headers).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l.outcome, record::Kind::Denied);
        assert_eq!(
            (l.domain.as_deref(), l.tier.as_deref()),
            (Some("spillway"), None)
        );
        assert_eq!(l.tenant.as_deref(), Some("acme"));
        assert_eq!(l.user.as_deref(), Some("alice"));
        assert_eq!(l.ip.as_deref(), Some("203.0.113.0/24"), "{key}");
        assert_eq!(l.request_id.as_deref(), Some("envoy-7"));
        assert_eq!(l.descriptors.len(), 1);
        assert_eq!(
            l.descriptors[0].get(key).map(String::as_str),
            Some("203.0.113.0/24")
        );
        assert!(!h.text().contains("203.0.113.77"), "{key}");
    }
}

/// What a gRPC caller puts in its descriptors and request id is kept to
/// [`record::FIELD_BYTES`] a text and [`record::DESCRIPTORS`] descriptors of
/// [`record::DESCRIPTOR_PAIRS`] entries when the request path copies it: a call of megabyte
/// values (a few kilobytes gzip'd) queued whole records of megabytes, up to
/// `--decision-log-queue` of them. (Kilobytes here stand for the megabytes.) A descriptor
/// giving hits back names no tenant in the record, and takes no place in its list.
#[tokio::test]
async fn a_record_keeps_a_bounded_part_of_what_a_call_carries() {
    let mut s = settings("bounded");
    s.sample_allowed = 0.0;
    let mut h = harness(s, memory(1_800_000_000_000));
    let entry = |key: String, value: String| Entry { key, value };
    // Two-byte characters, so a cut must find a character boundary.
    let big = "é".repeat(1000);
    let mut back = RateLimitDescriptor {
        entries: vec![entry("tenant".into(), "victim".into())],
        ..Default::default()
    };
    back.is_negative_hits = true;
    let mut entries = vec![
        entry("tenant".into(), big.clone()),
        entry("user".into(), "alice".into()),
        entry("remote_address".into(), "203.0.113.77".into()),
    ];
    entries.extend((0..20).map(|i| entry(format!("k{i:02}{big}"), big.clone())));
    let mut descriptors = vec![back];
    descriptors.extend((0..20).map(|_| RateLimitDescriptor {
        entries: entries.clone(),
        ..Default::default()
    }));
    let request = RateLimitRequest {
        domain: "spillway".into(),
        descriptors,
        hits_addend: 0,
    };
    let mut headers = axum::http::HeaderMap::new();
    let long_id = "r".repeat(60 * 1024);
    headers.insert("x-request-id", long_id.parse().expect("value"));
    let lines = envoy_twice(&mut h, &request, &headers).await;
    assert_eq!(lines.len(), 1, "the denial");
    let l = &lines[0];
    assert_eq!(
        l.request_id.as_deref(),
        Some(&long_id[..record::FIELD_BYTES])
    );
    let tenant = l.tenant.as_deref().expect("a tenant");
    assert!(tenant.len() <= record::FIELD_BYTES && tenant.len() >= 254);
    assert!(big.starts_with(tenant), "the tenant's first bytes");
    assert_eq!(l.descriptors.len(), record::DESCRIPTORS);
    assert!(
        l.descriptors
            .iter()
            .all(|d| !d.values().any(|v| v == "victim")),
        "the descriptor giving hits back is not listed"
    );
    let mut bytes = 0;
    for d in &l.descriptors {
        assert!(d.len() <= record::DESCRIPTOR_PAIRS, "{}", d.len());
        for (k, v) in d {
            assert!(k.len() <= record::FIELD_BYTES && v.len() <= record::FIELD_BYTES);
            bytes += k.len() + v.len();
        }
    }
    // And a few kilobytes in all, not 8 x 8 x 2 x 256.
    assert!(
        bytes <= record::DESCRIPTOR_BYTES,
        "{bytes} bytes of descriptors"
    );
    assert!(h.text().len() < 100 * 1024, "{} bytes", h.text().len());
}
