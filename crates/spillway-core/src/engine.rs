//! The decision engine: resolves a request against the current policy, evaluates every limit
//! that applies in one atomic store call, and returns an all-or-nothing [`Verdict`].
//!
//! The policy is published through `arc-swap`, so a reload swaps it without blocking checks
//! that are in flight; each check works on the one snapshot it loaded.

use crate::algorithm::{Decision, Denial, LimitParams};
use crate::policy::{FailureMode, LimitName, Planned, Policy, Resolved};
use crate::request::{CheckMode, RequestAttrs};
use crate::store::{admits, Check, ReportId, Store, StoreError};
use crate::time::{Clock, Micros};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One limit's part in a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOutcome {
    /// The limit's name, as written in the policy (with its quoted forms, shared with it).
    pub name: LimitName,
    /// What the limit decided.
    pub decision: Decision,
    /// Whether the limit is in shadow mode (evaluated and counted, never denying).
    pub shadow: bool,
    /// The limit's quota, for `RateLimit-Policy`'s `q`.
    pub quota: u64,
    /// The window the quota applies to, for `RateLimit-Policy`'s `w`.
    pub window: Micros,
}

/// The answer for one request across every limit that applied to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may proceed: no enforced limit denied it.
    pub allowed: bool,
    /// The tier the request was judged under.
    pub tier: Arc<str>,
    /// The matched route's name (its `METHOD /path` pattern), if any.
    pub route: Option<Arc<str>>,
    /// What to do for this request if the store is unavailable.
    pub failure_mode: FailureMode,
    /// The cost charged (or that would have been charged) against each limit.
    pub cost: u64,
    /// Every applied limit's outcome, in policy order (global, tier, route; then the limits
    /// of any further route an oddly spelled request matched), one per counter.
    pub outcomes: Vec<LimitOutcome>,
}

impl Verdict {
    /// The verdict on a request the policy resolved, given what its limits came to.
    pub fn of(resolved: &Resolved, allowed: bool, outcomes: Vec<LimitOutcome>) -> Self {
        Self {
            allowed,
            tier: resolved.tier.clone(),
            route: resolved.route.as_ref().map(|r| r.name.clone()),
            failure_mode: resolved.failure_mode,
            cost: resolved.cost,
            outcomes,
        }
    }

    /// The outcome that should speak for the request in headers: on a denial, the enforced
    /// limit that makes the client wait longest (a cost that can never fit counts as longest);
    /// otherwise the enforced limit with the least remaining (then the latest reset).
    pub fn governing(&self) -> Option<&LimitOutcome> {
        let enforced = self.outcomes.iter().filter(|o| !o.shadow);
        if self.allowed {
            enforced.min_by_key(|o| {
                (
                    o.decision.remaining,
                    std::cmp::Reverse(o.decision.reset_after),
                )
            })
        } else {
            enforced
                .filter(|o| !o.decision.allowed)
                .max_by_key(|o| match o.decision.denial {
                    Some(Denial::CostExceedsLimit) => Micros::MAX,
                    _ => o.decision.retry_after.unwrap_or(0),
                })
        }
    }
}

/// Evaluates `planned` in one atomic call to `store` and shapes the answer: whether the
/// request is admitted (no enforced limit denied it) and each limit's outcome, in order. Each
/// limit is judged by its own parameters, or by `scaled[i]` when given (the emergency quotas
/// replace the numbers, in the same order). Every path that decides (the engine, the Envoy
/// service, the local emergency store) goes through here, so they report alike.
pub async fn judge(
    store: &dyn Store,
    planned: &[Planned],
    scaled: Option<&[LimitParams]>,
    mode: CheckMode,
) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
    if planned.is_empty() {
        return Ok((true, Vec::new()));
    }
    debug_assert!(scaled.is_none_or(|s| s.len() == planned.len()));
    let params = |i: usize| scaled.map_or(&planned[i].def.params, |s| &s[i]);
    let checks: Vec<Check<'_>> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| Check {
            key: &p.key,
            params: params(i),
            cost: p.cost,
            enforced: !p.def.shadow,
            // A metered limit is planned at cost 0 and admits only with room for one unit.
            // (The emergency quotas plan it at cost 1 instead, which consumes as usual.)
            metered: p.def.metered && p.cost == 0,
        })
        .collect();
    let decisions = store.check(&checks, mode).await?;
    let allowed = admits(&checks, &decisions);
    let outcomes = planned
        .iter()
        .zip(&checks)
        .zip(decisions)
        .map(|((p, check), mut decision)| {
            // A denied request is charged nothing, but the limits that would have let it
            // through report what would remain after it. Every algorithm's remaining count
            // drops by exactly the cost on an admission, so adding it back gives the count that
            // really remains. (The reset time is left as computed, at most a little later
            // than the true one, but for a key nothing has used: a fresh key resets in 0.
            // Judged against the limit's own numbers: a scaled limit, a region's room, is
            // whole while its worldwide count is not.)
            if !allowed && decision.allowed {
                decision.remaining = decision
                    .remaining
                    .saturating_add(p.cost)
                    .min(decision.limit);
                if decision.remaining == p.def.params.quota() {
                    decision.reset_after = 0;
                }
            }
            LimitOutcome {
                name: p.def.name.clone(),
                decision,
                shadow: p.def.shadow,
                quota: check.params.quota(),
                window: check.params.window(),
            }
        })
        .collect();
    Ok((allowed, outcomes))
}

/// Checks requests against the current policy and a store.
pub struct Engine {
    policy: ArcSwap<Policy>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine serving `policy` over `store`. `clock` is the node's own clock, for the
    /// server's local concerns (stores keep their own notion of time).
    pub fn new(policy: Arc<Policy>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy: ArcSwap::new(policy),
            store,
            clock,
        }
    }

    /// The policy currently in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Publishes a new, already validated policy. Checks in flight finish on the old one.
    pub fn replace_policy(&self, policy: Arc<Policy>) {
        self.policy.store(policy);
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The node's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Decides `planned` in one atomic store call, so the all-or-nothing rule holds across
    /// them. Returns whether the request is admitted and each limit's outcome, in the order
    /// given. The policy resolves a request into its limits ([`Policy::resolve`]); the Envoy
    /// service plans them from descriptors, each with its own cost.
    pub async fn check_planned(
        &self,
        planned: &[Planned],
        mode: CheckMode,
    ) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
        judge(self.store.as_ref(), planned, None, mode).await
    }

    /// Records costs known only after the response: charges each of `planned` (the metered
    /// limits a report reaches, each with the reported cost) unconditionally, in one atomic
    /// store call, even past its limit. With a `request_id`, a retried report is recorded
    /// once ([`ReportId`], scoped to `tenant`, the tenant the report is charged to). Returns
    /// whether this call recorded anything (`false` for a retry) and each limit's standing
    /// afterwards, as the next admission sees it: allowed while at least one unit is free,
    /// else denied with the time until one is (any debt repaid first).
    ///
    /// A report whose every cost is 0 changes nothing: it is only looked at (no state written,
    /// no id remembered, no Redis marker), so zero-cost reports cannot fill a store's memory
    /// for free. It counts as recorded: there is nothing left that a retry could add.
    pub async fn charge_planned(
        &self,
        planned: &[Planned],
        request_id: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
        if planned.is_empty() {
            return Ok((false, Vec::new()));
        }
        // A report of nothing is only looked at, as the next admission will look: room for
        // one unit (a metered look).
        let nothing = planned.iter().all(|p| p.cost == 0);
        let checks: Vec<Check<'_>> = planned
            .iter()
            .map(|p| Check {
                key: &p.key,
                params: &p.def.params,
                cost: p.cost,
                enforced: !p.def.shadow,
                metered: nothing,
            })
            .collect();
        let charged = if nothing {
            let decisions = self.store.check(&checks, CheckMode::Peek).await?;
            crate::store::Charged {
                recorded: true,
                decisions,
            }
        } else {
            let report = request_id.map(|id| ReportId::of(tenant, id, &checks));
            self.store.charge(&checks, report).await?
        };
        let outcomes = planned
            .iter()
            .zip(charged.decisions)
            .map(|(p, decision)| LimitOutcome {
                name: p.def.name.clone(),
                decision,
                shadow: p.def.shadow,
                quota: p.def.params.quota(),
                window: p.def.params.window(),
            })
            .collect();
        Ok((charged.recorded, outcomes))
    }

    /// Decides one request. With [`CheckMode::Consume`] an admitted request is charged against
    /// every limit that applies; a denied one is charged nothing anywhere.
    pub async fn check(&self, req: &RequestAttrs, mode: CheckMode) -> Result<Verdict, StoreError> {
        let resolved = self.policy().resolve(req);
        let (allowed, outcomes) = self.check_planned(&resolved.limits, mode).await?;
        Ok(Verdict::of(&resolved, allowed, outcomes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::time::ManualClock;

    const POLICY: &str = "default_tier: t
limits:
  roomy: {algorithm: token_bucket, rate: 1/h, burst: 10, key: [user]}
  tight: {algorithm: fixed_window, limit: 2, window: 1h, key: [user]}
tiers:
  t: {limits: [roomy, tight]}
";

    #[tokio::test]
    async fn a_denied_request_reports_what_really_remains() {
        let policy = Arc::new(Policy::from_yaml_str(POLICY, "test.yaml").expect("valid"));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let store = Arc::new(MemoryStore::new(100, clock.clone()));
        let engine = Engine::new(policy, store, clock);
        let req = RequestAttrs {
            user: Some("u".into()),
            cost: Some(1),
            ..Default::default()
        };
        for _ in 0..2 {
            assert!(
                engine
                    .check(&req, CheckMode::Consume)
                    .await
                    .expect("store")
                    .allowed
            );
        }
        let denied = engine.check(&req, CheckMode::Consume).await.expect("store");
        assert!(!denied.allowed);
        // `roomy` would have allowed it, but nothing was charged: 8 remain, not 7.
        let roomy = &denied.outcomes[0];
        assert!(roomy.decision.allowed);
        assert_eq!(roomy.decision.remaining, 8);
        let look = RequestAttrs {
            cost: Some(0),
            ..req
        };
        let now = engine.check(&look, CheckMode::Peek).await.expect("store");
        assert_eq!(now.outcomes[0].decision.remaining, 8);
        // Another user's first request at a cost `tight` refuses: `roomy`, untouched, says
        // it is whole and resets in 0, not in the time the charge would have taken to refill.
        let big = RequestAttrs {
            user: Some("v".into()),
            cost: Some(3),
            ..Default::default()
        };
        let denied = engine.check(&big, CheckMode::Consume).await.expect("store");
        assert!(!denied.allowed);
        let roomy = denied.outcomes[0].decision;
        assert_eq!((roomy.remaining, roomy.reset_after), (10, 0));
    }

    const METERED: &str = "default_tier: t
limits:
  tokens: {algorithm: token_bucket, rate: 1000/h, burst: 1000, key: [tenant], charge: after}
tiers:
  t: {limits: [tokens]}
";

    fn metered() -> (Engine, Arc<MemoryStore>) {
        let policy = Arc::new(Policy::from_yaml_str(METERED, "test.yaml").expect("valid"));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let store = Arc::new(MemoryStore::new(1_000, clock.clone()));
        (Engine::new(policy, store.clone(), clock), store)
    }

    fn metered_for(engine: &Engine, tenant: &str, cost: u64) -> Vec<Planned> {
        let attrs = RequestAttrs {
            tenant: Some(tenant.into()),
            ..Default::default()
        };
        engine.policy().resolve(&attrs).metered(cost)
    }

    /// Issue 17's fairness case: tenant A sends 200,000 reports with fresh ids; tenant B's
    /// earlier report, retried afterwards, is still recognised (not charged twice, so A cannot
    /// spend B's budget), and the ids' memory stays bounded.
    #[tokio::test]
    async fn a_tenants_flood_of_fresh_ids_cannot_make_anothers_retry_count_twice() {
        let (engine, store) = metered();
        let b = metered_for(&engine, "b", 10);
        let (recorded, _) = engine
            .charge_planned(&b, Some("b-1"), Some("b"))
            .await
            .expect("store");
        assert!(recorded);
        let a = metered_for(&engine, "a", 1);
        for n in 0..200_000 {
            let id = format!("a-{n}");
            let (recorded, _) = engine
                .charge_planned(&a, Some(&id), Some("a"))
                .await
                .expect("store");
            assert!(recorded);
        }
        assert!(store.report_ids() <= crate::store::MAX_REPORTS);
        let (recorded, outcomes) = engine
            .charge_planned(&b, Some("b-1"), Some("b"))
            .await
            .expect("store");
        assert!(!recorded, "B's retry was charged again");
        assert_eq!(outcomes[0].decision.remaining, 990);
    }

    /// A report of cost 0 records nothing: no id remembered, no key written.
    #[tokio::test]
    async fn a_zero_cost_report_leaves_nothing_behind() {
        let (engine, store) = metered();
        let zero = metered_for(&engine, "z", 0);
        for n in 0..100 {
            let id = format!("z-{n}");
            let (recorded, outcomes) = engine
                .charge_planned(&zero, Some(&id), Some("z"))
                .await
                .expect("store");
            assert!(recorded);
            assert_eq!(outcomes[0].decision.remaining, 1000);
        }
        assert_eq!(store.report_ids(), 0);
        assert_eq!(store.key_count(), 0);
    }
}
