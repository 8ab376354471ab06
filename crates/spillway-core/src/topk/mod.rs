//! Heavy hitters: which items (counters, tenants, users) took the most weight over the last
//! minutes, in memory that does not grow with the number of distinct items.
//!
//! - [`space_saving`]: the sketch, a fixed-capacity Space-Saving table kept as a stream
//!   summary (why not HeavyKeeper: see its docs).
//! - [`gate`]: count-min counters in front of each table that turn away tail items without
//!   weakening its guarantees.
//! - [`ring`]: one table per 10-second interval, so a summary covers a sliding window.
//! - [`TopK`] (here): the ring split into shards by item hash, each behind a short spin lock,
//!   so concurrent decisions rarely touch the same lock; [`TopK::top`] merges the shards'
//!   tables for a window into a ranked list.
//!
//! Memory is bounded by `shards × slots × capacity` rows (and 16 to 32 bytes of gate
//! counters per row) whatever the stream holds; a hostile client sending a fresh tenant with
//! every request only churns the smallest rows, and mostly not even those: the gate turns
//! it away.
//! The caller bounds each label's size (the server truncates client-given text).

pub mod gate;
pub mod ring;
pub mod space_saving;
#[cfg(test)]
pub(crate) mod testkit;

use crate::time::Micros;
use ring::Ring;
use std::collections::HashMap;
use std::hash::Hash;

/// How a [`TopK`] is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The length of one interval of the ring.
    pub interval: Micros,
    /// How many intervals the ring keeps: the longest window it can answer.
    pub slots: usize,
    /// Items held per interval, over all shards.
    pub capacity: usize,
    /// How many independently locked parts the items are split into.
    pub shards: usize,
}

impl Shape {
    /// Ten minutes in 10-second intervals, 1,024 items per interval in 4 shards.
    pub const DEFAULT: Shape = Shape {
        interval: 10 * crate::time::SECOND,
        slots: 60,
        capacity: 1024,
        shards: 4,
    };
}

/// A sharded, windowed heavy-hitter sketch; see the module docs.
#[derive(Debug)]
pub struct TopK<L> {
    shards: Box<[spin::Mutex<Ring<L>>]>,
    interval: Micros,
}

impl<L: Clone + Eq + Hash> TopK<L> {
    /// An empty sketch of the given shape.
    pub fn new(shape: Shape) -> Self {
        let shards = shape.shards.max(1);
        let per_shard = shape.capacity.div_ceil(shards).max(1);
        Self {
            shards: (0..shards)
                .map(|_| spin::Mutex::new(Ring::new(shape.interval, shape.slots, per_shard)))
                .collect(),
            interval: shape.interval.max(1),
        }
    }

    /// Adds `weight` to the item `hash` at `now`; `label` is called only if the item enters a
    /// table. `hash` must be a well-mixed, per-process-seeded hash of the item.
    #[inline]
    pub fn add(&self, now: Micros, hash: u64, weight: u64, label: impl FnOnce() -> L) {
        // Bits 16..48 pick the shard (scaled by a multiply, not divided); the table uses the
        // low bits and the top seven.
        let shard = ((hash >> 16) as u32 as u64 * self.shards.len() as u64) >> 32;
        let shard = shard as usize;
        self.shards[shard].lock().add(now, hash, weight, label);
    }

    /// The `n` heaviest items over the last `window` at `now` (rounded to whole intervals,
    /// the current one included), heaviest first, with their estimated counts.
    pub fn top(&self, now: Micros, window: Micros, n: usize) -> Vec<(L, u64)> {
        let intervals = window.div_ceil(self.interval).max(1);
        let mut merged: HashMap<L, u64> = HashMap::new();
        for shard in self.shards.iter() {
            let ring = shard.lock();
            for row in ring.rows(now, intervals) {
                *merged.entry(row.label.clone()).or_default() += row.count;
            }
        }
        rank(merged, n)
    }

    /// Rows held now, over every shard and interval.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most rows the sketch can ever hold.
    pub fn max_rows(&self) -> usize {
        self.shards.iter().map(|s| s.lock().max_rows()).sum()
    }
}

/// The `n` heaviest of `counts`, heaviest first (the order among equal counts is unspecified).
pub fn rank<L>(counts: HashMap<L, u64>, n: usize) -> Vec<(L, u64)> {
    let mut all: Vec<(L, u64)> = counts.into_iter().collect();
    let n = n.min(all.len());
    if n == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1));
    all.truncate(n);
    all.sort_by_key(|r| std::cmp::Reverse(r.1));
    all
}

#[cfg(test)]
mod tests;
