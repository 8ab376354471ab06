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
//! One departure from the paper, which keeps those guarantees: a [`Gate`] of count-min
//! counters in front turns away a new item that provably weighs no more than `min` (its
//! counter, which every event feeds, is at most `min`): such an item may be left out just as
//! the items Space-Saving evicted are. An item that gets past it enters counted
//! `min(counter, min + weight)`, with error that count less this event's weight, so the count
//! is still never below the truth, over it by at most the error, and the error at most `min`,
//! which is at most `N / capacity` (the rows hold at most the weight seen). On a long tail the
//! gate spares most events the eviction, the label and the index rewrite
//! (`tests::a_long_tail_builds_few_labels`).
//!
//! Why this and not the `heavykeeper` crate: HeavyKeeper's decay is randomised and its counters
//! only merge between sketches built with the same seed and shape, whereas `/v1/top` merges
//! summaries across time intervals and across nodes; a Space-Saving summary is just
//! `(item, count, error)` rows, which merge by adding. This table also builds an item's label
//! only when the item enters it, so a repeated key costs no allocation, and past the gate a
//! tail key seldom costs one.
//!
//! Layout: the paper's *stream summary*. Rows of equal count share a bucket; the buckets form
//! a list in ascending count, so the row to replace is in the first bucket, and a row raised
//! by one moves to the next bucket or, alone in its bucket, raises the bucket in place: both
//! O(1), however many rows are tied at the minimum (a long tail leaves most rows there). A
//! bucket's rows form a ring in the order they reached its count, and the oldest is replaced
//! first: the one that has gone longest without a hit. Rows and buckets live in two vectors
//! and link by index; a [`HashTable`] maps an item's 64-bit hash to its row.

use super::gate::Gate;
use hashbrown::HashTable;

/// Gate counters per row of capacity: enough that most counters stay below the smallest
/// count on a long tail (see `topk::tests`), at 16 bytes a row (up to 32 once the width is
/// rounded up to a power of two).
const GATE_WIDTH: usize = 4;

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

/// The end of a list.
const NONE: u32 = u32::MAX;

/// A row and its place in its bucket's ring.
#[derive(Debug, Clone)]
struct Entry<L> {
    row: Row<L>,
    bucket: u32,
    prev: u32,
    next: u32,
}

/// The rows that share one count. A free bucket is chained to the next free one by `next`.
#[derive(Debug, Clone)]
struct Bucket {
    count: u64,
    /// The row that reached this count first (the next to be replaced if this is the
    /// smallest count); `NONE` when free.
    oldest: u32,
    /// The buckets of the next smaller and the next larger count.
    prev: u32,
    next: u32,
}

/// A Space-Saving table; see the module docs.
#[derive(Debug, Clone)]
pub struct SpaceSaving<L> {
    entries: Vec<Entry<L>>,
    buckets: Vec<Bucket>,
    /// The bucket of the smallest count.
    lowest: u32,
    /// The first free bucket.
    free: u32,
    /// Hash → index into `entries`.
    index: HashTable<u32>,
    gate: Gate,
    capacity: usize,
}

impl<L> SpaceSaving<L> {
    /// An empty table that holds at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        // Indices are u32 and `NONE` is reserved.
        let capacity = capacity.clamp(1, NONE as usize - 1);
        Self {
            // Grown as items arrive: an idle interval costs nothing.
            entries: Vec::new(),
            buckets: Vec::new(),
            lowest: NONE,
            free: NONE,
            index: HashTable::new(),
            gate: Gate::new(capacity.saturating_mul(GATE_WIDTH)),
            capacity,
        }
    }

    /// The most items the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many items the table holds now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added since the table was made or cleared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every item, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.buckets.clear();
        self.lowest = NONE;
        self.free = NONE;
        self.index.clear();
        self.gate.clear();
    }

    /// The rows, in no particular order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &Row<L>> {
        self.entries.iter().map(|e| &e.row)
    }

    /// Adds `weight` to the item whose hash is `hash`; `label` names it if it enters the table.
    ///
    /// `hash` must identify the item (a well-mixed 64-bit hash, seeded per process so a client
    /// cannot aim for collisions); two items with one hash count as one.
    #[inline]
    pub fn add(&mut self, hash: u64, weight: u64, label: impl FnOnce() -> L) {
        // Every event goes through the gate, so its counters bound every item's weight.
        let bound = self.gate.add(hash, weight);
        let entries = &self.entries;
        if let Some(&at) = self
            .index
            .find(hash, |&i| entries[i as usize].row.hash == hash)
        {
            self.raise(at, weight);
            return;
        }
        if self.entries.len() < self.capacity {
            let at = self.entries.len() as u32;
            self.entries.push(Entry {
                row: Row {
                    hash,
                    label: label(),
                    count: weight,
                    error: 0,
                },
                bucket: NONE,
                prev: NONE,
                next: NONE,
            });
            let entries = &self.entries;
            self.index
                .insert_unique(hash, at, |&i| entries[i as usize].row.hash);
            let bucket = self.bucket_for(weight, NONE, self.lowest);
            self.attach(at, bucket);
            return;
        }
        let lowest = &self.buckets[self.lowest as usize];
        let min = lowest.count;
        if bound <= min {
            // It weighs at most `min`, as any item outside the table may: it stays out.
            return;
        }
        // The row that has held the smallest count longest goes to the new item, counted as
        // what it may weigh: at most `min` before this event (else it would be held) and at
        // most `bound`.
        let at = lowest.oldest;
        let old = self.entries[at as usize].row.hash;
        if let Ok(entry) = self.index.find_entry(old, |&i| i == at) {
            entry.remove();
        }
        let count = bound.min(min.saturating_add(weight));
        let row = &mut self.entries[at as usize].row;
        row.hash = hash;
        row.label = label();
        row.error = count - weight.min(count);
        let entries = &self.entries;
        self.index
            .insert_unique(hash, at, |&i| entries[i as usize].row.hash);
        self.raise(at, count - min);
    }

    /// Moves row `at` to the bucket of its count plus `weight`.
    #[inline]
    fn raise(&mut self, at: u32, weight: u64) {
        let from = self.entries[at as usize].bucket;
        let bucket = &self.buckets[from as usize];
        let count = bucket.count.saturating_add(weight);
        if count == bucket.count {
            return; // no weight, or the count saturated
        }
        self.entries[at as usize].row.count = count;
        let next = bucket.next;
        let alone = self.entries[at as usize].next == at;
        if alone && (next == NONE || self.buckets[next as usize].count > count) {
            // Its bucket keeps its place in the list: raise it in place.
            self.buckets[from as usize].count = count;
            return;
        }
        let to = if alone {
            // Its bucket goes; searching from its neighbours may reuse it.
            let prev = bucket.prev;
            self.detach(at);
            self.bucket_for(count, prev, next)
        } else {
            let to = self.bucket_for(count, from, next);
            self.detach(at);
            to
        };
        self.attach(at, to);
    }

    /// The bucket of `count`, searching up from between `before` and `after` (neighbours,
    /// `before` below `count`); made and linked in if there is none.
    fn bucket_for(&mut self, count: u64, mut before: u32, mut after: u32) -> u32 {
        while after != NONE && self.buckets[after as usize].count < count {
            before = after;
            after = self.buckets[after as usize].next;
        }
        if after != NONE && self.buckets[after as usize].count == count {
            return after;
        }
        let bucket = Bucket {
            count,
            oldest: NONE,
            prev: before,
            next: after,
        };
        let made = if self.free == NONE {
            self.buckets.push(bucket);
            (self.buckets.len() - 1) as u32
        } else {
            let made = self.free;
            self.free = self.buckets[made as usize].next;
            self.buckets[made as usize] = bucket;
            made
        };
        match before {
            NONE => self.lowest = made,
            b => self.buckets[b as usize].next = made,
        }
        if after != NONE {
            self.buckets[after as usize].prev = made;
        }
        made
    }

    /// Takes row `at` out of its bucket's ring, freeing the bucket if that empties it.
    fn detach(&mut self, at: u32) {
        let Entry {
            bucket, prev, next, ..
        } = self.entries[at as usize];
        if next == at {
            let Bucket { prev, next, .. } = self.buckets[bucket as usize];
            match prev {
                NONE => self.lowest = next,
                p => self.buckets[p as usize].next = next,
            }
            if next != NONE {
                self.buckets[next as usize].prev = prev;
            }
            let freed = &mut self.buckets[bucket as usize];
            freed.oldest = NONE;
            freed.next = self.free;
            self.free = bucket;
            return;
        }
        self.entries[prev as usize].next = next;
        self.entries[next as usize].prev = prev;
        let b = &mut self.buckets[bucket as usize];
        if b.oldest == at {
            b.oldest = next;
        }
    }

    /// Puts row `at` last (newest) in bucket `bucket`'s ring.
    fn attach(&mut self, at: u32, bucket: u32) {
        let b = &mut self.buckets[bucket as usize];
        let oldest = b.oldest;
        let (prev, next) = if oldest == NONE {
            b.oldest = at;
            (at, at)
        } else {
            let newest = self.entries[oldest as usize].prev;
            self.entries[newest as usize].next = at;
            self.entries[oldest as usize].prev = at;
            (newest, oldest)
        };
        let e = &mut self.entries[at as usize];
        e.bucket = bucket;
        e.prev = prev;
        e.next = next;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spillway_testkit::zipf::{mix, zipf_stream};
    use std::collections::HashMap;

    impl<L> SpaceSaving<L> {
        /// Checks the stream summary's links: buckets in strictly ascending count, each
        /// holding a ring of the rows of its count, every row in exactly one ring, the free
        /// buckets unreachable from the list, and the index pointing at every row.
        fn assert_linked(&self) {
            let mut seen = vec![false; self.entries.len()];
            let (mut before, mut b, mut last) = (NONE, self.lowest, None);
            let mut live = 0;
            while b != NONE {
                let bucket = &self.buckets[b as usize];
                assert_eq!(bucket.prev, before, "bucket {b}'s back link");
                assert!(
                    last < Some(bucket.count),
                    "counts must ascend at bucket {b}"
                );
                let mut at = bucket.oldest;
                assert_ne!(at, NONE, "bucket {b} in the list but empty");
                loop {
                    let e = &self.entries[at as usize];
                    assert!(!seen[at as usize], "row {at} twice");
                    seen[at as usize] = true;
                    assert_eq!((e.bucket, e.row.count), (b, bucket.count), "row {at}");
                    assert_eq!(self.entries[e.next as usize].prev, at, "row {at}'s ring");
                    at = e.next;
                    if at == bucket.oldest {
                        break;
                    }
                }
                live += 1;
                (before, last, b) = (b, Some(bucket.count), bucket.next);
            }
            assert!(seen.iter().all(|&s| s), "a row in no bucket");
            let mut free = 0;
            let mut f = self.free;
            while f != NONE {
                free += 1;
                f = self.buckets[f as usize].next;
            }
            assert_eq!(live + free, self.buckets.len(), "a bucket lost");
            assert!(self.buckets.len() <= self.capacity);
            for (i, e) in self.entries.iter().enumerate() {
                let h = e.row.hash;
                assert_eq!(
                    self.index
                        .find(h, |&j| self.entries[j as usize].row.hash == h),
                    Some(&(i as u32))
                );
            }
            assert_eq!(self.index.len(), self.entries.len());
        }
    }

    #[test]
    fn counts_are_exact_until_the_table_is_full() {
        let mut t = SpaceSaving::new(4);
        for (item, n) in [(1u64, 5u64), (2, 3), (3, 1)] {
            for _ in 0..n {
                t.add(mix(item), 1, || item);
            }
        }
        assert_eq!(sorted(&t), vec![(1, 5, 0), (2, 3, 0), (3, 1, 0)]);
    }

    /// Asserts that `items` add to different gate counters in `t`, so an example's outcome
    /// does not rest on a collision.
    fn apart(t: &SpaceSaving<u64>, items: &[u64]) {
        let mut slots: Vec<_> = items.iter().map(|&i| t.gate.slot(mix(i))).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), items.len(), "pick other items");
    }

    fn sorted(t: &SpaceSaving<u64>) -> Vec<(u64, u64, u64)> {
        let mut rows: Vec<_> = t.rows().map(|r| (r.label, r.count, r.error)).collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_new_item_takes_the_smallest_row_once_it_may_outweigh_it() {
        let mut t = SpaceSaving::new(2);
        apart(&t, &[1, 2, 4]);
        t.add(mix(1), 10, || 1u64);
        t.add(mix(2), 2, || 2);
        // Item 4 has weighed 1, no more than the smallest row (2): it stays out.
        t.add(mix(4), 1, || 4);
        assert_eq!(sorted(&t), vec![(1, 10, 0), (2, 2, 0)]);
        // Now it has weighed 3 and takes that row: counted 3 (its gate counter), of which all
        // but this event's 2 may be error.
        t.add(mix(4), 2, || 4);
        assert_eq!(sorted(&t), vec![(1, 10, 0), (4, 3, 1)]);
        // The index follows the rows: item 4 is found again, not inserted twice.
        t.add(mix(4), 20, || 4);
        assert_eq!(sorted(&t), vec![(1, 10, 0), (4, 23, 1)]);
        t.assert_linked();
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

    proptest! {
        /// Any mix of weights keeps the links sound and the Space-Saving guarantees: no count
        /// under its item's true weight, none over by more than its error, and the error at
        /// most the total weight over the capacity.
        #[test]
        fn any_weights_keep_the_summary_sound(
            capacity in 1usize..12,
            events in prop::collection::vec((0u64..40, 0u64..6), 0..400),
        ) {
            let mut t = SpaceSaving::new(capacity);
            let mut truth: HashMap<u64, u64> = HashMap::new();
            let mut total = 0;
            for (item, weight) in events {
                t.add(mix(item), weight, || item);
                *truth.entry(item).or_default() += weight;
                total += weight;
                t.assert_linked();
            }
            for row in t.rows() {
                let real = truth[&row.label];
                prop_assert!(row.count >= real, "{:?} under {}", row, real);
                prop_assert!(row.count - row.error <= real, "{:?} vs {}", row, real);
                prop_assert!(row.error <= total / capacity as u64, "{:?} of {}", row, total);
            }
        }
    }

    #[test]
    fn the_row_longest_at_the_smallest_count_is_replaced_first() {
        let mut t = SpaceSaving::new(3);
        apart(&t, &[1, 2, 3, 4]);
        for item in [1u64, 2, 3] {
            t.add(mix(item), 1, || item);
        }
        t.add(mix(1), 1, || 1); // 1 leaves the tie at 1; 2 has been there longest
        t.add(mix(4), 2, || 4);
        assert_eq!(sorted(&t), vec![(1, 2, 0), (3, 1, 0), (4, 2, 0)]);
        t.assert_linked();
    }
}
