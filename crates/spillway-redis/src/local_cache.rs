//! The local over-limit cache: after Redis denies a request, this node denies the identical
//! request again, without a round trip, until the earliest moment it could pass.
//!
//! # Why it is exact
//! Every algorithm here is monotone for a fixed key and cost: with no other traffic, a denied
//! request stays denied until exactly its `retry_after`, and other traffic can only push that
//! moment later (it adds to counters, never takes away). So a denial received for a call sent
//! at local time `t` with retry `r` holds at least until `t + r`: the script ran after `t`, and
//! its own retry moment is its run time plus `r`. This holds for the token bucket, GCRA and
//! the leaky bucket (refill and drain are continuous), the fixed window (until the window
//! ends, which is its retry), the sliding window (the previous window's weight only falls as
//! time passes, and rolling into the next window carries the same count over) and the sliding
//! log (entries only age out). The cache can therefore never admit anything; it can only
//! deny a little too long when tokens come back early, which only the cross-slot refund in a
//! cluster does (see [`crate::multi_slot`]).
//!
//! # What is cached
//! Whole requests, not single limits: the entry's key is every check's Redis key, cost and
//! enforcement, and its value the decisions Redis returned, replayed with their times aged.
//! A request is cached only when an enforced limit denied it as over-limit, until the
//! *earliest* of those limits' retry times, so every replayed denial is still true. Limits
//! whose numbers change get new keys (the fingerprint is in the key), so a reload never
//! replays stale decisions.
//!
//! # Bounds
//! At most `capacity` entries; expired ones are dropped by [`LocalCache::sweep`] (called
//! every second by the server) and when the map is full; if it is still full a new denial is
//! simply not cached. Hits are counted in `spillway_local_cache_hits_total` and the size is
//! exported as `spillway_local_cache_entries`.

use parking_lot::Mutex;
use spillway_core::algorithm::{Decision, Denial};
use spillway_core::store::Check;
use spillway_core::time::Micros;
use std::collections::HashMap;
use std::fmt::Write;

struct Entry {
    /// Local time at which the request was sent to Redis.
    sent_at: Micros,
    /// Local time until which the request is certainly still denied.
    until: Micros,
    decisions: Vec<Decision>,
}

/// A bounded map from a request's shape to its last, still-valid denial.
pub struct LocalCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl LocalCache {
    /// A cache of at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn shape(keys: &[String], checks: &[Check<'_>]) -> String {
        let mut out = String::with_capacity(keys.iter().map(|k| k.len() + 8).sum());
        for (key, check) in keys.iter().zip(checks) {
            let _ = write!(out, "{key}\n{}{}\n", check.cost, u8::from(check.enforced));
        }
        out
    }

    /// The decisions for a request that is known to be denied at `now`, if it is.
    pub fn deny(
        &self,
        keys: &[String],
        checks: &[Check<'_>],
        now: Micros,
    ) -> Option<Vec<Decision>> {
        let shape = Self::shape(keys, checks);
        let entries = self.entries.lock();
        let entry = entries.get(&shape)?;
        if now >= entry.until {
            return None;
        }
        let aged = now.saturating_sub(entry.sent_at);
        let decisions = entry
            .decisions
            .iter()
            .map(|d| Decision {
                reset_after: d.reset_after.saturating_sub(aged),
                retry_after: d.retry_after.map(|r| r.saturating_sub(aged).max(1)),
                ..*d
            })
            .collect();
        drop(entries);
        metrics::counter!("spillway_local_cache_hits_total").increment(1);
        Some(decisions)
    }

    /// Remembers a request Redis denied (a call sent at local time `sent_at`).
    pub fn remember(
        &self,
        keys: &[String],
        checks: &[Check<'_>],
        decisions: &[Decision],
        sent_at: Micros,
    ) {
        let retry = checks
            .iter()
            .zip(decisions)
            .filter(|(c, d)| c.enforced && !d.allowed && d.denial == Some(Denial::OverLimit))
            .filter_map(|(_, d)| d.retry_after)
            .min();
        let Some(retry) = retry else { return };
        let until = sent_at + retry;
        let shape = Self::shape(keys, checks);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&shape) {
            entries.retain(|_, e| e.until > sent_at);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(
            shape,
            Entry {
                sent_at,
                until,
                decisions: decisions.to_vec(),
            },
        );
        metrics::gauge!("spillway_local_cache_entries").set(entries.len() as f64);
    }

    /// Drops entries that have run out; returns how many.
    pub fn sweep(&self, now: Micros) -> u64 {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, e| e.until > now);
        metrics::gauge!("spillway_local_cache_entries").set(entries.len() as f64);
        (before - entries.len()) as u64
    }

    /// Number of cached requests.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::algorithm::{LimitParams, TokenBucket};
    use spillway_core::key::StateKey;
    use spillway_core::rate::Rate;

    fn decision(allowed: bool, retry: Option<Micros>) -> Decision {
        Decision {
            allowed,
            limit: 5,
            remaining: 0,
            reset_after: 1_000,
            retry_after: retry,
            denial: (!allowed).then_some(Denial::OverLimit),
        }
    }

    /// A five-token bucket and a key of it.
    fn bucket() -> (LimitParams, StateKey) {
        let params =
            LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, 1_000).unwrap(), 5).unwrap());
        let key = StateKey {
            limit: "l".into(),
            fingerprint: 1,
            values: vec![],
        };
        (params, key)
    }

    #[test]
    fn denies_until_the_earliest_retry_then_forgets() {
        let (params, key) = bucket();
        let checks = [Check {
            key: &key,
            params: &params,
            cost: 1,
            enforced: true,
        }];
        let keys = vec!["rl:{l}:l".to_owned()];
        let cache = LocalCache::new(10);
        cache.remember(&keys, &checks, &[decision(true, None)], 0);
        assert!(cache.is_empty(), "allowed requests are not cached");
        cache.remember(&keys, &checks, &[decision(false, Some(500))], 100);
        let replay = cache
            .deny(&keys, &checks, 300)
            .expect("still denied at 300");
        assert_eq!(replay[0].retry_after, Some(300));
        assert_eq!(replay[0].reset_after, 800);
        assert!(
            cache.deny(&keys, &checks, 600).is_none(),
            "retry time reached"
        );
        // A different cost is a different request.
        let cheaper = [Check {
            cost: 2,
            ..checks[0]
        }];
        assert!(cache.deny(&keys, &cheaper, 300).is_none());
        assert_eq!(cache.sweep(600), 1);
    }

    #[test]
    fn shadow_denials_and_impossible_costs_are_not_cached() {
        let (params, key) = bucket();
        let shadow = [Check {
            key: &key,
            params: &params,
            cost: 1,
            enforced: false,
        }];
        let keys = vec!["k".to_owned()];
        let cache = LocalCache::new(10);
        cache.remember(&keys, &shadow, &[decision(false, Some(500))], 0);
        let too_big = Decision {
            denial: Some(Denial::CostExceedsLimit),
            retry_after: None,
            ..decision(false, None)
        };
        let enforced = [Check {
            enforced: true,
            ..shadow[0]
        }];
        cache.remember(&keys, &enforced, &[too_big], 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_keeps_its_bound() {
        let (params, key) = bucket();
        let checks = [Check {
            key: &key,
            params: &params,
            cost: 1,
            enforced: true,
        }];
        let cache = LocalCache::new(3);
        for i in 0..10 {
            cache.remember(
                &[format!("k{i}")],
                &checks,
                &[decision(false, Some(1_000))],
                0,
            );
        }
        assert_eq!(cache.len(), 3);
    }
}
