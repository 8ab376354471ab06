//! The identity of one limit's counter for one set of dimension values.
//!
//! A [`StateKey`] keeps the limit's name, its fingerprint (name, algorithm and key
//! dimensions) and the dimension values as separate parts, so each store can encode them its
//! own way: the in-memory store keys on the fingerprint plus a seeded hash of the values, and
//! the Redis store builds a readable key with a hash tag. The limit's numbers are not part of
//! the identity: when they change (on reload, or in a tenant's override) the counter stays,
//! and its state is read under the new numbers (`crate::algorithm::carry`), so tightening a
//! limit never hands every key a fresh quota. A change of algorithm starts fresh counters,
//! and a tenant's override of a limit whose key does not hold the tenant counts apart (one
//! counter must never be read under two tenants' numbers at once).

use std::hash::Hasher;
use std::sync::Arc;

/// The counter a limit keeps for one combination of dimension values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// The limit's name.
    pub limit: Arc<str>,
    /// The limit definition's fingerprint (a stable hash of its name, algorithm and key
    /// dimensions, not its numbers): with the name, what distinguishes one limit's counters
    /// from another's.
    pub fingerprint: u64,
    /// The values of the limit's key dimensions, in the order the limit declares them.
    pub values: Vec<String>,
}

impl StateKey {
    /// Feeds the dimension values to `hasher` unambiguously: their count, then each value's
    /// length and bytes (32-bit lengths; far longer than any value the edges accept), so no
    /// value, whatever bytes it holds, can make two different lists hash alike. The parts go
    /// straight to the hasher rather than through an intermediate buffer, which keeps the
    /// hot path free of copies.
    #[inline]
    pub fn hash_values_into(&self, hasher: &mut impl Hasher) {
        // The count and the first length share one word: one absorb fewer for the usual
        // single-value key, with the same information.
        let count = u64::from(self.values.len() as u32) << 32;
        let mut values = self.values.iter();
        match values.next() {
            Some(first) => {
                hasher.write_u64(count | u64::from(u32::from_le_bytes(len32(first))));
                hasher.write(first.as_bytes());
            }
            None => hasher.write_u64(count),
        }
        for v in values {
            hasher.write_u32(u32::from_le_bytes(len32(v)));
            hasher.write(v.as_bytes());
        }
    }
}

/// A part's length as 4 little-endian bytes; lengths past 4 GiB saturate (no request carries
/// such a value: bodies and headers are capped far below).
fn len32(part: &str) -> [u8; 4] {
    u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip128::{Hasher128, SipHasher13};

    /// The values' hash as the in-memory store uses it: seeded per limit (here through the
    /// hasher's keys), over `hash_values_into`.
    fn digest(key: &StateKey) -> u128 {
        let mut h = SipHasher13::new_with_keys(key.fingerprint, 2);
        key.hash_values_into(&mut h);
        h.finish128().as_u128()
    }

    fn key(values: &[&str]) -> StateKey {
        StateKey {
            limit: "l".into(),
            fingerprint: 9,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn long_values_are_hashed_in_full() {
        let long = "x".repeat(10_000);
        assert_ne!(digest(&key(&[&long])), digest(&key(&[&"x".repeat(9_999)])));
        let mut other = long.clone();
        other.replace_range(9_999.., "y");
        assert_ne!(digest(&key(&[&long])), digest(&key(&[&other])));
    }

    #[test]
    fn part_boundaries_are_unambiguous() {
        assert_ne!(digest(&key(&["a:b"])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&["ab", ""])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&[])), digest(&key(&[""])));
    }
}
