//! Helpers shared by this crate's integration tests: building stores on test processes and
//! replaying vectors through any [`Store`].
#![allow(dead_code)]

pub mod module;
pub mod thread_conns;

use spillway_core::algorithm::{Decision, LimitParams};
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Store};
use spillway_core::time::{ManualClock, MINUTE};
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::vectors::{flatten, Vector};
use std::sync::Arc;
use std::time::Duration;

/// The time tests start their manual clock at (late 2023, in microseconds).
pub const T0: u64 = 1_700_000_000_000_000;

/// A fixed window of `limit` per minute, the plain limit most tests count on.
pub fn window(limit: u64) -> LimitParams {
    LimitParams::FixedWindow(spillway_core::algorithm::FixedWindow::new(limit, MINUTE).unwrap())
}

/// Which deployment a test store talks to.
pub enum Backend {
    Server(String),
    Cluster(Vec<String>),
}

/// A store on `backend` whose scripts run at the returned manual clock's time, with the local
/// cache off (vectors replay exact times, including going back to peek).
pub async fn redis_store(backend: Backend) -> (RedisStore, Arc<ManualClock>) {
    let target = match backend {
        Backend::Server(url) => Target::Server(url),
        Backend::Cluster(urls) => Target::Cluster(urls),
    };
    let mut config = RedisConfig::new(target, "the test's URL");
    config.timeout = Duration::from_secs(5);
    config.local_cache_keys = 0;
    // At T0 from the start: the store times its first probe for the module by it.
    let clock = Arc::new(ManualClock::new(T0));
    let store = RedisStore::connect_with_injected_time(&config, clock.clone())
        .await
        .expect("connects to the test redis");
    (store, clock)
}

/// A state key for limit `limit` with `values`. As in a policy, each limit name gets its own
/// fingerprint (the in-memory store tells limits apart by it).
pub fn key(limit: &str, values: &[&str]) -> StateKey {
    StateKey {
        limit: limit.into(),
        fingerprint: limit
            .bytes()
            .fold(42u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

/// One enforced check.
pub fn check<'a>(key: &'a StateKey, params: &'a LimitParams, cost: u64) -> Check<'a> {
    Check {
        key,
        params,
        cost,
        enforced: true,
        metered: false,
    }
}

/// The decisions `store` makes on one enforced check of `key` under `params`.
pub async fn check_one(
    store: &dyn Store,
    key: &StateKey,
    params: &LimitParams,
    cost: u64,
    mode: CheckMode,
) -> Vec<Decision> {
    store
        .check(&[check(key, params, cost)], mode)
        .await
        .expect("the store answers")
}

/// Replays `v` on a fresh key named after `tag` and asserts every decision. An event that
/// changes the numbers checks the same key with the new ones, as after a reload.
pub async fn replay(store: &dyn Store, clock: &ManualClock, v: &Vector, tag: &str) {
    let mut params = v.params();
    let k = key(&v.name, &[tag]);
    for (n, e) in v.events.iter().enumerate() {
        if let Some(numbers) = e.numbers {
            params = v.params_with(numbers);
        }
        clock.set(e.at);
        let mode = if e.peek {
            CheckMode::Peek
        } else {
            CheckMode::Consume
        };
        let got = if e.charge {
            let charged = store
                .charge(&[check(&k, &params, e.cost)], None)
                .await
                .expect("store records the charge");
            assert!(charged.recorded);
            charged.decisions
        } else {
            let c = Check {
                metered: e.metered,
                ..check(&k, &params, e.cost)
            };
            store.check(&[c], mode).await.expect("store answers")
        };
        assert_eq!(
            flatten(&got[0]),
            e.expect,
            "{} [{tag}] ({:?}) event {n} at {} cost {} peek {} charge {} metered {}",
            v.name,
            v.numbers,
            e.at,
            e.cost,
            e.peek,
            e.charge,
            e.metered
        );
    }
}

/// The sum of the samples of `metric` in a Prometheus rendering.
pub fn sample(rendered: &str, metric: &str) -> u64 {
    spillway_testkit::metrics::sample(rendered, metric, "")
}

/// How long each failed call of a test under load took (`(start, end)`), checked against the
/// store's `timeout`: a loaded machine may wake a thread late now and then, so one failure in
/// ten (and always one) may take past the timeout and 250 ms of slack.
pub fn assert_few_late(failed: &[(std::time::Instant, std::time::Instant)], timeout: Duration) {
    let late: Vec<_> = (failed.iter())
        .map(|(start, end)| *end - *start)
        .filter(|took| *took > timeout + Duration::from_millis(250))
        .collect();
    assert!(
        late.len() <= (failed.len() / 10).max(1),
        "{} of {} failed calls took past the timeout: {late:?}",
        late.len(),
        failed.len()
    );
}
