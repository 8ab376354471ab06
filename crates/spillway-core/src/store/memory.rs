//! The embedded in-memory store: sharded maps behind short locked sections, safe under many
//! tokio tasks and threads.
//!
//! # Keys
//! A [`StateKey`](crate::key::StateKey) is stored as 128 bits, never as its text, so memory per
//! key does not grow with key length and a flood of long, hostile values costs no more than short
//! ones:
//! - the first word is a keyed hash (foldhash, random per-process seed) of the dimension
//!   values, seeded by the second word;
//! - the second word identifies the limit: its fingerprint, which the policy computes from
//!   the limit's name, algorithm and key dimensions (not its numbers: a counter survives a
//!   change of them, and its slot, see [`Slot`], says which numbers wrote its state).
//!
//! Different limits therefore never share a slot (short of a 64-bit collision among a
//! policy's few hundred limit fingerprints), and two values of one limit share one only if their
//! 64-bit hashes collide: about 2^-64 per pair by chance, not aimable without the secret seed,
//! which never leaves the process. Even then the two keys would share one counter, which makes
//! both stricter and never admits more than the limit. (SipHash-1-3 over the whole key was the
//! first choice; it cost half of a whole check.)
//!
//! # Memory
//! A key costs one 40-byte table slot (16-byte hash, 24-byte [`Slot`]) plus a control byte,
//! and the tables run between 7/16 and 7/8 full, so 47 to 94 bytes per key (the sliding log
//! adds its boxed entries). `docs/BENCHMARKS.md` has the measured figures.
//!
//! # Expiry and the size bound
//! Every slot carries the second (from the store's start) at which its state becomes
//! indistinguishable from a fresh key, rounded up; keeping a state that long is harmless
//! because evaluating it gives exactly what a fresh key would. [`Store::sweep`] drops expired
//! slots (the server sweeps every second). The number of keys is bounded by `max_keys`, split
//! evenly over the shards. When a new key arrives at a full shard, a sample of
//! [`EVICTION_SAMPLE`] slots at random positions of its table is examined (`eviction`):
//! expired ones among them are dropped; if none was expired, one of those that had used the
//! least of its limit at its last check (under half, half or more, all, denied) is evicted,
//! the first found, counted in [`Store::evictions`]. Evicting a key hands its client back what
//! it had used, so a used-up or denied key goes last, and among equals the choice is random
//! (not the soonest to expire, which a client flooding fresh long-lived keys could make its
//! own short-lived key be): to have its own key evicted once, a client must insert about
//! `max_keys` fresh keys as used up as its own.
//! Making room never scans a whole shard, so a flood costs each insert a constant amount of
//! work, and no slot is looked at more often than another, whatever its place in the table. An evicted key behaves like a fresh one
//! afterwards, so the bound trades exactness for memory only under a flood larger than
//! `max_keys`. Room is never made by evicting a key the same request is charging (its charge
//! would be lost), so a shard whose every slot is taken by one request's keys grows past its
//! share by the rest of them; that needs a bound of fewer keys per shard than a request has
//! limits, far below any useful `max_keys`.
//!
//! # Atomicity
//! A request's checks lock every shard they touch, in ascending shard order (so concurrent
//! multi-key requests cannot deadlock), evaluate all limits, and write only if the request is
//! admitted.

use super::slot::{Slot, DENIED, EXPIRY_MASK, USED_SHIFT, USED_UP};
use super::{admits, Charged, Check, ReportId, Store, StoreError};
use crate::algorithm::{Decision, LimitParams, ParamsId, State};
use crate::request::CheckMode;
use crate::time::{Clock, Micros, SystemClock, SECOND};
use async_trait::async_trait;
use foldhash::quality::FoldHasher;
use foldhash::SharedSeed;
use hashbrown::HashTable;
use smallvec::SmallVec;
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod eviction;
mod reports;

pub use reports::MAX_REPORTS;

/// The fewest shards a store has, however small its bound; a power of two, as every shard
/// count is, so the shard is a mask of the key hash.
const MIN_SHARDS: usize = 64;
/// The most shards a store has (it caps the fixed cost of the locks and empty tables).
const MAX_SHARDS: usize = 4096;
/// Keys per shard the shard count aims at (512 shards at the default bound of a million). A
/// shard's longest lock holds grow with its size (the sweep's pass, a table growing), and
/// the more shards, the less often two threads want the same one while its holder is
/// preempted. Under `bench/http.sh` load, 64 shards of 15,600 keys made waiting threads yield
/// about 40,000 times a second; 512 shards, about 3,500. More shards than that stop fitting
/// their locks in the L1 cache and slow every check.
const KEYS_PER_SHARD: usize = 2048;
/// How many slots are compared when a full shard must evict one.
pub const EVICTION_SAMPLE: usize = 8;

/// Decisions for one request, inline for the usual handful of limits.
pub type Decisions = SmallVec<[Decision; 4]>;

/// The stored form of a key: the values' hash, then the limit's identity (see the module docs).
type KeyHash = [u64; 2];

/// One shard's table. The keys are already uniform hash output, so the table is addressed by
/// their first word as is. A `HashTable` rather than a `HashMap` because its buckets can be
/// read by index, which is what lets eviction sample random slots (see `eviction`); the
/// layout is the same (one 40-byte bucket and a control byte per slot).
type Shard = HashTable<(KeyHash, Slot)>;

/// The slot stored under `h`, if any.
#[inline]
fn find<'m>(map: &'m Shard, h: &KeyHash) -> Option<&'m Slot> {
    map.find(h[0], |(k, _)| k == h).map(|(_, slot)| slot)
}

/// The slot stored under `h`, if any, for writing.
#[inline]
fn find_mut<'m>(map: &'m mut Shard, h: &KeyHash) -> Option<&'m mut Slot> {
    map.find_mut(h[0], |(k, _)| k == h).map(|(_, slot)| slot)
}

/// Drops the slot stored under `h`, if any.
fn forget(map: &mut Shard, h: &KeyHash) {
    if let Ok(entry) = map.find_entry(h[0], |(k, _)| k == h) {
        entry.remove();
    }
}

/// A shard's lock. A check holds it for a table probe and a few integer operations (tens of
/// nanoseconds, never an await or a syscall), so a spinning lock fits: taking it is one
/// compare-and-swap and releasing it a plain store, where a parking mutex pays a second atomic
/// read-modify-write to release. The longer holds are rare and bounded: the sweep of one
/// shard once a second, a table growing, a sliding log copying its entries (making room for a
/// new key is constant-time, see [`MemoryStore::make_room`]). A thread that finds the lock
/// taken yields its time slice between tries, so a preempted or sweeping holder is not
/// starved by spinners.
type ShardLock = SpinMutex<Shard, Yield>;
type ShardGuard<'a> = SpinMutexGuard<'a, Shard, Yield>;

/// The embedded default store. See the module docs for the memory, expiry and eviction rules.
pub struct MemoryStore {
    shards: Box<[ShardLock]>,
    /// `shards.len() - 1`.
    shard_mask: usize,
    per_shard: usize,
    seed: Box<SharedSeed>,
    clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`], read directly on the hot path.
    system_clock: bool,
    /// Expiry seconds count from here, so they fit in 32 bits.
    epoch: Micros,
    evictions: AtomicU64,
    /// Recent report ids (see `reports`); taken before any shard lock when charging.
    reports: std::sync::Mutex<reports::Reports>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_keys", &self.max_keys())
            .field("keys", &self.key_count())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_keys` keys (rounded up to a multiple of the shard
    /// count), reading time from `clock`.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        let seed = std::collections::hash_map::RandomState::new();
        let shards = shard_count(max_keys);
        Self {
            shards: (0..shards).map(|_| ShardLock::new(Shard::new())).collect(),
            shard_mask: shards - 1,
            per_shard: max_keys.div_ceil(shards).max(1),
            seed: Box::new(SharedSeed::from_u64(seed.hash_one(1u8))),
            epoch: clock.now(),
            system_clock: clock.is_system_clock(),
            clock,
            evictions: AtomicU64::new(0),
            reports: std::sync::Mutex::default(),
        }
    }

    /// The configured bound on the number of keys.
    pub fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Checks one limit's key: the keyed check, without the per-request bookkeeping of the
    /// multi-limit form. It is what [`MemoryStore::check_blocking`] does for a request with a
    /// single limit, and what benchmarks compare against other keyed limiters.
    pub fn check_key(&self, check: &Check<'_>, mode: CheckMode) -> Decision {
        self.check_one(check, self.now(), mode)
    }

    /// Synchronous form of [`Store::check`], for callers (benchmarks, embedders) that are not
    /// async. The in-memory store never waits, so both forms are the same work.
    pub fn check_blocking(&self, checks: &[Check<'_>], mode: CheckMode) -> Decisions {
        let now = self.now();
        match checks {
            [one] => SmallVec::from_elem(self.check_one(one, now, mode), 1),
            _ => self.check_many(checks, now, mode),
        }
    }

    /// The shard, from bits of the values' hash that the tables themselves do not use (they
    /// take the low bits for the bucket and the top seven for the control byte).
    #[inline]
    fn shard_of(&self, h: &KeyHash) -> usize {
        ((h[0] >> 32) as usize) & self.shard_mask
    }

    #[inline]
    fn now(&self) -> Micros {
        if self.system_clock {
            SystemClock.now()
        } else {
            self.clock.now()
        }
    }

    #[inline]
    fn hash(&self, check: &Check<'_>) -> KeyHash {
        let limit = check.key.fingerprint;
        let mut values = FoldHasher::with_seed(limit, &self.seed);
        check.key.hash_values_into(&mut values);
        [values.finish(), limit]
    }

    /// Expiry as whole seconds after the store's epoch, rounded up (so never early).
    fn expiry_secs(&self, expires_at: Micros) -> u32 {
        let secs = expires_at.saturating_sub(self.epoch).div_ceil(SECOND);
        u32::try_from(secs).unwrap_or(u32::MAX).min(EXPIRY_MASK)
    }

    /// The expiry word of a state written after `decision`: its expiry second, and its used
    /// level (see `slot::USED_SHIFT`).
    #[inline]
    fn expiry_after(&self, expires_at: Micros, decision: &Decision) -> u32 {
        let spent = decision.limit.saturating_sub(decision.remaining);
        let used = if !decision.allowed {
            DENIED
        } else if decision.remaining == 0 {
            USED_UP
        } else {
            u32::from(spent.saturating_mul(2) >= decision.limit)
        };
        self.expiry_secs(expires_at) | used << USED_SHIFT
    }

    /// Whether a slot's state is already equivalent to a fresh key at `now`.
    fn expired(&self, slot: &Slot, now: Micros) -> bool {
        self.expired_at(slot.expires(), now)
    }

    /// Whether an expiry second (see [`MemoryStore::expiry_secs`]) has passed at `now`.
    fn expired_at(&self, expires: u32, now: Micros) -> bool {
        self.epoch + u64::from(expires) * SECOND <= now
    }

    /// The common case: a request with a single limit takes one lock, one table lookup and no
    /// allocation.
    #[inline]
    fn check_one(&self, check: &Check<'_>, now: Micros, mode: CheckMode) -> Decision {
        let h = self.hash(check);
        let mut map = self.shards[self.shard_of(&h)].lock();
        if let Some(slot) = find_mut(&mut map, &h) {
            return self.update(slot, check, now, mode);
        }
        let e = evaluate_fresh(check, now);
        let decision = e.decision;
        if writes(check, mode) {
            // The probe above missed, so the key is new: insert without probing again.
            if let Some(slot) = self.slot_of(e, check.params.id(), now) {
                self.insert(&mut map, h, slot, now, &[]);
            }
        }
        decision
    }

    /// Evaluates a check against its existing slot and, when it consumes and is allowed,
    /// writes the new state back. A slot of the limit's own algorithm, written under the same
    /// numbers (the rule: the key names the limit's algorithm, and its numbers rarely change), is
    /// updated in place by that algorithm's own function, which inlines; any other slot takes
    /// the general path, which converts a state written under other numbers first (see
    /// `crate::algorithm::carry`).
    #[inline]
    fn update(&self, slot: &mut Slot, check: &Check<'_>, now: Micros, mode: CheckMode) -> Decision {
        // A zero-cost check writes nothing: it would only restate what is stored, except for a
        // state written under other numbers, where writing the conversion back would lose what
        // the key used beyond the new numbers (read again under the old ones, it would be
        // gone). See `writes`.
        if check.metered {
            return slot.admit(check.params, now).decision;
        }
        let consume = writes(check, mode);
        macro_rules! in_place {
            ($p:expr, $s:expr, $exp:expr) => {{
                let e = $p.evaluate(Some(&*$s), now, check.cost);
                if consume && e.decision.allowed {
                    *$s = e.state;
                    *$exp = self.expiry_after(e.expires_at, &e.decision);
                } else if consume {
                    *$exp |= DENIED << USED_SHIFT;
                }
                e.decision
            }};
        }
        match (check.params, &mut *slot) {
            (LimitParams::TokenBucket(p), Slot::TokenBucket(s, exp, id)) if *id == p.id() => {
                in_place!(p, s, exp)
            }
            (LimitParams::Gcra(p), Slot::Gcra(s, exp, id)) if *id == p.id() => {
                in_place!(p, s, exp)
            }
            (LimitParams::FixedWindow(p), Slot::FixedWindow(s, exp)) => in_place!(p, s, exp),
            (LimitParams::SlidingWindow(p), Slot::SlidingWindow(s, exp)) => in_place!(p, s, exp),
            (LimitParams::LeakyBucket(p), Slot::LeakyBucket(s, exp, id)) if *id == p.id() => {
                in_place!(p, s, exp)
            }
            _ => {
                let e = slot.evaluate(check.params, now, check.cost);
                if consume && e.decision.allowed {
                    let expires = self.expiry_after(e.expires_at, &e.decision);
                    *slot = Slot::new(e.state, expires, check.params.id());
                } else if consume {
                    slot.hold();
                }
                e.decision
            }
        }
    }

    fn check_many(&self, checks: &[Check<'_>], now: Micros, mode: CheckMode) -> Decisions {
        let hashes: SmallVec<[KeyHash; 4]> = checks.iter().map(|c| self.hash(c)).collect();
        let mut order: SmallVec<[usize; 4]> = hashes.iter().map(|h| self.shard_of(h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, ShardGuard<'_>); 4]> = order
            .into_iter()
            .map(|i| (i, self.shards[i].lock()))
            .collect();
        let slot_of = |h: &KeyHash| {
            guards
                .iter()
                .position(|(s, _)| *s == self.shard_of(h))
                .unwrap_or(0)
        };
        let slots: SmallVec<[usize; 4]> = hashes.iter().map(slot_of).collect();

        let evaluations: SmallVec<[_; 4]> = checks
            .iter()
            .zip(&hashes)
            .zip(&slots)
            .map(|((c, h), &slot)| match find(&guards[slot].1, h) {
                Some(stored) if c.metered => stored.admit(c.params, now),
                Some(stored) => stored.evaluate(c.params, now, c.cost),
                None => evaluate_fresh(c, now),
            })
            .collect();
        let decisions: Decisions = evaluations.iter().map(|e| e.decision).collect();
        if mode == CheckMode::Consume {
            let admitted = admits(checks, &decisions);
            let results = evaluations.into_iter().zip(&hashes).zip(&slots).zip(checks);
            for (((e, h), &slot), c) in results {
                if !writes(c, mode) {
                    continue;
                }
                let map = &mut guards[slot].1;
                if !e.decision.allowed {
                    // A key that denied is marked so (`slot::USED_SHIFT`), as `update` marks it.
                    if let Some(stored) = find_mut(map, h) {
                        stored.hold();
                    }
                } else if admitted {
                    self.commit(map, *h, e, c.params.id(), now, &hashes);
                }
            }
        }
        decisions
    }

    /// Stores an allowed evaluation's state, with the id `id` of the numbers that wrote it.
    /// A denied evaluation changes nothing; one that leaves the key fresh drops its slot (a
    /// state left behind would be read again, and under other numbers it is not fresh).
    /// Making room never evicts a key of `request` (the keys the same request is charging),
    /// whose charge would be lost.
    fn commit(
        &self,
        map: &mut Shard,
        h: KeyHash,
        e: crate::algorithm::Evaluation<State>,
        id: ParamsId,
        now: Micros,
        request: &[KeyHash],
    ) {
        if !e.decision.allowed {
            return;
        }
        let Some(slot) = self.slot_of(e, id, now) else {
            forget(map, &h);
            return;
        };
        if let Some(existing) = find_mut(map, &h) {
            *existing = slot;
        } else {
            self.insert(map, h, slot, now, request);
        }
    }

    /// The slot an evaluation leaves behind: none when it was denied (nothing changes) or
    /// leaves the key indistinguishable from a fresh one.
    #[inline]
    fn slot_of(
        &self,
        e: crate::algorithm::Evaluation<State>,
        id: ParamsId,
        now: Micros,
    ) -> Option<Slot> {
        (e.decision.allowed && e.expires_at > now)
            .then(|| Slot::new(e.state, self.expiry_after(e.expires_at, &e.decision), id))
    }

    /// Inserts `slot` under `h`, which the shard does not hold, making room first.
    fn insert(&self, map: &mut Shard, h: KeyHash, slot: Slot, now: Micros, request: &[KeyHash]) {
        self.make_room(map, &h, now, request);
        map.insert_unique(h[0], (h, slot), |(k, _)| k[0]);
    }
}

impl MemoryStore {
    /// Synchronous form of [`Store::charge`]: with the report ids locked (so a report and its
    /// retry cannot both pass the dedupe), locks every touched shard in ascending order and
    /// charges each check in turn, writing every new state.
    pub fn charge_blocking(&self, checks: &[Check<'_>], report: Option<ReportId>) -> Charged {
        let now = self.now();
        // A poisoned lock only means another charge panicked; the set is still consistent.
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Remembered at once: the lock is held until every check is charged, and charging
        // cannot fail partway, so a concurrent retry still finds the id only after this charge.
        let duplicate = report.is_some_and(|id| reports.remember(id, now));
        let hashes: SmallVec<[KeyHash; 4]> = checks.iter().map(|c| self.hash(c)).collect();
        let mut order: SmallVec<[usize; 4]> = hashes.iter().map(|h| self.shard_of(h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, ShardGuard<'_>); 4]> = order
            .into_iter()
            .map(|i| (i, self.shards[i].lock()))
            .collect();
        let mut decisions = Vec::with_capacity(checks.len());
        for (c, h) in checks.iter().zip(&hashes) {
            let shard = self.shard_of(h);
            let Some((_, map)) = guards.iter_mut().find(|(s, _)| *s == shard) else {
                continue;
            };
            if duplicate {
                // A retry: tell the standing as an admission sees it, change nothing.
                let e = match find(map, h) {
                    Some(stored) => stored.admit(c.params, now),
                    None => c.params.admit(None, now),
                };
                decisions.push(e.decision);
                continue;
            }
            let e = match find(map, h) {
                Some(stored) => stored.charge(c.params, now, c.cost),
                None => c.params.charge(None, now, c.cost),
            };
            decisions.push(e.decision);
            if e.expires_at > now {
                let expires = self.expiry_after(e.expires_at, &e.decision);
                let slot = Slot::new(e.state, expires, c.params.id());
                if let Some(existing) = find_mut(map, h) {
                    *existing = slot;
                } else {
                    self.insert(map, *h, slot, now, &hashes);
                }
            } else {
                // The charge left the key fresh (a cost of 0 on a full bucket): the slot goes,
                // as the Redis script deletes the key. Kept, the state it held before would
                // be read again, and under other numbers it need not read as fresh.
                forget(map, h);
            }
        }
        Charged {
            recorded: !duplicate,
            decisions,
        }
    }

    /// How many report ids the store remembers (bounded by [`MAX_REPORTS`]).
    pub fn report_ids(&self) -> usize {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Whether an allowed `check` stores its new state: only a consuming check that charges
/// something. A zero-cost check is a look: the state it would store says nothing new under the
/// same numbers, and under other numbers it is a lossy conversion (a use above the new numbers
/// is capped), so writing it would let a zero-cost request erase usage.
///
/// A metered limit's admission never writes: it consumes nothing.
#[inline]
fn writes(check: &Check<'_>, mode: CheckMode) -> bool {
    mode == CheckMode::Consume && check.cost > 0 && !check.metered
}

/// `check` against a key the store does not hold.
#[inline]
fn evaluate_fresh(check: &Check<'_>, now: Micros) -> crate::algorithm::Evaluation<State> {
    if check.metered {
        check.params.admit(None, now)
    } else {
        check.params.evaluate(None, now, check.cost)
    }
}

/// How many shards a store bounded at `max_keys` gets: about [`KEYS_PER_SHARD`] keys each,
/// within [`MIN_SHARDS`] and [`MAX_SHARDS`].
fn shard_count(max_keys: usize) -> usize {
    (max_keys / KEYS_PER_SHARD)
        .next_power_of_two()
        .clamp(MIN_SHARDS, MAX_SHARDS)
}

#[async_trait]
impl Store for MemoryStore {
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError> {
        Ok(self.check_blocking(checks, mode).into_vec())
    }

    async fn charge(
        &self,
        checks: &[Check<'_>],
        report: Option<ReportId>,
    ) -> Result<Charged, StoreError> {
        Ok(self.charge_blocking(checks, report))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn key_count(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().len() as u64).sum()
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn sweep(&self) -> u64 {
        let now = self.clock.now();
        // Expired report ids go too (not counted: they are not keys).
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sweep(now);
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            let before = map.len();
            map.retain(|(_, s)| !self.expired(s, now));
            dropped += (before - map.len()) as u64;
        }
        dropped
    }
}

#[cfg(test)]
mod tests;
