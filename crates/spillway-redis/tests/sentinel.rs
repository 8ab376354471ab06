//! A store that finds its master through real `redis-sentinel` processes: it follows a
//! failover without a restart, and the calls that fail meanwhile fail as typed store errors.

// A failover takes real time (the sentinels' own timers); the test measures it on the wall.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{check, key};
use spillway_core::algorithm::{LimitParams, TokenBucket};
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_core::time::SECOND;
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::sentinel::{SentinelGroup, MASTER_NAME};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(group: &SentinelGroup) -> RedisConfig {
    let mut config = RedisConfig::new(Target::Sentinel {
        sentinels: group.sentinel_urls(),
        master: MASTER_NAME.into(),
    });
    config.timeout = Duration::from_millis(200);
    config
}

#[tokio::test]
async fn a_failover_is_followed_without_a_restart() {
    let mut group = SentinelGroup::start();
    let mut unknown = config(&group);
    unknown.target = Target::Sentinel {
        sentinels: group.sentinel_urls(),
        master: "no-such-master".into(),
    };
    let err = RedisStore::connect(&unknown)
        .await
        .expect_err("no such master");
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Protocol(_)),
        "{err:?}"
    );

    let store = Arc::new(
        RedisStore::connect(&config(&group))
            .await
            .expect("connects"),
    );
    let first = format!("127.0.0.1:{}", group.first_master_port());
    assert_eq!(store.sentinel_master().as_deref(), Some(first.as_str()));

    // A steady load, one call every 10 ms, noting when each call started and ended, and how.
    let params = LimitParams::TokenBucket(
        TokenBucket::new(Rate::new(1_000_000, SECOND).unwrap(), 1_000_000).unwrap(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = {
        let store = store.clone();
        tokio::spawn(async move {
            let k = key("steady", &["one"]);
            let mut outcomes: Vec<(Instant, Instant, Result<bool, StoreError>)> = Vec::new();
            while !*stopped.borrow() {
                let started = Instant::now();
                let got = store
                    .check(&[check(&k, &params, 1)], CheckMode::Consume)
                    .await
                    .map(|d| d[0].allowed);
                outcomes.push((started, Instant::now(), got));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    group.kill_master();

    // The store switches by itself, soon after the sentinels promote the replica.
    let promoted = format!("127.0.0.1:{}", group.replica_port());
    let deadline = Instant::now() + Duration::from_secs(25);
    while store.sentinel_master().as_deref() != Some(promoted.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the store never followed the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    let outcomes = load.await.unwrap();

    let before: Vec<_> = outcomes
        .iter()
        .filter(|(_, end, _)| *end < killed)
        .collect();
    let after: Vec<_> = outcomes
        .iter()
        .filter(|(start, _, _)| *start > switched)
        .collect();
    let failed: Vec<_> = outcomes.iter().filter(|(_, _, r)| r.is_err()).collect();
    assert!(before.len() >= 5, "the load ran before the kill");
    assert!(
        before.iter().all(|(_, _, r)| matches!(r, Ok(true))),
        "calls before the kill were answered"
    );
    assert!(after.len() >= 10, "the load went on after the switch");
    assert!(
        after.iter().all(|(_, _, r)| matches!(r, Ok(true))),
        "every call sent after the switch was answered: {:?}",
        after.iter().find(|(_, _, r)| r.is_err())
    );
    // Calls failed only if sent between the kill and the switch, each as a typed outage
    // within the store's timeout.
    for (start, end, r) in &failed {
        assert!(*end >= killed && *start <= switched, "{r:?}");
        assert!(*end - *start <= Duration::from_millis(200 + 250), "{r:?}");
        assert!(
            matches!(r, Err(StoreError::Unavailable(_) | StoreError::Timeout(_))),
            "{r:?}"
        );
    }
    assert!(
        !failed.is_empty(),
        "the kill was noticed (calls failed meanwhile)"
    );
}
