//! The decision engine: resolves a request against the current policy, evaluates every limit
//! that applies in one atomic store call, and returns an all-or-nothing [`Verdict`].
//!
//! The policy is published through `arc-swap`, so a reload swaps it without blocking checks
//! that are in flight; each check works on the one snapshot it loaded.

use crate::algorithm::{Decision, Denial};
use crate::key::StateKey;
use crate::policy::{FailureMode, LimitDef, Policy};
use crate::request::{CheckMode, RequestAttrs};
use crate::store::{admits, Check, Store, StoreError};
use crate::time::{Clock, Micros};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One limit's part in a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOutcome {
    /// The limit's name, as written in the policy.
    pub name: Arc<str>,
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
    /// Every applied limit's outcome, in policy order (global, tier, route).
    pub outcomes: Vec<LimitOutcome>,
}

impl Verdict {
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

    /// Shadow-mode limits that would have denied the request.
    pub fn shadow_denials(&self) -> impl Iterator<Item = &LimitOutcome> {
        self.outcomes
            .iter()
            .filter(|o| o.shadow && !o.decision.allowed)
    }
}

/// One limit of a request resolved outside the policy, for [`Engine::check_planned`].
#[derive(Debug, Clone)]
pub struct Planned {
    /// The limit.
    pub def: Arc<LimitDef>,
    /// Its counter for this request.
    pub key: StateKey,
    /// What this request costs against it.
    pub cost: u64,
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

    /// Decides a request whose limits the caller worked out itself (the Envoy service does,
    /// from descriptors), each with its own cost. All of them go to the store in one atomic
    /// call, so the all-or-nothing rule holds across them. Returns whether the request is
    /// admitted and each limit's outcome, in the order given.
    pub async fn check_planned(
        &self,
        planned: &[Planned],
        mode: CheckMode,
    ) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
        if planned.is_empty() {
            return Ok((true, Vec::new()));
        }
        let checks: Vec<Check<'_>> = planned
            .iter()
            .map(|p| Check {
                key: &p.key,
                params: &p.def.params,
                cost: p.cost,
                enforced: !p.def.shadow,
            })
            .collect();
        let decisions = self.store.check(&checks, mode).await?;
        let allowed = admits(&checks, &decisions);
        let outcomes = planned
            .iter()
            .zip(decisions)
            .map(|(p, decision)| LimitOutcome {
                name: p.def.name.clone(),
                decision,
                shadow: p.def.shadow,
                quota: p.def.params.quota(),
                window: p.def.params.window(),
            })
            .collect();
        Ok((allowed, outcomes))
    }

    /// Decides one request. With [`CheckMode::Consume`] an admitted request is charged against
    /// every limit that applies; a denied one is charged nothing anywhere.
    pub async fn check(&self, req: &RequestAttrs, mode: CheckMode) -> Result<Verdict, StoreError> {
        let policy = self.policy.load();
        let resolved = policy.resolve(req);
        let checks: Vec<Check<'_>> = resolved
            .limits
            .iter()
            .map(|(def, key)| Check {
                key,
                params: &def.params,
                cost: resolved.cost,
                enforced: !def.shadow,
            })
            .collect();
        let decisions = if checks.is_empty() {
            Vec::new()
        } else {
            self.store.check(&checks, mode).await?
        };
        let allowed = admits(&checks, &decisions);
        let outcomes = resolved
            .limits
            .iter()
            .zip(decisions)
            .map(|((def, _), decision)| LimitOutcome {
                name: def.name.clone(),
                decision,
                shadow: def.shadow,
                quota: def.params.quota(),
                window: def.params.window(),
            })
            .collect();
        Ok(Verdict {
            allowed,
            tier: resolved.tier.clone(),
            route: resolved.route.as_ref().map(|r| r.name.clone()),
            failure_mode: resolved.failure_mode,
            cost: resolved.cost,
            outcomes,
        })
    }
}
