//! Chaos on a Redis Cluster: a real `spillway serve` on a real three-master cluster, one
//! master frozen (`SIGSTOP`) under load. Requests for users whose keys live on the two healthy
//! masters are still decided by Redis (not degraded) within the budget; requests for a user on
//! the frozen master get their route's failure mode (`degrade`: the emergency quota, marked
//! degraded), counted in the metrics; after `SIGCONT` Redis decides them again.
//!
//! The node keeps a circuit breaker per master (docs/FAILURE.md; `tests/cluster_breaker.rs`
//! tests it); this test sets `breaker_failures` out of reach to show what the store itself does
//! per slot, below the breakers.

// Client-side latency is wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{policy, users_by_master};
use common::{metric, timed_check, wait_until_async, Server};
use spillway_testkit::redis::RedisCluster;
use std::time::{Duration, Instant};

/// The store budget.
const BUDGET: Duration = Duration::from_millis(200);
/// Allowance on top of the budget for a loaded two-core machine (generous: hundreds of
/// client tasks share it with the server and other builds).
const MARGIN: Duration = Duration::from_millis(500);
/// Concurrent clients of the frozen master's user.
const HUNG_TASKS: usize = 200;
/// The emergency quota of the `degrade` route, per node.
const EMERGENCY: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_degrades_only_its_own_users() {
    let cluster = RedisCluster::start();
    // Breakers out of reach: what the store does below them.
    let policy = policy(
        &cluster,
        "degrade",
        BUDGET,
        1_000_000_000,
        Some(EMERGENCY as u64),
    );
    let server = Server::with_policy(&policy).start();
    let base = format!("http://{}", server.addr());
    // One user on the master to freeze (the first), three on each of the others.
    let mut by_master = users_by_master(&cluster, 3).into_iter();
    let hung_user = by_master.next().expect("a master to freeze").remove(0);
    let healthy: Vec<String> = by_master.flatten().collect();
    for user in healthy.iter().chain([&hung_user]) {
        let s = timed_check(&server.http, &base, "/api", user).await;
        assert!(s.decided(), "before the freeze: {s:?}");
    }

    cluster.node(0).freeze();
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    // HUNG_TASKS concurrent clients for the frozen master's user (hundreds of its requests in
    // flight at once, filling its slot's calls and queue), four for users on the healthy
    // masters at the same time.
    let loads = std::iter::repeat_n(&hung_user, HUNG_TASKS)
        .map(|u| (true, u.clone()))
        .chain(healthy[..4].iter().map(|u| (false, u.clone())));
    for (hung, user) in loads {
        let (http, base) = (server.http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(timed_check(&http, &base, "/api", &user).await);
            }
            (hung, samples)
        }));
    }
    let (mut decided, mut degraded_admitted, mut degraded_denied) = (0, 0, 0);
    // A loaded 2-core machine may stall a rare request past the budget (a healthy one then
    // degrades, on its own user's emergency quota): at most 2% of each kind.
    let (mut healthy, mut healthy_late, mut frozen, mut frozen_late) = (0, 0, 0, 0);
    for task in tasks {
        let (hung, samples) = task.await.expect("load task");
        for s in samples {
            let late = s.took > BUDGET + MARGIN;
            if hung {
                frozen += 1;
                frozen_late += usize::from(late);
                assert!(s.degraded, "the frozen master's user: {s:?}");
                match s.status {
                    200 => degraded_admitted += 1,
                    429 => degraded_denied += 1,
                    _ => panic!("the frozen master's user: {s:?}"),
                }
            } else {
                healthy += 1;
                if late || s.degraded {
                    healthy_late += 1;
                    continue;
                }
                assert!(s.status == 200, "a healthy user: {s:?}");
                decided += 1;
            }
        }
    }
    assert!(
        frozen_late * 50 <= frozen,
        "{frozen_late} of {frozen} requests for the frozen master past the budget"
    );
    assert!(decided >= 20, "only {decided} healthy decisions in 3 s");
    assert!(
        healthy_late * 50 <= healthy,
        "{healthy_late} of {healthy} healthy requests late or degraded"
    );
    assert_eq!(degraded_admitted, EMERGENCY, "the emergency quota, exactly");
    assert!(
        degraded_denied >= HUNG_TASKS,
        "only {degraded_denied} degraded denials: the frozen master saw little load"
    );
    let text = server.metrics().await;
    let counted = metric(
        &text,
        "spillway_degraded_decisions_total",
        &[("route", "POST /api"), ("mode", "degrade")],
    )
    .unwrap_or(0.0);
    assert!(
        counted >= (EMERGENCY + 1) as f64,
        "degraded decisions counted: {counted}"
    );
    let errors: f64 = ["timeout", "unavailable"]
        .iter()
        .filter_map(|kind| metric(&text, "spillway_store_errors_total", &[("kind", kind)]))
        .sum();
    assert!(errors > 0.0, "store errors counted");

    cluster.node(0).resume();
    // Waiting for the master to answer again, not for a limit to refill.
    let back = wait_until_async(Duration::from_secs(15), || {
        let (http, base, user) = (server.http.clone(), base.clone(), hung_user.clone());
        async move {
            let s = timed_check(&http, &base, "/api", &user).await;
            s.decided().then_some(())
        }
    })
    .await;
    assert!(
        back.is_some(),
        "the frozen master's user was never decided by Redis again"
    );
}
