//! Tokens already verified, so a token is checked once and then only looked up.
//!
//! Keyed by the token's SHA-256 digest (the token itself is never kept), each entry holds the
//! principal and the instant it stops being believed (`exp` plus the leeway). The cache is
//! bounded (`principals.jwt.cache_size` entries) and evicts by `quick_cache`'s S3-FIFO policy,
//! so a client sending endless distinct tokens cannot grow it. An entry is kept past its
//! expiry, so that the reports of a token's last requests (taken through a report's grace,
//! [`REPORT_GRACE`](super::REPORT_GRACE)) and a stale cookie a browser keeps sending beside a
//! fresh one are not verified again; whether a read may take it is the reader's to judge
//! ([`Verified::expired`]). Only the issuer makes tokens that verify, so expired ones give a
//! client no more room than live ones. An entry read once it is due to be verified again is
//! dropped. Failed verifications are not cached.

use super::jwt::Verified;
use sha2::{Digest, Sha256};
use spillway_core::time::Micros;

/// A token's identity in the cache.
pub type TokenDigest = [u8; 32];

/// The digest a token is cached under.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified tokens by digest, bounded.
pub struct TokenCache {
    entries: quick_cache::sync::Cache<TokenDigest, Verified>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Self {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// Looks a token up at `now`: `None` if it is not held, or no longer (due to be verified
    /// again). An entry it gives may have expired for the reader: see [`Verified::expired`].
    pub fn get(&self, digest: &TokenDigest, now: Micros) -> Option<Verified> {
        let v = self.entries.get(digest)?;
        if v.recheck.is_some_and(|at| now >= at) {
            self.entries.remove(digest);
            return None;
        }
        Some(v)
    }

    /// Remembers a verified token.
    pub fn insert(&self, digest: TokenDigest, verified: Verified) {
        self.entries.insert(digest, verified);
    }

    /// How many tokens are cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most tokens it holds.
    pub fn capacity(&self) -> u64 {
        self.entries.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Principal;

    fn verified(until: Option<Micros>) -> Verified {
        Verified {
            principal: Principal {
                tenant: Some("t".into()),
                user: None,
                tier: None,
            },
            until,
            recheck: None,
        }
    }

    #[test]
    fn many_distinct_tokens_stay_within_the_bound() {
        let cache = TokenCache::new(100);
        for i in 0..10_000 {
            cache.insert(digest(&format!("token-{i}")), verified(None));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn entries_are_kept_past_expiry_for_the_reader_to_judge() {
        use crate::principal::REPORT_GRACE;
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        cache.insert(d, verified(Some(1_000)));
        // Expired for a check, still good for a report.
        let v = cache.get(&d, 1_000).expect("kept");
        assert!(v.expired(1_000, 0));
        assert!(!v.expired(1_000, REPORT_GRACE));
        // Past a report's grace too, and still held: expired for every reader.
        let late = 1_000 + REPORT_GRACE + 3_600_000_000;
        assert!(cache
            .get(&d, late)
            .expect("kept")
            .expired(late, REPORT_GRACE));
    }

    #[test]
    fn entries_are_verified_again_after_a_key_refresh_interval() {
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        let mut v = verified(Some(10_000));
        v.recheck = Some(500);
        cache.insert(d, v);
        assert!(cache.get(&d, 499).is_some());
        assert!(cache.get(&d, 500).is_none());
        assert!(cache.get(&d, 0).is_none(), "and dropped");
    }
}
