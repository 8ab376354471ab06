//! The local emergency limiter behind `degrade` routes.
//!
//! While the shared store is unreachable, a `degrade` request is checked against an
//! in-process [`MemoryStore`] with each limit cut to its emergency quota (see
//! `spillway_core::policy::Emergency`): same algorithm, same window, same counter keys, a
//! smaller amount. The state is thrown away when the store recovers, so the next outage starts
//! from full emergency quotas and the shared counters are the only truth again.

use parking_lot::RwLock;
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
    store: RwLock<Arc<MemoryStore>>,
    clock: Arc<dyn Clock>,
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
            store: RwLock::new(Arc::new(MemoryStore::new(MAX_KEYS, clock.clone()))),
            clock,
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
        let store = self.store.read().clone();
        judge(store.as_ref(), planned, Some(&params), mode).await
    }

    /// Forgets every emergency counter (the shared store is back).
    pub fn clear(&self) {
        let fresh = Arc::new(MemoryStore::new(MAX_KEYS, self.clock.clone()));
        *self.store.write() = fresh;
    }

    /// Drops expired emergency counters; returns how many.
    pub fn sweep(&self) -> u64 {
        self.store.read().sweep()
    }

    /// Emergency counters held now.
    pub fn key_count(&self) -> u64 {
        self.store.read().key_count()
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
    async fn quotas_shrink_and_reset_on_clear() {
        let policy = Policy::from_yaml_str(POLICY, "test").expect("valid");
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000_000));
        let limiter = EmergencyLimiter::new(clock, 3);
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
        limiter.clear();
        let (allowed, _) = limiter
            .check(&policy, &p, CheckMode::Consume)
            .await
            .expect("memory");
        assert!(allowed, "a cleared limiter starts from full quotas");
    }
}
