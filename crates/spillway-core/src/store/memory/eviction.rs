//! Making room in a full shard: the eviction sample.
//!
//! When a new key arrives at a shard holding its share of `max_keys`, the store looks at
//! [`EVICTION_SAMPLE`] occupied slots picked at random bucket positions, and either drops the
//! expired ones among them or evicts one of those that had used the least of their limit
//! (`super::slot::USED_SHIFT`: under half, half or more, all, denied), the first found, so a
//! random one. Evicting a key hands its client back what it had used, so used-up and denied
//! keys go last. Among equals the choice is random on purpose: evicting the soonest to expire
//! let a client flooding fresh long-lived keys make its own short-lived, used-up key the one
//! to go in nearly every sample, and have it reset over and over; drawn at random, each
//! eviction among `n` equal keys of a shard takes a given one with a chance of `1/n`, so
//! resetting a client's key once costs it about `max_keys` fresh keys as used up as its own.
//!
//! The positions must be random: a sample taken in table order (the first slots an iterator
//! meets) looks at the same region of the table every time, so a key whose hash lands there is
//! evicted by every new key of a flood, which resets a client that is over its limit. Drawn at
//! random, every slot is equally likely to be looked at.
//!
//! The cost stays constant: the table's buckets are read by index (`HashTable::get_bucket`),
//! about `EVICTION_SAMPLE / load` reads (16 to 18 at the loads a full shard runs at), never a
//! scan of the shard. The positions come from the incoming key's hash, which is keyed by the
//! store's secret seed, so no client can aim them, and a flood of distinct keys draws a fresh
//! sample for each.

use super::{KeyHash, MemoryStore, Shard, EVICTION_SAMPLE};
use crate::time::Micros;
use smallvec::SmallVec;
use std::sync::atomic::Ordering;

/// How many random bucket positions are tried before the sample is taken as it is. A full
/// shard's table is at least 7/16 occupied, so 64 tries find [`EVICTION_SAMPLE`] slots all
/// but always (about 28 are expected to be occupied).
const MAX_PROBES: usize = 8 * EVICTION_SAMPLE;

/// A sampled slot: its bucket index, its expiry second and its used level.
type Sampled = (usize, u32, u32);

/// Of `sample`, the slot to evict: the first found (a random one) of the lowest used level
/// (`min_by_key` keeps the first of equal keys).
fn victim(sample: &[Sampled]) -> Option<usize> {
    (sample.iter().min_by_key(|(_, _, used)| *used)).map(|(bucket, _, _)| *bucket)
}

impl MemoryStore {
    /// Keeps a shard within its bound before `incoming` (a key it does not hold) is inserted:
    /// drops the expired slots of a random sample (that is expiry, not eviction), and if none
    /// was expired, evicts a sampled slot of the lowest used level. Never touches a key of
    /// `request` (the keys the same request is charging), whose charge would be lost. Expired
    /// slots outside the sample are left to the sweep.
    pub(super) fn make_room(
        &self,
        map: &mut Shard,
        incoming: &KeyHash,
        now: Micros,
        request: &[KeyHash],
    ) {
        if map.len() < self.per_shard {
            return;
        }
        let sample = sample(map, incoming, request);
        let expired: SmallVec<[usize; EVICTION_SAMPLE]> = sample
            .iter()
            .filter(|(_, expires, _)| self.expired_at(*expires, now))
            .map(|(bucket, _, _)| *bucket)
            .collect();
        if !expired.is_empty() {
            for bucket in expired {
                remove(map, bucket);
            }
        } else if let Some(victim) = victim(&sample) {
            remove(map, victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Up to [`EVICTION_SAMPLE`] distinct occupied slots, none of them `request`'s, found at
/// random bucket positions, in the order found (so ties in expiry go to a random one).
fn sample(
    map: &Shard,
    incoming: &KeyHash,
    request: &[KeyHash],
) -> SmallVec<[Sampled; EVICTION_SAMPLE]> {
    let mut found: SmallVec<[Sampled; EVICTION_SAMPLE]> = SmallVec::new();
    // The bucket count is a power of two; `get_bucket` checks the index anyway.
    let mask = map.num_buckets().saturating_sub(1);
    let mut positions = Positions(incoming[0]);
    for _ in 0..MAX_PROBES {
        let bucket = (positions.next() as usize) & mask;
        if let Some((key, slot)) = map.get_bucket(bucket) {
            if !request.contains(key) && !found.iter().any(|(b, _, _)| *b == bucket) {
                found.push((bucket, slot.expires(), slot.used()));
                if found.len() == EVICTION_SAMPLE {
                    break;
                }
            }
        }
    }
    if found.is_empty() {
        // Only a tiny shard whose slots are nearly all `request`'s gets here; a pass over it
        // keeps the bound.
        let first = map
            .iter()
            .find(|(key, _)| !request.contains(key))
            .and_then(|(key, slot)| {
                let bucket = map.find_bucket_index(key[0], |(k, _)| k == key)?;
                Some((bucket, slot.expires(), slot.used()))
            });
        found.extend(first);
    }
    found
}

/// Drops the slot in `bucket` (an index the sample found occupied).
fn remove(map: &mut Shard, bucket: usize) {
    if let Ok(entry) = map.get_bucket_entry(bucket) {
        entry.remove();
    }
}

/// A stream of well-mixed 64-bit numbers from one seed: SplitMix64 (a Weyl sequence through
/// a bijective mixer), ample for picking table positions.
struct Positions(u64);

impl Positions {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Check, MemoryStore, MIN_SHARDS};
    use crate::algorithm::{FixedWindow, LimitParams};
    use crate::key::StateKey;
    use crate::request::CheckMode;
    use crate::store::Store;
    use crate::time::{ManualClock, MINUTE};
    use std::sync::Arc;

    fn key(i: usize) -> StateKey {
        StateKey {
            limit: "w".into(),
            fingerprint: 1,
            values: vec![format!("k{i}")].into(),
        }
    }

    /// A store of `per_shard` keys a shard and one limit of 1 a minute, so every key has the
    /// same expiry and the eviction sample alone decides which goes.
    struct Flood {
        store: MemoryStore,
        window: LimitParams,
    }

    impl Flood {
        fn new(per_shard: usize) -> Self {
            let window = match FixedWindow::new(1, MINUTE) {
                Ok(w) => LimitParams::FixedWindow(w),
                Err(e) => panic!("{e}"),
            };
            let store = MemoryStore::new(MIN_SHARDS * per_shard, Arc::new(ManualClock::new(0)));
            Self { store, window }
        }

        fn one<'a>(&'a self, k: &'a StateKey) -> Check<'a> {
            Check {
                key: k,
                params: &self.window,
                cost: 1,
                enforced: true,
                metered: false,
            }
        }

        /// Whether a charge (or a look) of `k` passes.
        fn check(&self, k: &StateKey, mode: CheckMode) -> bool {
            self.store.check_blocking(&[self.one(k)], mode)[0].allowed
        }

        fn hash(&self, k: &StateKey) -> [u64; 2] {
            self.store.hash(&self.one(k))
        }

        /// Keys `0..` that fall in shard 0.
        fn keys_of_shard_0(&self) -> impl Iterator<Item = StateKey> + '_ {
            (0..)
                .map(key)
                .filter(|k| self.store.shard_of(&self.hash(k)) == 0)
        }
    }

    /// A flood into a full shard evicts each slot about equally often, wherever it sits in
    /// the table. Every key here has the same expiry (one fixed window) and is used up, so the
    /// sample alone decides; the key first in table order, which a sample taken in table order would
    /// evict on every insert, goes about once per `PER_SHARD` inserts.
    #[test]
    fn a_flood_evicts_a_key_at_the_front_of_the_table_no_more_than_chance() {
        const PER_SHARD: usize = 32;
        const FLOOD: usize = 3200;
        let flood = Flood::new(PER_SHARD);
        let store = &flood.store;
        let mut keys = flood.keys_of_shard_0();
        let filled: Vec<StateKey> = keys.by_ref().take(PER_SHARD).collect();
        for k in &filled {
            assert!(flood.check(k, CheckMode::Consume));
        }
        let front = store.shards[0].lock().iter().next().map(|(h, _)| *h);
        let Some(hot) = filled.iter().find(|k| Some(flood.hash(k)) == front) else {
            panic!("the front key is one of those inserted");
        };
        // Used up, like every other key (a refused charge would mark it denied, which
        // eviction takes last; a look marks nothing).
        assert!(!flood.check(hot, CheckMode::Peek));

        let mut hot_evicted = 0;
        for k in keys.take(FLOOD) {
            assert!(flood.check(&k, CheckMode::Consume));
            if flood.check(hot, CheckMode::Peek) {
                // Evicted: its counter is fresh. Put it back over its limit.
                hot_evicted += 1;
                assert!(flood.check(hot, CheckMode::Consume));
            }
        }
        assert_eq!(store.key_count(), PER_SHARD as u64);
        let expected = FLOOD / PER_SHARD;
        assert!(
            (expected / 2..=expected * 2).contains(&hot_evicted),
            "the front key was evicted {hot_evicted} times in {FLOOD} inserts; \
             chance is about {expected}"
        );
    }

    /// Any key of a full shard is evicted about as often as chance says, checked over every
    /// key of the shard at once: no slot is evicted far more often than its share.
    #[test]
    fn evictions_spread_over_the_whole_shard() {
        const PER_SHARD: usize = 16;
        const FLOOD: usize = 1600;
        let flood = Flood::new(PER_SHARD);
        let store = &flood.store;
        let keys: Vec<StateKey> = flood.keys_of_shard_0().take(FLOOD).collect();
        for k in &keys {
            assert!(flood.check(k, CheckMode::Consume));
        }
        // Every insert past the bound evicted one key, and the survivors are spread over the
        // flood rather than being the keys that happened to sit at the back of the table.
        assert_eq!(store.evictions(), (FLOOD - PER_SHARD) as u64);
        assert_eq!(store.key_count(), PER_SHARD as u64);
        let survivors_from_the_first_half = keys[..FLOOD / 2]
            .iter()
            .filter(|k| !flood.check(k, CheckMode::Peek))
            .count();
        // A key inserted i inserts before the end survives with probability about
        // (1 - 1/16)^i, so nearly all survivors are recent; none should be from long ago.
        assert!(
            survivors_from_the_first_half <= 1,
            "{survivors_from_the_first_half} keys from the first half survived"
        );
    }
}
