//! Tokens already verified, so a token is checked once and then only looked up.
//!
//! Keyed by the token's SHA-256 digest (the token itself is never kept), each entry holds the
//! principal and the instant it stops being believed (`exp` plus the leeway). The cache is
//! bounded (`principals.jwt.cache_size` entries) and evicts by `quick_cache`'s S3-FIFO policy,
//! so a client sending endless distinct tokens cannot grow it; an entry read after its expiry
//! (a report's read: after its grace too) is dropped and the token refused as expired. Failed
//! verifications are not cached.

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

/// What the cache knows about a token.
pub enum Cached {
    /// Verified and still within its lifetime.
    Fresh(Verified),
    /// Verified once, but its lifetime is over.
    Expired,
    /// Not in the cache.
    Unknown,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Self {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// Looks a token up at `now`, taking it up to `grace` past its expiry (a report's, see
    /// [`super::Presented::grace`]).
    pub fn get(&self, digest: &TokenDigest, now: Micros, grace: Micros) -> Cached {
        match self.entries.get(digest) {
            None => Cached::Unknown,
            Some(v)
                if v.until
                    .is_some_and(|until| now >= until.saturating_add(grace)) =>
            {
                self.entries.remove(digest);
                Cached::Expired
            }
            Some(v) if v.recheck.is_some_and(|at| now >= at) => {
                self.entries.remove(digest);
                Cached::Unknown
            }
            Some(v) => Cached::Fresh(v),
        }
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
    fn entries_expire_with_their_token() {
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        cache.insert(d, verified(Some(1_000)));
        assert!(matches!(cache.get(&d, 999, 0), Cached::Fresh(_)));
        assert!(matches!(cache.get(&d, 1_000, 0), Cached::Expired));
        assert!(matches!(cache.get(&d, 1_000, 0), Cached::Unknown));
    }

    #[test]
    fn a_report_takes_an_entry_up_to_its_grace_past_expiry() {
        let cache = TokenCache::new(10);
        let d = digest("t");
        cache.insert(d, verified(Some(1_000)));
        assert!(matches!(cache.get(&d, 1_500, 1_000), Cached::Fresh(_)));
        assert!(matches!(cache.get(&d, 2_000, 1_000), Cached::Expired));
    }

    #[test]
    fn entries_are_verified_again_after_a_key_refresh_interval() {
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        let mut v = verified(Some(10_000));
        v.recheck = Some(500);
        cache.insert(d, v);
        assert!(matches!(cache.get(&d, 499, 0), Cached::Fresh(_)));
        assert!(matches!(cache.get(&d, 500, 0), Cached::Unknown));
    }
}
