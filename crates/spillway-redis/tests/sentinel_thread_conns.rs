//! Thread connections on a store that finds its master through real `redis-sentinel` processes: an
//! attached thread checks on a connection of its own to the master; a master demoted to a replica
//! (`READONLY`) sends the thread connection aside at once and keeps it off that server; after a
//! failover under load the thread connections connect to the new master, where decisions go on,
//! exact; a master restarted empty at its old address after a failover gets no thread connection;
//! a check meeting a thread connection the master closed while idle is answered on the shared
//! connection; dropping the store closes them all.

// A failover takes real time (the sentinels' own timers); the test measures it on the wall.
#![allow(clippy::disallowed_methods)]

mod common;

use common::thread_conns::{
    checks_go_out_on_own_conn, clients, dropping_the_store_closes_its_conns, eventually,
    kill_the_thread_conn, serving_thread,
};
use common::{assert_few_late, check, key, window};
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_redis::thread_conn::THREAD_CONN_RESENT;
use spillway_redis::{RedisConfig, RedisStore, SentinelAuth, Target};
use spillway_testkit::metrics::{sample, LocalMetrics};
use spillway_testkit::proxy::DelayProxy;
use spillway_testkit::redis::{calls, RedisServer};
use spillway_testkit::sentinel::{SentinelGroup, DOWN_AFTER_MS, MASTER_NAME};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

async fn store(group: &SentinelGroup, timeout: Duration) -> Arc<RedisStore> {
    store_asking(group.sentinel_urls(), timeout).await
}

/// A store asking the sentinels at `sentinels`.
async fn store_asking(sentinels: Vec<String>, timeout: Duration) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(
        Target::Sentinel {
            sentinels,
            master: MASTER_NAME.into(),
            auth: SentinelAuth::default(),
        },
        "the test's URL",
    );
    config.timeout = timeout;
    config.local_cache_keys = 0;
    Arc::new(RedisStore::connect(&config).await.expect("connects"))
}

/// One check of a large window: whether it was allowed.
async fn one_check(store: &RedisStore, name: &str) -> Result<bool, StoreError> {
    take_of(store, name, 1_000_000)
        .await
        .map(|(allowed, _)| allowed)
}

/// One check of a window of 100: whether it was allowed, and what is left.
async fn take(store: &RedisStore, name: &str) -> Result<(bool, u64), StoreError> {
    take_of(store, name, 100).await
}

/// One check of a window of `limit`: whether it was allowed, and what is left.
async fn take_of(store: &RedisStore, name: &str, limit: u64) -> Result<(bool, u64), StoreError> {
    let k = key("sentinel-lanes", &[name]);
    let params = window(limit);
    let d = store
        .check(&[check(&k, &params, 1)], CheckMode::Consume)
        .await?;
    Ok((d[0].allowed, d[0].remaining))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_thread_checks_on_its_own_connection_to_the_master() {
    let group = SentinelGroup::start();
    let port = group.first_master_port();
    let store = store(&group, Duration::from_secs(2)).await;
    let shared = clients(port);
    assert_eq!(shared.len(), 1, "one shared connection: {shared:?}");
    let shared = shared[0].0;
    checks_go_out_on_own_conn(store, port, shared, |store| async move {
        assert!(matches!(one_check(&store, "u").await, Ok(true)));
    })
    .await;
}

/// A master the sentinels name by an IPv6 address: the thread's own connection goes to
/// `[::1]:<port>` and checks there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_thread_checks_on_its_own_connection_to_an_ipv6_master() {
    if !SentinelGroup::ipv6_available() {
        eprintln!("skipped: this machine cannot listen on ::1");
        return;
    }
    let group = SentinelGroup::start_on_ipv6();
    let port = group.first_master_port();
    let store = store(&group, Duration::from_secs(2)).await;
    assert_eq!(store.sentinel_master(), Some(group.address(port)));
    let shared = clients(port);
    assert_eq!(shared.len(), 1, "one shared connection: {shared:?}");
    checks_go_out_on_own_conn(store, port, shared[0].0, |store| async move {
        assert!(matches!(one_check(&store, "u").await, Ok(true)));
    })
    .await;
}

/// The master closes a thread's connection while it is idle (as a proxy's idle cut, the
/// server's `timeout` or `CLIENT KILL` do). That connection went to a master the sentinels named,
/// so it is not made again by itself; but the check that finds it closed wrote nothing on it, so
/// the check goes on the store's shared connection and is answered, counted exactly once (and in
/// `spillway_redis_thread_lane_resent_total`), within its budget (2 s here, ample for the look at
/// the sentinels the shared connection waits for, as the close counts it lost too). The thread's
/// connection steps aside and is made again to the master, where the next check is counted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_conn_the_master_closed_while_idle_fails_no_check_within_its_budget() {
    let group = SentinelGroup::start();
    let port = group.first_master_port();
    let store = store(&group, Duration::from_secs(2)).await;
    let shared = clients(port)[0].0;
    let (stop, stopped) = oneshot::channel();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        let counts = LocalMetrics::hear();
        let before = take(&store, "idle").await;
        kill_the_thread_conn(port, shared).await;
        let on_thread_conn = store.served_on_this_thread(&[]);
        let first = take(&store, "idle").await;
        let resent = sample(&counts.render(), THREAD_CONN_RESENT, "");
        let back = eventually(|| store.served_on_this_thread(&[])).await;
        let after = take(&store, "idle").await;
        let _ = result.send((before, on_thread_conn, first, resent, back, after));
    });
    let (before, on_thread_conn, first, resent, back, after) =
        outcome.await.expect("the thread reports");
    assert_eq!(before.expect("answered"), (true, 99));
    assert!(on_thread_conn, "the check went to the thread connection");
    assert_eq!(
        first.expect("the check that found the close is answered"),
        (true, 98),
        "and counted once"
    );
    assert_eq!(resent, 1, "{THREAD_CONN_RESENT}");
    assert!(back, "the thread connection is made again");
    assert_eq!(after.expect("answered"), (true, 97));
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// Dropping a Sentinel store closes its connections to the master: its own and every thread's
/// (each made through the store's own, which they hold until their tasks end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_its_thread_conns() {
    let group = SentinelGroup::start();
    let store = store(&group, Duration::from_secs(2)).await;
    dropping_the_store_closes_its_conns(store, group.first_master_port(), |store| async move {
        assert!(matches!(one_check(&store, "u").await, Ok(true)));
    })
    .await;
}

/// The master is made a replica of an unrelated server behind the sentinels' back (as a demoted
/// master that is still up looks): the thread connection's next check meets `READONLY`, the thread
/// connection steps aside at once, and while the store still names that server no thread connection
/// is made on it (it does not act as master); once it is master again, the thread connection comes
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_sends_the_thread_conn_aside_and_keeps_it_off() {
    let group = SentinelGroup::start();
    let port = group.first_master_port();
    let elsewhere = RedisServer::start();
    let store = store(&group, Duration::from_millis(500)).await;
    let (stop, stopped) = oneshot::channel();
    let (up, is_up) = oneshot::channel::<()>();
    let (demoted, was_demoted) = oneshot::channel::<()>();
    let (looked, has_looked) = oneshot::channel();
    let (promoted, was_promoted) = oneshot::channel::<()>();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        assert!(matches!(one_check(&store, "u").await, Ok(true)));
        let _ = up.send(());
        let _ = was_demoted.await;
        let on_lane = store.served_on_this_thread(&[]);
        let met = one_check(&store, "u").await;
        let aside_at_once = !store.served_on_this_thread(&[]);
        // The store still names the demoted server: for a while, no thread connection is up on it.
        let mut stayed_off = true;
        let until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < until {
            stayed_off &= !store.served_on_this_thread(&[]);
            let _ = one_check(&store, "u").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = looked.send((on_lane, met, aside_at_once, stayed_off));
        let _ = was_promoted.await;
        let back = eventually(|| store.served_on_this_thread(&[])).await;
        let answered = one_check(&store, "u").await;
        let _ = result.send((back, answered));
    });
    is_up.await.expect("the thread connection answered");
    let replicaof = format!("REPLICAOF 127.0.0.1 {}", elsewhere.port());
    spillway_testkit::redis::command(port, &replicaof).expect("demoted");
    let _ = demoted.send(());
    let (on_lane, met, aside_at_once, stayed_off) = has_looked.await.expect("the thread looked");
    assert!(
        on_lane,
        "the check after the demotion was sent on the thread connection"
    );
    assert!(
        matches!(&met, Err(StoreError::Unavailable(why)) if why.to_lowercase().contains("readonly")),
        "a demoted master refuses the write as unavailable: {met:?}"
    );
    assert!(
        aside_at_once,
        "READONLY sends the thread connection aside at once"
    );
    assert!(
        stayed_off,
        "no thread connection is made on a server that is not master"
    );
    spillway_testkit::redis::command(port, "REPLICAOF NO ONE").expect("promoted");
    let _ = promoted.send(());
    let (back, answered) = outcome.await.expect("the thread reports");
    assert!(
        back,
        "the thread connection comes back once the server is master again"
    );
    assert!(answered.is_ok(), "{answered:?}");
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// Two serving threads keep checking while the master is killed; the store follows the failover,
/// both thread connections connect to the new master and decisions go on there, on the thread
/// connections; a fresh limit shared by both threads then admits exactly its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_under_load_the_thread_conns_move_to_the_new_master() {
    let mut group = SentinelGroup::start();
    let timeout = Duration::from_millis(200);
    let store = store(&group, timeout).await;
    let promoted = group.replica_port();
    let (killed, was_killed) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    let mut reports = Vec::new();
    let mut stops = Vec::new();
    let mut ups = Vec::new();
    for t in 0..2 {
        let (stop, stopped) = oneshot::channel();
        let (up, is_up) = oneshot::channel::<()>();
        let (report, reported) = oneshot::channel();
        let mut was_killed = was_killed.clone();
        threads.push(serving_thread(
            store.clone(),
            stopped,
            move |store| async move {
                // Told once this thread has answered five checks: the load ran before the kill.
                let mut up = Some(up);
                // A steady load, one check every 10 ms, until the thread connection is up on the
                // new master and has answered there for a while.
                let mut outcomes: Vec<(Instant, Instant, Result<bool, StoreError>)> = Vec::new();
                let mut moved_at: Option<Instant> = None;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let started = Instant::now();
                    let got = one_check(&store, &format!("steady-{t}")).await;
                    outcomes.push((started, Instant::now(), got));
                    if outcomes.len() == 5 {
                        if let Some(up) = up.take() {
                            let _ = up.send(());
                        }
                    }
                    let moved = *was_killed.borrow_and_update()
                        && store.sentinel_master() == Some(format!("127.0.0.1:{promoted}"))
                        && store.served_on_this_thread(&[]);
                    match (moved, moved_at) {
                        (true, None) => moved_at = Some(Instant::now()),
                        (true, Some(at)) if at.elapsed() > Duration::from_millis(500) => break,
                        _ => {}
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the thread connection never moved"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Exactness on the new master: 2 threads x 30 checks of a limit of 40.
                let k = key("sentinel-lanes", &["exact"]);
                let params = window(40);
                let mut admitted = 0;
                for _ in 0..30 {
                    let d = store
                        .check(&[check(&k, &params, 1)], CheckMode::Consume)
                        .await
                        .expect("decided on the new master");
                    admitted += usize::from(d[0].allowed);
                }
                let _ = report.send((
                    outcomes,
                    moved_at,
                    admitted,
                    store.served_on_this_thread(&[]),
                ));
            },
        ));
        reports.push(reported);
        stops.push(stop);
        ups.push(is_up);
    }
    for up in ups {
        up.await.expect("five checks answered");
    }
    let kill_at = Instant::now();
    group.kill_master();
    killed.send_replace(true);
    let mut admitted = 0;
    for reported in reports {
        let (outcomes, moved_at, own, on_lane) = reported.await.expect("the thread reports");
        let moved_at = moved_at.expect("moved");
        admitted += own;
        assert!(
            on_lane,
            "the exact checks ran on the thread's own connection"
        );
        let before: Vec<_> = outcomes
            .iter()
            .filter(|(_, end, _)| *end < kill_at)
            .collect();
        assert!(before.len() >= 5, "the load ran before the kill");
        assert!(
            before.iter().all(|(_, _, r)| matches!(r, Ok(true))),
            "answered before the kill"
        );
        let after: Vec<_> = outcomes
            .iter()
            .filter(|(start, _, _)| *start > moved_at)
            .collect();
        assert!(after.len() >= 10, "the load went on after the move");
        assert!(
            after.iter().all(|(_, _, r)| matches!(r, Ok(true))),
            "answered on the new master: {:?}",
            after.iter().find(|(_, _, r)| r.is_err())
        );
        // Calls failed only as typed outages, within the store's timeout. A loaded machine
        // may wake a thread late now and then, so one late failure in ten (and always one) is
        // let pass. The hard bound, the timeout plus DOWN_AFTER_MS, catches a call that
        // started near the kill and waited for the failover (the sentinels take at least
        // DOWN_AFTER_MS to act); a call started later in the outage could wait until the
        // failover and still pass it. And a SIGKILLed master's port resets or refuses at once,
        // so these failures are mostly quick `Unavailable`s: the `Timeout` path is barely
        // taken here, and this bounds how long failing calls waited rather than testing it.
        let failed: Vec<_> = outcomes.iter().filter(|(_, _, r)| r.is_err()).collect();
        for (start, end, r) in &failed {
            assert!(*end >= kill_at, "{r:?}");
            assert!(
                *end - *start <= timeout + Duration::from_millis(DOWN_AFTER_MS),
                "{r:?} after {:?}",
                *end - *start
            );
            assert!(
                matches!(r, Err(StoreError::Unavailable(_) | StoreError::Timeout(_))),
                "{r:?}"
            );
        }
        let spans: Vec<_> = failed
            .iter()
            .map(|(start, end, _)| (*start, *end))
            .collect();
        assert_few_late(&spans, timeout);
    }
    assert_eq!(
        admitted, 40,
        "exactly the limit, over both thread connections"
    );
    // The shared connection pings last, so a check it sent does not count below.
    store.ping().await.expect("ping");
    let on_new = clients(promoted);
    assert_eq!(
        on_new.iter().filter(|(_, cmd)| cmd == "fcall").count(),
        2,
        "both thread connections checked on the new master: {on_new:?}"
    );
    for (stop, thread) in stops.into_iter().zip(threads) {
        let _ = stop.send(());
        thread.join().expect("thread");
    }
}

/// The master dies after the thread connection is up, the sentinels promote the replica while the
/// store cannot reach any of them, and the old master's supervisor restarts it at its address,
/// empty and acting as master: the thread connection must not be made to it (its checks fail as
/// an outage and none reaches it). Once the sentinels answer again, the thread connection is made
/// to the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_empty_at_its_address_gets_no_thread_conn() {
    let mut group = SentinelGroup::start();
    let proxies: Vec<DelayProxy> = group
        .sentinel_ports()
        .into_iter()
        .map(DelayProxy::start)
        .collect();
    let store = store_asking(
        proxies.iter().map(DelayProxy::url).collect(),
        Duration::from_secs(2),
    )
    .await;
    let (first, promoted) = (group.first_master_port(), group.replica_port());
    let (stop, stopped) = oneshot::channel();
    let (up, is_up) = oneshot::channel::<()>();
    let (restarted, was_restarted) = oneshot::channel::<()>();
    let (looked, has_looked) = oneshot::channel();
    let (healed, was_healed) = oneshot::channel::<()>();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        assert!(matches!(one_check(&store, "u").await, Ok(true)));
        let _ = up.send(());
        let _ = was_restarted.await;
        let mut answered = Vec::new();
        let mut on_thread_conn = false;
        // Each waits up to its 2 s for a master the sentinels name.
        for _ in 0..3 {
            answered.extend(one_check(&store, "u").await.ok());
            on_thread_conn |= store.served_on_this_thread(&[]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = looked.send((answered, on_thread_conn));
        let _ = was_healed.await;
        let promoted = Some(format!("127.0.0.1:{promoted}"));
        // The store asks again within a second; the thread connection follows the switch. A
        // loaded machine is given more than `eventually`'s 5 s.
        let deadline = Instant::now() + Duration::from_secs(20);
        let back = loop {
            if store.sentinel_master() == promoted && store.served_on_this_thread(&[]) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let _ = result.send((back, one_check(&store, "u").await));
    });
    is_up.await.expect("the thread connection answered");
    for proxy in &proxies {
        proxy.cut();
    }
    group.kill_master();
    group.wait_for_failover();
    group.restart_first_master();
    let _ = restarted.send(());
    let (answered, on_thread_conn) = has_looked.await.expect("the thread looked");
    assert!(
        answered.is_empty(),
        "checks answered while no sentinel could be asked: {answered:?}"
    );
    assert!(!on_thread_conn, "a thread connection was made");
    assert_eq!(
        calls(first, "fcall"),
        0,
        "checks reached the restarted server"
    );
    for proxy in &proxies {
        proxy.heal();
    }
    let _ = healed.send(());
    let (back, answered) = outcome.await.expect("the thread reports");
    assert!(
        back,
        "the thread connection is made to the promoted replica: the store follows {:?}",
        store.sentinel_master()
    );
    assert!(matches!(answered, Ok(true)), "{answered:?}");
    assert_eq!(
        calls(first, "fcall"),
        0,
        "checks reached the restarted server"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}
