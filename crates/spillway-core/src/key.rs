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
    /// Feeds an unambiguous encoding of the key to `hasher`: every part is length-prefixed, so
    /// no value (whatever bytes it holds) can make two different keys encode alike.
    ///
    /// Short keys (the usual case) are encoded into a stack buffer and fed in one call, which
    /// is several times cheaper for a streaming hasher than one call per part.
    pub fn hash_into(&self, hasher: &mut impl Hasher) {
        let mut buf = [0u8; 192];
        match self.encode_into(&mut buf) {
            Some(len) => hasher.write(&buf[..len]),
            None => {
                hasher.write(&(self.limit.len() as u64).to_le_bytes());
                hasher.write(self.limit.as_bytes());
                hasher.write(&self.fingerprint.to_le_bytes());
                hasher.write(&(self.values.len() as u64).to_le_bytes());
                for v in &self.values {
                    hasher.write(&(v.len() as u64).to_le_bytes());
                    hasher.write(v.as_bytes());
                }
            }
        }
    }

    /// Writes the same byte sequence `hash_into` streams into `buf`, if it fits.
    fn encode_into(&self, buf: &mut [u8]) -> Option<usize> {
        let mut at = 0;
        let mut put = |bytes: &[u8]| -> Option<()> {
            buf.get_mut(at..at + bytes.len())?.copy_from_slice(bytes);
            at += bytes.len();
            Some(())
        };
        put(&(self.limit.len() as u64).to_le_bytes())?;
        put(self.limit.as_bytes())?;
        put(&self.fingerprint.to_le_bytes())?;
        put(&(self.values.len() as u64).to_le_bytes())?;
        for v in &self.values {
            put(&(v.len() as u64).to_le_bytes())?;
            put(v.as_bytes())?;
        }
        Some(at)
    }
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
    fn short_and_long_keys_hash_the_same_encoding() {
        // The stack-buffer path and the streaming path must agree, or a key would change
        // identity when a value crosses the buffer size.
        let long = "x".repeat(10_000);
        let mut h = SipHasher13::new_with_keys(1, 2);
        let k = key(&[&long]);
        h.write(&1u64.to_le_bytes());
        h.write(b"l");
        h.write(&9u64.to_le_bytes());
        h.write(&1u64.to_le_bytes());
        h.write(&10_000u64.to_le_bytes());
        h.write(long.as_bytes());
        assert_eq!(digest(&k), h.finish128().as_u128());
        let mut buf = [0u8; 64];
        let short = key(&["ab"]);
        let n = short.encode_into(&mut buf).unwrap();
        let mut h = SipHasher13::new_with_keys(1, 2);
        h.write(&buf[..n]);
        assert_eq!(digest(&short), h.finish128().as_u128());
    }

    #[test]
    fn part_boundaries_are_unambiguous() {
        assert_ne!(digest(&key(&["a:b"])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&["ab", ""])), digest(&key(&["a", "b"])));
        assert_ne!(digest(&key(&[])), digest(&key(&[""])));
    }
}
