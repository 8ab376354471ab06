//! What a node knows of `aggregate` counts: what it admitted since it last published (to
//! be added to its region's count) and the counts the other regions published, as last read.
//! No I/O here: the exchange task (`super::exchange`) moves the numbers, the request path
//! (`super::check`) asks [`Tally::others`] and reports admissions with [`Tally::add`].
//!
//! A count belongs to a counter (its identity as text, [`field`]) in one aligned window of
//! the limit's length, the same windows the window counters use, so regions add up alike.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use spillway_core::algorithm::LimitParams;
use spillway_core::key::StateKey;
use spillway_core::time::Micros;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One counter in one window: the window's length and start, and the counter's field.
pub type Place = (Micros, Micros, Box<str>);

/// The most counters a node holds unpublished between two ticks. Past it, an admission on a
/// counter not already pending is left out of the publication (and counted in
/// `spillway_region_tally_overflow_total`): the region's own store still counts it, but the
/// other regions do not see it, so that counter alone can over-admit by what was left out.
pub const MAX_PENDING: usize = 200_000;

/// The counts of the other regions, as last read: by place, one count per region.
#[derive(Debug, Default)]
pub struct Known {
    /// Counts by place; each slice has one entry per region (the node's own is unused).
    pub counts: HashMap<Place, Box<[u64]>>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Tally {
    own: usize,
    regions: usize,
    /// Admitted here since the last publication.
    pending: Mutex<HashMap<Place, u64>>,
    /// The others' counts, swapped whole by the exchange task.
    known: ArcSwap<Known>,
    /// When each region's counts were last read (node clock, microseconds).
    fresh_at: Box<[AtomicU64]>,
    /// How long a region may go unread before it is taken as cut off.
    partition_after: Micros,
    /// The share of a limit a cut-off region is assumed to use.
    share: f64,
    overflow: AtomicU64,
}

/// The counter's identity as a hash field: the limit's fingerprint and each value with its
/// length, so no value, whatever it holds, reads as another list.
pub fn field(key: &StateKey) -> Box<str> {
    let mut out = String::with_capacity(20 + key.values.iter().map(|v| v.len() + 4).sum::<usize>());
    let _ = write!(out, "{:016x}", key.fingerprint);
    for v in &key.values {
        let _ = write!(out, ":{}:{v}", v.len());
    }
    out.into_boxed_str()
}

/// The window length and aligned start of an aggregate limit at `now`; `None` for the
/// algorithms `aggregate` does not take (validation refuses them).
pub fn window_of(params: &LimitParams, now: Micros) -> Option<(Micros, Micros)> {
    match params {
        LimitParams::FixedWindow(_) | LimitParams::SlidingWindow(_) => {
            let len = params.window().max(1);
            Some((len, now - now % len))
        }
        _ => None,
    }
}

impl Tally {
    /// A tally for region `own` of `regions`, every region taken as fresh at `now`.
    pub fn new(
        own: usize,
        regions: usize,
        partition_after: Micros,
        share: f64,
        now: Micros,
    ) -> Self {
        Self {
            own,
            regions,
            pending: Mutex::new(HashMap::new()),
            known: ArcSwap::from_pointee(Known::default()),
            fresh_at: (0..regions).map(|_| AtomicU64::new(now)).collect(),
            partition_after,
            share,
            overflow: AtomicU64::new(0),
        }
    }

    /// The node's own region.
    pub fn own(&self) -> usize {
        self.own
    }

    /// Whether region `r`'s counts are too old to trust at `now` (never the node's own).
    pub fn cut_off(&self, r: usize, now: Micros) -> bool {
        r != self.own
            && now.saturating_sub(self.fresh_at[r].load(Ordering::Relaxed)) > self.partition_after
    }

    /// Whether every other region is cut off: this region decides on its share alone.
    pub fn isolated(&self, now: Micros) -> bool {
        self.regions > 1 && (0..self.regions).all(|r| r == self.own || self.cut_off(r, now))
    }

    /// What the other regions are taken to have used of `params`'s limit for the counter at
    /// `field`, at `now`: their last read counts (a sliding window's previous window weighted
    /// as the algorithm weighs it, rounded up); a region cut off is taken to use at least its
    /// share of the limit.
    pub fn others(&self, params: &LimitParams, field: &str, now: Micros) -> u64 {
        let Some((len, start)) = window_of(params, now) else {
            return 0;
        };
        let limit = params.quota();
        let share = ((limit as f64) * self.share).ceil() as u64;
        let known = self.known.load();
        // One probe per window; the key is rebuilt for each (a short copy of the field).
        let probe = |start: Micros| known.counts.get(&(len, start, Box::from(field)));
        let current = probe(start);
        let previous = match params {
            LimitParams::SlidingWindow(_) => start.checked_sub(len).and_then(probe),
            _ => None,
        };
        let elapsed = now - start;
        let mut used = 0u64;
        for r in (0..self.regions).filter(|&r| r != self.own) {
            let cur = current.map_or(0, |c| c[r]);
            let prev = previous.map_or(0, |c| c[r]);
            // prev x (len - elapsed) / len, rounded up, as the sliding window weighs it.
            let weighted = (u128::from(prev) * u128::from(len - elapsed)).div_ceil(u128::from(len));
            let mut count = cur.saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX));
            if self.cut_off(r, now) {
                count = count.max(share);
            }
            used = used.saturating_add(count);
        }
        used
    }

    /// Records that this node admitted `cost` on the counter at `place`.
    pub fn add(&self, place: Place, cost: u64) {
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING && !pending.contains_key(&place) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(super::metrics::TALLY_OVERFLOW).increment(1);
            return;
        }
        *pending.entry(place).or_insert(0) += cost;
    }

    /// What was admitted since the last call, for publication.
    pub fn take_pending(&self) -> HashMap<Place, u64> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Puts back what could not be published, so the next publication carries it.
    pub fn restore_pending(&self, back: HashMap<Place, u64>) {
        let mut pending = self.pending.lock();
        for (place, n) in back {
            *pending.entry(place).or_insert(0) += n;
        }
    }

    /// Replaces what is known of the others with `known`; `read` lists the regions whose
    /// counts were read at `now`.
    pub fn publish_known(&self, known: Known, read: &[usize], now: Micros) {
        self.known.store(Arc::new(known));
        for &r in read {
            self.fresh_at[r].store(now, Ordering::Relaxed);
        }
    }

    /// When region `r` was last read.
    pub fn fresh_at(&self, r: usize) -> Micros {
        self.fresh_at[r].load(Ordering::Relaxed)
    }

    /// How many counters the known counts hold (a gauge).
    pub fn known_len(&self) -> usize {
        self.known.load().counts.len()
    }

    /// The number of regions.
    pub fn regions(&self) -> usize {
        self.regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::algorithm::{FixedWindow, SlidingWindow};

    const MIN: Micros = 60_000_000;

    fn known(entries: &[(Micros, &str, [u64; 3])]) -> Known {
        Known {
            counts: entries
                .iter()
                .map(|(start, f, c)| ((MIN, *start, Box::from(*f)), Box::from(c.as_slice())))
                .collect(),
        }
    }

    #[test]
    fn fixed_windows_add_the_others_of_the_current_window() {
        let t0 = 100 * MIN;
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0, t0);
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        tally.publish_known(
            known(&[(t0, "k", [99, 10, 20]), (t0 - MIN, "k", [0, 50, 50])]),
            &[1, 2],
            t0,
        );
        // The own region's entry is ignored; the previous window does not count.
        assert_eq!(tally.others(&params, "k", t0 + 10), 30);
        assert_eq!(tally.others(&params, "other", t0 + 10), 0);
        // Next window: nothing known yet.
        assert_eq!(tally.others(&params, "k", t0 + MIN), 0);
    }

    #[test]
    fn sliding_windows_weigh_the_previous_window() {
        let t0 = 100 * MIN;
        let tally = Tally::new(1, 3, 10 * MIN, 0.25, t0);
        let params = LimitParams::SlidingWindow(SlidingWindow::new(100, MIN).unwrap());
        tally.publish_known(
            known(&[(t0, "k", [4, 0, 6]), (t0 - MIN, "k", [40, 0, 21])]),
            &[0, 2],
            t0,
        );
        // A quarter into the window: 3/4 of the previous counts, rounded up per region.
        let now = t0 + MIN / 4;
        assert_eq!(tally.others(&params, "k", now), (4 + 30) + (6 + 16));
    }

    #[test]
    fn a_region_unread_for_too_long_is_taken_to_use_its_share() {
        let t0 = 100 * MIN;
        let tally = Tally::new(0, 3, 1_000_000, 1.0 / 3.0, t0);
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        tally.publish_known(known(&[(t0, "k", [0, 5, 40])]), &[1, 2], t0);
        assert_eq!(tally.others(&params, "k", t0 + 1_000_000), 45);
        assert!(!tally.isolated(t0 + 1_000_000));
        // Region 1 answers again, region 2 no longer: 2 counts as max(40, 30), 1 as read.
        tally.publish_known(known(&[(t0, "k", [0, 7, 40])]), &[1], t0 + 1_500_000);
        let later = t0 + 1_500_001;
        assert!(tally.cut_off(2, later) && !tally.cut_off(1, later));
        assert_eq!(tally.others(&params, "k", later), 7 + 40);
        // In a new window nothing is known of region 2: its share stands in.
        let next = t0 + MIN;
        assert_eq!(tally.others(&params, "k", next), 30 + 30);
        assert!(tally.isolated(next));
    }

    #[test]
    fn pending_counts_survive_a_failed_publication() {
        let tally = Tally::new(0, 2, 1, 0.5, 0);
        tally.add((MIN, 0, "a".into()), 2);
        tally.add((MIN, 0, "a".into()), 3);
        let taken = tally.take_pending();
        assert_eq!(taken.get(&(MIN, 0, "a".into())), Some(&5));
        tally.add((MIN, 0, "a".into()), 1);
        tally.restore_pending(taken);
        assert_eq!(tally.take_pending().get(&(MIN, 0, "a".into())), Some(&6));
    }

    #[test]
    fn fields_cannot_be_forged_by_values() {
        let key = |values: &[&str]| StateKey {
            limit: "l".into(),
            fingerprint: 7,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert_ne!(field(&key(&["a:1:b"])), field(&key(&["a", "b"])));
        assert_eq!(&*field(&key(&["ab"])), "0000000000000007:2:ab");
    }
}
