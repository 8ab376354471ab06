//! The admission gate in front of a [`SpaceSaving`](super::space_saving::SpaceSaving) table:
//! one row of count-min counters that lets a full table turn away an item without changing
//! what its counts guarantee.
//!
//! Plain Space-Saving gives every new item the smallest row, so on a long tail nearly every
//! event evicts a row, builds a label (an allocation in the server) and rewrites the index.
//! It may do so because an item it does not hold has a true weight of at most the smallest
//! count `min`. The gate keeps that fact while refusing most of the tail: every event adds
//! its weight to the counter its item hashes to, so a counter is never below the true weight
//! of any item hashed to it. A new item whose counter is still at most `min` provably weighs
//! at most `min`, exactly what an item outside the table may weigh: it stays out and nothing
//! else changes. Any other item enters as it would without the gate. Collisions only let more
//! items in (costing time, never accuracy).
//!
//! The counters are cleared with their table, so they count one interval, as the table does.

/// One row of `width` count-min counters; see the module docs.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Empty until the first event, so an idle interval costs nothing.
    counters: Vec<u32>,
    width: usize,
    /// `64 - log2(width)`: the top bits of a multiplied hash pick the counter.
    shift: u32,
}

impl Gate {
    /// A gate with `width` counters (rounded up to a power of two).
    pub fn new(width: usize) -> Self {
        let width = width.clamp(2, 1 << 30).next_power_of_two();
        Self {
            counters: Vec::new(),
            width,
            shift: 64 - width.trailing_zeros(),
        }
    }

    /// Adds `weight` to the counter of `hash` and returns the counter: at least the true
    /// weight, this event's included, of every item with that counter. A counter that
    /// outgrew 32 bits stays full and reads as `u64::MAX`.
    #[inline]
    pub fn add(&mut self, hash: u64, weight: u64) -> u64 {
        if self.counters.is_empty() {
            self.counters.resize(self.width, 0);
        }
        let at = self.slot(hash);
        let counter = &mut self.counters[at];
        let sum = u64::from(*counter).saturating_add(weight);
        match u32::try_from(sum) {
            Ok(fits) if fits < u32::MAX => {
                *counter = fits;
                sum
            }
            _ => {
                *counter = u32::MAX;
                u64::MAX
            }
        }
    }

    /// Which counter `hash` adds to.
    #[inline]
    pub(crate) fn slot(&self, hash: u64) -> usize {
        // A multiply spreads the hash's bits so the counter is independent of the bits that
        // pick the index's bucket.
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Zeroes every counter, keeping the allocation.
    pub fn clear(&mut self) {
        self.counters.fill(0);
    }

    /// The bytes the counters take once used.
    pub fn bytes(&self) -> usize {
        self.width * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_testkit::zipf::mix;

    #[test]
    fn a_counter_is_never_below_the_weight_of_an_item_hashed_to_it() {
        let mut gate = Gate::new(8);
        let mut truth = [0u64; 100];
        for i in 0..2_000u64 {
            let item = (i * 7 % 100) as usize;
            let weight = i % 3;
            truth[item] += weight;
            let read = gate.add(mix(item as u64), weight);
            assert!(read >= truth[item], "item {item}: {read} < {}", truth[item]);
        }
        gate.clear();
        assert_eq!(gate.add(mix(1), 0), 0);
    }

    #[test]
    fn a_full_counter_stays_full() {
        let mut gate = Gate::new(2);
        assert_eq!(
            gate.add(mix(1), u64::from(u32::MAX) - 1),
            u64::from(u32::MAX) - 1
        );
        assert_eq!(gate.add(mix(1), 1), u64::MAX);
        assert_eq!(gate.add(mix(1), 0), u64::MAX);
        assert_eq!(Gate::new(1000).bytes(), 4096);
    }
}
