//! Chaos: a real `spillway serve` on a real Redis, under steady concurrent load, while Redis
//! is killed, frozen, slowed down by a proxy, or has its scripts flushed, and while a master
//! found through Sentinel is killed and the sentinels fail over to its replica (with
//! passwords on the data nodes and on the sentinels, as in production).
//!
//! Every scenario checks the same things: no request took longer than the store budget plus
//! [`MARGIN`]; `open` routes were let through marked degraded; `closed` routes got 503 with
//! `Retry-After`; the `degrade` route admitted exactly its emergency quota; the process stayed
//! up; the metrics moved; and once the fault ends, decisions come from Redis again within
//! [`RECOVERY`] and a fresh key admits exactly its limit.
//!
//! The server runs on the manual clock, which the breaker's cooldown follows: recovery polls
//! step the clock one cooldown forward before each probe rather than wait for it. Latency, the
//! store budget and the faults themselves are real time.
//!
//! The scenarios run one at a time (they share two cores with everything else), each in a
//! few seconds.

// Client-side latency is wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{metric, roomy_window, timed_check, wait_until_async, Sample, Server};
use spillway_server::failure::DEFAULT_BREAKER_COOLDOWN as COOLDOWN;
use spillway_testkit::proxy::DelayProxy;
use spillway_testkit::redis::{command, RedisServer};
use spillway_testkit::sentinel::{Passwords, SentinelGroup, MASTER_NAME};
use std::time::{Duration, Instant};

/// The store budget the chaos policy sets.
const BUDGET: Duration = Duration::from_millis(50);
/// Allowance on top of the budget for a loaded two-core machine: HTTP on loopback, the
/// scheduler, and eight client tasks competing with the server and Redis for the CPUs.
const MARGIN: Duration = Duration::from_millis(250);
/// How soon after a fault ends decisions must come from Redis again.
const RECOVERY: Duration = Duration::from_secs(5);
/// The `degrade` route's emergency quota per node.
const EMERGENCY: usize = 5;
/// The `/exact` route's limit.
const EXACT: usize = 5;
/// Concurrent client tasks.
const TASKS: usize = 8;

/// Only one scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn policy(url: &str) -> String {
    with_store(&format!(
        r#"{{type: redis, url: "{url}", timeout: {}ms}}"#,
        BUDGET.as_millis()
    ))
}

/// The chaos policy on the store section `store`. Its windows (about an hour) have at least
/// ten minutes left ([`roomy_window`]): Redis decides by its own clock, so a window rolling
/// over mid-test would start the counts over.
fn with_store(store: &str) -> String {
    let (window, _) = roomy_window();
    format!(
        r#"
default_tier: free
failure_mode: open
limits:
  big:
    algorithm: fixed_window
    limit: 1000000
    window: {window}
    key: [user]
  small:
    algorithm: fixed_window
    limit: 30
    window: {window}
    key: [user]
    emergency: {{limit: {EMERGENCY}}}
  exact:
    algorithm: fixed_window
    limit: {EXACT}
    window: {window}
    key: [user]
tiers:
  free:
    limits: []
routes:
  - match: "POST /open"
    failure_mode: open
    limits: [big]
  - match: "POST /closed"
    failure_mode: closed
    limits: [big]
  - match: "POST /degrade"
    failure_mode: degrade
    limits: [small]
  - match: "POST /exact"
    failure_mode: closed
    limits: [exact]
store: {store}
"#
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Open,
    Closed,
    Degrade,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Open => "/open",
            Self::Closed => "/closed",
            Self::Degrade => "/degrade",
        }
    }
}

/// Runs [`TASKS`] tasks against the three failure-mode routes for `span`, all as `user`.
async fn load(server: &Server, user: &str, span: Duration) -> Vec<Sample> {
    let base = format!("http://{}", server.addr());
    let until = Instant::now() + span;
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let route = [Route::Open, Route::Closed, Route::Degrade][i % 3];
        let (http, base, user) = (server.http.clone(), base.clone(), user.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(timed_check(&http, &base, route.path(), &user).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    all
}

/// Every request was answered within the store's budget and [`MARGIN`]. A loaded machine may
/// wake the client late now and then (the time is the client's): two answers may come later,
/// none past a second over the budget. (Few requests reach the store once the breaker opens,
/// and those are the ones a broken budget would slow, so the allowance is a count, not a
/// share.)
fn assert_within_budget(samples: &[Sample]) {
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest <= BUDGET + Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    let late: Vec<_> = (samples.iter())
        .map(|s| s.took)
        .filter(|took| *took > BUDGET + MARGIN)
        .collect();
    assert!(
        late.len() <= 2,
        "{} of {} requests took past the budget: {late:?}",
        late.len(),
        samples.len()
    );
}

/// The checks that hold while the store is unreachable.
fn assert_degraded_as_designed(samples: &[Sample]) {
    assert_within_budget(samples);
    let of = |route: Route| {
        samples
            .iter()
            .filter(move |s: &&Sample| s.path == route.path())
    };
    assert!(of(Route::Open).count() > 0 && of(Route::Closed).count() > 0);
    for s in of(Route::Open) {
        assert!(s.status == 200 && s.degraded, "open route: {s:?}");
    }
    for s in of(Route::Closed) {
        assert_eq!(s.status, 503, "closed route: {s:?}");
        assert_eq!(s.retry_after.as_deref(), Some("1"), "closed route: {s:?}");
    }
    let mut admitted = 0;
    for s in of(Route::Degrade) {
        assert!(
            s.degraded && (s.status == 200 || s.status == 429),
            "degrade: {s:?}"
        );
        admitted += usize::from(s.status == 200);
    }
    assert_eq!(
        admitted, EMERGENCY,
        "the degrade route admits its emergency quota"
    );
}

/// The store errors counted so far, all kinds together.
async fn store_errors(server: &Server) -> f64 {
    let text = server.metrics().await;
    ["timeout", "unavailable", "protocol"]
        .iter()
        .filter_map(|kind| metric(&text, "spillway_store_errors_total", &[("kind", kind)]))
        .sum()
}

/// The smallest degraded-decision count of the three routes, the breaker's `open`
/// transitions, and its state gauge.
async fn metrics_now(server: &Server) -> (f64, f64, f64) {
    let text = server.metrics().await;
    let degraded = ["open", "closed", "degrade"]
        .iter()
        .zip(["POST /open", "POST /closed", "POST /degrade"])
        .map(|(mode, route)| {
            metric(
                &text,
                "spillway_degraded_decisions_total",
                &[("route", route), ("mode", mode)],
            )
            .unwrap_or(0.0)
        })
        .fold(f64::INFINITY, f64::min);
    let opened = ["closed", "half_open"]
        .iter()
        .filter_map(|from| {
            metric(
                &text,
                "spillway_store_circuit_transitions_total",
                &[("from", from), ("to", "open")],
            )
        })
        .sum();
    let state = metric(&text, "spillway_store_circuit_state", &[]).unwrap_or(-1.0);
    (degraded, opened, state)
}

/// After a fault: decisions come from Redis again in time, and limits are exact again.
async fn assert_recovers(server: &Server, tag: &str) {
    let base = format!("http://{}", server.addr());
    let mut n = 0;
    let back = wait_until_async(RECOVERY, || {
        n += 1;
        // Each probe on a connection of its own, so probes spread over the serving threads
        // (each with its own Redis connection) as a client's would.
        let (http, base, user) = (
            reqwest::Client::new(),
            base.clone(),
            format!("{tag}-probe-{n}"),
        );
        async move {
            // The breaker probes once a cooldown has passed on the server's clock.
            server.advance_ms(COOLDOWN.as_millis() as u64).await;
            let s = timed_check(&http, &base, "/exact", &user).await;
            s.decided().then_some(())
        }
    })
    .await;
    assert!(
        back.is_some(),
        "decisions did not come from Redis within {RECOVERY:?}"
    );
    let user = format!("{tag}-exact");
    let mut admitted = 0;
    for _ in 0..EXACT + 3 {
        let s = timed_check(&server.http, &base, "/exact", &user).await;
        assert!(!s.degraded && (s.status == 200 || s.status == 429), "{s:?}");
        admitted += usize::from(s.status == 200);
    }
    assert_eq!(
        admitted, EXACT,
        "a fresh key admits exactly its limit again"
    );
    let (_, _, state) = metrics_now(server).await;
    assert_eq!(state, 0.0, "the breaker is closed again");
    // `/readyz` pings the store's shared connection, which the serving threads' decisions
    // do not take: it comes back on its next use (a ping that finds it stale after a kill
    // asks again at once), but after a slow spell its first ping can still time out behind
    // the calls that timed out before it, so readiness says `ok` again soon after the
    // decisions, not necessarily on the first ask.
    let ready = wait_until_async(RECOVERY, || async {
        let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
        (ready["status"] == "ok").then_some(())
    })
    .await;
    if ready.is_none() {
        let last: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
        panic!("readiness did not say ok again: {last}");
    }
}

/// Runs one fault scenario: warm up, start the fault (`fault(true)`), load, check, end it
/// (`fault(false)`), check recovery. `kinds`: the `spillway_script_errors_total` kinds the
/// fault must raise (each on its own). A dead server's closed connection may be seen before
/// a script is sent on it (the call then fails as `unavailable` without being a failed
/// script call), so `connection` is also met by `spillway_store_errors_total{kind=
/// "unavailable"}` rising. Returns how many store calls timed out during the recovery.
async fn scenario(server: &Server, tag: &str, kinds: &[&str], mut fault: impl FnMut(bool)) -> f64 {
    load(server, &format!("{tag}-warm"), Duration::from_millis(300)).await;
    let (degraded_before, opened_before, _) = metrics_now(server).await;
    let errors_before = store_errors(server).await;
    let script_errors = |text: &str, kind: &str| {
        metric(text, "spillway_script_errors_total", &[("kind", kind)]).unwrap_or(0.0)
    };
    let unavailable = |text: &str| {
        metric(
            text,
            "spillway_store_errors_total",
            &[("kind", "unavailable")],
        )
        .unwrap_or(0.0)
    };
    let text = server.metrics().await;
    let kinds_before: Vec<f64> = kinds.iter().map(|k| script_errors(&text, k)).collect();
    let unavailable_before = unavailable(&text);
    fault(true);
    let samples = load(server, &format!("{tag}-fault"), Duration::from_secs(2)).await;
    // Read before `/readyz` below, whose own ping of the dead store counts as unavailable.
    let unavailable_during = unavailable(&server.metrics().await);
    assert_degraded_as_designed(&samples);
    let (degraded, opened, state) = metrics_now(server).await;
    assert!(
        degraded > degraded_before,
        "degraded decisions are counted per route"
    );
    assert!(opened > opened_before, "the breaker opened");
    assert!(
        store_errors(server).await > errors_before,
        "store errors are counted"
    );
    assert!(state >= 1.0, "the breaker is not closed during the fault");
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200, "a degraded node stays ready");
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["store"]["emergency_keys"].as_u64() > Some(0),
        "{ready}"
    );
    let timeouts = || async {
        let text = server.metrics().await;
        metric(&text, "spillway_store_errors_total", &[("kind", "timeout")]).unwrap_or(0.0)
    };
    let timeouts_before = timeouts().await;
    fault(false);
    assert_recovers(server, tag).await;
    let recovery_timeouts = timeouts().await - timeouts_before;
    // The breaker's way back is counted by where it came from, and the failed script calls
    // by kind.
    let text = server.metrics().await;
    let recovered = metric(
        &text,
        "spillway_store_circuit_transitions_total",
        &[("from", "half_open"), ("to", "closed")],
    );
    assert!(recovered >= Some(1.0), "recoveries: {recovered:?}");
    for (kind, before) in kinds.iter().zip(kinds_before) {
        let now = script_errors(&text, kind);
        let seen_closed = *kind == "connection" && unavailable_during > unavailable_before;
        assert!(
            now > before || seen_closed,
            "script errors of kind {kind}: {before} -> {now} (store errors of kind \
             unavailable under load: {unavailable_before} -> {unavailable_during})"
        );
    }
    recovery_timeouts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty() {
    let _one = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let server = Server::with_policy(&policy(&redis.url())).start();
    let timeouts = scenario(&server, "kill", &["connection"], |on| {
        if on {
            redis.kill();
        } else {
            redis.restart();
        }
    })
    .await;
    // The clock stands still during the fault, so every half-open probe was sent during
    // recovery. Each serving thread's own connection, stale after the outage, must not fail
    // a probe of its own (a cooldown each): at most one probe fails, on the shared one. A
    // stale connection fails as unavailable; a probe that timed out instead (the restarted
    // server's first call loads the library, within a 50 ms budget, which a loaded machine
    // can miss) is let pass, one for each call that timed out during the recovery.
    let failed_probes = metric(
        &server.metrics().await,
        "spillway_store_circuit_transitions_total",
        &[("from", "half_open"), ("to", "open")],
    )
    .unwrap_or(0.0);
    assert!(
        failed_probes <= 1.0 + timeouts,
        "failed half-open probes: {failed_probes} ({timeouts} calls timed out)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_then_failed_over() {
    let _one = SERIAL.lock().await;
    let (data_password, sentinel_password) = ("chaos-data-pw", "chaos-sentinel-pw");
    let mut group = SentinelGroup::start_with(Passwords {
        data: Some(data_password.into()),
        sentinels: Some(sentinel_password.into()),
    });
    let sentinels: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let store = format!(
        "{{type: redis_sentinel, sentinels: [{}], master: {MASTER_NAME}, timeout: {}ms}}",
        sentinels.join(", "),
        BUDGET.as_millis()
    );
    let server = Server::with_policy(&with_store(&store))
        .env("SPILLWAY_MASTER_PASSWORD", data_password)
        .env("SPILLWAY_SENTINEL_PASSWORD", sentinel_password)
        .start();
    let (old, new) = (group.first_master_port(), group.replica_port());
    // While the master is dead and until the sentinels promote the replica and the node
    // follows, requests get their routes' failure modes; then decisions are Redis's again.
    scenario(&server, "sentinel", &["connection"], |on| {
        if on {
            group.kill_master();
        } else {
            group.wait_for_failover();
            assert!(
                server.wait_for_log("Redis master changed").is_some(),
                "the node never followed the failover"
            );
        }
    })
    .await;
    let line = server
        .wait_for_log("Redis master changed")
        .unwrap_or_default();
    assert!(
        line.contains(&format!("127.0.0.1:{old}")) && line.contains(&format!("127.0.0.1:{new}")),
        "the log names the old and the new master: {line}"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "spillway_redis_master_changes_total", &[]),
        Some(1.0),
        "the switch is counted once"
    );
    let logs = server.logs().join("\n");
    assert!(
        !logs.contains(data_password) && !logs.contains(sentinel_password),
        "no password in the logs"
    );
    assert!(
        !text.contains(data_password) && !text.contains(sentinel_password),
        "no password in the metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_then_resumed() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let server = Server::with_policy(&policy(&redis.url())).start();
    scenario(&server, "stop", &["timeout"], |on| {
        if on {
            redis.freeze();
        } else {
            redis.resume();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slower_than_the_budget_through_a_proxy() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let proxy = DelayProxy::start(redis.port());
    let server = Server::with_policy(&policy(&proxy.url())).start();
    scenario(&server, "slow", &["timeout"], |on| {
        proxy.set_delay(if on { BUDGET * 4 } else { Duration::ZERO });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_while_serving() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let server = Server::with_policy(&policy(&redis.url())).start();
    load(&server, "flush-warm", Duration::from_millis(300)).await;
    let port = redis.port();
    let flusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let script = command(port, "SCRIPT FLUSH");
        std::thread::sleep(Duration::from_millis(100));
        (script, command(port, "FUNCTION FLUSH"))
    });
    let samples = load(&server, "flush", Duration::from_secs(1)).await;
    let (scripts, functions) = flusher.join().expect("flusher");
    assert!(
        scripts.is_some_and(|r| r.starts_with("+OK")),
        "SCRIPT FLUSH ran"
    );
    assert!(
        functions.is_some_and(|r| r.starts_with("+OK")),
        "FUNCTION FLUSH ran"
    );
    assert_within_budget(&samples);
    // A lost library (or script) is loaded again inside the store call, so decisions stay
    // Redis's own; allow a few stray budget overruns on a loaded machine, no more.
    let degraded = samples
        .iter()
        .filter(|s| s.degraded || s.status == 503)
        .count();
    assert!(
        degraded * 20 <= samples.len(),
        "{degraded} of {} degraded",
        samples.len()
    );
    assert_recovers(&server, "flush").await;
}

/// A policy with one route, `POST /degrade`, under the default failure mode (`degrade`): a
/// per-user limit of `limit` an hour with an emergency quota of 2, on `redis` with a breaker
/// that opens after 2 failures and probes every 200 ms.
fn one_degrade_route(redis: &RedisServer, limit: u64) -> String {
    let (window, _) = roomy_window();
    format!(
        r#"
default_tier: free
limits:
  small:
    algorithm: fixed_window
    limit: {limit}
    window: {window}
    key: [user]
    emergency: {{limit: 2}}
tiers:
  free:
    limits: []
routes:
  - match: "POST /degrade"
    limits: [small]
store: {{type: redis, url: "{}", timeout: {}ms, breaker_failures: 2, breaker_cooldown: 200ms}}
"#,
        redis.url(),
        BUDGET.as_millis()
    )
}

/// A denial the Redis store answers from its local over-limit cache reaches no Redis, so it
/// must not pass for the store's recovery: if it did, the breaker would close in the middle of
/// the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_denial_does_not_end_an_outage() {
    let _one = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let policy = one_degrade_route(&redis, 2);
    let server = Server::with_policy(&policy).start();
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr());
    let status = |user: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move { timed_check(&http, &base, "/degrade", user).await }
    };

    // `hot` is over its limit in Redis, and the store caches that denial for the hour.
    for expected in [200, 200, 429] {
        assert_eq!(status("hot").await.status, expected);
    }
    redis.kill();
    // Redis is gone: failures open the breaker, and `cold` gets its emergency quota of 2.
    let mut cold = Vec::new();
    for _ in 0..4 {
        let sample = status("cold").await;
        cold.push((sample.status, sample.degraded));
    }
    assert_eq!(
        cold,
        [(200, true), (200, true), (429, true), (429, true)],
        "the emergency quota while Redis is down"
    );

    // After the cooldown, the cached `hot` denial is the next request: it must not count as
    // the probe that finds Redis back.
    server.advance_ms(300).await;
    assert_eq!(status("hot").await.status, 429);
    let after = status("cold").await;
    assert_eq!(
        (after.status, after.degraded),
        (429, true),
        "the emergency counters were dropped while Redis was still down"
    );
}

/// A store that goes down and up again must not hand out a fresh emergency quota with each
/// outage: the emergency counters are kept until their own window passes, not dropped when
/// the breaker closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_quotas_survive_a_breaker_flap() {
    let _one = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let policy = one_degrade_route(&redis, 100);
    let server = Server::with_policy(&policy).start();
    let base = format!("http://{}", server.addr());
    let ask_as = |user: String| {
        let (http, base) = (server.http.clone(), base.clone());
        async move { timed_check(&http, &base, "/degrade", &user).await }
    };

    // First outage: the default failure mode, `degrade`, admits the emergency quota of 2.
    redis.kill();
    let mut first = Vec::new();
    for _ in 0..3 {
        let s = ask_as("flapper".into()).await;
        first.push((s.status, s.degraded));
    }
    assert_eq!(first, [(200, true), (200, true), (429, true)]);

    // The store comes back and the breaker closes: decisions come from Redis again.
    redis.restart();
    let mut n = 0;
    let back = wait_until_async(RECOVERY, || {
        n += 1;
        let probe = ask_as(format!("probe-{n}"));
        let advance = server.advance_ms(300);
        async move {
            advance.await;
            let s = probe.await;
            s.decided().then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "Redis did not come back");

    // Second outage within the same hour: the quota used in the first one still counts.
    redis.kill();
    for _ in 0..3 {
        let s = ask_as("flapper".into()).await;
        assert_eq!(
            (s.status, s.degraded),
            (429, true),
            "a breaker flap handed out a fresh emergency quota"
        );
    }
}
