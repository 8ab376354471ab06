//! Heavy hitters: which items (counters, tenants, users) took the most weight over the last
//! minutes, in memory that does not grow with the number of distinct items.
//!
//! - [`space_saving`]: the sketch, a fixed-capacity Space-Saving table kept as a stream
//!   summary (why not HeavyKeeper: see its docs).
//! - [`gate`]: count-min counters in front of each table that turn away tail items without
//!   weakening its guarantees.
//! - [`ring`]: one table per 10-second interval, so a summary covers a sliding window.
//! - [`TopK`] (here): the ring split into shards by *thread*, each behind a short spin lock
//!   on cache lines of its own; [`TopK::top`] merges the shards' tables for a window into a
//!   ranked list.
//!
//! Why by thread and not by item hash: every serving thread feeds the sketch on every
//! decision, and with hash shards each thread wrote every shard's lock and tables, so their
//! cache lines bounced between cores (measured with 2 serving threads on 2 cores: 7% of
//! throughput and 1.7 µs of CPU per request, against 1% with one thread, for 25 ns of work
//! per update). Now a thread takes a number, round-robin, the first time it adds to any
//! sketch and always updates shard `number % shards`: the first `shards` threads to add get
//! private shards and share no line on the hot path; later ones share, two or more a shard.
//!
//! The price is in accuracy, not memory. An item's weight is now split over the shards of
//! the threads that saw it, so [`TopK::top`] adds up an item's rows across shards by label
//! (Space-Saving summaries merge by addition, as they do across intervals and nodes). A
//! shard's row for an item is never below what that shard saw of it and over by at most its
//! error, itself at most `N_shard / capacity_shard` (the weight the shard saw over its rows),
//! so the merged count is over the truth by at most the sum of its rows' errors. A shard
//! that does not hold the item saw at most its smallest count of it, which the merge leaves
//! out (as it already did across intervals): the merged count is under the truth by at most
//! the sum of those shards' smallest counts. And a thread's stream now meets
//! `capacity / shards` rows, where with hash shards each shard saw `1 / shards` of the items
//! (so a lone serving thread gets one shard's rows). On the skewed streams a limiter sees the
//! heavy items stay exact (`tests::zipf_top_ten_is_recovered`: one thread, 128 rows); the
//! tail builds more labels (`tests::a_long_tail_builds_few_labels`).
//!
//! Memory is bounded by `slots × capacity` rows (`capacity` rounded up to whole shards, and
//! 16 to 32 bytes of gate counters per row) however many threads feed it; a hostile client
//! sending a fresh tenant with every request only churns the smallest rows, and mostly not
//! even those: the gate turns it away.
//! The caller bounds each label's size (the server truncates client-given text).

pub mod gate;
pub mod ring;
pub mod space_saving;

use crate::time::Micros;
use ring::Ring;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a [`TopK`] is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The length of one interval of the ring.
    pub interval: Micros,
    /// How many intervals the ring keeps: the longest window it can answer.
    pub slots: usize,
    /// Items held per interval, over all shards (each holds `capacity / shards`).
    pub capacity: usize,
    /// How many independently locked parts the sketch is split into, one per serving
    /// thread up to this many.
    pub shards: usize,
}

impl Shape {
    /// Ten minutes in 10-second intervals, 1,024 items per interval in 8 shards of 128: a
    /// private shard for each of up to 8 serving threads.
    pub const DEFAULT: Shape = Shape {
        interval: 10 * crate::time::SECOND,
        slots: 60,
        capacity: 1024,
        shards: 8,
    };
}

/// A sharded, windowed heavy-hitter sketch; see the module docs.
#[derive(Debug)]
pub struct TopK<L> {
    shards: Box<[Shard<L>]>,
    interval: Micros,
}

/// One shard on cache lines of its own, so a thread locking its shard does not pull in the
/// line of a neighbour's lock (128 bytes: adjacent-line prefetching pairs 64-byte lines).
#[derive(Debug)]
#[repr(align(128))]
struct Shard<L>(spin::Mutex<Ring<L>>);

/// The next thread number to give out.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, given out round-robin the first time it adds to any sketch; it
    /// picks the thread's shard in every [`TopK`].
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// This thread's number (see `THREAD`): the sketches' and the dashboard's rate ring
/// (`crate::rates`) pick their per-thread shards by it.
pub(crate) fn thread_number() -> usize {
    THREAD.with(|t| *t)
}

impl<L: Clone + Eq + Hash> TopK<L> {
    /// An empty sketch of the given shape.
    pub fn new(shape: Shape) -> Self {
        let shards = shape.shards.max(1);
        let per_shard = shape.capacity.div_ceil(shards).max(1);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Shard(spin::Mutex::new(Ring::new(
                        shape.interval,
                        shape.slots,
                        per_shard,
                    )))
                })
                .collect(),
            interval: shape.interval.max(1),
        }
    }

    /// Adds `weight` to the item `hash` at `now`, in the calling thread's shard; `label` is
    /// called only if the item enters that shard's table. `hash` must be a well-mixed,
    /// per-process-seeded hash of the item.
    #[inline]
    pub fn add(&self, now: Micros, hash: u64, weight: u64, label: impl FnOnce() -> L) {
        // No other thread touches this shard's lock or tables unless there are more threads
        // than shards.
        let shard = thread_shard(self.shards.len());
        self.shards[shard].0.lock().add(now, hash, weight, label);
    }

    /// The `n` heaviest items over the last `window` at `now` (rounded to whole intervals,
    /// the current one included), heaviest first, with their estimated counts: an item's
    /// rows are added up over every interval and every shard.
    pub fn top(&self, now: Micros, window: Micros, n: usize) -> Vec<(L, u64)> {
        rank(self.counts(now, window), n)
    }

    /// Every item held over the last `window` at `now`, with its estimated count, unranked:
    /// what [`TopK::top`] ranks, for a caller that filters or groups the items before ranking
    /// (at most [`TopK::max_rows`] of them).
    pub fn counts(&self, now: Micros, window: Micros) -> HashMap<L, u64> {
        let intervals = window.div_ceil(self.interval).max(1);
        let mut merged: HashMap<L, u64> = HashMap::new();
        for shard in self.shards.iter() {
            let ring = shard.0.lock();
            for row in ring.rows(now, intervals) {
                *merged.entry(row.label.clone()).or_default() += row.count;
            }
        }
        merged
    }

    /// Rows held now, over every shard and interval (an item several threads fed has a row
    /// in each of their shards).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most rows the sketch can ever hold.
    pub fn max_rows(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().max_rows()).sum()
    }
}

/// The calling thread's shard among `shards`.
#[inline]
fn thread_shard(shards: usize) -> usize {
    thread_number() % shards
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
