//! Surviving what happens to a real Redis: its script cache flushed, the process killed and
//! restarted on the same port. Also: hostile key values on a cluster, and all-or-nothing
//! across limits.

mod common;

use common::{check, key, redis_store, sample, Backend};
use spillway_core::algorithm::{FixedWindow, LimitParams, TokenBucket};
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_core::time::{HOUR, MINUTE};
use spillway_redis::keys;
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::metrics::LocalMetrics;
use spillway_testkit::redis::{command, RedisCluster, RedisServer};
use std::sync::Arc;
use std::time::Duration;

fn bucket(burst: u64) -> LimitParams {
    LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), burst).unwrap())
}

#[tokio::test]
async fn noscript_after_script_flush_is_recovered() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(1_700_000_000_000_000);
    let (k, p) = (key("l", &["a"]), bucket(3));
    assert!(
        store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .unwrap()[0]
            .allowed
    );
    assert!(command(server.port(), "SCRIPT FLUSH").is_some_and(|r| r.starts_with("+OK")));
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect("reloaded");
    assert_eq!(d[0].remaining, 1, "state kept across the flush");
}

#[tokio::test]
async fn a_restarted_redis_is_reconnected_and_errors_are_typed_while_down() {
    let mut server = RedisServer::start();
    let mut config = RedisConfig::new(Target::Server(server.url()), "the test's URL");
    config.timeout = Duration::from_secs(2);
    let store = RedisStore::connect(&config).await.expect("connects");
    let (k, p) = (key("l", &["restart"]), bucket(5));
    assert!(
        store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .unwrap()[0]
            .allowed
    );

    server.kill();
    let err = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect_err("down");
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Timeout(_)),
        "{err:?}"
    );
    assert!(store.ping().await.is_err());

    server.restart();
    // The client reconnects in the background; give it a generous moment on a loaded box.
    // Polling uses PING, so no attempt can consume from the key before the one that counts.
    let mut reconnected = false;
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reconnected,
        "the store answers PING again after the restart"
    );
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect("the store answers checks again after the restart");
    // Nothing was persisted: the key starts over.
    assert_eq!(d[0].remaining, 4);
}

#[tokio::test]
async fn hostile_values_get_distinct_keys_in_the_slot_redis_computes() {
    let cluster = RedisCluster::start();
    let (store, clock) = redis_store(Backend::Cluster(cluster.urls())).await;
    clock.set(1_700_000_000_000_000);
    let long = "v".repeat(10 * 1024);
    let values = [
        "a:b",
        "a",
        "{a}",
        "}{",
        "a b",
        "a\nb",
        "",
        "%3A",
        &long,
        "tenant}:x",
    ];
    let p = bucket(1);
    let port = cluster.ports()[0];
    for v in values {
        let k = key("hostile", &[v, "tail"]);
        // Each value owns its own counter: the first request passes, the second is denied.
        let first = store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .unwrap();
        let second = store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .unwrap();
        assert!(first[0].allowed && !second[0].allowed, "value {v:?}");
        let redis_key = store.redis_key(&k);
        let slot = command(port, &format!("CLUSTER KEYSLOT {redis_key}")).expect("keyslot");
        assert_eq!(
            slot.trim(),
            format!(":{}", keys::slot(&redis_key)),
            "{redis_key}"
        );
    }
}

#[tokio::test]
async fn a_denial_by_one_limit_charges_none_on_a_server_and_across_cluster_slots() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    for backend in [
        Backend::Server(server.url()),
        Backend::Cluster(cluster.urls()),
    ] {
        let (store, clock) = redis_store(backend).await;
        clock.set(1_700_000_000_000_000);
        let roomy = LimitParams::FixedWindow(FixedWindow::new(10, MINUTE).unwrap());
        let tight = bucket(1);
        // Different first values: different hash tags, so different slots in the cluster.
        let (a, b) = (key("roomy", &["tenant-a"]), key("tight", &["user-b"]));
        let both = |cost| [check(&a, &roomy, cost), check(&b, &tight, cost)];
        assert!(store
            .check(&both(1), CheckMode::Consume)
            .await
            .unwrap()
            .iter()
            .all(|d| d.allowed));
        let denied = store.check(&both(1), CheckMode::Consume).await.unwrap();
        assert!(denied[0].allowed && !denied[1].allowed);
        let after = store
            .check(&[check(&a, &roomy, 1)], CheckMode::Peek)
            .await
            .unwrap();
        assert_eq!(after[0].remaining, 8, "the denied request was refunded");
    }
}

#[tokio::test]
async fn a_peek_does_not_feed_the_local_over_limit_cache() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(Target::Server(server.url()), "the test's URL");
    config.timeout = Duration::from_secs(5);
    config.local_cache_keys = 64;
    let clock = Arc::new(spillway_core::time::ManualClock::new(1_700_000_000_000_000));
    let store = RedisStore::connect_with_injected_time(&config, clock.clone())
        .await
        .expect("connects");
    let (k, p) = (key("l", &["peeked"]), bucket(1));
    let one = [check(&k, &p, 1)];
    assert!(store.check(&one, CheckMode::Consume).await.unwrap()[0].allowed);
    let peek = store.check(&one, CheckMode::Peek).await.unwrap();
    assert!(!peek[0].allowed, "the bucket is empty");
    assert!(
        store.local_answer(&one).is_none(),
        "a peek's denial must not be cached for later decisions"
    );
    // A consuming denial still is.
    assert!(!store.check(&one, CheckMode::Consume).await.unwrap()[0].allowed);
    assert!(store.local_answer(&one).is_some());
}

/// A cost past a limit of 2^53 (the largest a limit may be) is refused as too large, as the
/// in-memory store refuses it: sent as 2^53 + 1 it would round to 2^53 in a Lua double, read
/// as exactly the limit and be admitted on an empty window.
#[tokio::test]
async fn a_cost_past_the_largest_limit_is_refused_not_rounded_down() {
    use spillway_core::algorithm::Denial;
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(1_700_000_000_000_000);
    let p = LimitParams::FixedWindow(FixedWindow::new(1 << 53, MINUTE).unwrap());
    let memory = spillway_core::store::MemoryStore::new(100, clock.clone());
    for (i, cost) in [(1u64 << 53) + 1, (1 << 53) + 2, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let k = key("huge", &[&format!("k{i}")]);
        let d = store
            .check(&[check(&k, &p, cost)], CheckMode::Consume)
            .await
            .unwrap();
        assert!(
            !d[0].allowed,
            "cost {cost} over a limit of 2^53: {:?}",
            d[0]
        );
        assert_eq!(d[0].denial, Some(Denial::CostExceedsLimit), "cost {cost}");
        let m = memory.check_blocking(&[check(&k, &p, cost)], CheckMode::Consume);
        assert_eq!(m[0].allowed, d[0].allowed, "memory agrees for cost {cost}");
    }
    // The limit itself still fits.
    let k = key("huge", &["whole"]);
    let d = store
        .check(&[check(&k, &p, 1 << 53)], CheckMode::Consume)
        .await
        .unwrap();
    assert!(
        d[0].allowed,
        "a cost of exactly the limit on an empty window"
    );
}

/// A ping (`/readyz`) that fails as unavailable is sent once more (it may have met the
/// connection an outage left stale): `spillway_store_errors_total` counts what the ping ended
/// with, one error per ping while Redis is down (not one per attempt), none once it answers.
// One thread, so the test's own metrics recorder (thread-local) hears every count.
#[tokio::test(flavor = "current_thread")]
async fn a_ping_counts_its_outcome_not_its_attempts() {
    let counts = LocalMetrics::hear();
    let errors = || sample(&counts.render(), "spillway_store_errors_total");
    let mut server = RedisServer::start();
    let mut config = RedisConfig::new(Target::Server(server.url()), "the test's URL");
    config.timeout = Duration::from_secs(2);
    let store = RedisStore::connect(&config).await.expect("connects");
    store.ping().await.expect("up");
    assert_eq!(errors(), 0);

    server.kill();
    for told in 1..=3 {
        assert!(store.ping().await.is_err());
        assert_eq!(errors(), told, "one failed ping, one error");
    }

    server.restart();
    // Whether its first attempt meets the connection the outage left or not, a ping that
    // answers counts nothing.
    let before = errors();
    store.ping().await.expect("answered after the restart");
    assert_eq!(errors(), before, "a ping that ended well counted an error");
}

/// A store whose callers bound their own waits (`timed_by_caller`, as the server's failure
/// guard does) puts no timer on each check's wait; a server that stops answering still fails
/// a check whose caller does not give up as a timeout within about the store's timeout,
/// counted once for its one call, because each Redis call keeps a timer of its own. Once the server answers again, so do checks, counting
/// on from where they were.
#[tokio::test]
async fn a_store_timed_by_its_callers_still_fails_a_hung_server_within_its_timeout() {
    let counts = LocalMetrics::hear();
    let timeouts = || {
        spillway_testkit::metrics::sample(
            &counts.render(),
            "spillway_store_errors_total",
            "kind=\"timeout\"",
        )
    };
    let server = RedisServer::start();
    let proxy = spillway_testkit::proxy::DelayProxy::start(server.port());
    let mut config = RedisConfig::new(Target::Server(proxy.url()), "the test's URL");
    let timeout = Duration::from_millis(300);
    config.timeout = timeout;
    config.local_cache_keys = 0;
    config.timed_by_caller = true;
    let store = RedisStore::connect(&config).await.expect("connects");
    let (k, params) = (key("timed-by-caller", &["u"]), bucket(100));
    let take = || async {
        store
            .check(&[check(&k, &params, 1)], CheckMode::Consume)
            .await
            .map(|d| (d[0].allowed, d[0].remaining))
    };
    assert_eq!(take().await.expect("answered"), (true, 99));

    proxy.set_delay(timeout * 4);
    // A latency measured on the wall clock, which the store's timers run on.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let hung = take().await;
    let took = started.elapsed();
    assert!(
        matches!(hung, Err(StoreError::Timeout(t)) if t == timeout),
        "{hung:?}"
    );
    assert!(
        took >= timeout && took < timeout * 3,
        "failed after {took:?}, the timeout being {timeout:?}"
    );
    assert_eq!(timeouts(), 1, "one call timed out, counted once");

    proxy.set_delay(Duration::ZERO);
    // The late reply of the hung call (it did reach Redis) is read and dropped; the next
    // check counts on from it.
    tokio::time::sleep(timeout * 4).await;
    assert_eq!(take().await.expect("answered again"), (true, 97));
}
