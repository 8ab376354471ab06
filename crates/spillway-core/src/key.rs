//! The identity of one limit's counter for one set of dimension values.
//!
//! A [`StateKey`] keeps the limit's name, the fingerprint of its parameters and the dimension
//! values as separate parts, so each store can encode them its own way: the in-memory store
//! hashes an unambiguous length-prefixed encoding, and the Redis store builds a readable key
//! with a hash tag. Because the fingerprint is part of the identity, a limit whose numbers
//! change on reload starts on fresh counters instead of misreading state kept under other
//! parameters; counters of unchanged limits carry over untouched.

use std::hash::Hasher;
use std::sync::Arc;

/// The counter a limit keeps for one combination of dimension values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// The limit's name.
    pub limit: Arc<str>,
    /// A fingerprint of the limit's parameters (algorithm and numbers).
    pub fingerprint: u64,
    /// The values of the limit's key dimensions, in the order the limit declares them.
    pub values: Vec<String>,
}

impl StateKey {
    /// Feeds an unambiguous encoding of the whole key to `hasher`: the limit's name, the
    /// fingerprint and the values, each length-prefixed.
    pub fn hash_into(&self, hasher: &mut impl Hasher) {
        hasher.write(&len32(&self.limit));
        hasher.write(self.limit.as_bytes());
        hasher.write(&self.fingerprint.to_le_bytes());
        self.with_values_encoding(|bytes| hasher.write(bytes));
    }

    /// Calls `f` with an unambiguous encoding of the dimension values: the count, then each
    /// value length-prefixed (32-bit lengths; far longer than any value the edges accept), so
    /// no value, whatever bytes it holds, can make two different lists encode alike. Short
    /// lists (the usual case) are encoded on the stack, longer ones on the heap.
    #[inline]
    pub fn with_values_encoding<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let mut stack = [0u8; 128];
        match self.encode_values(&mut stack) {
            Some(len) => f(&stack[..len]),
            None => {
                let size = 4 + self.values.iter().map(|v| 4 + v.len()).sum::<usize>();
                let mut heap = vec![0u8; size];
                let len = self.encode_values(&mut heap).unwrap_or(0);
                f(&heap[..len])
            }
        }
    }

    /// Writes the values' encoding into `buf`, if it fits.
    #[inline]
    fn encode_values(&self, buf: &mut [u8]) -> Option<usize> {
        let mut at = 0;
        let mut put = |bytes: &[u8]| -> Option<()> {
            buf.get_mut(at..at + bytes.len())?.copy_from_slice(bytes);
            at += bytes.len();
            Some(())
        };
        put(&(self.values.len() as u32).to_le_bytes())?;
        for v in &self.values {
            put(&len32(v))?;
            put(v.as_bytes())?;
        }
        Some(at)
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

    fn digest(key: &StateKey) -> u128 {
        let mut h = SipHasher13::new_with_keys(1, 2);
        key.hash_into(&mut h);
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
    fn long_keys_are_encoded_in_full() {
        let long = "x".repeat(10_000);
        let k = key(&[&long]);
        let len = k.with_values_encoding(|b| b.len());
        assert_eq!(len, 4 + 4 + 10_000);
        assert_ne!(digest(&k), digest(&key(&[&"x".repeat(9_999)])));
    }

    #[test]
    fn part_boundaries_are_unambiguous() {
        assert_ne!(digest(&key(&["a:b"])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&["ab", ""])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&[])), digest(&key(&[""])));
    }
}
