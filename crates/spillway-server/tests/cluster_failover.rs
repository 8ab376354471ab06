//! A real Redis Cluster failover under a real `spillway serve`: three masters, each with one
//! replica, a steady load for a user on each master, and one master killed (`SIGKILL`). Its
//! replica is promoted by the cluster itself (another node ID for the same slots), and the
//! store's slot map takes it in as a new failure domain.
//!
//! What must hold, and is asserted:
//! - the users on the two healthy masters are decided by Redis throughout, their counts exact;
//! - the dead master's user gets its route's failure mode (`closed`: 503), failing fast once
//!   its master's breaker is open, and is decided by Redis again within a bounded time of the
//!   promotion, with the manual clock never moved: the new master's breaker starts closed, no
//!   cooldown is waited out;
//! - the per-master gauge and `/readyz` show the dead master's breaker open during the outage,
//!   and nothing open afterwards; the dead master's series leaves `/metrics` once no slot
//!   maps to it;
//! - the dead master's user's budget after the failover is at least what it was before (a
//!   write the replica had not received is lost, never one made up) and never reset or
//!   negative.
//!
//! That needs `cluster-require-full-coverage no` on the cluster. The second test keeps Redis's
//! default (`yes`), under which every master refuses every key from the moment the dead
//! master is marked failed until the promotion, and checks that the healthy masters are
//! refused only then and decided again on their breakers' next probes.

// Client-side latency and the failover's timings are wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{ask, gauges, policy, slot_of, user_per_master, wait_named, LIMIT};
use common::{metric, timed_check, wait_until_async, Sample, Server};
use spillway_redis::topology::REFRESH_EVERY;
use spillway_server::failure::DEFAULT_BREAKER_COOLDOWN as COOLDOWN;
use spillway_testkit::redis::RedisCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The store budget.
const BUDGET: Duration = Duration::from_millis(200);
/// Consecutive failures that open a breaker.
const FAILURES: u64 = 3;
/// Allowance for a loaded two-core machine on top of what Spillway itself needs after the
/// promotion (scheduling, the test's own polling of `CLUSTER NODES`).
const SLACK: Duration = Duration::from_secs(1);

/// The server's HTTP serving threads (and no gRPC port): each has a connection of its own to
/// each of the three masters.
const HTTP_THREADS: usize = 2;
/// The serving threads' connections to the masters when every one is up.
const THREAD_CONNS: f64 = (HTTP_THREADS * 3) as f64;

/// One user's answers, each with when it was asked (from the test's start).
type Log = Arc<Mutex<Vec<(Duration, Sample)>>>;

/// Asks for `user` over and over until `stop`, logging every answer.
fn load(
    server: &Server,
    user: &str,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> (Log, tokio::task::JoinHandle<()>) {
    let log: Log = Arc::default();
    let (http, base, user) = (
        server.http.clone(),
        format!("http://{}", server.addr()),
        user.to_owned(),
    );
    let task = tokio::spawn({
        let log = log.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let s = timed_check(&http, &base, "/api", &user).await;
                log.lock().expect("log").push((at, s));
                // A steady stream, not a flood: the machine is shared.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    (log, task)
}

/// A replicated cluster behind a server, under load, taken through the failover of its first
/// master: killed, then replaced by its replica.
struct Failover {
    cluster: RedisCluster,
    server: Server,
    /// A user on each master, in the order of [`RedisCluster::ports`].
    users: Vec<String>,
    ports: Vec<u16>,
    /// The replica promoted in place of the first master.
    heir_port: u16,
    start: Instant,
    stop: Arc<AtomicBool>,
    /// Each user's answers.
    logs: Vec<Log>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// When the master was killed, its breaker seen open and its replica seen promoted
    /// (from `start`).
    killed: Duration,
    opened: Duration,
    promoted: Duration,
}

/// The serving threads' own connections to Redis that are up, as `/metrics` tells.
async fn thread_conns(server: &Server) -> f64 {
    metric(&server.metrics().await, "spillway_redis_thread_lanes", &[]).unwrap_or(0.0)
}

/// Waits (5 s at most) until every serving thread has its connection to each master up,
/// [`THREAD_CONNS`] in all; fails naming `when` otherwise.
async fn all_thread_conns_up(server: &Server, when: &str) {
    let up = wait_until_async(Duration::from_secs(5), || async {
        (thread_conns(server).await == THREAD_CONNS).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "thread connections {when}: {}, not {THREAD_CONNS}",
        thread_conns(server).await
    );
}

impl Failover {
    /// Starts the cluster (`full_coverage`: whether it keeps Redis's default
    /// `cluster-require-full-coverage yes`) and the server, puts a steady load on every
    /// master, kills the first master, checks the server's view of the outage, and returns
    /// once the replica serves the dead master's slots.
    async fn run(full_coverage: bool) -> Self {
        let mut cluster = RedisCluster::with_replicas(3, 1);
        // With Redis's default (`yes`), every master refuses every key (`CLUSTERDOWN`) from the
        // moment the dead master is marked failed until its replica is promoted: see
        // docs/FAILURE.md.
        if !full_coverage {
            cluster.config_set("cluster-require-full-coverage", "no");
        }
        let server = Server::with_policy(&policy(&cluster, "closed", BUDGET, FAILURES, None))
            .args(&["--http-threads", &HTTP_THREADS.to_string()])
            .start();
        let users = user_per_master(&cluster);
        let ports = cluster.ports();
        let (dead_port, heir_port) = (ports[0], cluster.replica(0, 0).port());
        let dead_id = cluster.node_id(dead_port).expect("the master's ID");
        let slot = slot_of(&users[0]);

        wait_named(&server, &users, &ports).await;

        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let (logs, tasks): (Vec<Log>, Vec<_>) = users
            .iter()
            .map(|u| load(&server, u, start, stop.clone()))
            .unzip();
        // A steady state first: every user decided a few times.
        let steady = wait_until_async(Duration::from_secs(10), || async {
            logs.iter()
                .all(|log| {
                    after(log, Duration::ZERO, |s| {
                        s.iter().filter(|s| s.decided()).count() >= 20
                    })
                })
                .then_some(())
        })
        .await;
        assert!(steady.is_some(), "the load never got going");
        // Each serving thread has its own connection to each master (every one up by now, or
        // soon).
        all_thread_conns_up(&server, "before the kill").await;

        cluster.node_mut(0).kill();
        let killed = start.elapsed();

        // The dead master refuses connections: FAILURES failures open its breaker, and from then
        // on its user's requests fail at once.
        let opened = wait_until_async(Duration::from_secs(5), || async {
            after(&logs[0], killed, |s| {
                s.windows(FAILURES as usize)
                    .any(|w| w.iter().all(|s| s.status == 503 && s.took < BUDGET / 2))
            })
            .then(|| start.elapsed())
        })
        .await
        .expect("the dead master's breaker never opened");
        let (each, all) = gauges(&server, &ports).await;
        assert_eq!(
            each,
            vec![Some(2.0), Some(0.0), Some(0.0)],
            "only the dead master's breaker is open"
        );
        assert_eq!(all, Some(2.0), "the store-wide gauge shows the worst");
        let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
        assert_eq!(ready["status"], "degraded", "{ready}");
        let dead_name = format!("127.0.0.1:{dead_port}");
        assert_eq!(ready["store"]["domains"][&dead_name], "open", "{ready}");
        assert_eq!(
            ready["store"]["domains"].as_object().map(|m| m.len()),
            Some(1),
            "{ready}"
        );

        // The cluster's own part: the other masters count the dead one as failing after the
        // node timeout, agree it has failed, and its replica wins an election (it waits half a
        // second plus up to half a second before asking). About two node timeouts here (4.3 s
        // of 2 s); four leave room for a loaded machine.
        let redis_bound = cluster.node_timeout() * 4;
        let promoted = wait_until_async(redis_bound, || async {
            let owner = tokio::task::block_in_place(|| cluster.owner(slot));
            (owner == Some(heir_port)).then(|| start.elapsed())
        })
        .await
        .expect("the replica was never promoted");
        let heir_id = cluster.node_id(heir_port).expect("the new master's ID");
        assert_ne!(heir_id, dead_id, "a failover names another node");

        Self {
            cluster,
            server,
            users,
            ports,
            heir_port,
            start,
            stop,
            logs,
            tasks,
            killed,
            opened,
            promoted,
        }
    }
}

/// Stops the load and waits for its tasks.
async fn stop_load(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
}

/// Whether `probe` holds for the answers in `log` asked after `since`.
fn after<T>(log: &Log, since: Duration, probe: impl Fn(&[&Sample]) -> T) -> T {
    let log = log.lock().expect("log");
    let samples: Vec<&Sample> = log
        .iter()
        .filter(|(at, _)| *at >= since)
        .map(|(_, s)| s)
        .collect();
    probe(&samples)
}

/// The tests each start six Redis servers and put load on them: one at a time on a shared
/// two-core machine, so that neither slows the other's failover.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// See the module docs: the failover with `cluster-require-full-coverage no`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_as_a_new_domain() {
    let _serial = SERIAL.lock().await;
    let Failover {
        cluster,
        server,
        users,
        ports,
        heir_port,
        start,
        stop,
        logs,
        tasks,
        killed,
        opened,
        promoted,
    } = Failover::run(false).await;
    let dead_port = ports[0];

    // Spillway's part, with the manual clock never moved (so no breaker cooldown can pass):
    // the slot map names the new master within a refresh interval (plus one store timeout if
    // the node asked is the dead one), the new master's breaker starts closed, and the next
    // request is decided by Redis.
    let spillway_bound = REFRESH_EVERY * 2 + BUDGET * 2 + SLACK;
    let recovered = wait_until_async(spillway_bound, || async {
        after(&logs[0], promoted, |s| {
            s.iter().position(|s| s.decided()).map(|_| ())
        })
        .map(|()| start.elapsed())
    })
    .await;
    let recovered = recovered.unwrap_or_else(|| {
        panic!(
            "the dead master's user was not decided again within {spillway_bound:?} of the \
             promotion; logs:\n{}",
            server.logs().join("\n")
        )
    });
    // Some more decisions after the recovery, then the load stops.
    let settled = wait_until_async(Duration::from_secs(5), || async {
        after(&logs[0], recovered, |s| {
            s.iter().filter(|s| s.decided()).count() >= 20
        })
        .then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the dead master's user did not stay decided"
    );
    stop_load(&stop, tasks).await;

    // The healthy masters' users: decided by Redis throughout. A loaded two-core machine may
    // stall a rare request past the budget (it then takes `closed`): at most 2% of them, and
    // never one refused at once.
    for (log, user) in logs[1..].iter().zip(&users[1..]) {
        let log = log.lock().expect("log");
        let (decided, late): (Vec<&Sample>, Vec<&Sample>) =
            log.iter().map(|(_, s)| s).partition(|s| s.decided());
        for s in &late {
            assert!(
                s.took >= BUDGET,
                "{user} on a healthy master refused at once: {s:?}"
            );
        }
        assert!(
            late.len() * 50 <= log.len(),
            "{user}: {} of {} late",
            late.len(),
            log.len()
        );
        // Exact counts: each decision took one from the budget (a late answer may have been
        // charged too, but not answered).
        let remaining: Vec<u64> = decided.iter().filter_map(|s| s.remaining).collect();
        assert_eq!(
            remaining.len(),
            decided.len(),
            "every decision has its headers"
        );
        for pair in remaining.windows(2) {
            let charged = pair[0]
                .checked_sub(pair[1])
                .unwrap_or_else(|| panic!("{user}: remaining rose {} -> {}", pair[0], pair[1]));
            assert!(
                charged >= 1 && charged <= 1 + late.len() as u64,
                "{user}: remaining went {} -> {}",
                pair[0],
                pair[1]
            );
        }
    }

    // The dead master's user: decided before the kill; 503 (`closed`) from the kill until
    // the recovery, at most FAILURES + a few timing out before the breaker opened and the
    // rest failing fast; decided after.
    let log = std::mem::take(&mut *logs[0].lock().expect("log"));
    let before: Vec<&Sample> = log
        .iter()
        .filter(|(at, _)| *at < killed)
        .map(|(_, s)| s)
        .collect();
    // The outage runs from the kill to the first decided answer. That answer may come a
    // little before the test saw the promotion (its poll lags; Spillway refreshes its map on
    // its own), but never before the cluster can have failed over: no sooner than half a node
    // timeout after the kill.
    let first_after = log
        .iter()
        .find(|(at, s)| *at >= killed && s.decided())
        .map(|(at, s)| (*at, s))
        .expect("decided after the promotion");
    assert!(
        first_after.0 >= killed + cluster.node_timeout() / 2,
        "the dead master's user was decided {:?} after the kill, before any failover",
        first_after.0 - killed
    );
    let outage: Vec<&Sample> = log
        .iter()
        .filter(|(at, _)| *at >= killed && *at < first_after.0)
        .map(|(_, s)| s)
        .collect();
    for s in &outage {
        assert_eq!(
            s.status, 503,
            "the dead master's user takes `closed`: {s:?}"
        );
    }
    let slow = outage.iter().filter(|s| s.took >= BUDGET / 2).count();
    let late_after = log
        .iter()
        .filter(|(at, s)| *at > first_after.0 && !s.decided())
        .count();
    let after_count = log.iter().filter(|(at, _)| *at > first_after.0).count();
    assert!(
        late_after * 50 <= after_count,
        "{late_after} of {after_count} late after the recovery"
    );

    // Its budget: what the replica had is what the new master has. A write the old master
    // acknowledged but had not yet sent is lost (Redis replicates asynchronously): the budget
    // left can only be higher than the last answer before the kill, never lower (no charge is
    // made up; a request that timed out after the promotion may have been charged), never
    // reset and never negative.
    let last_before = before
        .iter()
        .rev()
        .find_map(|s| s.decided().then_some(s.remaining).flatten())
        .expect("a decision before the kill");
    let first_remaining = first_after.1.remaining.expect("headers after the failover");
    let charged_unanswered = outage.iter().filter(|s| s.took >= BUDGET).count() as u64;
    assert!(
        first_remaining + 1 + charged_unanswered >= last_before,
        "the failover took more than was asked: {last_before} before, {first_remaining} after"
    );
    assert!(
        first_remaining < LIMIT - 20,
        "the failover reset the count: {last_before} before, {first_remaining} after"
    );
    let lost = (first_remaining + 1).saturating_sub(last_before);

    // Metrics and readiness after the recovery: the new master is a domain of its own,
    // closed, and nothing is open; the dead master's series is gone.
    let survivors = [heir_port, ports[1], ports[2]];
    let (each, all) = gauges(&server, &survivors).await;
    assert_eq!(
        each,
        vec![Some(0.0); 3],
        "the new master and the others: closed"
    );
    assert_eq!(all, Some(0.0), "nothing open");
    let (dead, _) = gauges(&server, &[dead_port]).await;
    assert_eq!(dead, vec![None], "the dead master's series is gone");
    let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ok", "{ready}");
    assert!(ready["store"].get("domains").is_none(), "{ready}");
    // The serving threads' connections follow: one to each master again, the new one too.
    all_thread_conns_up(&server, "after the failover").await;

    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "failover timings: breaker open {} ms after the kill ({slow} of {} outage answers \
         slow); replica promoted {} ms after the kill; decided again {} ms after the \
         promotion ({} ms after the kill); writes lost: {lost}",
        ms(opened - killed),
        outage.len(),
        ms(promoted - killed),
        ms(first_after.0.saturating_sub(promoted)),
        ms(recovered - killed),
    );
}

/// With Redis's default `cluster-require-full-coverage yes`, the healthy masters refuse too
/// (`CLUSTERDOWN`) from the moment the dead master is marked failed until its replica is
/// promoted, and their breakers open. Their users were decided until the cluster declared the
/// failure (at least half a node timeout after the kill), and every master is decided again
/// once the breakers' next probes find the cluster whole (one cooldown, stepped here on the
/// manual clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_full_coverage_every_master_refuses_until_the_promotion() {
    let _serial = SERIAL.lock().await;
    let Failover {
        cluster,
        server,
        users,
        ports,
        heir_port,
        start,
        stop,
        logs,
        tasks,
        killed,
        promoted,
        ..
    } = Failover::run(true).await;
    let steps = std::sync::atomic::AtomicU64::new(0);
    let bound = REFRESH_EVERY * 2 + BUDGET * 2 + SLACK;
    let back = wait_until_async(bound, || async {
        server.advance_ms(COOLDOWN.as_millis() as u64).await;
        steps.fetch_add(1, Ordering::Relaxed);
        for user in &users {
            if !ask(&server, user).await.decided() {
                return None;
            }
        }
        Some(start.elapsed())
    })
    .await
    .unwrap_or_else(|| {
        panic!("not every master was decided again within {bound:?} of the promotion")
    });
    stop_load(&stop, tasks).await;

    // Refused at once (the breaker open) only while the cluster was down; a loaded two-core
    // machine may stall a rare request past the budget at any time (at most 2%).
    let (mut refused, mut stalled, mut asked) = (0, 0, 0);
    for (log, user) in logs[1..].iter().zip(&users[1..]) {
        let log = log.lock().expect("log");
        asked += log.len();
        for (at, s) in log.iter().filter(|(_, s)| !s.decided()) {
            assert_eq!(s.status, 503, "{user} takes `closed`: {s:?}");
            let down = *at >= killed + cluster.node_timeout() / 2 && *at <= back;
            if s.took < BUDGET / 2 {
                assert!(
                    down,
                    "{user} refused at once at {at:?}, before the cluster declared the failure \
                     ({killed:?} + half of {:?}) or after the recovery ({back:?}): {s:?}",
                    cluster.node_timeout()
                );
                refused += 1;
            } else if !down {
                stalled += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "no healthy master's user was refused while the cluster was down"
    );
    assert!(stalled * 50 <= asked, "{stalled} of {asked} stalled");
    // The stepped clock may have let the dead master's breaker probe, through the client's
    // own slot map, the new master before the store's map named it: it is named within a
    // refresh or two (the breakers take the names on a request).
    let survivors = [heir_port, ports[1], ports[2]];
    let named = wait_until_async(REFRESH_EVERY * 2 + BUDGET, || async {
        ask(&server, &users[0]).await;
        let (each, all) = gauges(&server, &survivors).await;
        (each == vec![Some(0.0); 3] && all == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        named.is_some(),
        "every breaker closed again, the new master's included: {:?}",
        gauges(&server, &survivors).await
    );
    let (dead, _) = gauges(&server, &ports[..1]).await;
    assert_eq!(dead, vec![None], "the dead master's series is gone");
    let ready: serde_json::Value = server.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ok", "{ready}");
    eprintln!(
        "full coverage: {refused} requests for the healthy masters refused; replica promoted \
         {} ms after the kill; every master decided again {} ms after the promotion, after \
         {} cooldown steps",
        (promoted - killed).as_millis(),
        (back - promoted).as_millis(),
        steps.load(Ordering::Relaxed)
    );
}
