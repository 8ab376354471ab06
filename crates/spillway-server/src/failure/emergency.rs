//! The local emergency limiter behind `degrade` routes.
//!
//! While the shared store is unreachable, a `degrade` request is checked against an
//! in-process [`MemoryStore`] with each limit cut to its emergency quota (see
//! `spillway_core::policy::Emergency`): same algorithm, same window, same counter keys, a
//! smaller amount. A metered limit (`charge: after`) costs 1 per admission here, since its
//! reports cannot be recorded during the outage.
//!
//! The state outlives the outage: when the store answers again the emergency counters are left
//! to expire with their own windows (swept every second), not dropped. A store that goes down
//! and up every few seconds would otherwise hand out a fresh emergency quota with every flap;
//! kept, what a key used in one outage still counts in the next within the same window. While
//! the store answers, nothing reads these counters.

use spillway_core::engine::{judge, LimitOutcome};
use spillway_core::policy::{emergency_params, Emergency, Planned, Policy};
use spillway_core::request::CheckMode;
use spillway_core::store::{MemoryStore, Store, StoreError};
use spillway_core::time::Clock;
use std::sync::Arc;

/// Most keys the emergency store holds; past it the in-memory store evicts (an outage with
/// more distinct clients than this degrades toward allowing the evicted ones).
pub const MAX_KEYS: usize = 100_000;

/// Per-node emergency quotas, in memory; see the module docs.
pub struct EmergencyLimiter {
    store: MemoryStore,
    expected_nodes: u64,
}

impl std::fmt::Debug for EmergencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmergencyLimiter")
            .field("expected_nodes", &self.expected_nodes)
            .finish_non_exhaustive()
    }
}

impl EmergencyLimiter {
    /// A limiter splitting quotas over `expected_nodes` (unless a limit sets its own),
    /// reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>, expected_nodes: u64) -> Self {
        Self {
            store: MemoryStore::new(MAX_KEYS, clock),
            expected_nodes: expected_nodes.max(1),
        }
    }

    /// Checks `planned` against the emergency quotas: whether the request is admitted, and
    /// each limit's outcome (reporting the emergency quota, which is what was enforced).
    pub async fn check(
        &self,
        policy: &Policy,
        planned: &[Planned],
        mode: CheckMode,
    ) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
        let params: Vec<_> = planned
            .iter()
            .map(|p| {
                let quota = p.def.params.quota();
                let small =
                    Emergency::quota(policy.emergency(&p.def.name), quota, self.expected_nodes);
                emergency_params(&p.def.params, small)
            })
            .collect();
        // A metered limit is planned at cost 0 (its cost is reported afterwards), and reports
        // cannot reach the shared store during the outage: each admission is charged 1
        // against the emergency quota instead, so a metered limit still caps the request
        // count rather than admitting without bound.
        let planned: Vec<Planned> = planned
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if p.def.metered {
                    p.cost = p.cost.max(1);
                }
                p
            })
            .collect();
        judge(&self.store, &planned, Some(&params), mode).await
    }

    /// Drops expired emergency counters; returns how many.
    pub fn sweep(&self) -> u64 {
        self.store.sweep()
    }

    /// Emergency counters held now.
    pub fn key_count(&self) -> u64 {
        self.store.key_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::request::RequestAttrs;
    use spillway_core::time::ManualClock;

    const POLICY: &str = r#"
default_tier: free
limits:
  split:
    algorithm: fixed_window
    limit: 30
    window: 1h
    key: [user]
  own:
    algorithm: token_bucket
    rate: 100/min
    key: [user]
    emergency: {limit: 2}
tiers:
  free:
    limits: [split, own]
"#;

    fn planned(policy: &Policy, user: &str) -> Vec<Planned> {
        let attrs = RequestAttrs {
            user: Some(user.into()),
            ..RequestAttrs::default()
        };
        // No cost in the attributes and no route: every limit costs 1.
        policy.resolve(&attrs).limits
    }

    #[tokio::test]
    async fn quotas_shrink_and_refill_only_with_their_windows() {
        let policy = Policy::from_yaml_str(POLICY, "test").expect("valid");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = EmergencyLimiter::new(clock.clone(), 3);
        let p = planned(&policy, "u");
        let mut admitted = 0;
        for _ in 0..5 {
            let (allowed, outcomes) = limiter
                .check(&policy, &p, CheckMode::Consume)
                .await
                .expect("memory");
            admitted += u32::from(allowed);
            assert_eq!(outcomes[0].quota, 10, "ceil(30 / 3)");
            assert_eq!(outcomes[1].quota, 2, "the limit's own emergency quota");
        }
        assert_eq!(admitted, 2);
        // `own` is cut to a bucket of 2 that refills in the same minute as the real one: one
        // token every 30 s. Nothing is forgotten before that, however the store behaves.
        clock.advance(29_999_999);
        let check = || limiter.check(&policy, &p, CheckMode::Consume);
        assert!(!check().await.expect("memory").0, "nothing refilled yet");
        clock.advance(1);
        assert!(check().await.expect("memory").0, "one token back");
        assert!(!check().await.expect("memory").0);
    }

    #[tokio::test]
    async fn a_metered_limit_counts_each_admission_against_its_emergency_quota() {
        let policy = Policy::from_yaml_str(
            "default_tier: t\nlimits:\n  tokens:\n    algorithm: token_bucket\n    \
             rate: 1000/h\n    key: [user]\n    charge: after\n    emergency: {limit: 3}\n\
             tiers:\n  t: {limits: [tokens]}\n",
            "test",
        )
        .expect("valid");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = EmergencyLimiter::new(clock, 1);
        let p = planned(&policy, "u");
        assert_eq!(p[0].cost, 0, "metered limits are planned at cost 0");
        let mut admitted = 0;
        for _ in 0..10 {
            let (allowed, _) = limiter
                .check(&policy, &p, CheckMode::Consume)
                .await
                .expect("memory");
            admitted += u32::from(allowed);
        }
        assert_eq!(admitted, 3, "one unit per admission of the emergency quota");
    }
}
