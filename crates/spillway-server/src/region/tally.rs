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
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One counter in one window: the window's length and start, and the counter's field.
pub type Place = (Micros, Micros, Box<str>);

/// The most counters a node holds unpublished between two ticks. Past it, an admission on a
/// counter not already pending is counted under its window's catch-all field ([`CATCH_ALL`],
/// and in `spillway_region_tally_overflow_total`): the other regions add a catch-all count to
/// every counter of that window, so nothing admitted goes unseen (the other regions err
/// towards denying, never towards admitting).
pub const MAX_PENDING: usize = 200_000;

/// The field that stands for every counter of a window: what a region admitted on counters
/// it could not hold one by one. Never a real field (those start with 16 hex digits).
pub const CATCH_ALL: &str = "*";

/// `fresh_at` of a region never read since this node started.
const NEVER: u64 = u64::MAX;

/// A region's lease on one counter (see [`Tally::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The most the region's own count may reach until its next exchange.
    pub ceiling: u64,
    /// The most one lease gives above the own published count (what remained of the limit
    /// worldwide as last read, split between the regions, rounded up, so never more than
    /// that remainder): a cost above it fits no lease, however often renewed.
    pub share: u64,
}

/// The counts of the other regions, as last read: by place, one count per region.
#[derive(Debug, Default)]
pub struct Known {
    /// Counts by place; each slice has one entry per region (the node's own is unused).
    pub counts: HashMap<Place, Box<[u64]>>,
    /// Regions some of whose counters were left out (past `MAX_KNOWN`): a counter not held
    /// is taken to have used that region's share there, not nothing. Empty: none.
    pub truncated: Box<[bool]>,
    /// For each region, the window lengths of its counts as last read. A counter of another
    /// length (new since that read, or past `MAX_LENGTHS`) was not read there at all: that
    /// region is taken to have used its share. `None` for a region, or an empty slice: every
    /// length counts as read (a region never read counts as cut off anyway; the tests'
    /// hand-made reads).
    pub lengths: Box<[Option<Arc<BTreeSet<Micros>>>]>,
}

#[cfg(test)]
impl Known {
    /// What an exchange read for one counter, `planned`'s in the window open at `now`:
    /// `counts`, one per region.
    pub(crate) fn one(
        planned: &spillway_core::policy::Planned,
        now: Micros,
        counts: &[u64],
    ) -> Self {
        let (len, start) = window_of(&planned.def.params, now).expect("a window counter");
        Self {
            counts: [((len, start, field(&planned.key)), Box::from(counts))]
                .into_iter()
                .collect(),
            truncated: Box::new([]),
            lengths: Box::new([]),
        }
    }
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
    /// `store.exchange.lease_above`: leases are on (see [`Tally::lease`]).
    lease_above: Option<f64>,
    /// `store.exchange.interval`: how often this node renews its leases.
    interval: Micros,
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

/// Until when the published counts of the window of length `len` starting at `start` are read
/// (and their hashes kept): two windows from its start, so a sliding window can still read it
/// as its previous one.
pub fn read_until(len: Micros, start: Micros) -> Micros {
    start.saturating_add(len.saturating_mul(2))
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
    /// A tally for region `own` of `regions`; every other region is taken as cut off until
    /// its first successful read.
    pub fn new(own: usize, regions: usize, partition_after: Micros, share: f64) -> Self {
        Self {
            own,
            regions,
            pending: Mutex::new(HashMap::new()),
            known: ArcSwap::from_pointee(Known::default()),
            fresh_at: (0..regions).map(|_| AtomicU64::new(NEVER)).collect(),
            partition_after,
            share,
            lease_above: None,
            interval: 0,
            overflow: AtomicU64::new(0),
        }
    }

    /// The same tally with leases past `lease_above` of a limit (`None`: off), renewed by an
    /// exchange every `interval`.
    pub fn with_leases(self, lease_above: Option<f64>, interval: Micros) -> Self {
        Self {
            lease_above,
            interval,
            ..self
        }
    }

    /// Whether leases are on: the exchange then reads the node's own region too.
    pub fn leases(&self) -> bool {
        self.lease_above.is_some()
    }

    /// The node's own region.
    pub fn own(&self) -> usize {
        self.own
    }

    /// Whether region `r`'s counts are too old to trust at `now` (never the node's own).
    pub fn cut_off(&self, r: usize, now: Micros) -> bool {
        if r == self.own {
            return false;
        }
        let at = self.fresh_at[r].load(Ordering::Relaxed);
        at == NEVER || now.saturating_sub(at) > self.partition_after
    }

    /// Whether every other region is cut off: this region decides on its share alone.
    pub fn isolated(&self, now: Micros) -> bool {
        self.regions > 1 && (0..self.regions).all(|r| r == self.own || self.cut_off(r, now))
    }

    /// What the other regions are taken to have used of `params`'s limit for the counter at
    /// `field`, at `now`: their last read counts (a sliding window's previous window weighted
    /// as the algorithm weighs it, rounded up), plus what each counted under its window's
    /// catch-all. A region cut off is taken to use at least its share of the limit, and while
    /// any is cut off this region keeps to its own share: the result is at least
    /// `limit - ceil(share x limit)`; isolated from all, exactly that.
    pub fn others(&self, params: &LimitParams, field: &str, now: Micros) -> u64 {
        let Some((len, start)) = window_of(params, now) else {
            return 0;
        };
        let limit = params.quota();
        let share = self.share_of(limit);
        let floor = limit.saturating_sub(share);
        if self.isolated(now) {
            return floor;
        }
        let known = self.known.load();
        let counts = Counts::of(&known, params, field, now, (len, start));
        // A region whose last read did not cover this window length: nothing is known of it.
        let unread = |r: usize| {
            let read = known.lengths.get(r).and_then(Option::as_ref);
            read.is_some_and(|read| !read.contains(&len))
        };
        let mut used = 0u64;
        let mut any_cut = false;
        for r in (0..self.regions).filter(|&r| r != self.own) {
            let mut count = counts.of_region(r);
            // A region read in part may have left this counter out: unless it supplied a count
            // for it, it is taken at its share (whatever other regions, this one included, hold);
            // so is every region where the counter's window length was not read.
            let unheld =
                unread(r) || !counts.held_by(r) && known.truncated.get(r).copied().unwrap_or(false);
            if unheld {
                count = count.max(share);
            }
            if self.cut_off(r, now) {
                any_cut = true;
                count = count.max(share);
            }
            used = used.saturating_add(count);
        }
        if any_cut {
            used = used.max(floor);
        }
        used
    }

    /// What this region may still admit of `params`' limit for the counter at `field` while its
    /// own store cannot answer: the room the other regions leave, and at most its share of the
    /// limit (its publications stop with its store, and the others then take it as using its
    /// share, `partition_share`). With leases on, the region's own published count is known
    /// (while its last read is fresh) and counts against both.
    pub fn failover_room(&self, params: &LimitParams, field: &str, now: Micros) -> u64 {
        let limit = params.quota();
        let own = self.own_published(params, field, now).unwrap_or(0);
        let room = limit.saturating_sub(self.others(params, field, now));
        room.min(self.share_of(limit)).saturating_sub(own)
    }

    /// A region's share of `limit` (`partition_share`), rounded up.
    fn share_of(&self, limit: u64) -> u64 {
        ((limit as f64) * self.share).ceil() as u64
    }

    /// The own region's published count of the counter at `field`, as the exchange last read
    /// it: only with leases on (which read it), and only while that read is fresh.
    fn own_published(&self, params: &LimitParams, field: &str, now: Micros) -> Option<u64> {
        self.lease_above?;
        let at = self.fresh_at[self.own].load(Ordering::Relaxed);
        if at == NEVER || now.saturating_sub(at) > self.partition_after {
            return None;
        }
        let window = window_of(params, now)?;
        let known = self.known.load();
        Some(Counts::of(&known, params, field, now, window).of_region(self.own))
    }

    /// With leases on, the lease of the counter at `field`, given `others` (what
    /// [`Tally::others`] answered): once the worldwide count as last read (the region's own
    /// published count plus `others`) has reached `lease_above x limit`, this region's own count
    /// may reach its published count plus `1 / regions` of what remains, rounded up, until the
    /// next exchange. Every region leasing the same share, the regions together add at most
    /// what remained (as each last read it) between two exchanges, however fast their
    /// traffic. `None`: leases off, below the threshold, or the own region not read lately
    /// (the plain rule applies alone).
    pub fn lease(
        &self,
        params: &LimitParams,
        field: &str,
        now: Micros,
        others: u64,
    ) -> Option<Lease> {
        let above = self.lease_above?;
        let own = self.own_published(params, field, now)?;
        let limit = params.quota();
        let used = own.saturating_add(others);
        if (used as f64) < above * limit as f64 {
            return None;
        }
        let left = limit.saturating_sub(used);
        let share = left.div_ceil(self.regions.max(1) as u64);
        Some(Lease {
            ceiling: own.saturating_add(share),
            share,
        })
    }

    /// How long until this node next renews its leases: the time to its next exchange, as
    /// far as the last one that read the own region tells (an exchange that is late is
    /// about to come: then the interval). A request denied by a lease alone may have room
    /// again by then.
    pub fn lease_renewal_in(&self, now: Micros) -> Micros {
        let at = self.fresh_at[self.own].load(Ordering::Relaxed);
        let next = at.saturating_add(self.interval);
        if at == NEVER || next <= now {
            self.interval.max(1)
        } else {
            next - now
        }
    }

    /// Records that this node admitted `cost` on the counter at `place`.
    pub fn add(&self, place: Place, cost: u64) {
        let mut pending = self.pending.lock();
        self.put(&mut pending, place, cost);
    }

    /// Adds `cost` at `place` in `pending`, or past [`MAX_PENDING`] counters at its window's
    /// catch-all.
    fn put(&self, pending: &mut HashMap<Place, u64>, place: Place, cost: u64) {
        if pending.len() >= MAX_PENDING && !pending.contains_key(&place) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(super::metrics::TALLY_OVERFLOW).increment(1);
            // One catch-all per window: the map grows past the bound by a few entries only.
            let (len, start, _) = place;
            *pending
                .entry((len, start, Box::from(CATCH_ALL)))
                .or_insert(0) += cost;
            return;
        }
        *pending.entry(place).or_insert(0) += cost;
    }

    /// What was admitted since the last call, for publication.
    pub fn take_pending(&self) -> HashMap<Place, u64> {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Puts back what could not be published at `now`, so the next publication carries it:
    /// under the same bound as [`Tally::add`], and without the windows whose published counts
    /// no one reads any more (two windows after their start, when the hashes expire), so a
    /// long outage of the own store does not pile up every window it lasted.
    pub fn restore_pending(&self, back: HashMap<Place, u64>, now: Micros) {
        let mut pending = self.pending.lock();
        for (place, n) in back {
            let (len, start, _) = &place;
            if read_until(*len, *start) > now {
                self.put(&mut pending, place, n);
            }
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

/// One counter's known counts at a moment: its current and (for a sliding window) previous
/// window, each with the window's catch-all.
struct Counts<'a> {
    current: Option<&'a [u64]>,
    previous: Option<&'a [u64]>,
    current_all: Option<&'a [u64]>,
    previous_all: Option<&'a [u64]>,
    /// How far into the current window `now` is, and the window's length.
    elapsed: Micros,
    len: Micros,
    /// Whether the previous window counts (a sliding window).
    sliding: bool,
}

impl<'a> Counts<'a> {
    fn of(
        known: &'a Known,
        params: &LimitParams,
        field: &str,
        now: Micros,
        (len, start): (Micros, Micros),
    ) -> Self {
        let probe =
            |start: Micros, f: &str| (known.counts.get(&(len, start, Box::from(f)))).map(|c| &**c);
        let sliding = matches!(params, LimitParams::SlidingWindow(_));
        let previous_start = start.checked_sub(len).filter(|_| sliding);
        Self {
            current: probe(start, field),
            previous: previous_start.and_then(|s| probe(s, field)),
            current_all: probe(start, CATCH_ALL),
            previous_all: previous_start.and_then(|s| probe(s, CATCH_ALL)),
            elapsed: now - start,
            len,
            sliding,
        }
    }

    /// Region `r`'s count: the current window's, plus the previous window's weighted as the
    /// sliding window weighs it (`prev x (len - elapsed) / len`, rounded up).
    fn of_region(&self, r: usize) -> u64 {
        let at = |c: Option<&[u64]>| c.and_then(|c| c.get(r).copied()).unwrap_or(0);
        let cur = at(self.current).saturating_add(at(self.current_all));
        let prev = at(self.previous).saturating_add(at(self.previous_all));
        let weighted =
            (u128::from(prev) * u128::from(self.len - self.elapsed)).div_ceil(u128::from(self.len));
        cur.saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX))
    }

    /// Whether region `r` supplied a count for every window the counter reads: the current
    /// one, and for a sliding window the previous one too (a region read in part may have
    /// left out either).
    fn held_by(&self, r: usize) -> bool {
        let held = |c: Option<&[u64]>| c.and_then(|c| c.get(r).copied()).is_some_and(|n| n > 0);
        held(self.current) && (!self.sliding || held(self.previous))
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
            truncated: Box::new([]),
            lengths: Box::new([]),
        }
    }

    #[test]
    fn fixed_windows_add_the_others_of_the_current_window() {
        let t0 = 100 * MIN;
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
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
        let tally = Tally::new(1, 3, 10 * MIN, 0.25);
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
        let tally = Tally::new(0, 3, 1_000_000, 1.0 / 3.0);
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        tally.publish_known(known(&[(t0, "k", [0, 5, 40])]), &[1, 2], t0);
        assert_eq!(tally.others(&params, "k", t0 + 1_000_000), 45);
        assert!(!tally.isolated(t0 + 1_000_000));
        // Region 1 answers again, region 2 no longer: 2 counts as max(40, 30), 1 as read.
        tally.publish_known(known(&[(t0, "k", [0, 7, 40])]), &[1], t0 + 1_500_000);
        let later = t0 + 1_500_001;
        assert!(tally.cut_off(2, later) && !tally.cut_off(1, later));
        // One region cut off: this region keeps to its share (30 of 90), so at least 60.
        assert_eq!(tally.others(&params, "k", later), 60);
        // In a new window nothing is known of region 2: its share stands in.
        let next = t0 + MIN;
        assert_eq!(tally.others(&params, "k", next), 30 + 30);
        assert!(tally.isolated(next));
    }

    #[test]
    fn a_node_that_starts_takes_every_other_region_as_cut_off() {
        let tally = Tally::new(0, 3, 1_000_000, 1.0 / 3.0);
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let t0 = 100 * MIN;
        assert!(tally.cut_off(1, t0) && tally.cut_off(2, t0) && tally.isolated(t0));
        assert_eq!(tally.others(&params, "k", t0), 60);
        tally.publish_known(known(&[]), &[1], t0);
        assert!(!tally.cut_off(1, t0) && tally.cut_off(2, t0));
        tally.publish_known(known(&[]), &[1, 2], t0);
        assert_eq!(tally.others(&params, "k", t0), 0);
    }

    #[test]
    fn two_regions_that_cannot_see_each_other_keep_to_their_shares() {
        // A (0) and B (1) cannot read each other, both read C (2), which is idle.
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let a = Tally::new(0, 3, 1_000_000, 1.0 / 3.0);
        let b = Tally::new(1, 3, 1_000_000, 1.0 / 3.0);
        let c = Tally::new(2, 3, 1_000_000, 1.0 / 3.0);
        a.publish_known(known(&[]), &[2], t0);
        b.publish_known(known(&[]), &[2], t0);
        c.publish_known(known(&[]), &[0, 1], t0);
        let room = |t: &Tally| 90 - t.others(&params, "k", t0 + 1);
        // Before the fix each took 90 - 30 = 60 (120 together).
        assert_eq!((room(&a), room(&b)), (30, 30));
        // C, reading both at their 30, leaves 30 for itself: 90 in all.
        c.publish_known(known(&[(t0, "k", [30, 30, 0])]), &[0, 1], t0);
        assert_eq!(room(&c), 30);
        // A one-way cut: A cannot read B, B reads A. A keeps to its share; B counts A as read.
        b.publish_known(known(&[(t0, "k", [10, 0, 0])]), &[0, 2], t0);
        assert_eq!(room(&a), 30);
        assert_eq!(room(&b), 80);
    }

    #[test]
    fn an_isolated_region_gets_exactly_its_share() {
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(95, MIN).unwrap());
        let tally = Tally::new(0, 2, 1_000_000, 0.1);
        // Stale counts do not matter: isolated, the room is ceil(0.1 x 95) = 10.
        tally.publish_known(known(&[(t0, "k", [0, 3, 0])]), &[1], t0);
        let later = t0 + 2_000_000;
        assert!(tally.isolated(later));
        assert_eq!(95 - tally.others(&params, "k", later), 10);
    }

    #[test]
    fn counters_left_out_of_the_known_counts_read_as_the_share() {
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
        let mut k = known(&[(t0, "held", [0, 5, 5])]);
        k.truncated = Box::new([false, true, false]);
        tally.publish_known(k, &[1, 2], t0);
        assert_eq!(tally.others(&params, "held", t0), 10);
        // Not held: region 1 left some out, so it is taken at its share; region 2 at 0.
        assert_eq!(tally.others(&params, "unheld", t0), 30);
        // Held by others (this region among them, as when leases read it) but not by region 1:
        // region 1 may still have left it out, so it counts at its share, not at 0.
        let mut k = known(&[(t0, "mine", [20, 0, 5])]);
        k.truncated = Box::new([false, true, false]);
        tally.publish_known(k, &[1, 2], t0);
        assert_eq!(tally.others(&params, "mine", t0), 35);
    }

    /// With its own store down, a region may still admit the room the others leave, at most
    /// its share; with leases on, what it published itself (read by the exchange) counts
    /// against both.
    #[test]
    fn the_failover_room_is_the_share_less_what_the_region_published() {
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let plain = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
        plain.publish_known(known(&[(t0, "k", [40, 20, 15])]), &[0, 1, 2], t0);
        assert_eq!(
            plain.failover_room(&params, "k", t0),
            30,
            "min(90 - 35, 30)"
        );
        for (own, room) in [(40, 0), (10, 20), (0, 30)] {
            let leased = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0).with_leases(Some(0.5), MIN);
            leased.publish_known(known(&[(t0, "k", [own, 20, 15])]), &[0, 1, 2], t0);
            assert_eq!(leased.failover_room(&params, "k", t0), room, "own {own}");
        }
    }

    /// A sliding window reads two windows: a region read in part that supplied the current
    /// window's count but not the previous one's may have left the previous out, so it is
    /// taken at its share too, not at what its current window alone holds.
    #[test]
    fn a_sliding_counter_whose_previous_window_was_left_out_reads_as_the_share() {
        let t0 = 100 * MIN;
        let params = LimitParams::SlidingWindow(SlidingWindow::new(90, MIN).unwrap());
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
        let mut k = known(&[(t0, "k", [0, 5, 5]), (t0 - MIN, "k", [0, 0, 60])]);
        k.truncated = Box::new([false, true, false]);
        tally.publish_known(k, &[1, 2], t0);
        // Half-way: region 1 at its share (30), region 2 at 5 + 60 / 2.
        assert_eq!(tally.others(&params, "k", t0 + MIN / 2), 30 + 35);
        // Both windows held by region 1: its own counts stand.
        let mut k = known(&[(t0, "k", [0, 5, 5]), (t0 - MIN, "k", [0, 2, 60])]);
        k.truncated = Box::new([false, true, false]);
        tally.publish_known(k, &[1, 2], t0);
        assert_eq!(tally.others(&params, "k", t0 + MIN / 2), 6 + 35);
    }

    /// A counter whose window length the exchange did not read (a length new since the last
    /// exchange, or one past `MAX_LENGTHS`) reads every other region at its share, not at 0:
    /// nothing is known of it there.
    #[test]
    fn counters_of_a_window_length_not_read_take_every_region_at_its_share() {
        let t0 = 100 * MIN;
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
        let minute = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let hour = LimitParams::FixedWindow(FixedWindow::new(90, 60 * MIN).unwrap());
        let mut k = known(&[(t0, "k", [0, 5, 5])]);
        let minutes = Some(Arc::new(BTreeSet::from([MIN])));
        k.lengths = Box::new([None, minutes.clone(), minutes.clone()]);
        tally.publish_known(k, &[1, 2], t0);
        assert_eq!(tally.others(&minute, "k", t0), 10);
        assert_eq!(
            tally.others(&minute, "fresh", t0),
            0,
            "read: nothing counted there"
        );
        assert_eq!(
            tally.others(&hour, "k", t0),
            60,
            "not read: two shares of 30"
        );
        // Region 2's last read (kept while a later one failed) was made before the hour
        // was read; region 1's covered it.
        let mut k = known(&[(t0, "k", [0, 5, 5])]);
        let both = Some(Arc::new(BTreeSet::from([MIN, 60 * MIN])));
        k.lengths = Box::new([None, both, minutes]);
        tally.publish_known(k, &[1, 2], t0);
        assert_eq!(
            tally.others(&hour, "k", t0),
            30,
            "region 1 at 0, region 2 at its share"
        );
    }

    fn ceiling(lease: Option<Lease>) -> Option<u64> {
        lease.map(|l| l.ceiling)
    }

    #[test]
    fn past_the_threshold_a_region_leases_its_share_of_what_remains() {
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0).with_leases(Some(0.5), 250_000);
        // Before the own region is read, no lease: the plain rule alone.
        tally.publish_known(known(&[(t0, "k", [20, 10, 10])]), &[1, 2], t0);
        assert_eq!(tally.lease(&params, "k", t0, 20), None);
        tally.publish_known(known(&[(t0, "k", [20, 10, 10])]), &[0, 1, 2], t0);
        // 40 of 90 used: below half, no lease.
        let others = tally.others(&params, "k", t0);
        assert_eq!(others, 20);
        assert_eq!(tally.lease(&params, "k", t0, others), None);
        // 60 used: a third of the 30 left on top of the own 30, where the plain rule allows 60.
        tally.publish_known(known(&[(t0, "k", [30, 20, 10])]), &[0, 1, 2], t0);
        let others = tally.others(&params, "k", t0);
        assert_eq!(
            (others, tally.lease(&params, "k", t0, others)),
            (
                30,
                Some(Lease {
                    ceiling: 40,
                    share: 10
                })
            )
        );
        // Rounded up: 2 left, each region may take 1.
        tally.publish_known(known(&[(t0, "k", [40, 28, 20])]), &[0, 1, 2], t0);
        let others = tally.others(&params, "k", t0);
        assert_eq!(ceiling(tally.lease(&params, "k", t0, others)), Some(41));
        // Nothing left: the own published count is the ceiling.
        tally.publish_known(known(&[(t0, "k", [40, 30, 25])]), &[0, 1, 2], t0);
        let others = tally.others(&params, "k", t0);
        assert_eq!(ceiling(tally.lease(&params, "k", t0, others)), Some(40));
        // Off: never a lease.
        let off = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0);
        off.publish_known(known(&[(t0, "k", [40, 30, 25])]), &[0, 1, 2], t0);
        assert_eq!(off.lease(&params, "k", t0, 55), None);
    }

    #[test]
    fn a_lease_is_renewed_at_the_next_exchange() {
        let t0 = 100 * MIN;
        let tally = Tally::new(0, 3, 10 * MIN, 1.0 / 3.0).with_leases(Some(0.5), 250_000);
        tally.publish_known(known(&[]), &[0, 1, 2], t0);
        assert_eq!(tally.lease_renewal_in(t0), 250_000);
        assert_eq!(tally.lease_renewal_in(t0 + 100_000), 150_000);
        // The exchange is late (its reads are slow): it is due, one interval at most.
        assert_eq!(tally.lease_renewal_in(t0 + 400_000), 250_000);
    }

    #[test]
    fn admissions_past_the_pending_bound_go_to_the_catch_all() {
        let tally = Tally::new(0, 2, 1, 0.5);
        for i in 0..MAX_PENDING {
            tally.add((MIN, 0, format!("f{i}").into()), 1);
        }
        tally.add((MIN, 0, "late".into()), 4);
        tally.add((MIN, 0, "later".into()), 3);
        let taken = tally.take_pending();
        assert_eq!(taken.len(), MAX_PENDING + 1);
        assert_eq!(taken.get(&(MIN, 0, CATCH_ALL.into())), Some(&7));
        assert!(!taken.contains_key(&(MIN, 0, "late".into())));
    }

    #[test]
    fn a_catch_all_count_adds_to_every_counter_of_its_window() {
        let t0 = 100 * MIN;
        let params = LimitParams::FixedWindow(FixedWindow::new(90, MIN).unwrap());
        let tally = Tally::new(0, 2, 10 * MIN, 0.5);
        tally.publish_known(
            known(&[(t0, "k", [0, 5, 0]), (t0, CATCH_ALL, [0, 7, 0])]),
            &[1],
            t0,
        );
        assert_eq!(tally.others(&params, "k", t0), 12);
        assert_eq!(tally.others(&params, "x", t0), 7);
    }

    #[test]
    fn pending_counts_survive_a_failed_publication() {
        let tally = Tally::new(0, 2, 1, 0.5);
        tally.add((MIN, 0, "a".into()), 2);
        tally.add((MIN, 0, "a".into()), 3);
        let taken = tally.take_pending();
        assert_eq!(taken.get(&(MIN, 0, "a".into())), Some(&5));
        tally.add((MIN, 0, "a".into()), 1);
        tally.restore_pending(taken, MIN);
        assert_eq!(tally.take_pending().get(&(MIN, 0, "a".into())), Some(&6));
    }

    /// What could not be published through a long outage of the own store is kept only for
    /// windows still read, and under the pending bound: past it, at each window's catch-all.
    #[test]
    fn unpublished_counts_keep_to_live_windows_and_the_bound() {
        let tally = Tally::new(0, 2, 1, 0.5);
        let mut back: HashMap<Place, u64> = HashMap::new();
        back.insert((MIN, 0, "gone".into()), 4);
        back.insert((MIN, 3 * MIN, "live".into()), 2);
        for i in 0..MAX_PENDING + 10 {
            back.insert((MIN, 3 * MIN, format!("k{i}").into()), 1);
        }
        tally.restore_pending(back, 4 * MIN);
        let pending = tally.take_pending();
        assert!(
            !pending.contains_key(&(MIN, 0, "gone".into())),
            "expired two windows ago"
        );
        assert!(pending.len() <= MAX_PENDING + 1, "{}", pending.len());
        let total: u64 = pending.values().sum();
        assert_eq!(total, 2 + (MAX_PENDING + 10) as u64, "nothing live lost");
        assert!(pending.contains_key(&(MIN, 3 * MIN, CATCH_ALL.into())));
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
