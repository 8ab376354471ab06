//! A ring of Space-Saving tables, one per time interval, so a summary can cover "the last
//! minute" or "the last ten minutes" without keeping every event.
//!
//! The ring has one slot per interval of the longest window (60 slots of 10 s for ten
//! minutes). An event goes to the slot of its interval; a slot still holding an older interval
//! is cleared first, so nothing older than the ring ever counts. Time is passed in (the
//! injected clock's microseconds): the ring reads no clock and a test moves time by hand.

use super::space_saving::{Row, SpaceSaving};
use crate::time::Micros;

#[derive(Debug)]
struct Slot<L> {
    /// Which interval (`time / interval`) the table counts; `None` when never used.
    interval: Option<u64>,
    table: SpaceSaving<L>,
}

/// Per-interval tables; see the module docs.
#[derive(Debug)]
pub struct Ring<L> {
    slots: Vec<Slot<L>>,
    interval: Micros,
    /// The span `[from, until)` of the interval slot `slot` counts, the last one an event
    /// went to, so an event in the same interval skips two divisions.
    current: Current,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    from: Micros,
    until: Micros,
    slot: usize,
}

impl<L> Ring<L> {
    /// A ring of `slots` intervals of `interval` microseconds each, each table holding at most
    /// `capacity` items.
    pub fn new(interval: Micros, slots: usize, capacity: usize) -> Self {
        Self {
            slots: (0..slots.max(1))
                .map(|_| Slot {
                    interval: None,
                    table: SpaceSaving::new(capacity),
                })
                .collect(),
            interval: interval.max(1),
            // Empty: no time is in it.
            current: Current {
                from: Micros::MAX,
                until: 0,
                slot: 0,
            },
        }
    }

    /// Adds `weight` to the item `hash` at time `now`.
    #[inline]
    pub fn add(&mut self, now: Micros, hash: u64, weight: u64, label: impl FnOnce() -> L) {
        let Current { from, until, slot } = self.current;
        let slot = if from <= now && now < until {
            slot
        } else {
            self.find_slot(now)
        };
        self.slots[slot].table.add(hash, weight, label);
    }

    /// The slot for an event at `now`, cleared first if it held an older interval.
    #[cold]
    fn find_slot(&mut self, now: Micros) -> usize {
        let interval = now / self.interval;
        let at = (interval % self.slots.len() as u64) as usize;
        let slot = &mut self.slots[at];
        if slot.interval != Some(interval) {
            // A slot is only ever reused for a later interval: an event from the past
            // (a clock that stepped back) lands in the current slot's table instead of wiping it.
            if slot.interval.is_some_and(|held| held > interval) {
                return at;
            }
            slot.table.clear();
            slot.interval = Some(interval);
        }
        let from = interval * self.interval;
        self.current = Current {
            from,
            until: from.saturating_add(self.interval),
            slot: at,
        };
        at
    }

    /// The rows of every interval among the `intervals` most recent ones at `now` (the current,
    /// partly elapsed one included), one table after another.
    pub fn rows(&self, now: Micros, intervals: u64) -> impl Iterator<Item = &Row<L>> {
        let current = now / self.interval;
        let oldest = current.saturating_sub(intervals.saturating_sub(1));
        self.slots
            .iter()
            .filter(move |s| s.interval.is_some_and(|i| i >= oldest && i <= current))
            .flat_map(|s| s.table.rows())
    }

    /// The most rows the ring can hold, whatever it is fed.
    pub fn max_rows(&self) -> usize {
        self.slots.iter().map(|s| s.table.capacity()).sum()
    }

    /// The rows it holds now.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|s| s.table.len()).sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    fn counts(ring: &Ring<u64>, now: Micros, intervals: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = ring
            .rows(now, intervals)
            .map(|r| (r.label, r.count))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn intervals_age_out_of_the_window_and_then_out_of_the_ring() {
        let mut ring = Ring::new(10 * SECOND, 6, 8);
        let t0 = 1_000 * SECOND;
        ring.add(t0, 1, 5, || 1);
        ring.add(t0 + 10 * SECOND, 2, 7, || 2);
        assert_eq!(counts(&ring, t0 + 10 * SECOND, 1), vec![(2, 7)]);
        assert_eq!(counts(&ring, t0 + 10 * SECOND, 2), vec![(1, 5), (2, 7)]);
        // Six intervals later the first is out of a six-interval window.
        assert_eq!(counts(&ring, t0 + 60 * SECOND, 6), vec![(2, 7)]);
        // Its slot is reused for a new interval, clearing the old counts.
        ring.add(t0 + 60 * SECOND, 3, 1, || 3);
        assert_eq!(counts(&ring, t0 + 60 * SECOND, 6), vec![(2, 7), (3, 1)]);
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn events_follow_the_clock_back_and_forth_between_intervals() {
        let mut ring = Ring::new(10 * SECOND, 3, 8);
        let t0 = 1_000 * SECOND;
        ring.add(t0 + 19 * SECOND, 1, 1, || 1);
        ring.add(t0 + 10 * SECOND, 1, 1, || 1); // same interval: the remembered slot
        ring.add(t0 + 9 * SECOND, 2, 1, || 2); // the interval before
        ring.add(t0 + 20 * SECOND, 3, 1, || 3); // the next
        ring.add(t0 + 10 * SECOND, 1, 1, || 1); // back again
        assert_eq!(counts(&ring, t0 + 10 * SECOND, 1), vec![(1, 3)]);
        assert_eq!(counts(&ring, t0, 1), vec![(2, 1)]);
        assert_eq!(counts(&ring, t0 + 20 * SECOND, 1), vec![(3, 1)]);
        // Three intervals after `t0`'s, its slot is reused: item 2 is gone.
        ring.add(t0 + 30 * SECOND, 4, 1, || 4);
        assert_eq!(
            counts(&ring, t0 + 30 * SECOND, 3),
            vec![(1, 3), (3, 1), (4, 1)]
        );
    }

    #[test]
    fn an_event_from_the_past_does_not_wipe_a_newer_interval() {
        let mut ring = Ring::new(10 * SECOND, 2, 8);
        let t0 = 1_000 * SECOND;
        ring.add(t0 + 20 * SECOND, 1, 1, || 1);
        ring.add(t0, 2, 1, || 2); // same slot, older interval
        assert_eq!(counts(&ring, t0 + 20 * SECOND, 1), vec![(1, 1), (2, 1)]);
    }
}
