//! One circuit breaker per Redis Cluster master: a real `spillway serve` on a real
//! three-master cluster, one master frozen (`SIGSTOP`). Requests for that master's keys time
//! out until its breaker opens, then fail at once with their route's failure mode (`closed`:
//! 503); requests for keys on the two healthy masters are decided by Redis all along, and
//! their breakers stay closed. The metrics say which master's breaker is open, and `/readyz`
//! names it. After `SIGCONT` and one cooldown (stepped on the server's manual clock, not
//! waited for), the probe closes the breaker and Redis decides that master's keys again.

// Client-side latency is wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{ask, gauges, policy, user_per_master, wait_named};
use common::{metric, wait_until_async, Server};
use spillway_server::failure::DEFAULT_BREAKER_COOLDOWN as COOLDOWN;
use spillway_testkit::redis::RedisCluster;
use std::time::{Duration, Instant};

/// The store budget.
const BUDGET: Duration = Duration::from_millis(200);
/// Consecutive failures that open a breaker.
const FAILURES: u64 = 3;
/// Healthy-master requests per user while the frozen master's breaker is open.
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_masters_breaker_opens_alone() {
    let cluster = RedisCluster::start();
    let server = Server::with_policy(&policy(&cluster, "closed", BUDGET, FAILURES, None)).start();
    let users = user_per_master(&cluster);
    let ports = cluster.ports();
    let (hung, healthy) = (&users[0], &users[1..]);
    wait_named(&server, &users, &ports).await;
    for user in &users {
        let s = ask(&server, user).await;
        assert!(s.decided(), "before the freeze: {s:?}");
    }
    let (each, all) = gauges(&server, &ports).await;
    assert_eq!(each, vec![Some(0.0); 3], "one closed breaker per master");
    assert_eq!(all, Some(0.0));

    cluster.node(0).freeze();
    let frozen_at = Instant::now();
    // The frozen master's requests time out, one budget each, until its breaker opens; the
    // healthy masters' requests in between are decided by Redis.
    let mut timed_out = 0;
    let opened = loop {
        let s = ask(&server, hung).await;
        if s.took < BUDGET / 2 {
            break s;
        }
        assert_eq!(s.status, 503, "a timed-out request takes `closed`: {s:?}");
        timed_out += 1;
        assert!(timed_out <= 2 * FAILURES, "the breaker never opened");
        for user in healthy {
            let s = ask(&server, user).await;
            assert!(s.decided(), "a healthy master during the failures: {s:?}");
        }
    };
    assert_eq!(
        opened.status, 503,
        "the open breaker's failure mode: {opened:?}"
    );
    assert!(timed_out >= FAILURES, "opened after {timed_out} timeouts");

    // Open: the frozen master's keys fail at once; the healthy masters' keys are still
    // decided by Redis. A loaded two-core machine may stall a rare healthy request past the
    // budget (it then takes `closed` too): at most 2% of them.
    let (mut decided, mut late) = (0, 0);
    for _ in 0..ROUNDS {
        let s = ask(&server, hung).await;
        assert!(
            s.status == 503 && s.took < BUDGET,
            "the frozen master's key fails fast: {s:?}"
        );
        for user in healthy {
            let s = ask(&server, user).await;
            if s.decided() {
                decided += 1;
            } else {
                assert!(s.took >= BUDGET, "a healthy master refused at once: {s:?}");
                late += 1;
            }
        }
    }
    assert!(
        late * 50 <= decided + late,
        "{late} healthy requests late, {decided} decided"
    );
    let (each, all) = gauges(&server, &ports).await;
    assert_eq!(
        each,
        vec![Some(2.0), Some(0.0), Some(0.0)],
        "only its breaker"
    );
    assert_eq!(all, Some(2.0), "the store-wide gauge shows the worst");
    let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["store"]["circuit"], "open", "{ready}");
    let frozen_name = format!("127.0.0.1:{}", cluster.ports()[0]);
    assert_eq!(ready["store"]["domains"][&frozen_name], "open", "{ready}");
    assert_eq!(
        ready["store"]["domains"].as_object().map(|m| m.len()),
        Some(1),
        "{ready}"
    );
    // Well inside the cluster's node timeout (5 s), so the cluster itself never fails.
    assert!(
        frozen_at.elapsed() < Duration::from_secs(4),
        "the test ran too slowly"
    );

    cluster.node(0).resume();
    // Waiting for the master to answer again: each round steps the server's clock one
    // cooldown, so the next request is the probe.
    let back = wait_until_async(Duration::from_secs(10), || async {
        server.advance_ms(COOLDOWN.as_millis() as u64).await;
        ask(&server, hung).await.decided().then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "the frozen master's key was never decided again"
    );
    let (each, all) = gauges(&server, &ports).await;
    assert_eq!(each, vec![Some(0.0); 3], "closed again");
    assert_eq!(all, Some(0.0));
    let text = server.metrics().await;
    let closed = metric(
        &text,
        "spillway_store_circuit_transitions_total",
        &[("from", "half_open"), ("to", "closed")],
    );
    assert!(closed >= Some(1.0), "the way back is counted: {closed:?}");
    let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ok", "{ready}");
    assert!(ready["store"].get("domains").is_none(), "{ready}");
}
