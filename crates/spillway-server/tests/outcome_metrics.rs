//! Decisions by route and outcome (`spillway_route_decisions_total`) and failed script calls by
//! kind (`spillway_script_errors_total`) through the real binary: over HTTP and Envoy's gRPC
//! on the in-memory store (labels only from configuration, whatever paths or domains clients
//! send), and on a real `redis-server` that is killed, frozen, demoted to a replica, or holds a
//! value of the wrong type where a counter should be.
//!
//! Each kind is asserted on its own, against the fault that causes it, so a label swapped for
//! another fails here.

mod common;

use common::{metric, Server};
use spillway_testkit::redis::{command, RedisServer};

const ROUTE_DECISIONS: &str = "spillway_route_decisions_total";
const SCRIPT_ERRORS: &str = "spillway_script_errors_total";

/// Two requests an hour per user; one route pattern with a wildcard segment.
const ONE_PATTERN: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 2
    window: 1h
    key: [user]
tiers:
  free:
    limits: [per-user]
routes:
  - match: "POST /v1/items/*"
"#;

async fn status(server: &Server, user: &str, path: &str) -> u16 {
    let body = format!(r#"{{"user":"{user}","method":"POST","path":"{path}"}}"#);
    server.post("/v1/check", &body).await.status().as_u16()
}

/// `spillway_route_decisions_total{route, outcome}`, 0 when the series is absent.
fn route_count(text: &str, route: &str, outcome: &str) -> f64 {
    metric(
        text,
        ROUTE_DECISIONS,
        &[("route", route), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Every `route` label value of `spillway_route_decisions_total` in `text`.
fn route_labels(text: &str) -> Vec<String> {
    let mut routes: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{ROUTE_DECISIONS}{{")))
        .filter_map(|l| {
            let start = l.find("route=\"")? + "route=\"".len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

#[tokio::test]
async fn decisions_count_under_the_route_pattern_never_the_raw_path() {
    let server = Server::with_policy(ONE_PATTERN).start();
    // Three raw paths (one spelled in another case) match the one pattern: two admitted,
    // then the user's limit denies.
    assert_eq!(status(&server, "u1", "/v1/items/alpha-1").await, 200);
    assert_eq!(status(&server, "u1", "/v1/items/beta-2").await, 200);
    assert_eq!(status(&server, "u1", "/V1/ITEMS/gamma-3").await, 429);
    // Paths no route matches count under `(none)`, however many a client invents.
    for (i, want) in [200, 200, 429, 429].into_iter().enumerate() {
        assert_eq!(status(&server, "u2", &format!("/minted-{i}/x")).await, want);
    }
    let text = server.metrics().await;
    let pattern = "POST /v1/items/*";
    assert_eq!(route_count(&text, pattern, "allowed"), 2.0, "{text}");
    assert_eq!(route_count(&text, pattern, "denied"), 1.0, "{text}");
    assert_eq!(route_count(&text, "(none)", "allowed"), 2.0, "{text}");
    assert_eq!(route_count(&text, "(none)", "denied"), 2.0, "{text}");
    assert_eq!(
        route_labels(&text),
        ["(none)", pattern],
        "only configured values label the series"
    );
    for raw in ["alpha-1", "beta-2", "gamma-3", "minted-"] {
        assert!(
            !text.contains(raw),
            "a raw path reached /metrics ({raw}):\n{text}"
        );
    }
}

/// An Envoy domain with one descriptor: a user may send one request a minute.
const SHOP: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

#[tokio::test]
async fn envoy_decisions_count_under_configured_domains_only() {
    use common::grpc::{envoy_file, overall, start};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(ONE_PATTERN), &[&shop]).await;
    assert_eq!(overall(&rls.one("shop", &[("user", "u1")]).await), Code::Ok);
    assert_eq!(
        overall(&rls.one("shop", &[("user", "u1")]).await),
        Code::OverLimit
    );
    // A domain no configuration names is not limited, and names no series.
    for i in 0..3 {
        let answer = rls.one(&format!("minted-{i}"), &[("user", "u1")]).await;
        assert_eq!(overall(&answer), Code::Ok);
    }
    let text = rls.server.metrics().await;
    assert_eq!(route_count(&text, "shop", "allowed"), 1.0, "{text}");
    assert_eq!(route_count(&text, "shop", "denied"), 1.0, "{text}");
    assert_eq!(route_labels(&text), ["shop"], "{text}");
    assert!(!text.contains("minted-"), "{text}");
}

/// Three routes, one per failure mode, on `redis` with a 1 s budget (long enough that a
/// loaded machine does not turn a healthy call into a failure); the breaker opens
/// after two failures and, on the manual clock, stays open for the rest of the test.
fn three_modes(redis: &RedisServer, prefix: &str) -> String {
    format!(
        r#"
default_tier: free
limits:
  roomy:
    algorithm: fixed_window
    limit: 1000
    window: 1h
    key: [user]
    emergency: {{limit: 2}}
tiers:
  free:
    limits: []
routes:
  - match: "POST /open"
    failure_mode: open
    limits: [roomy]
  - match: "POST /closed"
    failure_mode: closed
    limits: [roomy]
  - match: "POST /degrade"
    failure_mode: degrade
    limits: [roomy]
store: {{type: redis, url: "{}", prefix: {prefix}, timeout: 1s, breaker_failures: 2, breaker_cooldown: 1h}}
"#,
        redis.url()
    )
}

/// Each failed script call kind, as `/metrics` shows it now.
async fn script_errors(server: &Server) -> [f64; 4] {
    let text = server.metrics().await;
    ["noscript", "timeout", "connection", "other"]
        .map(|kind| metric(&text, SCRIPT_ERRORS, &[("kind", kind)]).unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_counts_degraded_and_refused_decisions_per_route_and_connection_errors() {
    let mut redis = RedisServer::start();
    let server = Server::with_policy(&three_modes(&redis, "dead")).start();
    for path in ["/open", "/closed", "/degrade"] {
        assert_eq!(status(&server, "before", path).await, 200);
    }
    let before = script_errors(&server).await;
    redis.kill();
    // A user of its own per route, so no route's fallback touches another's emergency count.
    for path in ["/open", "/closed", "/degrade"] {
        for _ in 0..4 {
            status(&server, &format!("during{path}"), path).await;
        }
    }
    let text = server.metrics().await;
    let count = |route: &str, outcome: &str| route_count(&text, route, outcome);
    // Before the outage every route's decision was the store's own.
    for route in ["POST /open", "POST /closed", "POST /degrade"] {
        assert_eq!(count(route, "allowed"), 1.0, "{route}\n{text}");
        assert_eq!(count(route, "denied"), 0.0, "{route}\n{text}");
    }
    // `open` lets every request through marked degraded; `closed` refuses every one; `degrade`
    // admits the emergency quota (2) and denies the rest.
    assert_eq!(count("POST /open", "degraded_allowed"), 4.0, "{text}");
    assert_eq!(count("POST /open", "refused"), 0.0, "{text}");
    assert_eq!(count("POST /closed", "refused"), 4.0, "{text}");
    assert_eq!(count("POST /closed", "degraded_allowed"), 0.0, "{text}");
    assert_eq!(count("POST /degrade", "degraded_allowed"), 2.0, "{text}");
    assert_eq!(count("POST /degrade", "degraded_denied"), 2.0, "{text}");
    assert_eq!(count("POST /degrade", "refused"), 0.0, "{text}");

    // The call that met the closed connection failed as a connection error (the next one,
    // waiting for a reconnect, as a timeout: a server that refuses cleanly is below).
    let after = script_errors(&server).await;
    let [_, _, connection_before, other_before] = before;
    let [_, _, connection, other] = after;
    assert!(connection > connection_before, "{before:?} -> {after:?}");
    assert_eq!(other, other_before, "{before:?} -> {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_counts_timeouts_not_connection_errors() {
    let redis = RedisServer::start();
    let server = Server::with_policy(&three_modes(&redis, "frozen")).start();
    assert_eq!(status(&server, "before", "/open").await, 200);
    let before = script_errors(&server).await;
    redis.freeze();
    for _ in 0..3 {
        assert_eq!(status(&server, "during", "/open").await, 200);
    }
    let after = script_errors(&server).await;
    redis.resume();
    let [_, timeout_before, connection_before, other_before] = before;
    let [_, timeout, connection, other] = after;
    assert!(timeout > timeout_before, "{before:?} -> {after:?}");
    assert_eq!(connection, connection_before, "{before:?} -> {after:?}");
    assert_eq!(other, other_before, "{before:?} -> {after:?}");
    let text = server.metrics().await;
    assert!(
        route_count(&text, "POST /open", "degraded_allowed") >= 1.0,
        "{text}"
    );
}

/// A server demoted to a replica (as a failover does to the old master) is there but refuses
/// the script's writes with `READONLY` at once: a connection error, never a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_store_counts_connection_errors_not_timeouts() {
    let redis = RedisServer::start();
    let server = Server::with_policy(&three_modes(&redis, "demoted")).start();
    assert_eq!(status(&server, "before", "/open").await, 200);
    let before = script_errors(&server).await;
    // A replica of a master that is not there: it keeps serving reads and refuses writes.
    let dead = spillway_testkit::redis::free_port();
    let demoted = command(redis.port(), &format!("REPLICAOF 127.0.0.1 {dead}"));
    assert!(demoted.is_some_and(|r| r.starts_with("+OK")), "REPLICAOF");
    for _ in 0..3 {
        assert_eq!(status(&server, "during", "/open").await, 200);
    }
    let after = script_errors(&server).await;
    let [_, timeout_before, connection_before, other_before] = before;
    let [_, timeout, connection, other] = after;
    assert!(connection > connection_before, "{before:?} -> {after:?}");
    assert_eq!(timeout, timeout_before, "{before:?} -> {after:?}");
    assert_eq!(other, other_before, "{before:?} -> {after:?}");
}

/// A sliding log keeps a sorted set; a hash found at its key instead makes the script fail
/// with `WRONGTYPE`, which is neither a timeout nor a lost connection.
const SLIDING_LOG: &str = r#"
default_tier: free
limits:
  log:
    algorithm: sliding_log
    limit: 100
    window: 1h
    key: [user]
tiers:
  free:
    limits: [log]
routes:
  - match: "POST /log"
    failure_mode: closed
"#;

/// The bulk strings of a RESP array reply.
fn bulk_strings(reply: &str) -> Vec<String> {
    let mut lines = reply.split("\r\n");
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with('$') && line != "$-1" {
            if let Some(value) = lines.next() {
                out.push(value.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_counts_as_an_other_script_error() {
    let redis = RedisServer::start();
    let policy = format!(
        "{SLIDING_LOG}store: {{type: redis, url: \"{}\", prefix: wrongtype, timeout: 2s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&policy).start();
    assert_eq!(status(&server, "victim", "/log").await, 200);
    let keys = bulk_strings(&command(redis.port(), "KEYS wrongtype*").unwrap_or_default());
    assert_eq!(keys.len(), 1, "one counter key: {keys:?}");
    let key = &keys[0];
    assert!(!key.contains(' '), "{key}");
    assert!(command(redis.port(), &format!("DEL {key}")).is_some());
    let set = command(redis.port(), &format!("HSET {key} field value")).unwrap_or_default();
    assert!(set.starts_with(":1"), "{set}");

    let before = script_errors(&server).await;
    // The route fails closed: the store's error is a refusal, never an admission.
    assert_eq!(status(&server, "victim", "/log").await, 503);
    let after = script_errors(&server).await;
    let [_, timeout_before, connection_before, other_before] = before;
    let [_, timeout, connection, other] = after;
    assert_eq!(other, other_before + 1.0, "{before:?} -> {after:?}");
    assert_eq!(timeout, timeout_before, "{before:?} -> {after:?}");
    assert_eq!(connection, connection_before, "{before:?} -> {after:?}");
    let text = server.metrics().await;
    assert_eq!(route_count(&text, "POST /log", "refused"), 1.0, "{text}");
    // Another user's counter is untouched by the foreign value.
    assert_eq!(status(&server, "bystander", "/log").await, 200);
}
