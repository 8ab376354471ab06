//! A Redis Cluster in trouble: one master hung (`SIGSTOP`) must not hold up requests for slots
//! on the other masters, and a slot migrating (`CLUSTER SETSLOT ... MIGRATING/IMPORTING`) must
//! not fail requests that only shared a coalesced call with one Redis refused (`TRYAGAIN`).
//! Reports are coalesced per slot like checks, and stay exact. Real three-master clusters
//! (testkit); nothing sleeps for a limit to refill.

mod common;

use common::{check, key, redis_store, sample, window, Backend};
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_redis::{keys, RedisConfig, RedisStore, Target};
use spillway_testkit::metrics::LocalMetrics;
use spillway_testkit::redis::{command, RedisCluster};
use std::sync::Arc;
use std::time::Duration;

/// The hash slot `k` lives in.
fn slot_of(store: &RedisStore, k: &StateKey) -> u16 {
    keys::slot(&store.redis_key(k))
}

/// A number from `INFO` section `section` of the server on `port` (`name:value` lines), summed
/// over the `count=` fields of an error or command stat.
fn stat(port: u16, section: &str, name: &str) -> u64 {
    let info = command(port, &format!("INFO {section}")).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split(['=', ',']).nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_delays_only_the_requests_for_its_own_slots() {
    let cluster = RedisCluster::start();
    let budget = Duration::from_millis(300);
    let mut config = RedisConfig::new(Target::Cluster(cluster.urls()), "the test's URL");
    config.timeout = budget;
    config.local_cache_keys = 0;
    let store = Arc::new(RedisStore::connect(&config).await.expect("connects"));
    let hung = cluster.ports()[0];
    let params = window(1_000_000);
    // One hot key on the master about to hang, and users spread over the two others.
    let mut hot = None;
    let mut healthy = Vec::new();
    for i in 0.. {
        let k = key("api", &[&format!("user{i}")]);
        let owner = cluster
            .owner(slot_of(&store, &k))
            .expect("every slot is served");
        if owner == hung {
            hot.get_or_insert(k);
        } else if healthy.len() < 20 {
            healthy.push(k);
        }
        if hot.is_some() && healthy.len() == 20 {
            break;
        }
    }
    let hot = hot.unwrap();
    for k in healthy.iter().chain([&hot]) {
        store
            .check(&[check(k, &params, 1)], CheckMode::Consume)
            .await
            .expect("the whole cluster answers before the freeze");
    }

    cluster.node(0).freeze();
    // Far more requests for the hung master than any queue holds.
    let flood: Vec<_> = (0..6000)
        .map(|_| {
            let (store, hot, params) = (store.clone(), hot.clone(), params.clone());
            tokio::spawn(async move {
                #[allow(clippy::disallowed_methods)] // measuring a latency
                let started = std::time::Instant::now();
                let outcome = store
                    .check(&[check(&hot, &params, 1)], CheckMode::Consume)
                    .await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    // Meanwhile requests for the healthy masters, for longer than the cluster client's own
    // response timeout (2 s), are each decided by Redis within the budget.
    #[allow(clippy::disallowed_methods)] // how long to keep asking, not limit time
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let (mut decided, mut slow) = (0, 0);
    #[allow(clippy::disallowed_methods)]
    while std::time::Instant::now() < until {
        for k in &healthy {
            #[allow(clippy::disallowed_methods)]
            let started = std::time::Instant::now();
            // A loaded 2-core machine may stall a rare one past the budget (answered late, or
            // timed out for it): at most 2%. Any other failure fails the test.
            match store
                .check(&[check(k, &params, 1)], CheckMode::Consume)
                .await
            {
                Ok(d) => {
                    assert!(d[0].allowed);
                    if started.elapsed() >= budget {
                        slow += 1;
                    }
                }
                Err(StoreError::Timeout(_)) => slow += 1,
                Err(e) => panic!("a healthy master's slot failed while another master hangs: {e}"),
            }
            decided += 1;
        }
    }
    assert!(decided >= 40, "only {decided} healthy requests in 3 s");
    assert!(
        slow * 50 <= decided,
        "{slow} of {decided} healthy requests past the budget"
    );
    // Every request for the hung master failed, none later than the budget (plus scheduling
    // slack on a loaded machine): refused at once (its slot's queue full) or timed out.
    // (The flood arrives at once, before the lane counts as stalled, so its own bound need
    // not refuse any; that bound is unit-tested in batch.rs.)
    for call in flood {
        let (outcome, took) = call.await.expect("no task panicked");
        match outcome {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("queue"), "{why}"),
            Err(StoreError::Timeout(_)) => {}
            other => panic!("a request for the hung master answered {other:?}"),
        }
        assert!(took < budget + Duration::from_secs(2), "{took:?}");
    }

    cluster.node(0).resume();
    // The hung master's slots are decided again once it answers (waiting for it to come back,
    // not for any limit to refill).
    #[allow(clippy::disallowed_methods)]
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store
            .check(&[check(&hot, &params, 1)], CheckMode::Consume)
            .await
        {
            Ok(d) => {
                assert!(d[0].allowed);
                break;
            }
            #[allow(clippy::disallowed_methods)]
            Err(err) if std::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the resumed master never answered: {err}"),
        }
    }
}

// One thread, so the test's own metrics recorder (thread-local) hears every task's counts.
#[tokio::test(flavor = "current_thread")]
async fn requests_sharing_a_call_refused_during_resharding_are_retried_alone() {
    let counts = LocalMetrics::hear();
    let cluster = RedisCluster::start();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    let store = Arc::new(store);
    let params = window(1000);
    // Two users of one tenant: one slot. `moved` exists on the source; `fresh` exists nowhere.
    let moved = key("user", &["tenant7", "a"]);
    let fresh = key("user", &["tenant7", "b"]);
    let slot = slot_of(&store, &moved);
    assert_eq!(slot, slot_of(&store, &fresh));
    store
        .check(&[check(&moved, &params, 1)], CheckMode::Consume)
        .await
        .unwrap();
    let (source, _) = cluster.start_migrating(slot);
    let refused_before = stat(source, "errorstats", "errorstat_TRYAGAIN:");

    // Concurrent single-limit requests for both keys share calls; a call holding both is
    // refused by the source (one key there, one not), and its requests go again alone: the
    // one for `moved` to the source, the one for `fresh` after an ASK to the target.
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let k = if i % 2 == 0 { &moved } else { &fresh }.clone();
            let (store, params) = (store.clone(), params.clone());
            tokio::spawn(async move {
                store
                    .check(&[check(&k, &params, 1)], CheckMode::Consume)
                    .await
            })
        })
        .collect();
    for call in calls {
        let d = call
            .await
            .unwrap()
            .expect("a request that only shared a refused call is decided");
        assert!(d[0].allowed);
    }
    let refused = stat(source, "errorstats", "errorstat_TRYAGAIN:") - refused_before;
    assert!(
        refused > 0,
        "no call mixed the two keys: the test proved nothing"
    );
    // Each refused call was answered by retries, counted as such and not as store errors.
    let rendered = counts.render();
    assert!(
        sample(&rendered, spillway_redis::batch::BATCH_RETRIED) > 0,
        "{rendered}"
    );
    assert_eq!(
        sample(&rendered, "spillway_store_errors_total"),
        0,
        "{rendered}"
    );
    // Exactly one charge each, whichever node holds the key.
    for (k, used) in [(&moved, 33), (&fresh, 32)] {
        let d = store
            .check(&[check(k, &params, 1)], CheckMode::Peek)
            .await
            .unwrap();
        assert_eq!(1000 - d[0].remaining - u64::from(d[0].allowed), used);
    }
    // A request that needs both keys together is refused on its own: its own answer.
    let both = store
        .check(
            &[check(&moved, &params, 1), check(&fresh, &params, 1)],
            CheckMode::Consume,
        )
        .await;
    assert!(
        matches!(&both, Err(StoreError::Unavailable(why)) if why.to_uppercase().contains("TRYAGAIN")),
        "{both:?}"
    );
    // That refusal is an error, counted once.
    assert_eq!(sample(&counts.render(), "spillway_store_errors_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_of_one_slot_share_calls_and_count_exactly() {
    let cluster = RedisCluster::start();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    let store = Arc::new(store);
    let params = window(1000);
    let tenant = key("tenant", &["acme"]);
    let user = key("user", &["acme", "u1"]);
    let other = key("tenant", &["globex"]);
    assert_ne!(slot_of(&store, &tenant), slot_of(&store, &other));
    let ports = cluster.ports();
    // Check calls, whichever form the store uses (Functions, or scripts by hash).
    let fcalls = || -> u64 {
        ports
            .iter()
            .flat_map(|&p| {
                ["cmdstat_fcall:", "cmdstat_evalsha:"].map(|n| stat(p, "commandstats", n))
            })
            .sum()
    };
    let before = fcalls();
    // 200 reports, each over a slot of `acme` (two keys) and one of `globex`: 400 slot parts.
    let reports: Vec<_> = (0..200)
        .map(|_| {
            let (store, params) = (store.clone(), params.clone());
            let (tenant, user, other) = (tenant.clone(), user.clone(), other.clone());
            tokio::spawn(async move {
                let charges = [
                    check(&tenant, &params, 2),
                    check(&user, &params, 1),
                    check(&other, &params, 3),
                ];
                store.charge(&charges, None).await.expect("recorded")
            })
        })
        .collect();
    for report in reports {
        assert!(report.await.unwrap().recorded);
    }
    let sent = fcalls() - before;
    assert!(
        sent > 0 && sent < 400,
        "400 slot parts went out in {sent} calls"
    );
    for (k, used) in [(&tenant, 400), (&user, 200), (&other, 600)] {
        let d = store
            .check(&[check(k, &params, 1)], CheckMode::Peek)
            .await
            .unwrap();
        assert_eq!(1000 - d[0].remaining - u64::from(d[0].allowed), used);
    }
}
