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
    pub fn hash_into(&self, hasher: &mut impl Hasher) {
        hasher.write_u64(self.limit.len() as u64);
        hasher.write(self.limit.as_bytes());
        hasher.write_u64(self.fingerprint);
        hasher.write_u64(self.values.len() as u64);
        for v in &self.values {
            hasher.write_u64(v.len() as u64);
            hasher.write(v.as_bytes());
        }
    }
}
