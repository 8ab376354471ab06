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

use smallvec::SmallVec;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
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
    pub values: KeyValues,
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
        let mut values = self.values.iter().map(KeyValue::as_bytes);
        match values.next() {
            Some(first) => {
                hasher.write_u64(count | u64::from(len32(first)));
                hasher.write(first);
            }
            None => hasher.write_u64(count),
        }
        for v in values {
            hasher.write_u32(len32(v));
            hasher.write(v);
        }
    }
}

/// A part's length in 32 bits; lengths past 4 GiB saturate (no request carries such a value:
/// bodies and headers are capped far below).
fn len32(part: &[u8]) -> u32 {
    u32::try_from(part.len()).unwrap_or(u32::MAX)
}

/// A key's dimension values, in the limit's order: a list of [`KeyValue`]s with room for two
/// in place (the usual key is a tenant and a user, or a network). Read it as a slice.
///
/// Every request resolves a key per limit, so with `Vec<String>` each key cost an allocation
/// for the list and one per value, about ten per request under the example policy; short
/// values in an inline list cost none.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyValues(SmallVec<[KeyValue; 2]>);

impl KeyValues {
    /// Adds `value` after the others.
    #[inline]
    pub fn push(&mut self, value: KeyValue) {
        self.0.push(value);
    }
}

impl Deref for KeyValues {
    type Target = [KeyValue];

    fn deref(&self) -> &[KeyValue] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a KeyValues {
    type Item = &'a KeyValue;
    type IntoIter = std::slice::Iter<'a, KeyValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<V: Into<KeyValue>> FromIterator<V> for KeyValues {
    fn from_iter<I: IntoIterator<Item = V>>(values: I) -> Self {
        Self(values.into_iter().map(Into::into).collect())
    }
}

impl<V: Into<KeyValue>> From<Vec<V>> for KeyValues {
    fn from(values: Vec<V>) -> Self {
        values.into_iter().collect()
    }
}

impl fmt::Debug for KeyValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for KeyValues {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for KeyValues {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for KeyValues {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

/// The longest value kept in place; a longer one is kept on the heap.
const INLINE: usize = 22;

/// One dimension value of a key: text a request gave (a tenant, a user, a descriptor's
/// value) or the policy made (a network, a route). Reads as a `str`. Up to 22 bytes, which
/// covers the usual names, ids and addresses, it is kept in place; a longer one is boxed.
#[derive(Clone)]
pub struct KeyValue(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the value (copied whole from a `str`, so it is UTF-8); the rest is
    /// zero.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl KeyValue {
    /// The value as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always UTF-8 (see `Repr::Inline`): a copy of a whole `str`. Checked rather than
            // assumed, which costs a pass over a short value; the hot path (hashing) reads the
            // bytes instead.
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("an inline value is a copy of a whole str"),
            Repr::Heap(text) => text,
        }
    }

    /// The value's bytes, without looking at them.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(text) => text.as_bytes(),
        }
    }
}

impl From<&str> for KeyValue {
    fn from(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Self(Repr::Inline { len, bytes })
            }
            _ => Self(Repr::Heap(text.into())),
        }
    }
}

impl From<&String> for KeyValue {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<String> for KeyValue {
    fn from(text: String) -> Self {
        if text.len() <= INLINE {
            Self::from(text.as_str())
        } else {
            Self(Repr::Heap(text.into_boxed_str()))
        }
    }
}

impl Deref for KeyValue {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for KeyValue {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for KeyValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyValue {}

impl Hash for KeyValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<str> for KeyValue {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for KeyValue {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
            values: values.iter().copied().collect(),
        }
    }

    #[test]
    fn values_read_back_whatever_their_length() {
        let lengths = [0, 1, INLINE - 1, INLINE, INLINE + 1, 300];
        for len in lengths {
            // Multi-byte characters too, so a value is copied at its own boundaries.
            for unit in ["a", "\u{e9}", "\u{1f600}"] {
                let text = unit.repeat(len);
                let short = KeyValue::from(text.as_str());
                let owned = KeyValue::from(text.clone());
                assert_eq!(short.as_str(), text);
                assert_eq!(owned.as_str(), text);
                assert_eq!(short.as_bytes(), text.as_bytes());
                assert_eq!(short, owned);
                assert_eq!(short.to_string(), text);
                assert_eq!(format!("{short:?}"), format!("{text:?}"));
            }
        }
    }

    #[test]
    fn values_compare_by_text() {
        let values: KeyValues = ["acme", "u1"].into_iter().collect();
        assert_eq!(values, ["acme", "u1"]);
        assert_eq!(values, vec!["acme".to_owned(), "u1".to_owned()]);
        assert_ne!(values, ["acme"]);
        assert_ne!(values, ["acme", "u2"]);
        let long = "x".repeat(INLINE + 5);
        assert_ne!(KeyValue::from(long.as_str()), KeyValue::from(&long[1..]));
        assert_eq!(KeyValue::from(long.as_str()), KeyValue::from(long.clone()));
        assert_eq!(format!("{values:?}"), r#"["acme", "u1"]"#);
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
