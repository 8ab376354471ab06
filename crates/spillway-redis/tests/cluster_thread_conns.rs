//! A cluster's thread connections against a real three-master Redis Cluster (testkit): a
//! serving thread's checks go out on its own connection to the master of their slot; a slot
//! moved to another master under them is refused there (`MOVED`) and resent on the store's
//! cluster connection, counted once; a dead master sends only its own connections aside; they
//! log in as the seeds do; and every one closes with the store. (That they follow a failover
//! is `spillway-server/tests/cluster_failover.rs`'s.)

mod common;

use common::thread_conns::{clients, closed_by_peer, eventually, serving_thread_when};
use common::{check, key, sample, window};
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_redis::batch::BATCH_REQUESTS;
use spillway_redis::thread_conn::THREAD_CONN_RESENT;
use spillway_redis::{keys, RedisConfig, RedisStore, Target};
use spillway_testkit::metrics::LocalMetrics;
use spillway_testkit::redis::RedisCluster;
use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// A store on `cluster` with the local cache off, checks bounded by `timeout`.
async fn store_on(cluster: &RedisCluster, timeout: Duration) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(Target::Cluster(cluster.urls()), "the test's URLs");
    config.timeout = timeout;
    config.local_cache_keys = 0;
    Arc::new(RedisStore::connect(&config).await.expect("connects"))
}

/// A three-master cluster, a store on it (checks bounded by `timeout`), and a key on each
/// master, in the order of the cluster's ports.
async fn three_masters(timeout: Duration) -> (RedisCluster, Arc<RedisStore>, Vec<StateKey>) {
    let cluster = RedisCluster::start();
    let store = store_on(&cluster, timeout).await;
    let keys = one_key_per_master(&store, &cluster, &cluster.ports(), "api");
    (cluster, store, keys)
}

/// One key on each master (in the order of `ports`), for limit `limit`.
fn one_key_per_master(
    store: &RedisStore,
    cluster: &RedisCluster,
    ports: &[u16],
    limit: &str,
) -> Vec<StateKey> {
    let mut found: Vec<Option<StateKey>> = vec![None; ports.len()];
    for i in 0.. {
        let k = key(limit, &[&format!("user{i}")]);
        let owner = cluster.owner(slot_of(store, &k)).expect("a served slot");
        if let Some(at) = ports.iter().position(|&p| p == owner) {
            found[at].get_or_insert(k);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().flatten().collect()
}

fn slot_of(store: &RedisStore, k: &StateKey) -> u16 {
    keys::slot(&store.redis_key(k))
}

/// Runs `work` on a serving thread of `store` once the thread's connections to the masters of
/// `keys` are up; the thread runs on until the returned sender fires (or is dropped).
fn serving_for<F, Fut>(
    store: &Arc<RedisStore>,
    keys: &[StateKey],
    work: F,
) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    F: FnOnce(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (stop, stopped) = oneshot::channel();
    let ready = keys.to_vec();
    let thread = serving_thread_when(
        store.clone(),
        stopped,
        move |store| served_here(store, &ready),
        work,
    );
    (stop, thread)
}

/// Whether this thread's own connection would serve a check of each of `keys`.
fn served_here(store: &RedisStore, keys: &[StateKey]) -> bool {
    let params = window(1);
    keys.iter()
        .all(|k| store.served_on_this_thread(&[check(k, &params, 1)]))
}

/// How much of `params`' window the checks of `k` have used, by a peek.
async fn used(store: &RedisStore, k: &StateKey, limit: u64) -> u64 {
    let params = window(limit);
    let d = store
        .check(&[check(k, &params, 1)], CheckMode::Peek)
        .await
        .expect("peek");
    limit - d[0].remaining - u64::from(d[0].allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threads_checks_go_out_on_its_own_conn_to_each_master() {
    let (cluster, store, keys) = three_masters(Duration::from_secs(2)).await;
    let ports = cluster.ports();
    // The store's own connections to each master, before any thread attaches.
    let shared: Vec<HashSet<u64>> = ports
        .iter()
        .map(|&p| clients(p).into_iter().map(|(id, _)| id).collect())
        .collect();
    assert!(shared.iter().all(|ids| !ids.is_empty()));

    let (seen, saw) = oneshot::channel();
    let checked = keys.clone();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let params = window(1000);
        // A request spanning slots is not the thread's to serve.
        let spanning = [
            check(&checked[0], &params, 1),
            check(&checked[1], &params, 1),
        ];
        let spans_here = store.served_on_this_thread(&spanning);
        for k in &checked {
            for _ in 0..3 {
                let d = store
                    .check(&[check(k, &params, 1)], CheckMode::Consume)
                    .await
                    .expect("check");
                assert!(d[0].allowed);
            }
        }
        let _ = seen.send((
            spans_here,
            ports.iter().map(|&p| clients(p)).collect::<Vec<_>>(),
        ));
    });
    let (spans_here, after) = saw.await.expect("the thread reports");
    assert!(!spans_here, "checks of several slots take the shared path");
    for (at, (clients, shared)) in after.iter().zip(&shared).enumerate() {
        let own: Vec<_> = clients
            .iter()
            .filter(|(id, _)| !shared.contains(id))
            .collect();
        assert_eq!(
            own.len(),
            1,
            "one thread connection to master {at}: {clients:?}"
        );
        assert_eq!(own[0].1, "fcall", "the checks went out on it: {clients:?}");
        assert!(
            clients
                .iter()
                .filter(|(id, _)| shared.contains(id))
                .all(|(_, cmd)| cmd != "fcall"),
            "no check took the shared connection: {clients:?}"
        );
    }
    for k in &keys {
        assert_eq!(used(&store, k, 1000).await, 3, "each check counted once");
    }
    let _ = stop.send(());
    thread.join().expect("thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_the_thread_conns_is_resent_and_counted_once() {
    let cluster = Arc::new(RedisCluster::start());
    let store = store_on(&cluster, Duration::from_secs(2)).await;
    let k = key("api", &["mover"]);
    let moving = cluster.clone();
    let slot = slot_of(&store, &k);
    let (seen, saw) = oneshot::channel();
    let ready = [k.clone()];
    let (stop, thread) = serving_for(&store, &ready, move |store| async move {
        let counts = LocalMetrics::hear();
        let params = window(1000);
        let one = || async {
            let d = store
                .check(&[check(&k, &params, 1)], CheckMode::Consume)
                .await
                .expect("a check of a moved slot is answered");
            assert!(d[0].allowed);
        };
        one().await;
        let before = store.domains(&[check(&k, &params, 1)]);
        let source = moving.owner(slot).expect("the slot's master");
        let target = moving.other_master(slot);
        // Moved, and checked at once, before the store's view of the slots (asked once a
        // second) knows: its thread connection to the old master gets `MOVED`. A view that
        // happened to refresh in between moves it back and tries again.
        let mut checks = 1;
        let mut resent = 0;
        for _ in 0..5 {
            moving.move_slot(slot, target);
            let stale = store.domains(&[check(&k, &params, 1)]) == before;
            one().await;
            checks += 1;
            resent = sample(&counts.render(), THREAD_CONN_RESENT);
            if stale && resent > 0 {
                break;
            }
            assert_eq!(resent, 0, "resent only from a stale view");
            assert!(eventually(|| store.domains(&[check(&k, &params, 1)]) != before).await);
            moving.move_slot(slot, source);
            assert!(eventually(|| store.domains(&[check(&k, &params, 1)]) == before).await);
        }
        assert_eq!(resent, 1, "the check on the stale view was resent");
        // The view follows (a redirect asks for it at once), and the next checks go to
        // the new master's thread connection: no more resends.
        assert!(
            eventually(|| store.domains(&[check(&k, &params, 1)]) != before).await,
            "the store's view follows the move"
        );
        assert!(store.served_on_this_thread(&[check(&k, &params, 1)]));
        for _ in 0..3 {
            one().await;
            checks += 1;
        }
        let resent_after = sample(&counts.render(), THREAD_CONN_RESENT);
        let errors = sample(&counts.render(), "spillway_store_errors_total");
        let _ = seen.send((checks, resent_after, errors));
    });
    let (checks, resent, errors) = saw.await.expect("the thread reports");
    assert_eq!(resent, 1, "nothing resent once the view follows");
    assert_eq!(errors, 0, "a redirect is no store error");
    let k = key("api", &["mover"]);
    assert_eq!(
        used(&store, &k, 1000).await,
        checks,
        "each check counted once"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_every_thread_conn_on_every_master() {
    let (cluster, store, keys) = three_masters(Duration::from_secs(2)).await;
    let ports = cluster.ports();
    let mut threads = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let (ready, up) = oneshot::channel();
        let (stop, thread) = serving_for(&store, &keys, |_| async move {
            let _ = ready.send(());
        });
        threads.push(thread);
        up.await.expect("thread connections up");
        stops.push(stop);
    }
    // Two threads' and the shared connection at least, on every master.
    for &port in &ports {
        assert!(clients(port).len() >= 3, "{:?}", clients(port));
    }
    drop(store);
    for &port in &ports {
        assert!(
            eventually(|| clients(port).is_empty()).await,
            "every connection to {port} closed with the store: {:?}",
            clients(port)
        );
    }
    for (stop, thread) in stops.into_iter().zip(threads) {
        let _ = stop.send(());
        thread.join().expect("thread");
    }
}

/// Behind a password, each master's thread connection logs in as the seed URLs say, and the
/// checks go out on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_conns_to_a_cluster_behind_a_password_log_in_as_the_seeds_do() {
    let cluster = RedisCluster::with_password("s3cret");
    let mut config = RedisConfig::new(
        Target::Cluster(cluster.urls_with_login(":s3cret@")),
        "the test's URLs",
    );
    config.local_cache_keys = 0;
    let store = Arc::new(RedisStore::connect(&config).await.expect("connects"));
    let keys = one_key_per_master(&store, &cluster, &cluster.ports(), "api");
    let (seen, saw) = oneshot::channel();
    let checked = keys.clone();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let params = window(10);
        for k in &checked {
            let d = store
                .check(&[check(k, &params, 1)], CheckMode::Consume)
                .await
                .expect("check");
            assert!(d[0].allowed);
        }
        let _ = seen.send(());
    });
    saw.await.expect("the thread's checks were answered");
    for k in &keys {
        assert_eq!(used(&store, k, 10).await, 1);
    }
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// A master killed under a thread's connections sends only the connections to it aside: right
/// after a check of its slot fails, the thread's checks of the other masters' slots stay on
/// their own connections, answered there. The check found its connection closed and could
/// not make it again, so nothing of it was sent: it went on the shared path (where it failed
/// too) and is counted once, as a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_sends_only_its_own_thread_conns_aside() {
    let (mut cluster, store, keys) = three_masters(Duration::from_millis(500)).await;
    let (up, is_up) = oneshot::channel();
    let (killed, was_killed) = oneshot::channel::<()>();
    let (seen, saw) = oneshot::channel();
    let checked = keys.clone();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let counts = LocalMetrics::hear();
        let _ = up.send(());
        was_killed.await.expect("the test kills the master");
        // A yield lets the runtime poll its sockets' events first (the close among them), even
        // if it was busy when the test's word came.
        tokio::task::yield_now().await;
        let params = window(1000);
        let dead = store
            .check(&[check(&checked[0], &params, 1)], CheckMode::Consume)
            .await;
        let resent = sample(&counts.render(), THREAD_CONN_RESENT);
        // Asked at once, before any ping could bring a connection back.
        let others_here = served_here(&store, &checked[1..]);
        let dead_here = served_here(&store, &checked[..1]);
        let mut others = Vec::new();
        for k in &checked[1..] {
            let d = store
                .check(&[check(k, &params, 1)], CheckMode::Consume)
                .await;
            others.push(d.map(|d| d[0].allowed));
        }
        let _ = seen.send((dead.is_err(), resent, dead_here, others_here, others));
    });
    is_up.await.expect("thread connections up");
    let dead_port = cluster.ports()[0];
    assert!(
        !closed_by_peer(dead_port),
        "the wait below sees the connections"
    );
    cluster.node_mut(0).kill();
    // The check is to find its connection closed before it writes: that needs the close to
    // have reached this host's sockets (the thread's runtime then takes it in while it waits
    // for the test's word). Without this wait the check could go out first, and fail as sent.
    assert!(
        eventually(|| closed_by_peer(dead_port)).await,
        "the dead master's connections were closed"
    );
    let _ = killed.send(());
    let (dead_failed, resent, dead_here, others_here, others) =
        saw.await.expect("the thread reports");
    assert!(dead_failed, "the dead master's check fails");
    assert_eq!(resent, 1, "not sent on the thread's connection: resent");
    assert!(!dead_here, "its connection stepped aside");
    assert!(others_here, "the other masters' connections stayed up");
    assert!(
        others.iter().all(|d| matches!(d, Ok(true))),
        "and answered: {others:?}"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// A master that comes back at another address under the same node ID (a restarted pod) is
/// no change of hands: the thread's connection to it follows the view's report of the new
/// address and serves there. (Before, it kept trying the old address: once a check found it
/// gone, the master's checks took the shared path for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_back_at_another_address_is_followed_there() {
    moved_master_is_followed(Duration::from_secs(2), false).await;
}

/// A master that moves while its old address goes silent (a host gone without a reset: the
/// old process is stopped, so the old connection stays open and unanswered) is followed too:
/// the second check in a row that gets no answer there in time, with the view reporting the
/// master elsewhere, closes the connection, and the next one is made at the new address.
/// (Before, every check of the master's slots timed out on the old connection until the
/// kernel gave up on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_moved_from_an_address_gone_silent_is_followed_there() {
    moved_master_is_followed(Duration::from_millis(500), true).await;
}

/// Moves master 0 to other ports under its node ID (`silent`: leaving its old process stopped
/// there) while a serving thread of a store with checks bounded by `timeout` checks a key of
/// it, and asserts that the thread's own connection serves that key again, three checks in a
/// row, with no change of hands and each check answered counted once.
async fn moved_master_is_followed(timeout: Duration, silent: bool) {
    let (mut cluster, store, keys) = three_masters(timeout).await;
    let generation = store.domain_generation();
    let (up, is_up) = oneshot::channel();
    let (moved, was_moved) = oneshot::channel::<()>();
    let (seen, saw) = oneshot::channel();
    let checked = keys.clone();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let _ = up.send(());
        was_moved.await.expect("the test moves the master");
        let params = window(1000);
        // Until three checks in a row are answered with this thread's connection to the
        // master up, for at least 10 s. One that finds the old address dead goes on the
        // shared path (answered there or failed); one at a silent address times out.
        let (mut in_a_row, mut answered, mut tries) = (0, 0, 0);
        while in_a_row < 3 && tries < 60 {
            tries += 1;
            let here = served_here(&store, &checked[..1]);
            let d = store
                .check(&[check(&checked[0], &params, 1)], CheckMode::Consume)
                .await;
            let allowed = matches!(d, Ok(ref d) if d[0].allowed);
            answered += u64::from(allowed);
            if here && allowed && served_here(&store, &checked[..1]) {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Counted here, on this thread's connection: the store's own cluster connection
        // may still be waiting at a silent address.
        let used = store
            .check(&[check(&checked[0], &params, 1)], CheckMode::Peek)
            .await
            .map(|d| 1000 - d[0].remaining - u64::from(d[0].allowed));
        let _ = seen.send((in_a_row, answered, tries, used));
    });
    is_up.await.expect("thread connections up");
    let old = cluster.ports()[0];
    let port = if silent {
        cluster.move_master_leaving_silent(0)
    } else {
        cluster.move_master(0)
    };
    let _ = moved.send(());
    let (in_a_row, answered, tries, used) = saw.await.expect("the thread reports");
    // Up before and after each check: up at all, it is at the new port, since nothing
    // answers at the old one.
    assert_eq!(
        in_a_row, 3,
        "the thread's connection followed the master from {old} to {port} ({tries} checks)"
    );
    assert_eq!(
        store.domain_generation(),
        generation,
        "no change of hands: made again by the address alone"
    );
    // The master lost its data with its move: the checks answered since are all it holds
    // (none that timed out at a silent old address ran at the new one).
    assert_eq!(
        used.as_ref().ok(),
        Some(&answered),
        "each counted once: {used:?}"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// A master changing hands in the slot map (here: a new master joins and takes a slot) makes
/// every thread connection again, to each master the map names then, the new one included,
/// without failing a check in flight on the old connections: each leaves the thread's list and
/// finishes what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_remakes_the_thread_conns_and_fails_no_check_in_flight() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (mut cluster, store, keys) = three_masters(Duration::from_secs(2)).await;
    let mover = key("api", &["mover"]);
    let generation = store.domain_generation();
    let (running, is_running) = oneshot::channel();
    let (moved, was_moved) = oneshot::channel::<()>();
    let (seen, saw) = oneshot::channel();
    let loaded = keys.clone();
    let moving = mover.clone();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let done = Arc::new(AtomicBool::new(false));
        let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        // A steady load on the three masters from this thread, many checks in flight.
        let loops: Vec<_> = (0..12)
            .map(|i| {
                let (store, k) = (store.clone(), loaded[i % loaded.len()].clone());
                let (done, answered, failed) = (done.clone(), answered.clone(), failed.clone());
                tokio::spawn(async move {
                    let params = window(1_000_000);
                    while !done.load(Ordering::Relaxed) {
                        match store
                            .check(&[check(&k, &params, 1)], CheckMode::Consume)
                            .await
                        {
                            Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                eprintln!("a check failed: {err}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        let _ = running.send(());
        was_moved.await.expect("the test moves a slot");
        // The map names the new master (a change of hands), and this thread's connection
        // to it comes up.
        let remade = eventually(|| {
            store.domain_generation() != generation
                && served_here(&store, std::slice::from_ref(&moving))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        done.store(true, Ordering::Relaxed);
        for l in loops {
            l.await.expect("load loop");
        }
        let still_here = served_here(&store, &loaded);
        let _ = seen.send((
            remade,
            still_here,
            answered.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        ));
    });
    is_running.await.expect("the load runs");
    let new = cluster.add_master();
    cluster.move_slot(slot_of(&store, &mover), new);
    let _ = moved.send(());
    let (remade, still_here, answered, failed) = saw.await.expect("the thread reports");
    assert!(remade, "a connection to the new master");
    assert!(still_here, "and to the others, made again");
    assert!(
        answered > 100,
        "the load ran through the change: {answered}"
    );
    assert_eq!(failed, 0, "no check failed of {answered}");
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// A thread's connection to a master carries a call per busy slot: more than a single server's
/// connection may hold waiting for replies (`own_conn::MAX_WAITING`, 1,024) is no sign of a
/// dead master there. Here 1,500 checks of one master's slots wait on it while the master is
/// paused, and every one is answered once it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masters_conn_holds_a_call_per_busy_slot_past_a_servers_bound() {
    let (cluster, store, keys) = three_masters(Duration::from_secs(5)).await;
    let port = cluster.ports()[0];
    let view = cluster.view().expect("CLUSTER NODES");
    let master = view
        .iter()
        .find(|l| l.port == port)
        .expect("the master's line");
    let mut many = Vec::new();
    for i in 0.. {
        let k = key("api", &[&format!("crowd{i}")]);
        if master.serves(slot_of(&store, &k)) {
            many.push(k);
        }
        if many.len() == 1500 {
            break;
        }
    }
    let (up, is_up) = oneshot::channel();
    let (frozen, was_frozen) = oneshot::channel::<()>();
    let (sent, were_sent) = oneshot::channel();
    let (resumed, was_resumed) = oneshot::channel::<()>();
    let (seen, saw) = oneshot::channel();
    let (stop, thread) = serving_for(&store, &keys, move |store| async move {
        let counts = LocalMetrics::hear();
        let _ = up.send(());
        was_frozen.await.expect("the test pauses the master");
        let calls: Vec<_> = many
            .into_iter()
            .map(|k| {
                let store = store.clone();
                tokio::spawn(async move {
                    let params = window(10);
                    store
                        .check(&[check(&k, &params, 1)], CheckMode::Consume)
                        .await
                        .map(|d| d[0].allowed)
                })
            })
            .collect();
        // Every check handed to the connection while the master is paused (each lane keeps
        // up to `IN_FLIGHT` calls out, and no slot here has more keys than that), seen by the
        // calls' sizes as they are sent, rather than by a wait.
        let handed = || sample(&counts.render(), &format!("{BATCH_REQUESTS}_sum"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while handed() < 1500 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = sent.send(handed());
        was_resumed.await.expect("the test resumes the master");
        let mut answered = 0;
        let mut failed = Vec::new();
        for call in calls {
            match call.await.expect("check task") {
                Ok(true) => answered += 1,
                other => failed.push(other),
            }
        }
        let _ = seen.send((answered, failed));
    });
    // Paused once the thread's connection to the master is up.
    is_up.await.expect("thread connections up");
    cluster.node(0).freeze();
    let _ = frozen.send(());
    let handed = were_sent.await.expect("the checks went out");
    cluster.node(0).resume();
    assert_eq!(
        handed, 1500,
        "every check on the connection while the master was paused"
    );
    let _ = resumed.send(());
    let (answered, failed) = saw.await.expect("the thread reports");
    assert_eq!(
        answered,
        1500,
        "every check answered: {:?}",
        &failed[..failed.len().min(3)]
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}
