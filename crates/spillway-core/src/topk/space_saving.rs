//! Space-Saving (Metwally, Agrawal and El Abbadi, 2005): the heaviest items of a stream in a
//! table of fixed capacity.
//!
//! The table holds at most `capacity` items, each with a count and the error it may carry. An
//! item already held has its count raised; a new item takes a free row or, when the table is
//! full, the row of the item with the smallest count `min`, starting at `min + weight` with
//! error `min`. Every count is therefore an over-estimate by at most its error, and at most
//! `N / capacity` (N the total weight seen), so any item heavier than that is held. On the
//! skewed streams a limiter sees (a few hammered keys, a long tail), the heavy items' errors are
//! zero or tiny: `tests::zipf_top_ten_is_recovered`.
//!
//! Why this and not the `heavykeeper` crate: HeavyKeeper's decay is randomised and its counters
//! only merge between sketches built with the same seed and shape, whereas `/v1/top` merges
//! summaries across time intervals and across nodes; a Space-Saving summary is just
//! `(item, count, error)` rows, which merge by adding. This table also builds an item's label
//! only when the item enters it, so a repeated key costs no allocation.
//!
//! Layout: the rows are a binary min-heap on count (the row to replace is the root), and a
//! [`HashTable`] maps an item's 64-bit hash to its row. A raised count moves its row down the
//! heap; a hot item sits near the leaves, so that is usually a step or none.

use hashbrown::HashTable;

/// One row: an item, its estimated count and the most that estimate may be over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<L> {
    /// The item's hash, which identifies it in the table.
    pub hash: u64,
    /// What the item is, for people (built once, when it enters the table).
    pub label: L,
    /// The estimated weight seen for the item: never below the true weight.
    pub count: u64,
    /// How much of `count` may belong to items this row replaced.
    pub error: u64,
}

/// A Space-Saving table; see the module docs.
#[derive(Debug, Clone)]
pub struct SpaceSaving<L> {
    /// A min-heap on `count`.
    rows: Vec<Row<L>>,
    /// Hash → index into `rows`.
    index: HashTable<u32>,
    capacity: usize,
}

impl<L> SpaceSaving<L> {
    /// An empty table that holds at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Self {
            // Grown as items arrive: an idle interval costs nothing.
            rows: Vec::new(),
            index: HashTable::new(),
            capacity,
        }
    }

    /// The most items the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many items the table holds now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was added since the table was made or cleared.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Forgets every item, keeping the allocation.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.index.clear();
    }

    /// The rows, in no particular order.
    pub fn rows(&self) -> &[Row<L>] {
        &self.rows
    }

    /// Adds `weight` to the item whose hash is `hash`; `label` names it if it enters the table.
    ///
    /// `hash` must identify the item (a well-mixed 64-bit hash, seeded per process so a client
    /// cannot aim for collisions); two items with one hash count as one.
    #[inline]
    pub fn add(&mut self, hash: u64, weight: u64, label: impl FnOnce() -> L) {
        let rows = &self.rows;
        if let Some(&at) = self.index.find(hash, |&i| rows[i as usize].hash == hash) {
            let at = at as usize;
            self.rows[at].count = self.rows[at].count.saturating_add(weight);
            self.sift_down(at);
            return;
        }
        if self.rows.len() < self.capacity {
            let at = self.rows.len();
            self.rows.push(Row {
                hash,
                label: label(),
                count: weight,
                error: 0,
            });
            self.index
                .insert_unique(hash, at as u32, |&i| self.rows[i as usize].hash);
            self.sift_up(at);
            return;
        }
        // Full: the item with the smallest count gives its row to the new one.
        let old = self.rows[0].hash;
        if let Ok(entry) = self.index.find_entry(old, |&i| i == 0) {
            entry.remove();
        }
        let min = self.rows[0].count;
        self.rows[0] = Row {
            hash,
            label: label(),
            count: min.saturating_add(weight),
            error: min,
        };
        self.index
            .insert_unique(hash, 0, |&i| self.rows[i as usize].hash);
        self.sift_down(0);
    }

    fn sift_down(&mut self, mut at: usize) {
        let n = self.rows.len();
        loop {
            let left = 2 * at + 1;
            if left >= n {
                return;
            }
            let right = left + 1;
            let child = if right < n && self.rows[right].count < self.rows[left].count {
                right
            } else {
                left
            };
            if self.rows[at].count <= self.rows[child].count {
                return;
            }
            self.swap(at, child);
            at = child;
        }
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.rows[parent].count <= self.rows[at].count {
                return;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    /// Swaps two rows and points the index at their new places.
    fn swap(&mut self, a: usize, b: usize) {
        self.rows.swap(a, b);
        for (at, was) in [(a, b), (b, a)] {
            let hash = self.rows[at].hash;
            if let Some(slot) = self.index.find_mut(hash, |&i| i as usize == was) {
                *slot = at as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topk::testkit::{mix, zipf_stream};
    use std::collections::HashMap;

    #[test]
    fn counts_are_exact_until_the_table_is_full() {
        let mut t = SpaceSaving::new(4);
        for (item, n) in [(1u64, 5u64), (2, 3), (3, 1)] {
            for _ in 0..n {
                t.add(mix(item), 1, || item);
            }
        }
        let mut rows: Vec<_> = t
            .rows()
            .iter()
            .map(|r| (r.label, r.count, r.error))
            .collect();
        rows.sort();
        assert_eq!(rows, vec![(1, 5, 0), (2, 3, 0), (3, 1, 0)]);
    }

    #[test]
    fn a_new_item_takes_the_smallest_row_and_inherits_its_count_as_error() {
        let mut t = SpaceSaving::new(2);
        t.add(mix(1), 10, || 1u64);
        t.add(mix(2), 2, || 2);
        t.add(mix(3), 1, || 3);
        let mut rows: Vec<_> = t
            .rows()
            .iter()
            .map(|r| (r.label, r.count, r.error))
            .collect();
        rows.sort();
        assert_eq!(rows, vec![(1, 10, 0), (3, 3, 2)]);
        // The index follows the rows: item 3 is found again, not inserted twice.
        t.add(mix(3), 20, || 3);
        assert_eq!(t.len(), 2);
        assert!(t.rows().iter().any(|r| r.label == 3 && r.count == 23));
    }

    #[test]
    fn counts_never_under_estimate_and_the_error_bounds_the_over_estimate() {
        let mut t = SpaceSaving::new(64);
        let mut truth: HashMap<u64, u64> = HashMap::new();
        for item in zipf_stream(1_000, 1.1, 20_000, 7) {
            t.add(mix(item), 1, || item);
            *truth.entry(item).or_default() += 1;
        }
        for row in t.rows() {
            let real = truth[&row.label];
            assert!(row.count >= real, "{row:?} under-estimates {real}");
            assert!(row.count - row.error <= real, "{row:?} vs {real}");
        }
    }
}
