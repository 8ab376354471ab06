//! The sliding log's Redis form (a sorted set; see `lua/sliding_log.lua`): what it writes and
//! when, how it reads with changed numbers or an old-format value, and how a cross-slot
//! refund restores it. Decisions themselves are checked by the conformance vectors.

mod common;

use common::{check, check_one, key, redis_store, Backend, T0};
use spillway_core::algorithm::{LimitParams, SlidingLog, TokenBucket};
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{MemoryStore, Store};
use spillway_core::time::ManualClock;
use spillway_core::time::{HOUR, SECOND};
use spillway_redis::keys;
use spillway_testkit::redis::{command, RedisCluster, RedisServer};
use std::sync::Arc;

fn log(limit: u64) -> LimitParams {
    LimitParams::SlidingLog(SlidingLog::new(limit, 10 * SECOND).unwrap())
}

/// Redis's count of writes since start (nothing is saved, so it only grows).
fn writes(port: u16) -> u64 {
    let info = command(port, "INFO persistence").expect("INFO answers");
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO persistence has rdb_changes_since_last_save")
}

/// The reply to `cmd` from whichever cluster node owns its key (others answer `-MOVED`).
fn on_owner(ports: &[u16], cmd: &str) -> String {
    ports
        .iter()
        .filter_map(|&p| command(p, cmd))
        .find(|r| !r.starts_with("-MOVED"))
        .expect("some node owns the key")
}

#[tokio::test]
async fn denials_and_peeks_write_nothing() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let (k, p) = (key("quiet", &["a"]), log(3));
    for i in 0..3 {
        clock.set(T0 + i * SECOND);
        assert!(check_one(&store, &k, &p, 1, CheckMode::Consume).await[0].allowed);
    }
    let before = writes(server.port());
    clock.set(T0 + 5 * SECOND);
    let denied = check_one(&store, &k, &p, 1, CheckMode::Consume).await;
    assert!(!denied[0].allowed);
    assert_eq!(denied[0].retry_after, Some(5 * SECOND));
    let peeked = check_one(&store, &k, &p, 1, CheckMode::Peek).await;
    assert_eq!(peeked[0], denied[0]);
    assert_eq!(
        writes(server.port()),
        before,
        "a denial or a peek wrote to Redis"
    );
    // An admission does write: the oldest entry has left the window, one more comes in.
    clock.set(T0 + 10 * SECOND);
    assert!(check_one(&store, &k, &p, 1, CheckMode::Consume).await[0].allowed);
    assert!(writes(server.port()) > before);
    let members = command(server.port(), &format!("ZCARD {}", store.redis_key(&k))).unwrap();
    assert_eq!(members.trim(), ":3", "the expired entry was trimmed");
}

#[tokio::test]
async fn a_changed_limit_reads_the_same_entries_with_its_new_numbers() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    // The test keys' fingerprint depends on the name only, as it will once limits keep their
    // counters across a change of numbers: the same key under three limits.
    let k = key("reloaded", &["a"]);
    for i in 0..10 {
        clock.set(T0 + i * 100_000);
        assert!(
            store
                .check(&[check(&k, &log(10), 1)], CheckMode::Consume)
                .await
                .unwrap()[0]
                .allowed
        );
    }
    clock.set(T0 + SECOND);
    let looser = store
        .check(&[check(&k, &log(12), 1)], CheckMode::Peek)
        .await
        .unwrap();
    assert!(looser[0].allowed);
    assert_eq!(looser[0].remaining, 1);
    let tighter = store
        .check(&[check(&k, &log(9), 1)], CheckMode::Consume)
        .await
        .unwrap();
    assert!(!tighter[0].allowed);
    assert_eq!(tighter[0].remaining, 0);
    // Ten held, nine allowed: two entries must leave, the second of them at 0.1 s + 10 s.
    assert_eq!(tighter[0].retry_after, Some(10 * SECOND + 100_000 - SECOND));
}

#[tokio::test]
async fn a_log_in_the_old_string_form_is_read_and_rewritten_once() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let (k, p) = (key("old", &["a"]), log(5));
    let redis_key = store.redis_key(&k);
    let old = format!("L;{},2;{},1", T0, T0 + SECOND);
    let set = command(server.port(), &format!("SET {redis_key} {old} PX 60000")).unwrap();
    assert!(set.starts_with("+OK"), "{set}");
    clock.set(T0 + 2 * SECOND);
    let d = check_one(&store, &k, &p, 3, CheckMode::Consume).await;
    assert!(!d[0].allowed, "three held, three more is one too many");
    assert_eq!(d[0].remaining, 2);
    assert_eq!(
        d[0].retry_after,
        Some(8 * SECOND),
        "the first entry frees two"
    );
    let kind = command(server.port(), &format!("TYPE {redis_key}")).unwrap();
    assert_eq!(kind.trim(), "+zset");
    let d = check_one(&store, &k, &p, 2, CheckMode::Consume).await;
    assert!(d[0].allowed);
    assert_eq!(d[0].remaining, 0);

    // A key left holding another algorithm's state reads as fresh both ways round.
    let bucket =
        LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), 2).unwrap());
    let d = check_one(&store, &k, &bucket, 1, CheckMode::Consume).await;
    assert_eq!((d[0].allowed, d[0].remaining), (true, 1));
    let d = check_one(&store, &k, &p, 1, CheckMode::Consume).await;
    assert_eq!((d[0].allowed, d[0].remaining), (true, 4));
}

#[tokio::test]
async fn a_refund_across_slots_restores_the_log_exactly() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    let (store, clock) = redis_store(Backend::Cluster(cluster.urls())).await;
    let (lk, lp) = (key("log", &["tenant-a"]), log(5));
    let bucket =
        LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), 1).unwrap());
    // A different first value: another hash tag, so (here) another slot.
    let (bk, spent) = (key("tight", &["user-b"]), bucket);
    assert_ne!(
        keys::slot(&store.redis_key(&lk)),
        keys::slot(&store.redis_key(&bk))
    );
    clock.set(T0);
    assert!(check_one(&store, &bk, &spent, 1, CheckMode::Consume).await[0].allowed);
    assert!(check_one(&store, &lk, &lp, 2, CheckMode::Consume).await[0].allowed);
    let zrange = format!("ZRANGE {} 0 -1 WITHSCORES", store.redis_key(&lk));
    let before = on_owner(&ports, &zrange);
    // At the same time (the log's newest entry grows) and later (a new entry is added), a
    // request the bucket denies leaves the log exactly as it was.
    for at in [T0, T0 + SECOND] {
        clock.set(at);
        let peek = check_one(&store, &lk, &lp, 1, CheckMode::Peek).await;
        let both = [check(&lk, &lp, 1), check(&bk, &spent, 1)];
        let d = store.check(&both, CheckMode::Consume).await.unwrap();
        assert!(d[0].allowed && !d[1].allowed, "{d:?}");
        assert_eq!(on_owner(&ports, &zrange), before, "at {at}");
        let after = check_one(&store, &lk, &lp, 1, CheckMode::Peek).await;
        assert_eq!(after, peek);
    }
}

#[tokio::test]
async fn a_key_listed_twice_keeps_the_last_evaluation_as_in_memory() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let mem_clock = Arc::new(ManualClock::new(T0));
    let memory = MemoryStore::new(100, mem_clock.clone());
    let (k, p) = (key("twice", &["a"]), log(5));
    for (step, costs) in [(0, [1, 2]), (1, [2, 1]), (1, [1, 1])] {
        clock.set(T0 + step * SECOND);
        mem_clock.set(T0 + step * SECOND);
        let both = [check(&k, &p, costs[0]), check(&k, &p, costs[1])];
        let got = store.check(&both, CheckMode::Consume).await.unwrap();
        let want = memory.check(&both, CheckMode::Consume).await.unwrap();
        assert_eq!(got, want, "step {step} costs {costs:?}");
        let got = check_one(&store, &k, &p, 1, CheckMode::Peek).await;
        let want = check_one(&memory, &k, &p, 1, CheckMode::Peek).await;
        assert_eq!(got, want, "after step {step} costs {costs:?}");
    }
}
