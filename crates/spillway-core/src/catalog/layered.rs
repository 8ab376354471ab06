//! A large map that takes small changes cheaply: an immutable base and a small overlay of
//! recent changes (a deletion is a `None` in the overlay), both shared by `Arc`.
//!
//! A catalog of a million tenants is swapped whole on every change (readers never lock), so
//! copying the whole map per change would cost tens of milliseconds each time. Instead a
//! batch of changes copies only the overlay, and the overlay is folded into a new base once it
//! holds more than four times the square root of the base's size (at least 1,024 entries):
//! for a million tenants a change copies at most ~4,000 overlay entries, and a rebuild of the
//! base is spread over as many changes. A lookup reads the overlay first, only when it is not
//! empty, so a catalog without recent changes costs one probe.

use foldhash::fast::RandomState;
use hashbrown::{Equivalent, HashMap};
use std::hash::Hash;
use std::sync::Arc;

/// The overlay is folded into the base past `max(MIN_FOLD, 4 * sqrt(base.len()))` entries.
const MIN_FOLD: usize = 1024;

/// A map of `K` to `V`: a shared base under a shared overlay of recent changes. Keys are
/// hashed with a random per-process seed, so clients naming keys cannot aim at one bucket.
#[derive(Debug)]
pub(crate) struct Layered<K, V> {
    base: Arc<HashMap<K, V, RandomState>>,
    recent: Arc<HashMap<K, Option<V>, RandomState>>,
    /// Live entries (the base's, plus the overlay's additions, less its deletions).
    len: usize,
}

impl<K, V> Clone for Layered<K, V> {
    fn clone(&self) -> Self {
        Self {
            base: Arc::clone(&self.base),
            recent: Arc::clone(&self.recent),
            len: self.len,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Layered<K, V> {
    fn default() -> Self {
        Self::from_map(HashMap::default())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Layered<K, V> {
    /// A map holding exactly `base`.
    pub(crate) fn from_map(base: HashMap<K, V, RandomState>) -> Self {
        Self {
            len: base.len(),
            base: Arc::new(base),
            recent: Arc::default(),
        }
    }

    /// A map of `capacity` entries' room to be filled by [`Self::from_map`].
    pub(crate) fn with_capacity(capacity: usize) -> HashMap<K, V, RandomState> {
        HashMap::with_capacity_and_hasher(capacity, RandomState::default())
    }

    /// The value under `key`, if any.
    #[inline]
    pub(crate) fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<&V> {
        if !self.recent.is_empty() {
            if let Some(changed) = self.recent.get(key) {
                return changed.as_ref();
            }
        }
        self.base.get(key)
    }

    /// How many live entries the map holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the map holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// This map with `changes` applied in order (`None` deletes), sharing what it can.
    pub(crate) fn with_changes(&self, changes: Vec<(K, Option<V>)>) -> Self {
        if changes.is_empty() {
            return self.clone();
        }
        let mut recent = (*self.recent).clone();
        let mut len = self.len;
        for (key, value) in changes {
            let before = match recent.get(&key) {
                Some(changed) => changed.is_some(),
                None => self.base.contains_key(&key),
            };
            len = len + usize::from(value.is_some()) - usize::from(before);
            recent.insert(key, value);
        }
        if recent.len() <= MIN_FOLD.max(4 * self.base.len().isqrt()) {
            return Self {
                base: Arc::clone(&self.base),
                recent: Arc::new(recent),
                len,
            };
        }
        let mut base = (*self.base).clone();
        for (key, value) in recent {
            match value {
                Some(value) => base.insert(key, value),
                None => base.remove(&key),
            };
        }
        Self::from_map(base)
    }

    /// Every live entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let recent = self
            .recent
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)));
        let base = self
            .base
            .iter()
            .filter(|(k, _)| !self.recent.contains_key(*k));
        recent.chain(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_land_in_the_overlay_and_fold_into_the_base() {
        let mut map: Layered<u32, u32> = Layered::default();
        map = map.with_changes((0..10).map(|i| (i, Some(i))).collect());
        assert_eq!(map.len(), 10);
        assert_eq!(map.get(&3), Some(&3));
        let shared = map.with_changes(vec![(3, None), (4, Some(40)), (99, Some(9))]);
        // The original is untouched: a snapshot is immutable.
        assert_eq!(map.get(&3), Some(&3));
        assert_eq!(shared.get(&3), None);
        assert_eq!(shared.get(&4), Some(&40));
        assert_eq!(shared.len(), 10);
        // Deleting what is absent changes nothing.
        let again = shared.with_changes(vec![(3, None), (12345, None)]);
        assert_eq!(again.len(), 10);
        // Past the fold threshold everything ends up in one base, with the same content.
        let big = again.with_changes((100..2200).map(|i| (i, Some(i))).collect());
        assert!(big.recent.is_empty());
        assert_eq!(big.len(), 2110);
        assert_eq!(big.iter().count(), 2110);
        assert_eq!(big.get(&3), None);
        assert_eq!(big.get(&4), Some(&40));
        assert_eq!(big.get(&2199), Some(&2199));
    }
}
