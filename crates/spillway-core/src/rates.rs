//! Decisions per second for the last fifteen minutes: allowed, denied and degraded counts and
//! the time the store call took, one cell per second, for the server's dashboard
//! (`GET /ui/api/series`, fed once per decision).
//!
//! The request path adds to the cell of the current second without a lock: every counter is
//! an `AtomicU64` holding the *lap* it counts for in its top 24 bits (the second divided by
//! the ring's length, so a cell is reused once per lap) and the count in the low 40. Adding is
//! one `fetch_add` when the cell already counts this lap, else a compare-and-swap that starts
//! it afresh; a maximum is one `fetch_max`, since a later lap is a larger number. A reader
//! counts a cell only when its lap is the one it expects, so a cell left over from a quiet
//! earlier lap reads as zero, and nothing ever sweeps the ring.
//!
//! Cells are split by thread, like the top-k sketches ([`crate::topk`]): each serving
//! thread adds to its own shard of the ring, so threads do not bounce one cache line between
//! cores on every decision; a read adds up the shards.

use crate::time::Micros;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds the ring holds: fifteen minutes.
pub const SECONDS: usize = 900;
/// Shards, each written by the threads whose number falls in it.
const SHARDS: usize = 8;
/// Bits of a counter that hold its count; the rest hold its lap.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// How a decision ended, as the chart counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// The store allowed it.
    Allowed,
    /// The store denied it.
    Denied,
    /// The store could not answer and a failure mode decided (open, degrade) or refused
    /// (closed).
    Degraded,
}

/// One second's counters in one shard.
#[derive(Debug, Default)]
struct Cell {
    allowed: AtomicU64,
    denied: AtomicU64,
    degraded: AtomicU64,
    /// Store-call time summed over the second's decisions, in microseconds.
    micros: AtomicU64,
    /// The longest store call of the second, in microseconds.
    max_micros: AtomicU64,
}

/// One thread group's ring, on cache lines of its own.
#[repr(align(128))]
#[derive(Debug)]
struct Shard(Box<[Cell]>);

/// The ring; see the module docs.
#[derive(Debug)]
pub struct Rates {
    shards: Box<[Shard]>,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard((0..SECONDS).map(|_| Cell::default()).collect()))
                .collect(),
        }
    }
}

/// What a slice of the ring holds, oldest second first.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Series {
    /// The first second shown, in seconds since the epoch.
    pub start: u64,
    /// Allowed decisions in each second.
    pub allowed: Vec<u64>,
    /// Denied decisions in each second.
    pub denied: Vec<u64>,
    /// Degraded decisions (and fail-closed refusals) in each second.
    pub degraded: Vec<u64>,
    /// The mean store-call time of each second's decisions, in microseconds (0 when none).
    pub mean_micros: Vec<u64>,
    /// The longest store call of each second, in microseconds.
    pub max_micros: Vec<u64>,
}

impl Series {
    /// Decisions of every kind over the whole slice: allowed, denied, degraded.
    pub fn totals(&self) -> (u64, u64, u64) {
        let sum = |v: &[u64]| v.iter().sum();
        (sum(&self.allowed), sum(&self.denied), sum(&self.degraded))
    }
}

impl Rates {
    /// Counts one decision that ended as `tally` at `now`, whose store call took `micros`.
    #[inline]
    pub fn record(&self, now: Micros, tally: Tally, micros: u64) {
        let second = now / 1_000_000;
        let (index, lap) = place(second);
        let shard = crate::topk::thread_number() % SHARDS;
        let cell = &self.shards[shard].0[index];
        let counter = match tally {
            Tally::Allowed => &cell.allowed,
            Tally::Denied => &cell.denied,
            Tally::Degraded => &cell.degraded,
        };
        add(counter, lap, 1);
        let micros = micros.min(COUNT_MASK);
        add(&cell.micros, lap, micros);
        // Most calls are not the second's longest: a load spares them the read-modify-write.
        let tagged = (lap << COUNT_BITS) | micros;
        if cell.max_micros.load(Ordering::Relaxed) < tagged {
            cell.max_micros.fetch_max(tagged, Ordering::Relaxed);
        }
    }

    /// The last `seconds` whole seconds before `now`'s (at most [`SECONDS`] - 1, so the
    /// oldest cell shown is never one being reused), oldest first. The current second, still
    /// counting, is left out so the chart's last point does not dip.
    pub fn series(&self, now: Micros, seconds: usize) -> Series {
        let seconds = seconds.min(SECONDS - 1);
        let current = now / 1_000_000;
        let start = current.saturating_sub(seconds as u64);
        let mut out = Series {
            start,
            ..Series::default()
        };
        for second in start..current {
            let (index, lap) = place(second);
            let mut sums = [0u64; 4];
            let mut max = 0;
            for shard in self.shards.iter() {
                let cell = &shard.0[index];
                for (sum, counter) in
                    sums.iter_mut()
                        .zip([&cell.allowed, &cell.denied, &cell.degraded, &cell.micros])
                {
                    *sum += read(counter, lap);
                }
                max = max.max(read(&cell.max_micros, lap));
            }
            let [allowed, denied, degraded, micros] = sums;
            let decisions = allowed + denied + degraded;
            out.allowed.push(allowed);
            out.denied.push(denied);
            out.degraded.push(degraded);
            out.mean_micros
                .push(micros.checked_div(decisions).unwrap_or(0));
            out.max_micros.push(max);
        }
        out
    }
}

/// A second's cell and the lap its counters must carry.
#[inline]
fn place(second: u64) -> (usize, u64) {
    let laps = SECONDS as u64;
    // 24 bits of laps of 900 s: the tag repeats after 475 years.
    ((second % laps) as usize, (second / laps) & ((1 << 24) - 1))
}

/// Adds `n` to `counter` for `lap`, starting it afresh when it still counts an earlier lap;
/// a counter already on a later lap (the decision finished fifteen minutes late) is left
/// alone.
#[inline]
fn add(counter: &AtomicU64, lap: u64, n: u64) {
    let mut current = counter.load(Ordering::Relaxed);
    loop {
        let held = current >> COUNT_BITS;
        if held == lap {
            counter.fetch_add(n, Ordering::Relaxed);
            return;
        }
        if held > lap {
            return;
        }
        match counter.compare_exchange_weak(
            current,
            (lap << COUNT_BITS) | n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(now) => current = now,
        }
    }
}

/// `counter`'s count if it counts `lap`, else 0.
fn read(counter: &AtomicU64, lap: u64) -> u64 {
    let value = counter.load(Ordering::Relaxed);
    if value >> COUNT_BITS == lap {
        value & COUNT_MASK
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn each_second_counts_its_own_decisions() {
        let rates = Rates::default();
        let t0 = 1_800_000_000 * S;
        rates.record(t0, Tally::Allowed, 100);
        rates.record(t0 + 10, Tally::Allowed, 300);
        rates.record(t0 + S, Tally::Denied, 50);
        rates.record(t0 + 2 * S, Tally::Degraded, 10_000);
        let series = rates.series(t0 + 3 * S, 4);
        assert_eq!(series.start, 1_800_000_000 - 1);
        assert_eq!(series.allowed, [0, 2, 0, 0]);
        assert_eq!(series.denied, [0, 0, 1, 0]);
        assert_eq!(series.degraded, [0, 0, 0, 1]);
        assert_eq!(series.mean_micros, [0, 200, 50, 10_000]);
        assert_eq!(series.max_micros, [0, 300, 50, 10_000]);
        assert_eq!(series.totals(), (2, 1, 1));
    }

    #[test]
    fn the_current_second_is_not_shown_until_it_ends() {
        let rates = Rates::default();
        let t0 = 1_800_000_000 * S;
        rates.record(t0, Tally::Allowed, 1);
        assert_eq!(rates.series(t0, 10).totals(), (0, 0, 0));
        assert_eq!(rates.series(t0 + S, 10).totals(), (1, 0, 0));
    }

    #[test]
    fn a_cell_reused_a_lap_later_starts_afresh_and_old_laps_read_as_zero() {
        let rates = Rates::default();
        let t0 = 1_800_000_000 * S;
        for _ in 0..5 {
            rates.record(t0, Tally::Denied, 1_000);
        }
        let lap = SECONDS as u64 * S;
        // Fifteen minutes on, nothing recent: the old counts must not show.
        assert_eq!(rates.series(t0 + lap + S, SECONDS).totals(), (0, 0, 0));
        rates.record(t0 + lap, Tally::Denied, 7);
        let series = rates.series(t0 + lap + S, 1);
        assert_eq!(series.denied, [1]);
        assert_eq!(series.max_micros, [7]);
        assert_eq!(series.mean_micros, [7]);
        // A decision that finished a lap late does not clobber the newer lap.
        rates.record(t0, Tally::Denied, 1);
        assert_eq!(rates.series(t0 + lap + S, 1).denied, [1]);
    }

    #[test]
    fn threads_add_up_exactly() {
        let rates = std::sync::Arc::new(Rates::default());
        let t0 = 1_800_000_000 * S;
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let rates = rates.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        // Two seconds, so cells are started afresh while others add.
                        rates.record(t0 + (n % 2) * S, Tally::Allowed, i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let series = rates.series(t0 + 2 * S, 2);
        assert_eq!(series.allowed, [60_000, 60_000]);
        assert_eq!(series.max_micros, [11, 11]);
    }

    #[test]
    fn at_most_the_ring_less_one_second_is_shown() {
        let rates = Rates::default();
        let series = rates.series(1_800_000_000 * S, 10_000);
        assert_eq!(series.allowed.len(), SECONDS - 1);
    }
}
