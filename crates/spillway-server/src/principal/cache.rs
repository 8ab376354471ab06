//! Tokens already verified, so a token is checked once and then only looked up.
//!
//! Keyed by the token's SHA-256 digest (the token itself is never kept), each entry holds the
//! principal and the instant it stops being believed (`exp` plus the leeway). The cache is
//! bounded (`principals.jwt.cache_size` entries) and evicts by `quick_cache`'s S3-FIFO policy,
//! so a client sending endless distinct tokens cannot grow it. An entry is kept through a
//! report's grace past its expiry ([`REPORT_GRACE`]), so that the reports of a token's last
//! requests are not verified again; whether a read may take it is the reader's to judge
//! ([`Verified::expired`]). An entry read after that grace, or once it is due to be verified
//! again, is dropped. Failed verifications are not cached.

use super::jwt::Verified;
use super::REPORT_GRACE;
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

    /// Looks a token up at `now`: `None` if it is not held, or no longer (past a report's
    /// grace after its expiry, or due to be verified again). An entry it gives may have
    /// expired for the reader: see [`Verified::expired`].
    pub fn get(&self, digest: &TokenDigest, now: Micros) -> Option<Verified> {
        let v = self.entries.get(digest)?;
        if v.expired(now, REPORT_GRACE) || v.recheck.is_some_and(|at| now >= at) {
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
    fn entries_are_kept_through_a_reports_grace_past_expiry() {
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        cache.insert(d, verified(Some(1_000)));
        // Expired for a check, still there for a report.
        let v = cache.get(&d, 1_000).expect("kept");
        assert!(v.expired(1_000, 0));
        assert!(!v.expired(1_000, REPORT_GRACE));
        let last = 1_000 + REPORT_GRACE - 1;
        assert!(cache.get(&d, last).is_some());
        assert!(cache.get(&d, last + 1).is_none(), "past the grace");
        assert!(cache.get(&d, 0).is_none(), "and dropped");
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
