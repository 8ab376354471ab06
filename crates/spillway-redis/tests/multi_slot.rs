//! Requests spanning several cluster slots, on a real three-master cluster: exact under
//! concurrency (charged on every slot or on none), and nothing left charged by a request
//! whose caller gave up (its own timeout, or the server's budget dropping the call).

mod common;

use common::{check, key, redis_store, window, Backend, T0};
use spillway_core::algorithm::LimitParams;
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_redis::keys;
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::redis::{command, RedisCluster};
use std::sync::Arc;
use std::time::Duration;

/// How much of `params` is left on `k` (a peek of cost 1 reports `remaining` after it).
async fn left(store: &RedisStore, k: &StateKey, params: &LimitParams) -> u64 {
    let d = store
        .check(&[check(k, params, 1)], CheckMode::Peek)
        .await
        .unwrap();
    d[0].remaining + u64::from(d[0].allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_admit_exactly_the_limit_and_charge_every_slot_or_none() {
    let cluster = RedisCluster::start();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    let store = Arc::new(store);
    // The README's layout: a tenant limit shared by everyone, a per-client limit of its own
    // (another hash tag, so another slot for most clients).
    let (tenant, tight) = (key("tenant", &["acme"]), window(10));
    let roomy = window(1_000);
    let clients: Vec<StateKey> = (0..60)
        .map(|i| key("per-ip", &[&format!("10.0.0.{i}")]))
        .collect();
    let calls: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, own)| {
            let (store, tenant, tight, roomy, own) = (
                store.clone(),
                tenant.clone(),
                tight.clone(),
                roomy.clone(),
                own.clone(),
            );
            tokio::spawn(async move {
                // Half the requests list the tenant first, half their own limit first.
                let (a, b) = (check(&tenant, &tight, 1), check(&own, &roomy, 1));
                let checks = if i % 2 == 0 { [a, b] } else { [b, a] };
                let d = store
                    .check(&checks, CheckMode::Consume)
                    .await
                    .expect("answers");
                d.iter().all(|d| d.allowed)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for call in calls {
        admitted.push(call.await.expect("no task panicked"));
    }
    assert_eq!(
        admitted.iter().filter(|a| **a).count(),
        10,
        "exactly the limit"
    );
    assert_eq!(left(&store, &tenant, &tight).await, 0);
    let spread = clients
        .iter()
        .filter(|c| keys::slot(&store.redis_key(c)) != keys::slot(&store.redis_key(&tenant)));
    assert!(spread.count() > 50, "most requests span two slots");
    for (own, admitted) in clients.iter().zip(&admitted) {
        let charged = 1_000 - left(&store, own, &roomy).await;
        assert_eq!(
            charged,
            u64::from(*admitted),
            "{own:?}: charged on both slots or neither"
        );
    }
}

/// Keeps the cluster node owning `key` busy for `busy` (a script spinning on `TIME`), the way
/// a slow or overloaded node looks to its clients. Other nodes answer `-MOVED` at once.
fn stall_owner(ports: &[u16], key: &str, busy: Duration) -> Vec<std::thread::JoinHandle<()>> {
    let script = format!(
        "EVAL \"local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
         local stop = now() + {} while now() < stop do end return 1\" 1 {key}",
        busy.as_micros()
    );
    ports
        .iter()
        .map(|&port| {
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = command(port, &script);
            })
        })
        .collect()
}

/// Waits until a node of `ports` has begun a stall of [`stall_owner`]'s (a `PING` on a fresh
/// connection goes unanswered for 50 ms), for at most 2 s: a fixed sleep could end before the
/// stalling thread's script reached its node on a loaded machine.
async fn until_stalled(ports: &[u16]) {
    let ports = ports.to_vec();
    let stalled = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        for _ in 0..200 {
            for &port in &ports {
                let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                if conn.write_all(b"PING\r\n").is_err() {
                    continue;
                }
                let mut reply = [0u8; 16];
                if let Err(e) = conn.read(&mut reply) {
                    use std::io::ErrorKind::{TimedOut, WouldBlock};
                    if matches!(e.kind(), WouldBlock | TimedOut) {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    })
    .await
    .expect("no panic");
    assert!(stalled, "no node began the stall within 2 s");
}

/// Waits (real time: the refund lands when the stalled node answers) until both keys are
/// fresh again, or fails.
async fn until_fresh(
    store: &RedisStore,
    a: (&StateKey, &LimitParams),
    b: (&StateKey, &LimitParams),
) {
    for _ in 0..100 {
        if left(store, a.0, a.1).await == 10 && left(store, b.0, b.1).await == 10 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the abandoned request's charges were not refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_gave_up_leaves_no_charge_behind() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    // A patient store to look with, and an impatient one to charge with.
    let (looker, look_clock) = redis_store(Backend::Cluster(cluster.urls())).await;
    let mut config = RedisConfig::new(Target::Cluster(cluster.urls()), "the test's URL");
    config.timeout = Duration::from_millis(150);
    config.local_cache_keys = 0;
    let clock = Arc::new(spillway_core::time::ManualClock::new(T0));
    let hasty = RedisStore::connect_with_injected_time(&config, clock.clone())
        .await
        .expect("connects");
    look_clock.set(T0);
    let p = window(10);
    for (round, dropped_by_caller) in [(0, false), (1, true)] {
        let (a, b) = (
            key("fast", &[&format!("a{round}")]),
            key("slow", &[&format!("b{round}")]),
        );
        assert_ne!(
            keys::slot(&hasty.redis_key(&a)),
            keys::slot(&hasty.redis_key(&b))
        );
        let stalls = stall_owner(&ports, &hasty.redis_key(&b), Duration::from_millis(700));
        until_stalled(&ports).await;
        let both = [check(&a, &p, 3), check(&b, &p, 3)];
        if dropped_by_caller {
            // The server's budget drops the call mid-flight instead of letting it time out.
            let outer = tokio::time::timeout(
                Duration::from_millis(100),
                hasty.check(&both, CheckMode::Consume),
            );
            assert!(outer.await.is_err(), "the caller gave up first");
        } else {
            let err = hasty
                .check(&both, CheckMode::Consume)
                .await
                .expect_err("times out");
            assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
        }
        for s in stalls {
            s.join().expect("stall thread");
        }
        until_fresh(&looker, (&a, &p), (&b, &p)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_asked_at_once_not_one_after_another() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    let (looker, look_clock) = redis_store(Backend::Cluster(cluster.urls())).await;
    look_clock.set(T0);
    let store = Arc::new(store);
    let p = window(10);
    let first = key("first", &["a"]);
    let owner = |k: &StateKey| cluster.owner(keys::slot(&store.redis_key(k)));
    let first_node = owner(&first);
    let second = (0..)
        .map(|i| key("second", &[&format!("b{i}")]))
        .find(|k| owner(k) != first_node)
        .expect("some value lands on another node");
    // Both connections know every node (and each node the script) before the stall.
    let both = [check(&first, &p, 3), check(&second, &p, 3)];
    assert!(store.check(&both, CheckMode::Peek).await.unwrap()[1].allowed);
    assert_eq!(left(&looker, &second, &p).await, 10);
    // The first slot's node is stalled; the second slot is charged meanwhile all the same.
    let stalls = stall_owner(
        &ports,
        &store.redis_key(&first),
        Duration::from_millis(1_500),
    );
    until_stalled(&ports).await;
    let call = {
        let (store, first, second, p) = (store.clone(), first.clone(), second.clone(), p.clone());
        tokio::spawn(async move {
            let both = [check(&first, &p, 3), check(&second, &p, 3)];
            store.check(&both, CheckMode::Consume).await
        })
    };
    // Look for the second slot's charge while the first node is still busy (a real wait,
    // bounded well inside the stall).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_000);
    let mut charged_early = false;
    while tokio::time::Instant::now() < deadline && !call.is_finished() {
        if left(&looker, &second, &p).await == 7 && !call.is_finished() {
            charged_early = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = call
        .await
        .expect("no panic")
        .expect("answers once the node is free");
    assert!(d.iter().all(|d| d.allowed));
    for s in stalls {
        s.join().expect("stall thread");
    }
    assert!(charged_early, "the second slot waited for the first");
    assert_eq!(left(&looker, &first, &p).await, 7);
}
