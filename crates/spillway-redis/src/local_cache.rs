//! The local over-limit cache: after Redis denies a request, this node denies the identical
//! request again, without a round trip, until the earliest moment it could pass.
//!
//! # Why it is exact
//! Every algorithm here is monotone for a fixed key and cost: with no other traffic, a denied
//! request stays denied until exactly its `retry_after`, and other traffic can only push that
//! moment later (it adds to counters, never takes away). So a denial received for a call sent
//! at local time `t` with retry `r` holds at least until `t + r`: the script ran after `t`, and
//! its own retry moment is its run time plus `r`. This holds for the token bucket, GCRA and
//! the leaky bucket (refill and drain are continuous), the fixed window (until the window
//! ends, which is its retry), the sliding window (the previous window's weight only falls as
//! time passes, and rolling into the next window carries the same count over) and the sliding
//! log (entries only age out). The cache can therefore never admit anything; it can only
//! deny a little too long when tokens come back early, which only the cross-slot refund in a
//! cluster does (see [`crate::multi_slot`]), or when a reload changed the limit's numbers
//! (a state read under new numbers can be dropped at its old expiry, before the retry time it
//! gave): so no denial is replayed longer than [`MAX_HELD`], an hour.
//!
//! # What is cached
//! Whole requests, not single limits. An entry is found by the request's *shape*: a 128-bit
//! keyed hash (SipHash-1-3 with a random per-process key) of every check's state key, its
//! limit's algorithm and numbers, its cost and its enforcement, computed straight from the
//! checks without building a string. Its value is the decisions Redis returned, replayed with
//! their times aged. A request is cached only when an enforced limit denied it as over-limit,
//! until the *earliest* of those limits' retry times, so every replayed denial is still true.
//! The numbers are part of the shape because a limit's counter key may outlive a change of
//! them: a reload that loosens a limit never replays a denial made under the old numbers.
//!
//! Two different requests share an entry only if their shapes collide: with the key unknown
//! to clients, about `entries / 2^128` per look-up (below 10^-33 for 100,000 entries), so no
//! request can be crafted to hit another's entry. Even then the cache only ever answers with
//! a denial, never an admission.
//!
//! # Bounds and cost
//! A request of more than [`MAX_CHECKS`] checks is not cached, so the cache's memory is bounded
//! by its entries times that many decisions. The cache is split into shards (up to 64, each its own small lock), each holding at most
//! its share of `capacity` entries in a slot array indexed by shape. A hit locks one shard,
//! probes its index and copies the decisions out. A new denial in a full shard replaces one
//! entry chosen among the next [`PROBE`] slots at the shard's clock hand (the first expired
//! one, else the slot at the hand, the oldest written), so an insert never scans the shard,
//! however full. [`LocalCache::sweep`] (called every second by the server) drops expired
//! entries. Hits are counted in `spillway_local_cache_hits_total` and the size is exported as
//! `spillway_local_cache_entries`.

use parking_lot::Mutex;
use siphasher::sip128::{Hasher128, SipHasher13};
use spillway_core::algorithm::{Decision, Denial};
use spillway_core::store::Check;
use spillway_core::time::Micros;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many slots a full shard looks at to find the one a new entry replaces.
pub const PROBE: usize = 4;

/// The longest a denial is replayed before Redis is asked again, whatever its retry time. A
/// retry time is exact while the limit's numbers stay as they are; after a reload tightens a
/// bucket, the denial reads the old use at the new, slower rate (days, say) while Redis drops
/// the state at its old expiry (a day), so a cache trusting it would deny for days what
/// Redis would admit. Asking again once an hour costs one call an hour per denied request.
pub const MAX_HELD: Micros = spillway_core::time::HOUR;

/// The most checks a cached request may have. An entry keeps every decision of its request, so
/// the cache's bytes are bounded by `capacity x MAX_CHECKS` decisions, whatever the requests
/// (a gRPC call may carry 64 descriptors of several limits each); a larger request is not
/// cached and goes to Redis each time.
pub const MAX_CHECKS: usize = 16;

/// The most shards a cache is split into.
const MAX_SHARDS: usize = 64;

/// Entries per shard a cache aims for before it adds shards.
const PER_SHARD: usize = 1024;

/// A shape is already a keyed hash: its index uses the low 64 bits as they are.
#[derive(Default)]
struct ShapeHasher(u64);

impl Hasher for ShapeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; fold anything else so the hasher stays total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, shape: u128) {
        self.0 = shape as u64;
    }
}

struct Slot {
    shape: u128,
    /// Local time at which the request was sent to Redis.
    sent_at: Micros,
    /// Local time until which the request is certainly still denied.
    until: Micros,
    decisions: Vec<Decision>,
}

#[derive(Default)]
struct Shard {
    index: HashMap<u128, usize, BuildHasherDefault<ShapeHasher>>,
    slots: Vec<Slot>,
    /// Where the next replacement in a full shard starts looking.
    hand: usize,
}

impl Shard {
    /// Writes `decisions` for `shape` into the slot it owns, a free slot, or (when the shard
    /// holds `cap` entries) a slot among the next [`PROBE`] at the hand. Returns whether the
    /// shard grew and how many slots were looked at.
    fn put(
        &mut self,
        cap: usize,
        shape: u128,
        sent_at: Micros,
        until: Micros,
        decisions: &[Decision],
    ) -> (bool, usize) {
        let (at, grew, looked) = if let Some(&at) = self.index.get(&shape) {
            (at, false, 0)
        } else if self.slots.len() < cap {
            self.slots.push(Slot {
                shape,
                sent_at,
                until,
                decisions: Vec::with_capacity(decisions.len()),
            });
            (self.slots.len() - 1, true, 0)
        } else {
            let len = self.slots.len();
            let start = self.hand % len;
            let mut looked = 0;
            let mut victim = start;
            for step in 0..PROBE.min(len) {
                let i = (start + step) % len;
                looked += 1;
                if self.slots[i].until <= sent_at {
                    victim = i;
                    break;
                }
            }
            self.hand = victim + 1;
            self.index.remove(&self.slots[victim].shape);
            (victim, false, looked)
        };
        let slot = &mut self.slots[at];
        slot.shape = shape;
        slot.sent_at = sent_at;
        slot.until = until;
        slot.decisions.clear();
        slot.decisions.extend_from_slice(decisions);
        self.index.insert(shape, at);
        (grew, looked)
    }

    /// Drops the slots that ran out by `now`; returns how many.
    fn sweep(&mut self, now: Micros) -> usize {
        let mut dropped = 0;
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].until > now {
                i += 1;
                continue;
            }
            let gone = self.slots.swap_remove(i);
            self.index.remove(&gone.shape);
            if let Some(moved) = self.slots.get(i) {
                self.index.insert(moved.shape, i);
            }
            dropped += 1;
        }
        dropped
    }
}

/// A bounded, sharded map from a request's shape to its last, still-valid denial.
pub struct LocalCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries per shard.
    cap: usize,
    /// The hash key, random per process.
    keys: (u64, u64),
    entries: AtomicUsize,
    /// Slots looked at by replacements in full shards (tests read it).
    looked: AtomicUsize,
}

impl LocalCache {
    /// A cache of at most `capacity` requests (a little fewer when `capacity` does not divide
    /// evenly into shards).
    pub fn new(capacity: usize) -> Self {
        let shards = (capacity / PER_SHARD)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        let random = std::collections::hash_map::RandomState::new();
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            cap: (capacity / shards).max(1),
            keys: (
                random.hash_one(0x5350_494c_u64),
                random.hash_one(0x4c57_4159_u64),
            ),
            entries: AtomicUsize::new(0),
            looked: AtomicUsize::new(0),
        }
    }

    /// The request's shape: see the module docs.
    fn shape(&self, checks: &[Check<'_>]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write_usize(checks.len());
        for check in checks {
            check.key.hash(&mut h);
            check.params.hash(&mut h);
            h.write_u64(check.cost);
            h.write_u8(u8::from(check.enforced) | u8::from(check.metered) << 1);
        }
        h.finish128().as_u128()
    }

    fn shard(&self, shape: u128) -> &Mutex<Shard> {
        // The high bits pick the shard, the low bits the place in its index.
        &self.shards[(shape >> 64) as usize % self.shards.len()]
    }

    /// The decisions for a request that is known to be denied at `now`, if it is.
    pub fn deny(&self, checks: &[Check<'_>], now: Micros) -> Option<Vec<Decision>> {
        // With nothing cached (the usual state while nothing is denied) there is nothing to
        // find, and the shape, a keyed hash over every check, is not worth computing. An entry
        // being added meanwhile may be missed: the request then goes to Redis, as it would
        // have a moment earlier.
        // Nor is it for a request too large ever to be cached.
        if self.is_empty() || checks.len() > MAX_CHECKS {
            return None;
        }
        let shape = self.shape(checks);
        let shard = self.shard(shape).lock();
        let slot = &shard.slots[*shard.index.get(&shape)?];
        if now >= slot.until || slot.decisions.len() != checks.len() {
            return None;
        }
        let aged = now.saturating_sub(slot.sent_at);
        let decisions = slot
            .decisions
            .iter()
            .map(|d| Decision {
                reset_after: d.reset_after.saturating_sub(aged),
                retry_after: d.retry_after.map(|r| r.saturating_sub(aged).max(1)),
                ..*d
            })
            .collect();
        drop(shard);
        metrics::counter!("spillway_local_cache_hits_total").increment(1);
        Some(decisions)
    }

    /// Remembers a request Redis denied (a call sent at local time `sent_at`).
    pub fn remember(&self, checks: &[Check<'_>], decisions: &[Decision], sent_at: Micros) {
        if checks.len() > MAX_CHECKS {
            return;
        }
        let retry = checks
            .iter()
            .zip(decisions)
            .filter(|(c, d)| c.enforced && !d.allowed && d.denial == Some(Denial::OverLimit))
            .filter_map(|(_, d)| d.retry_after)
            .min();
        let Some(retry) = retry.map(|r| r.min(MAX_HELD)) else {
            return;
        };
        let shape = self.shape(checks);
        let mut shard = self.shard(shape).lock();
        let (grew, looked) = shard.put(self.cap, shape, sent_at, sent_at + retry, decisions);
        // Counted under the shard's lock, so a sweep never subtracts an entry not yet added.
        let n = if grew {
            self.entries.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.len()
        };
        drop(shard);
        if looked > 0 {
            self.looked.fetch_add(looked, Ordering::Relaxed);
        }
        metrics::gauge!("spillway_local_cache_entries").set(n as f64);
    }

    /// Drops entries that have run out; returns how many.
    pub fn sweep(&self, now: Micros) -> u64 {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let n = shard.sweep(now);
            self.entries.fetch_sub(n, Ordering::Relaxed);
            dropped += n;
        }
        metrics::gauge!("spillway_local_cache_entries").set(self.len() as f64);
        dropped as u64
    }

    /// Number of cached requests.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many slots replacements in full shards have looked at so far: at most [`PROBE`]
    /// per replacement, whatever the size.
    pub fn slots_looked_at(&self) -> usize {
        self.looked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
