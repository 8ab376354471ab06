//! The in-memory store's tests: exactness under threads, all-or-nothing, expiry, the size
//! bound and hostile values.

use super::*;
use crate::algorithm::{FixedWindow, LimitParams, SlidingLog, TokenBucket};
use crate::key::StateKey;
use crate::rate::Rate;
use crate::time::{ManualClock, MINUTE, SECOND};

/// A key of the limit named `limit`; as in a policy, each limit has its own fingerprint.
fn key(limit: &str, value: &str) -> StateKey {
    StateKey {
        limit: limit.into(),
        fingerprint: limit
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        values: vec![value].into(),
    }
}

fn bucket(burst: u64) -> LimitParams {
    LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, 3600 * SECOND).unwrap(), burst).unwrap())
}

fn one<'a>(key: &'a StateKey, params: &'a LimitParams, cost: u64) -> [Check<'a>; 1] {
    [Check {
        key,
        params,
        cost,
        enforced: true,
        metered: false,
    }]
}

#[test]
fn many_threads_on_one_key_admit_exactly_the_burst() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let store = Arc::new(MemoryStore::new(1000, clock));
    let params = bucket(500);
    let k = key("hot", "user-1");
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    let d = store.check_blocking(&one(&k, &params, 1), CheckMode::Consume);
                    if d[0].allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
}

#[test]
fn many_threads_on_overlapping_multi_key_requests_stay_exact() {
    // Each request takes one unit from a shared tenant limit and from its own user's limit.
    let clock = Arc::new(ManualClock::new(0));
    let store = MemoryStore::new(1000, clock);
    let tenant = LimitParams::FixedWindow(FixedWindow::new(300, MINUTE).unwrap());
    let user = LimitParams::SlidingLog(SlidingLog::new(50, MINUTE).unwrap());
    let tk = key("tenant", "acme");
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (store, tenant, user, tk, admitted) = (&store, &tenant, &user, &tk, &admitted);
            s.spawn(move || {
                let uk = key("user", &format!("u{t}"));
                for _ in 0..100 {
                    let checks = [
                        Check {
                            key: tk,
                            params: tenant,
                            cost: 1,
                            enforced: true,
                            metered: false,
                        },
                        Check {
                            key: &uk,
                            params: user,
                            cost: 1,
                            enforced: true,
                            metered: false,
                        },
                    ];
                    if store
                        .check_blocking(&checks, CheckMode::Consume)
                        .iter()
                        .all(|d| d.allowed)
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // 8 users x 50 = 400 user units, but the tenant caps the total at 300.
    assert_eq!(admitted.load(Ordering::Relaxed), 300);
}

#[test]
fn a_denied_request_consumes_nothing_from_any_limit() {
    let store = MemoryStore::new(1000, Arc::new(ManualClock::new(0)));
    let roomy = bucket(10);
    let tight = bucket(1);
    let (a, b) = (key("roomy", "x"), key("tight", "x"));
    let both = |cost| {
        [
            Check {
                key: &a,
                params: &roomy,
                cost,
                enforced: true,
                metered: false,
            },
            Check {
                key: &b,
                params: &tight,
                cost,
                enforced: true,
                metered: false,
            },
        ]
    };
    assert!(store
        .check_blocking(&both(1), CheckMode::Consume)
        .iter()
        .all(|d| d.allowed));
    let denied = store.check_blocking(&both(1), CheckMode::Consume);
    assert!(denied[0].allowed && !denied[1].allowed);
    // The roomy limit still has 9, not 8.
    let d = store.check_blocking(&one(&a, &roomy, 0), CheckMode::Peek);
    assert_eq!(d[0].remaining, 9);
}

#[test]
fn shadow_denials_do_not_block_and_peek_does_not_consume() {
    let store = MemoryStore::new(1000, Arc::new(ManualClock::new(0)));
    let params = bucket(1);
    let k = key("shadowed", "x");
    let shadow = |cost| {
        [Check {
            key: &k,
            params: &params,
            cost,
            enforced: false,
            metered: false,
        }]
    };
    store.check_blocking(&shadow(1), CheckMode::Consume);
    let d = store.check_blocking(&shadow(1), CheckMode::Consume);
    assert!(!d[0].allowed);
    assert!(super::admits(&shadow(1), &d));
    let real = key("real", "x");
    for _ in 0..3 {
        assert!(store.check_blocking(&one(&real, &params, 1), CheckMode::Peek)[0].allowed);
    }
}

#[test]
fn a_slot_takes_24_bytes() {
    assert_eq!(std::mem::size_of::<Slot>(), 24);
    assert_eq!(std::mem::size_of::<(KeyHash, Slot)>(), 40);
}

#[test]
fn idle_keys_expire_and_are_swept() {
    let clock = Arc::new(ManualClock::new(0));
    let store = MemoryStore::new(1000, clock.clone());
    let params = LimitParams::FixedWindow(FixedWindow::new(5, MINUTE).unwrap());
    for i in 0..10 {
        store.check_blocking(
            &one(&key("w", &i.to_string()), &params, 1),
            CheckMode::Consume,
        );
    }
    assert_eq!(store.key_count(), 10);
    clock.set(MINUTE - 1);
    assert_eq!(store.sweep(), 0);
    assert_eq!(store.key_count(), 10);
    clock.set(MINUTE);
    assert_eq!(store.sweep(), 10);
    assert_eq!(store.key_count(), 0);
}

#[test]
fn the_shard_count_follows_the_bound_within_its_limits() {
    assert_eq!(shard_count(0), MIN_SHARDS);
    assert_eq!(shard_count(640), MIN_SHARDS);
    assert_eq!(shard_count(1_000_000), 512);
    assert_eq!(shard_count(usize::MAX / 2), MAX_SHARDS);
    let store = MemoryStore::new(1_000_000, Arc::new(ManualClock::new(0)));
    assert_eq!(store.shards.len(), 512);
    assert_eq!(store.max_keys(), 512 * 1954);
}

#[test]
fn a_flood_of_keys_is_bounded_and_evictions_are_counted() {
    let store = MemoryStore::new(640, Arc::new(ManualClock::new(0)));
    let params = bucket(10);
    for i in 0..10_000 {
        store.check_blocking(
            &one(&key("ip", &format!("10.0.{i}")), &params, 1),
            CheckMode::Consume,
        );
    }
    assert!(store.key_count() <= store.max_keys() as u64);
    assert!(
        store.key_count() >= 600,
        "shards should fill up: {}",
        store.key_count()
    );
    assert_eq!(store.evictions(), 10_000 - store.key_count());
}

#[test]
fn a_full_shard_drops_an_expired_slot_before_evicting_a_live_one() {
    let clock = Arc::new(ManualClock::new(0));
    // One slot per shard.
    let store = MemoryStore::new(MIN_SHARDS, clock.clone());
    let window = LimitParams::FixedWindow(FixedWindow::new(5, MINUTE).unwrap());
    let check =
        |k: &StateKey| store.check_blocking(&one(k, &window, 1), CheckMode::Consume)[0].allowed;
    let shard = |k: &StateKey| store.shard_of(&store.hash(&one(k, &window, 1)[0]));
    let first = key("w", "first");
    let same_shard: Vec<StateKey> = (0..)
        .map(|i| key("w", &format!("other-{i}")))
        .filter(|k| shard(k) == shard(&first))
        .take(2)
        .collect();

    assert!(check(&first));
    clock.set(2 * MINUTE);
    // `first` has expired: making room for the next key drops it, which is no eviction.
    assert!(check(&same_shard[0]));
    assert_eq!((store.key_count(), store.evictions()), (1, 0));
    // The shard is full of a live key now: the next newcomer evicts it, and is counted.
    assert!(check(&same_shard[1]));
    assert_eq!((store.key_count(), store.evictions()), (1, 1));
}

#[test]
fn making_room_never_evicts_a_key_the_same_request_charges() {
    let clock = Arc::new(ManualClock::new(0));
    // One slot per shard, and two new keys of one request in the same shard.
    let store = MemoryStore::new(MIN_SHARDS, clock.clone());
    let window = LimitParams::FixedWindow(FixedWindow::new(1, MINUTE).unwrap());
    let shard = |k: &StateKey| store.shard_of(&store.hash(&one(k, &window, 1)[0]));
    let a = key("w", "a");
    let b = (0..)
        .map(|i| key("w", &format!("b-{i}")))
        .find(|k| shard(k) == shard(&a))
        .expect("a key in a's shard");
    let both = [one(&a, &window, 1)[0], one(&b, &window, 1)[0]];
    assert!(store
        .check_blocking(&both, CheckMode::Consume)
        .iter()
        .all(|d| d.allowed));
    // Both charges stand: neither key has another request left this minute.
    assert!(!store.check_blocking(&one(&a, &window, 1), CheckMode::Consume)[0].allowed);
    assert!(!store.check_blocking(&one(&b, &window, 1), CheckMode::Consume)[0].allowed);
    assert_eq!(store.evictions(), 0);
}

#[test]
fn hostile_values_cannot_collide_with_other_keys() {
    let store = MemoryStore::new(1000, Arc::new(ManualClock::new(0)));
    let params = bucket(1);
    let joined = StateKey {
        limit: "l".into(),
        fingerprint: 1,
        values: vec!["a\u{0}b"].into(),
    };
    let split = StateKey {
        limit: "l".into(),
        fingerprint: 1,
        values: vec!["a", "b"].into(),
    };
    assert!(store.check_blocking(&one(&joined, &params, 1), CheckMode::Consume)[0].allowed);
    assert!(store.check_blocking(&one(&split, &params, 1), CheckMode::Consume)[0].allowed);
}

#[test]
fn a_charge_that_leaves_a_key_fresh_drops_its_slot() {
    // 10 a second, burst 10: 8 used, full again 2 s later, then charged 0. The slot goes (as
    // Redis deletes the key), so slower numbers later read a fresh key, not the 8 used.
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let store = MemoryStore::new(1000, clock.clone());
    let fast =
        LimitParams::TokenBucket(TokenBucket::new(Rate::new(10, SECOND).unwrap(), 10).unwrap());
    let k = key("metered", "acme");
    assert!(store.check_blocking(&one(&k, &fast, 8), CheckMode::Consume)[0].allowed);
    assert_eq!(store.key_count(), 1);
    clock.advance(2 * SECOND);
    let charged = store.charge_blocking(&one(&k, &fast, 0), None);
    assert!(charged.decisions[0].allowed);
    assert_eq!(store.key_count(), 0);
    let slow = bucket(4);
    assert!(store.check_blocking(&one(&k, &slow, 4), CheckMode::Consume)[0].allowed);
}

#[test]
fn a_metered_admission_needs_room_for_one_unit_and_writes_nothing() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let store = MemoryStore::new(1000, clock.clone());
    let params = bucket(3);
    let k = key("metered", "acme");
    let admit = |store: &MemoryStore| {
        let [c] = one(&k, &params, 0);
        store.check_blocking(&[Check { metered: true, ..c }], CheckMode::Consume)[0]
    };
    let d = admit(&store);
    assert!(d.allowed && d.remaining == 3);
    assert_eq!(store.key_count(), 0, "an admission writes nothing");
    store.charge_blocking(&one(&k, &params, 2), None);
    assert_eq!(admit(&store).remaining, 1);
    assert_eq!(admit(&store).remaining, 1, "and consumes nothing");
    store.charge_blocking(&one(&k, &params, 1), None);
    let d = admit(&store);
    assert!(!d.allowed, "0 left: no room");
    // One token an hour.
    assert_eq!(d.retry_after, Some(3600 * SECOND));
    clock.advance(3600 * SECOND);
    assert!(admit(&store).allowed);
}

/// A report's holder: a tenant's reports share one, whatever counters they charge; a report
/// without a tenant is held, in the pool, by its counters (anonymous callers at two addresses
/// apart).
#[test]
fn a_report_without_a_tenant_is_held_by_its_counters() {
    let params = bucket(10);
    let report = |tenant: Option<&str>, value: &str| {
        ReportId::of(tenant, "r-1", &one(&key("per-ip", value), &params, 1))
    };
    let holder = |tenant, value| report(tenant, value).holder();
    assert_ne!(holder(None, "203.0.113.1"), holder(None, "203.0.113.2"));
    assert_eq!(holder(None, "203.0.113.1"), holder(None, "203.0.113.1"));
    assert_eq!(holder(Some("acme"), "a"), holder(Some("acme"), "b"));
    assert_ne!(holder(Some("acme"), "a"), holder(None, "a"));
    assert!(report(None, "a").pooled() && !report(Some("acme"), "a").pooled());
}

/// Reports without a tenant (an anonymous caller's, counted by IP) are held by the counters
/// they charge: a flood of fresh ids from one address cannot push out another address's
/// remembered id, so that address's retried report still counts once. (All of them shared one
/// holder, whose bound the flood filled, and the retry was charged again.)
#[test]
fn a_flood_of_anonymous_reports_from_one_address_keeps_anothers_ids() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let store = MemoryStore::new(1000, clock);
    let params = bucket(1 << 20);
    let b = key("per-ip", "203.0.113.2");
    let b_id = ReportId::of(None, "b-1", &one(&b, &params, 1));
    assert!(
        store
            .charge_blocking(&one(&b, &params, 1), Some(b_id))
            .recorded
    );
    let a = key("per-ip", "203.0.113.1");
    for n in 0..reports::MAX_REPORTS_PER_HOLDER + 1000 {
        let checks = one(&a, &params, 1);
        let id = ReportId::of(None, &format!("a-{n}"), &checks);
        store.charge_blocking(&checks, Some(id));
    }
    let retry = store.charge_blocking(&one(&b, &params, 1), Some(b_id));
    assert!(!retry.recorded, "B's retried report was charged again");
}

/// A client over its limit floods fresh keys that live all day (a per-address limit of one a
/// day, from many addresses, each used up by its one request) to have its own key, which would
/// refill within a minute and so expires the soonest, evicted and reset. Eviction takes the
/// keys that used the least first, and a denied key last: the client's key stays, and stays
/// denied, while the flood evicts its own keys.
#[test]
fn a_flood_of_long_lived_keys_does_not_evict_a_denied_one() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let store = MemoryStore::new(MIN_SHARDS * 8, clock.clone());
    let minute =
        LimitParams::TokenBucket(TokenBucket::new(Rate::new(10, MINUTE).unwrap(), 10).unwrap());
    let daily = LimitParams::FixedWindow(FixedWindow::new(1, 24 * 3_600 * SECOND).unwrap());
    let mine = key("tenant", "over");
    let check = |k: &StateKey, p: &LimitParams| {
        store.check_blocking(&one(k, p, 1), CheckMode::Consume)[0].allowed
    };
    for _ in 0..10 {
        assert!(check(&mine, &minute));
    }
    assert!(!check(&mine, &minute), "used up");
    for i in 0..20_000 {
        assert!(check(&key("ip", &format!("2001:db8:{i:x}::")), &daily));
        if i % 1_000 == 0 {
            assert!(!check(&mine, &minute), "still denied after {i} fresh keys");
        }
    }
    assert!(store.evictions() > 10_000, "the flood did evict");
    assert!(!check(&mine, &minute), "never reset");
}
