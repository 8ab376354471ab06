//! Tests of the local over-limit cache: exact replays, what is never cached, the size bound
//! under a flood, constant work per insert, and concurrent use.

use super::*;
use spillway_core::algorithm::{LimitParams, TokenBucket};
use spillway_core::key::StateKey;
use spillway_core::rate::Rate;
use std::sync::Arc;

fn decision(allowed: bool, retry: Option<Micros>) -> Decision {
    Decision {
        allowed,
        limit: 5,
        remaining: 0,
        reset_after: 1_000,
        retry_after: retry,
        denial: (!allowed).then_some(Denial::OverLimit),
    }
}

fn bucket(burst: u64) -> LimitParams {
    LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, 1_000).unwrap(), burst).unwrap())
}

fn key(value: &str) -> StateKey {
    StateKey {
        limit: "l".into(),
        fingerprint: 1,
        values: vec![value].into(),
    }
}

fn check<'a>(key: &'a StateKey, params: &'a LimitParams) -> Check<'a> {
    Check {
        key,
        params,
        cost: 1,
        enforced: true,
        metered: false,
    }
}

#[test]
fn denies_until_the_earliest_retry_then_forgets() {
    let (params, key) = (bucket(5), key("a"));
    let checks = [check(&key, &params)];
    let cache = LocalCache::new(10);
    cache.remember(&checks, &[decision(true, None)], 0);
    assert!(cache.is_empty(), "allowed requests are not cached");
    cache.remember(&checks, &[decision(false, Some(500))], 100);
    let replay = cache.deny(&checks, 300).expect("still denied at 300");
    assert_eq!(replay[0].retry_after, Some(300));
    assert_eq!(replay[0].reset_after, 800);
    assert!(cache.deny(&checks, 600).is_none(), "retry time reached");
    // A different cost, enforcement or value is a different request.
    let cheaper = [Check {
        cost: 2,
        ..checks[0]
    }];
    assert!(cache.deny(&cheaper, 300).is_none());
    let shadow = [Check {
        enforced: false,
        metered: false,
        ..checks[0]
    }];
    assert!(cache.deny(&shadow, 300).is_none());
    let other = key_b();
    assert!(cache.deny(&[check(&other, &params)], 300).is_none());
    assert_eq!(cache.sweep(600), 1);
    assert!(cache.is_empty());
}

fn key_b() -> StateKey {
    key("b")
}

#[test]
fn a_limit_with_other_numbers_on_the_same_key_is_another_request() {
    // A reload that loosens a limit keeps its counter key; the old denial must not replay.
    let key = key("a");
    let (tight, loose) = (bucket(5), bucket(50));
    let cache = LocalCache::new(10);
    cache.remember(&[check(&key, &tight)], &[decision(false, Some(10_000))], 0);
    assert!(cache.deny(&[check(&key, &tight)], 1).is_some());
    assert!(cache.deny(&[check(&key, &loose)], 1).is_none());
}

#[test]
fn shadow_denials_and_impossible_costs_are_not_cached() {
    let (params, key) = (bucket(5), key("a"));
    let shadow = [Check {
        enforced: false,
        metered: false,
        ..check(&key, &params)
    }];
    let cache = LocalCache::new(10);
    cache.remember(&shadow, &[decision(false, Some(500))], 0);
    let too_big = Decision {
        denial: Some(Denial::CostExceedsLimit),
        retry_after: None,
        ..decision(false, None)
    };
    cache.remember(&[check(&key, &params)], &[too_big], 0);
    assert!(cache.is_empty());
}

/// A denial with a retry time past an hour is replayed for an hour, then Redis is asked again.
#[test]
fn a_long_denial_is_replayed_for_an_hour_at_most() {
    let (params, key) = (bucket(5), key("a"));
    let checks = [check(&key, &params)];
    let cache = LocalCache::new(10);
    let days = 99 * 24 * MAX_HELD;
    cache.remember(&checks, &[decision(false, Some(days))], 0);
    assert!(cache.deny(&checks, MAX_HELD - 1).is_some());
    assert!(
        cache.deny(&checks, MAX_HELD).is_none(),
        "asked again after an hour"
    );
}

/// The cache's bytes are bounded by its entries and [`MAX_CHECKS`]: a request of more checks
/// is not cached.
#[test]
fn requests_of_many_checks_are_not_cached() {
    let params = bucket(5);
    let keys: Vec<StateKey> = (0..=MAX_CHECKS).map(|i| key(&format!("k{i}"))).collect();
    let checks: Vec<Check<'_>> = keys.iter().map(|k| check(k, &params)).collect();
    let denied = vec![decision(false, Some(500)); checks.len()];
    let cache = LocalCache::new(10);
    cache.remember(&checks, &denied, 0);
    assert!(cache.is_empty());
    let fits = &checks[..MAX_CHECKS];
    cache.remember(fits, &denied[..MAX_CHECKS], 0);
    assert!(cache.deny(fits, 100).is_some(), "up to the bound, cached");
}

#[test]
fn a_flood_of_denials_keeps_the_bound_and_the_newest() {
    let params = bucket(5);
    for capacity in [3, 1_000, 5_000] {
        let cache = LocalCache::new(capacity);
        for i in 0..20_000 {
            let k = key(&format!("k{i}"));
            cache.remember(
                &[check(&k, &params)],
                &[decision(false, Some(1_000_000))],
                i,
            );
            assert!(
                cache.deny(&[check(&k, &params)], i).is_some(),
                "the entry just written is there"
            );
        }
        assert!(cache.len() <= capacity, "{} > {capacity}", cache.len());
        assert!(cache.len() * 2 >= capacity, "the cache is used");
    }
}

#[test]
fn inserting_into_a_full_cache_looks_at_a_few_slots_not_all() {
    let params = bucket(5);
    let cache = LocalCache::new(4_096);
    let flood = 50_000;
    for i in 0..flood {
        let k = key(&format!("k{i}"));
        // Nothing expires: every replacement has to pick a live entry.
        cache.remember(&[check(&k, &params)], &[decision(false, Some(1 << 40))], 0);
    }
    // A scan per insert would look at the whole cache (thousands of slots) each time.
    assert!(cache.slots_looked_at() > 0);
    assert!(
        cache.slots_looked_at() <= flood * PROBE,
        "{} slots looked at for {flood} inserts",
        cache.slots_looked_at()
    );
    // With expired entries at the hand, the first expired one is reused at once.
    let cache = LocalCache::new(8);
    for i in 0..8 {
        let k = key(&format!("old{i}"));
        cache.remember(&[check(&k, &params)], &[decision(false, Some(10))], 0);
    }
    let looked = cache.slots_looked_at();
    let k = key("new");
    cache.remember(&[check(&k, &params)], &[decision(false, Some(10))], 100);
    assert_eq!(cache.slots_looked_at() - looked, 1);
    assert_eq!(cache.len(), 8);
}

#[test]
fn sweeping_keeps_the_index_true() {
    let params = bucket(5);
    let cache = LocalCache::new(64);
    let keys: Vec<StateKey> = (0..40).map(|i| key(&format!("k{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        // Even entries run out at 100, odd ones at 10,000.
        let retry = if i % 2 == 0 { 100 } else { 10_000 };
        cache.remember(&[check(k, &params)], &[decision(false, Some(retry))], 0);
    }
    assert_eq!(cache.sweep(100), 20);
    assert_eq!(cache.len(), 20);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            cache.deny(&[check(k, &params)], 100).is_some(),
            i % 2 == 1,
            "k{i}"
        );
    }
}

/// Four threads each write 5,000 denials into `cache` (and read each back at once when
/// `check_each`).
fn flood_from_threads(cache: &Arc<LocalCache>, check_each: bool) {
    let params = Arc::new(bucket(5));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cache, params) = (cache.clone(), params.clone());
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    let k = key(&format!("t{t}-{i}"));
                    let c = [check(&k, &params)];
                    cache.remember(&c, &[decision(false, Some(1_000_000 + t))], i);
                    if check_each {
                        let replay = cache.deny(&c, i).expect("just written");
                        assert_eq!(replay[0].retry_after, Some(1_000_000 + t), "thread {t}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no thread panicked");
    }
}

#[test]
fn threads_share_the_cache_and_each_sees_its_own_denials() {
    let params = bucket(5);
    let roomy = Arc::new(LocalCache::new(32_768));
    flood_from_threads(&roomy, true);
    assert_eq!(roomy.len(), 20_000);
    for t in 0..4u64 {
        for i in (0..5_000).step_by(97) {
            let k = key(&format!("t{t}-{i}"));
            let replay = roomy.deny(&[check(&k, &params)], 0).expect("kept");
            assert_eq!(replay[0].retry_after, Some(1_000_000 + t));
        }
    }
    // A small cache under the same flood keeps its bound and its count.
    let small = Arc::new(LocalCache::new(1_024));
    flood_from_threads(&small, false);
    let held = small.len();
    assert!(held <= 1_024 && held > 0, "{held}");
    assert_eq!(small.sweep(u64::MAX), held as u64);
    assert!(small.is_empty());
}

/// The entry count decides whether a look-up happens at all (an empty cache answers at once),
/// so it must match what is cached through replacements in full shards and sweeps: a count
/// that fell to zero with entries left would silently stop replaying denials.
#[test]
fn the_entry_count_matches_what_is_cached() {
    let params = bucket(5);
    let cache = LocalCache::new(64);
    let keys: Vec<StateKey> = (0..1_000).map(|i| key(&format!("k{i}"))).collect();
    let cached = |now| {
        keys.iter()
            .filter(|k| cache.deny(&[check(k, &params)], now).is_some())
            .count()
    };
    // Far more denials than room: most inserts replace a live entry. Odd ones run out at 500.
    for (i, k) in keys.iter().enumerate() {
        let retry = if i % 2 == 1 { 500 } else { 1 << 40 };
        cache.remember(&[check(k, &params)], &[decision(false, Some(retry))], 0);
    }
    assert!(!cache.is_empty());
    assert_eq!(cached(0), cache.len());
    cache.sweep(500);
    assert!(!cache.is_empty(), "the even entries are still cached");
    assert_eq!(cached(500), cache.len());
    // Sweeping everything drops exactly as many entries as the count says there are.
    let n = cache.len();
    assert_eq!(cache.sweep(1 << 41), n as u64);
    assert!(cache.is_empty());
}
