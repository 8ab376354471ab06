//! One request's limits when the policy has `home` or `aggregate` limits: each limit sent to
//! the store that counts it, all-or-nothing kept as far as two stores allow.
//!
//! - `regional` limits, and `home` limits of tenants at home here, go to the region's own
//!   store, as always.
//! - `home` limits of a tenant at home elsewhere go to that region's store (one round trip,
//!   under `store.exchange.home_timeout` and that region's own breaker). If it cannot answer,
//!   the route's failure mode decides those limits alone ([`FarFailure`]: `closed` refuses the
//!   request, `degrade` checks them against the emergency quotas, `open` lets them through
//!   uncounted); the request's other limits are counted as usual.
//! - `aggregate` limits go to the own store with their limit cut by what the other regions
//!   are known to have used (`Tally::others`), so the store admits while own + others + cost
//!   stay within the limit (with leases on and the counter past their threshold, also within
//!   the region's lease, `Tally::lease`); their answers report the whole limit again. With no
//!   room left at all, the request is denied without charging anything or asking another
//!   region. A denial that only the lease made (the worldwide remainder as last read still
//!   held the cost) carries a `Retry-After` of the time to the node's next exchange, which
//!   renews the lease, not the window's.
//!
//! A request whose limits span several stores is checked in this order: the own store looks
//! (no charge); if it would deny, the request is denied without asking another store; else
//! each far store charges in turn, and if they admitted, the own store charges, with the
//! `aggregate` limits' room worked out again (the far calls took time, and the exchange may
//! know more by then). If the own store fails at that charge, the failure mode decides its
//! limits within the decision, as it does a far store's. What a far store charged stays
//! charged when a later step denies or refuses the request (the own store's charge, a
//! `closed` far failure after it, an `aggregate` limit filled meanwhile): under-admission,
//! never over-admission.

use super::tally::{field, window_of, Place};
use super::RegionNode;
use crate::failure::{Failover, Fallback};
use spillway_core::algorithm::{Denial, LimitParams};
use spillway_core::engine::{judge, LimitOutcome};
use spillway_core::policy::{emergency_params, Dimension, FailureMode, Planned, Policy, Scope};
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_core::time::Micros;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What `check` found out about a request's limits before calling any store.
struct Routing {
    /// The region whose store counts each limit.
    target: Vec<usize>,
    /// Each limit's numbers as sent (an `aggregate` limit's cut to its room).
    params: Vec<LimitParams>,
    /// For `aggregate` limits, the counter's place in the exchange.
    places: Vec<Option<Place>>,
    /// Whether an enforced `aggregate` limit has no room left at all.
    exhausted: Vec<bool>,
    /// Whether an `aggregate` limit's room is its lease's, smaller than what the limit leaves,
    /// with one lease's share holding the cost: a denial is then the lease's, and room can
    /// return at the next exchange.
    leased: Vec<bool>,
    /// When the routing was worked out.
    now: Micros,
}

impl Routing {
    /// The limits' indices by the region whose store counts them.
    fn by_region(&self) -> BTreeMap<usize, Vec<usize>> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &r) in self.target.iter().enumerate() {
            groups.entry(r).or_default().push(i);
        }
        groups
    }
}

/// Where one [`RegionNode::check`] stands: each limit's outcome so far, whether the limits
/// decided so far admit the request, and what the failure mode answered for the limits of a
/// store that could not.
struct Progress {
    outcomes: Vec<Option<LimitOutcome>>,
    allowed: bool,
    fell_back: Option<FellBack>,
    /// Whether the failure mode decided each limit: its outcome is told as it said.
    by_failure_mode: Vec<bool>,
}

impl Progress {
    /// Nothing decided yet of `n` limits.
    fn new(n: usize) -> Self {
        Self {
            outcomes: vec![None; n],
            allowed: true,
            fell_back: None,
            by_failure_mode: vec![false; n],
        }
    }
}

/// A request decided across the regions' stores.
#[derive(Debug)]
pub struct Checked {
    /// Whether every enforced limit admitted the request.
    pub allowed: bool,
    /// Each limit's outcome, in the order planned.
    pub outcomes: Vec<LimitOutcome>,
    /// `Some` when a store could not answer (a far region's, or the own store at its charge
    /// after the far calls) and the request's failure mode decided its limits; the request's
    /// other limits were counted as usual.
    pub fell_back: Option<FellBack>,
}

impl Checked {
    fn new(allowed: bool, outcomes: Vec<LimitOutcome>) -> Self {
        Self {
            allowed,
            outcomes,
            fell_back: None,
        }
    }
}

/// How the failure mode answered for the limits a store could not count (see
/// [`Checked::fell_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FellBack {
    /// The mode that answered: `open` (the limits not counted, told as shadow limits with
    /// their whole quota; also a `degrade` whose emergency store failed) or `degrade` (their
    /// emergency quotas).
    pub mode: FailureMode,
    /// Whether those limits admitted the request.
    pub allowed: bool,
}

impl FellBack {
    /// The answer as a failover's, for traces (without the outcomes, which the verdict has).
    pub fn as_fallback(self) -> Fallback {
        match self.mode {
            FailureMode::Degrade => Fallback::Degraded {
                allowed: self.allowed,
                outcomes: Vec::new(),
            },
            _ => Fallback::Open,
        }
    }

    /// This answer, and `then` for more of the same request's limits.
    fn and(self, then: FellBack) -> FellBack {
        FellBack {
            allowed: self.allowed && then.allowed,
            ..self
        }
    }
}

/// What decides the limits whose store could not answer within [`RegionNode::check`] (a far
/// region's, or the own store at its charge): the request's failure mode, through the
/// node's own failure handling (its emergency quotas, its degraded-decision counts and logs).
#[derive(Debug, Clone, Copy)]
pub struct FarFailure<'a> {
    /// The request's failure mode.
    pub mode: FailureMode,
    /// The node's failure handling.
    pub failover: &'a Failover,
    /// The route (or Envoy domain) degraded decisions are counted under.
    pub label: Option<&'a str>,
}

impl FarFailure<'_> {
    /// Decides the limits `idx` of `planned` that a store failing with `err` did not count,
    /// into `progress`. Under `closed` it is the request's failure: `err` is returned (the
    /// caller refuses the whole request). Under `open` they are not counted; under `degrade`,
    /// the emergency quotas decide them. The decision is counted and logged as degraded once,
    /// with the first such store of a request.
    async fn decide(
        &self,
        policy: &Policy,
        planned: &[Planned],
        idx: &[usize],
        mode: CheckMode,
        err: StoreError,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        // A full queue is this node overloaded: an `open` route degrades instead.
        let failure_mode = crate::decision::failure_mode_for(self.mode, &err);
        if failure_mode == FailureMode::Closed {
            return Err(err);
        }
        let sub: Vec<Planned> = idx.iter().map(|&i| planned[i].clone()).collect();
        let fallback = match progress.fell_back {
            None => {
                let route = self.label;
                (self
                    .failover
                    .fallback(policy, failure_mode, route, &sub, mode, &err))
                .await
            }
            Some(_) => self.failover.answer(policy, failure_mode, &sub, mode).await,
        };
        let (how, got) = match fallback {
            Fallback::Closed { .. } => return Err(err),
            Fallback::Open => {
                let how = FellBack {
                    mode: FailureMode::Open,
                    allowed: true,
                };
                (how, sub.iter().map(uncounted).collect())
            }
            Fallback::Degraded { allowed, outcomes } => {
                let how = FellBack {
                    mode: FailureMode::Degrade,
                    allowed,
                };
                (how, outcomes)
            }
        };
        for (&i, outcome) in idx.iter().zip(got) {
            progress.outcomes[i] = Some(outcome);
            progress.by_failure_mode[i] = true;
        }
        progress.allowed &= how.allowed;
        progress.fell_back = Some(progress.fell_back.map_or(how, |before| before.and(how)));
        Ok(())
    }
}

impl RegionNode {
    /// Decides `planned` across the regions' stores; see the module docs. `own` is the region's
    /// own store (the engine's, behind its guard). A far region's store that cannot answer
    /// leaves its limits to `far`, and so does the own store failing at its charge after the
    /// far calls; the own store failing at its first look (before any far call) is the
    /// caller's to handle, as a failure of the whole request.
    pub async fn check(
        &self,
        policy: &Policy,
        own: &dyn Store,
        planned: &[Planned],
        mode: CheckMode,
        far: &FarFailure<'_>,
    ) -> Result<Checked, StoreError> {
        let mut routing = self.route(policy, planned);
        let mut groups = routing.by_region();
        let local = groups.remove(&self.own).unwrap_or_default();
        if routing.exhausted.iter().any(|&e| e) {
            let outcomes = self.exhausted(own, planned, &routing, &local).await;
            return Ok(Checked::new(false, outcomes));
        }
        let mut progress = Progress::new(planned.len());
        let so_far = &mut progress;
        if groups.is_empty() {
            // The own store decides alone: one atomic call, as without regions.
            let idx = &local;
            so_far.allowed &=
                (self.call(self.own, own, planned, &routing, idx, mode, so_far)).await?;
        } else {
            // Look first where it is cheap, charge the far stores, then the near one.
            if !local.is_empty() {
                let (idx, peek) = (&local, CheckMode::Peek);
                so_far.allowed &=
                    (self.call(self.own, own, planned, &routing, idx, peek, so_far)).await?;
            }
            for (region, idx) in &groups {
                if !so_far.allowed {
                    // Denied already: the far store is not asked (no round trip, and its
                    // failure cannot turn this denial into a failure-mode admission).
                    for &i in idx {
                        so_far.outcomes[i] = Some(not_asked(&planned[i]));
                    }
                    continue;
                }
                match (self.call(*region, own, planned, &routing, idx, mode, so_far)).await {
                    Ok(admitted) => so_far.allowed &= admitted,
                    Err(err) => far.decide(policy, planned, idx, mode, err, so_far).await?,
                }
            }
            if so_far.allowed
                && mode == CheckMode::Consume
                && self.reroute_aggregates(&mut routing, planned, &local)
            {
                // The others used up an `aggregate` limit while the far store answered: denied
                // (what the far store charged is lost: under-admission).
                so_far.allowed = false;
            }
            if so_far.allowed && mode == CheckMode::Consume && !local.is_empty() {
                let idx = &local;
                match (self.call(self.own, own, planned, &routing, idx, mode, so_far)).await {
                    Ok(admitted) => so_far.allowed &= admitted,
                    // The far stores have decided (charged, or a failure mode for them): the
                    // own store's limits alone go to the failure mode, within this decision,
                    // so the far limits are not charged a second time by a fallback of the
                    // whole request (nor its failure counted twice). Cut to the region's room
                    // where emergency quotas decide; an uncounted limit (`open`) is told with
                    // its whole quota.
                    Err(err) => {
                        let failure_mode = crate::decision::failure_mode_for(far.mode, &err);
                        let limits = match failure_mode {
                            FailureMode::Degrade => self.for_failover(planned),
                            _ => Cow::Borrowed(planned),
                        };
                        far.decide(policy, &limits, idx, mode, err, so_far).await?;
                    }
                }
            }
        }
        let Progress {
            outcomes,
            allowed,
            fell_back,
            by_failure_mode,
        } = progress;
        let outcomes = self.settle(&routing, planned, outcomes, &by_failure_mode);
        if allowed && mode == CheckMode::Consume {
            for (i, place) in routing.places.into_iter().enumerate() {
                let charged = outcomes[i].decision.allowed && planned[i].cost > 0;
                if let Some(place) = place.filter(|_| charged) {
                    self.tally.add(place, planned[i].cost);
                }
            }
        }
        Ok(Checked {
            allowed,
            outcomes,
            fell_back,
        })
    }

    /// [`RegionNode::check`] for a route that fails `closed` (a far store's failure is the
    /// request's error), answering whether it was admitted and each limit's outcome.
    #[cfg(test)]
    pub(crate) async fn check_failing_closed(
        &self,
        policy: &Policy,
        own: &dyn Store,
        planned: &[Planned],
        mode: CheckMode,
    ) -> Result<(bool, Vec<LimitOutcome>), StoreError> {
        let failover = Failover::new(Default::default(), self.clock.clone());
        let far = FarFailure {
            mode: FailureMode::Closed,
            failover: &failover,
            label: None,
        };
        let checked = self.check(policy, own, planned, mode, &far).await?;
        Ok((checked.allowed, checked.outcomes))
    }

    /// The answer when an `aggregate` limit has no room left: the request is denied already.
    /// The own store only looks, for the answer's numbers, and no other region's store is
    /// asked. If the own store cannot answer, its limits are told as not asked: the denial
    /// stands (a failure here must not turn it into the route's failure mode, which could
    /// admit).
    async fn exhausted(
        &self,
        own: &dyn Store,
        planned: &[Planned],
        routing: &Routing,
        local: &[usize],
    ) -> Vec<LimitOutcome> {
        let mut looking = Progress::new(planned.len());
        if !local.is_empty() {
            let peek = CheckMode::Peek;
            let looked = self.call(self.own, own, planned, routing, local, peek, &mut looking);
            if let Err(err) = looked.await {
                tracing::debug!(error = %err, "an exhausted aggregate limit denies without the own store's numbers");
            }
        }
        // A limit the own store did not answer for is told as not asked; `settle` tells an
        // exhausted one as full until its window ends, as the store would have.
        let mut outcomes = looking.outcomes;
        for (outcome, p) in outcomes.iter_mut().zip(planned) {
            outcome.get_or_insert_with(|| not_asked(p));
        }
        self.settle(routing, planned, outcomes, &[])
    }

    /// What a decision here would see of each of `planned`'s limits, read without consuming
    /// anything (the dashboard's lookup): each limit in the store that counts it (a `home`
    /// limit in its tenant's home region, one call there), an `aggregate` limit against the
    /// room the other regions leave (and its lease), answered in the limit's own numbers with
    /// the worldwide remainder. Unlike [`RegionNode::check`], every store is read even when
    /// one limit would deny.
    pub async fn standing(
        &self,
        policy: &Policy,
        own: &dyn Store,
        planned: &[Planned],
    ) -> Result<Vec<LimitOutcome>, StoreError> {
        let routing = self.route(policy, planned);
        let groups = routing.by_region();
        let mut read = Progress::new(planned.len());
        for (region, idx) in &groups {
            let peek = CheckMode::Peek;
            self.call(*region, own, planned, &routing, idx, peek, &mut read)
                .await?;
        }
        Ok(self.settle(&routing, planned, read.outcomes, &[]))
    }

    /// `planned` as a failure mode is to count it while this region's own store cannot answer:
    /// each `aggregate` limit cut to what the region may still admit of it
    /// ([`super::tally::Tally::failover_room`]: the room the others leave, at most its share),
    /// so the emergency quotas, a part of that per node, do not hand out the whole limit again
    /// on top of what the other regions count. Other limits as they are.
    ///
    /// Borrowed when no limit is cut: a request without `aggregate` limits, or with room for
    /// their whole quotas, clones nothing.
    pub fn for_failover<'p>(&self, planned: &'p [Planned]) -> Cow<'p, [Planned]> {
        let now = self.clock.now();
        let cut = |p: &Planned| {
            if p.def.scope != Scope::Aggregate {
                return None;
            }
            window_of(&p.def.params, now)?;
            let limit = p.def.params.quota();
            let room = (self.tally).failover_room(&p.def.params, &field(&p.key), now);
            (room < limit).then(|| {
                let mut def = (*p.def).clone();
                def.params = emergency_params(&p.def.params, room.max(1));
                Planned {
                    def: Arc::new(def),
                    ..p.clone()
                }
            })
        };
        let first = (planned.iter().enumerate()).find_map(|(i, p)| Some((i, cut(p)?)));
        let Some((first, first_cut)) = first else {
            return Cow::Borrowed(planned);
        };
        let mut limits = Vec::with_capacity(planned.len());
        limits.extend_from_slice(&planned[..first]);
        limits.push(first_cut);
        let rest = planned[first + 1..].iter();
        limits.extend(rest.map(|p| cut(p).unwrap_or_else(|| p.clone())));
        Cow::Owned(limits)
    }

    /// Adds a request a failure mode admitted without the own store to what this node
    /// publishes of its `aggregate` limits, as [`RegionNode::check`] adds what it admits:
    /// each limit whose outcome (in `outcomes`, as the failure mode told them; empty when it
    /// let the request through unchecked) allowed it.
    pub fn count_admitted(&self, planned: &[Planned], outcomes: &[LimitOutcome]) {
        let now = self.clock.now();
        for (i, p) in planned.iter().enumerate() {
            let allowed = outcomes.get(i).is_none_or(|o| o.decision.allowed);
            if p.def.scope != Scope::Aggregate || p.cost == 0 || !allowed {
                continue;
            }
            if let Some((len, start)) = window_of(&p.def.params, now) {
                self.tally.add((len, start, field(&p.key)), p.cost);
            }
        }
    }

    /// The region whose store counts `p` for a request of this node: the tenant's home for a
    /// `home` limit, else this node's own (an `aggregate` limit is counted in every region,
    /// each its own traffic).
    pub fn counted_in(&self, policy: &Policy, p: &Planned) -> &Arc<str> {
        let region = match (p.def.scope, tenant_of(p)) {
            (Scope::Home, Some(tenant)) => self.home_of(policy, tenant),
            _ => self.own,
        };
        &self.regions.names()[region]
    }

    /// Each limit's outcome as answered: an `aggregate` limit's in its own numbers, denied
    /// when it had no room at all, and a lease's denial told to come back at the next
    /// exchange.
    fn settle(
        &self,
        routing: &Routing,
        planned: &[Planned],
        outcomes: Vec<Option<LimitOutcome>>,
        by_failure_mode: &[bool],
    ) -> Vec<LimitOutcome> {
        let mut outcomes: Vec<LimitOutcome> = outcomes.into_iter().flatten().collect();
        debug_assert_eq!(outcomes.len(), planned.len());
        for (i, outcome) in outcomes.iter_mut().enumerate() {
            let p = &planned[i];
            if by_failure_mode.get(i).copied().unwrap_or(false) {
                // The emergency quota's numbers (or an uncounted limit's), not the exchange's.
                continue;
            }
            if routing.places[i].is_some() {
                restore_numbers(outcome, &p.def.params, p.cost, routing.now);
            }
            if routing.exhausted[i] {
                let d = &mut outcome.decision;
                d.allowed = false;
                d.remaining = 0;
                d.denial = Some(Denial::OverLimit);
                // Full until the window ends (a window that rolled over since the own store
                // looked has its own end).
                d.reset_after = d.reset_after.max(window_end(&p.def.params, routing.now));
                d.retry_after = Some(d.reset_after.max(1));
            } else if routing.leased[i] && outcome.decision.denial == Some(Denial::OverLimit) {
                // The lease denied, not the limit: the next exchange renews it.
                let renewal = self.tally.lease_renewal_in(routing.now);
                let d = &mut outcome.decision;
                d.retry_after = d.retry_after.map(|r| r.min(renewal));
            }
        }
        outcomes
    }

    /// Where each limit is counted and with what numbers.
    fn route(&self, policy: &Policy, planned: &[Planned]) -> Routing {
        let now = self.clock.now();
        let mut routing = Routing {
            target: vec![self.own; planned.len()],
            params: planned.iter().map(|p| p.def.params.clone()).collect(),
            places: vec![None; planned.len()],
            exhausted: vec![false; planned.len()],
            leased: vec![false; planned.len()],
            now,
        };
        for (i, p) in planned.iter().enumerate() {
            match p.def.scope {
                Scope::Regional => {}
                Scope::Home => {
                    if let Some(tenant) = tenant_of(p) {
                        routing.target[i] = self.home_of(policy, tenant);
                    }
                }
                Scope::Aggregate => self.route_aggregate(&mut routing, i, p, now),
            }
        }
        routing
    }

    /// Works out `aggregate` limit `i` (`p`) at `now`: its place in the exchange, the room the
    /// other regions leave it (and its lease), as the numbers sent to the store.
    fn route_aggregate(&self, routing: &mut Routing, i: usize, p: &Planned, now: Micros) {
        let Some((len, start)) = window_of(&p.def.params, now) else {
            return;
        };
        let place = field(&p.key);
        let limit = p.def.params.quota();
        let others = self.tally.others(&p.def.params, &place, now);
        let mut room = limit.saturating_sub(others);
        routing.leased[i] = false;
        if let Some(lease) = self.tally.lease(&p.def.params, &place, now, others) {
            // A denial is the lease's alone (and a renewal may admit it) only where one
            // lease's share could hold the cost (the share never exceeds the limit's
            // remainder); a larger cost waits for the window like any denial.
            routing.leased[i] = lease.ceiling < room && p.cost <= lease.share;
            room = room.min(lease.ceiling);
        }
        routing.params[i] = if room < limit {
            emergency_params(&p.def.params, room.max(1))
        } else {
            p.def.params.clone()
        };
        routing.exhausted[i] = room == 0 && !p.def.shadow;
        routing.places[i] = Some((len, start, place));
    }

    /// The room of the `aggregate` limits among `idx`, worked out again now: after a far call
    /// (up to `home_timeout`), the exchange may know more than when the request was routed.
    /// Returns whether one of them has no room left.
    fn reroute_aggregates(
        &self,
        routing: &mut Routing,
        planned: &[Planned],
        idx: &[usize],
    ) -> bool {
        let now = self.clock.now();
        let mut any = false;
        for &i in idx {
            if routing.places[i].is_some() {
                self.route_aggregate(routing, i, &planned[i], now);
                any = true;
            }
        }
        if any {
            routing.now = now;
        }
        idx.iter().any(|&i| routing.exhausted[i])
    }

    /// Checks the limits `idx` in region `region`'s store, filling their outcomes; returns
    /// whether they admit the request.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        region: usize,
        own: &dyn Store,
        planned: &[Planned],
        routing: &Routing,
        idx: &[usize],
        mode: CheckMode,
        progress: &mut Progress,
    ) -> Result<bool, StoreError> {
        let sub: Vec<Planned> = idx.iter().map(|&i| planned[i].clone()).collect();
        let params: Vec<LimitParams> = idx.iter().map(|&i| routing.params[i].clone()).collect();
        let store: &dyn Store = match &self.stores[region] {
            Some(remote) if region != self.own => remote.as_ref(),
            _ => own,
        };
        let result = judge(store, &sub, Some(&params), mode).await;
        if region != self.own {
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            let name = self.regions.names()[region].to_string();
            metrics::counter!(super::metrics::HOME_CALLS, "region" => name, "outcome" => outcome)
                .increment(1);
        }
        let (allowed, got) = result?;
        for (&i, outcome) in idx.iter().zip(got) {
            progress.outcomes[i] = Some(outcome);
        }
        Ok(allowed)
    }
}

/// The outcome of a limit whose store was not asked because another limit denied the request
/// first: not charged, reported as allowing with its whole quota (the denying limit is the one
/// the answer names).
fn not_asked(p: &Planned) -> LimitOutcome {
    let quota = p.def.params.quota();
    LimitOutcome {
        name: p.def.name.clone(),
        decision: spillway_core::algorithm::Decision {
            allowed: true,
            limit: quota,
            remaining: quota,
            reset_after: 0,
            retry_after: None,
            denial: None,
        },
        shadow: p.def.shadow,
        quota,
        window: p.def.params.window(),
    }
}

/// The outcome of a limit an `open` failure mode let through uncounted: told as a shadow limit
/// (never the one the answer names, nor a denial) with its whole quota.
fn uncounted(p: &Planned) -> LimitOutcome {
    LimitOutcome {
        shadow: true,
        ..not_asked(p)
    }
}

/// The request's tenant, from a limit keyed by it.
fn tenant_of(p: &Planned) -> Option<&str> {
    let at = p.def.key.iter().position(|d| *d == Dimension::Tenant)?;
    p.key.values.get(at).map(|v| v.as_str())
}

/// An `aggregate` limit's answer in the limit's own numbers: the store judged it against the
/// room the other regions left, so its `remaining` is already the worldwide one; the quota
/// and limit are the policy's, and a cost refused as larger than the room is over the limit
/// for now, not forever: until the window ends (an untouched own counter has no reset of
/// its own, while the others' counts last the window).
fn restore_numbers(outcome: &mut LimitOutcome, params: &LimitParams, cost: u64, now: Micros) {
    outcome.quota = params.quota();
    outcome.decision.limit = params.quota();
    if outcome.decision.denial == Some(Denial::CostExceedsLimit) && cost <= params.quota() {
        let d = &mut outcome.decision;
        d.denial = Some(Denial::OverLimit);
        d.retry_after = Some(d.reset_after.max(window_end(params, now)).max(1));
    }
}

/// The time from `now` to the end of `params`' current window (0 for a limit without one).
fn window_end(params: &LimitParams, now: Micros) -> Micros {
    window_of(params, now).map_or(0, |(len, start)| start + len - now)
}

#[cfg(test)]
mod tests {
    use super::super::simulation;
    use super::super::tally::Known;
    use super::*;
    use crate::clock::ServerClock;
    use crate::test_support::FailingStore;
    use spillway_core::store::MemoryStore;
    use std::sync::Arc;

    /// The policy's exchange interval (`simulation::policy`'s).
    const INTERVAL: Micros = simulation::PERIOD_MS * 1000;

    /// Region `us` of three, whose `aggregate` limit `soft` (90 an hour per tenant) leases past
    /// half of it; the other regions' stores are never called. Returns the policy, the node,
    /// its clock (a minute into the hour), its own (in-memory) store and tenant `acme`'s
    /// planned limit.
    fn world() -> (Policy, Arc<RegionNode>, ServerClock, MemoryStore, Planned) {
        let policy = simulation::policy(Some(0.5));
        let clock = simulation::clock();
        let (node, own) = simulation::node(&policy, "us", &clock);
        let planned = simulation::planned(&policy);
        (policy, node, clock, own, planned)
    }

    /// An exchange of this node at the clock's time that read `[us, eu, ap]` for `planned`'s
    /// counter.
    fn exchange(node: &RegionNode, clock: &ServerClock, planned: &Planned, counts: [u64; 3]) {
        let now = clock.now();
        let known = Known::one(planned, now, &counts);
        node.tally.publish_known(known, &[0, 1, 2], now);
    }

    /// Checks `planned` once, charging; returns whether it was admitted and its decision.
    async fn ask(
        node: &RegionNode,
        policy: &Policy,
        own: &MemoryStore,
        planned: &Planned,
    ) -> (bool, spillway_core::algorithm::Decision) {
        let (allowed, outcomes) = node
            .check_failing_closed(
                policy,
                own,
                std::slice::from_ref(planned),
                CheckMode::Consume,
            )
            .await
            .expect("the own store answers");
        (allowed, outcomes[0].decision)
    }

    #[tokio::test]
    async fn a_lease_denial_is_told_to_come_back_at_the_next_exchange() {
        let (policy, node, clock, own, planned) = world();
        // 60 of 90 used worldwide as last read, none of it here: the lease is
        // 0 + ceil(30 / 3) = 10, where the limit would leave 30.
        exchange(&node, &clock, &planned, [0, 30, 30]);
        for _ in 0..10 {
            assert!(ask(&node, &policy, &own, &planned).await.0);
        }
        let manual = clock.manual_control().expect("a manual clock");
        manual.advance(100_000);
        let (allowed, d) = ask(&node, &policy, &own, &planned).await;
        assert!(!allowed, "the lease is used up");
        assert_eq!(d.denial, Some(Denial::OverLimit));
        // The window still has about 59 minutes; the lease is renewed in 150 ms.
        assert!(d.reset_after > 3_000_000_000, "{d:?}");
        assert_eq!(d.retry_after, Some(INTERVAL - 100_000), "{d:?}");
        // And it is: the next exchange brings this region's 10 back published, 20 remain,
        // and the new lease (10 + 7) admits again.
        manual.advance(150_000);
        exchange(&node, &clock, &planned, [10, 30, 30]);
        assert!(ask(&node, &policy, &own, &planned).await.0);
    }

    /// While the own store is down, an `aggregate` limit's emergency quota is cut to the room
    /// the region has left (here min(90 - 70, 90 / 3) = 20); a request with no `aggregate`
    /// limit is handed over as it is, nothing cloned.
    #[test]
    fn failover_cuts_aggregate_limits_only() {
        let (_policy, node, clock, _own, planned) = world();
        exchange(&node, &clock, &planned, [0, 50, 20]);
        let mut regional = planned.clone();
        regional.def = Arc::new(spillway_core::policy::LimitDef {
            scope: Scope::Regional,
            ..(*planned.def).clone()
        });
        let both = [regional.clone(), planned.clone()];
        let cut = node.for_failover(&both);
        assert!(matches!(cut, Cow::Owned(_)));
        assert!(Arc::ptr_eq(&cut[0].def, &regional.def), "kept as it was");
        assert_eq!(cut[1].def.params.quota(), 20);
        assert_eq!(
            planned.def.params.quota(),
            90,
            "the policy's own is untouched"
        );
        let alone = [regional];
        assert!(matches!(node.for_failover(&alone), Cow::Borrowed(_)));
    }

    /// An `aggregate` limit the other regions have filled denies even when the own store
    /// cannot be read: the store's failure used to reach the route's failure mode, which
    /// under `open` or `degrade` could admit what the limit had already denied.
    #[tokio::test]
    async fn an_exhausted_aggregate_limit_denies_while_the_own_store_is_down() {
        let (policy, node, clock, _own, planned) = world();
        exchange(&node, &clock, &planned, [0, 50, 40]);
        let one = std::slice::from_ref(&planned);
        let (allowed, outcomes) = node
            .check_failing_closed(&policy, &FailingStore::down(), one, CheckMode::Consume)
            .await
            .expect("a denial, not a store failure");
        assert!(!allowed);
        let d = outcomes[0].decision;
        assert_eq!((d.allowed, d.denial), (false, Some(Denial::OverLimit)));
        // Told to come back when the window ends, as with the store's numbers.
        assert!(d.retry_after.is_some_and(|r| r > 3_000_000_000), "{d:?}");
    }

    #[tokio::test]
    async fn a_denial_by_the_limit_itself_keeps_the_windows_retry_after() {
        // The others alone fill the limit: no room at all.
        let (policy, node, clock, own, planned) = world();
        exchange(&node, &clock, &planned, [0, 50, 40]);
        let (allowed, d) = ask(&node, &policy, &own, &planned).await;
        assert!(!allowed);
        assert_eq!(d.retry_after, Some(d.reset_after), "{d:?}");
        assert!(d.reset_after > 3_000_000_000, "{d:?}");

        // One unit left worldwide: the lease (1) is no smaller than what the limit leaves, so
        // the denial after it is the limit's.
        let (policy, node, clock, own, planned) = world();
        exchange(&node, &clock, &planned, [0, 45, 44]);
        assert!(ask(&node, &policy, &own, &planned).await.0);
        let (allowed, d) = ask(&node, &policy, &own, &planned).await;
        assert!(!allowed);
        assert_eq!(d.retry_after, Some(d.reset_after), "{d:?}");

        // The lease (2) is smaller than what the limit leaves (4), but a cost of 5 does not
        // fit in the remainder: no exchange this window can admit it.
        let (policy, node, clock, own, planned) = world();
        exchange(&node, &clock, &planned, [0, 43, 43]);
        let costly = Planned { cost: 5, ..planned };
        let (allowed, d) = ask(&node, &policy, &own, &costly).await;
        assert!(!allowed);
        assert_eq!(d.denial, Some(Denial::OverLimit));
        assert!(d.retry_after.is_some_and(|r| r > 3_000_000_000), "{d:?}");

        // 30 left, a lease of 10 per region: a cost of 15 fits the limit but no lease, so no
        // renewal admits it while the counts stand; told to wait for the window, not to poll
        // every exchange.
        let (policy, node, clock, own, planned) = world();
        exchange(&node, &clock, &planned, [0, 30, 30]);
        let costly = Planned {
            cost: 15,
            ..planned
        };
        let (allowed, d) = ask(&node, &policy, &own, &costly).await;
        assert!(!allowed);
        assert_eq!(d.denial, Some(Denial::OverLimit));
        assert!(d.retry_after.is_some_and(|r| r > 3_000_000_000), "{d:?}");
    }

    /// The own store as seen between its look and its charge when it fails then: it answers
    /// looks (`Peek`) from `MemoryStore` and fails every charge.
    struct FailsCharges(MemoryStore);

    #[async_trait::async_trait]
    impl Store for FailsCharges {
        async fn check(
            &self,
            checks: &[spillway_core::store::Check<'_>],
            mode: CheckMode,
        ) -> Result<Vec<spillway_core::algorithm::Decision>, StoreError> {
            match mode {
                CheckMode::Peek => self.0.check(checks, mode).await,
                CheckMode::Consume => Err(StoreError::Unavailable("connection reset".into())),
            }
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn key_count(&self) -> u64 {
            0
        }
        fn evictions(&self) -> u64 {
            0
        }
        fn sweep(&self) -> u64 {
            0
        }
    }

    /// Regions `us` (this node), `eu` on a port nothing listens on and `ap` at `ap_url`;
    /// limits `exact` (`home`, 6 an hour per tenant) and `near` (regional, 4 an hour per
    /// tenant), and on `POST /soft` also `soft` (`aggregate`, 90 an hour per tenant); `acme`
    /// at home in eu, `globex` in ap. The policy, the node and its clock.
    fn far_world(ap_url: &str) -> (Policy, Arc<RegionNode>, ServerClock) {
        use spillway_testkit::policy::{regions_store, unreachable};
        // A roomy home budget: `ap` connects on its first call (a real Redis on a busy machine).
        let regions = [
            ("us", unreachable(1)),
            ("eu", unreachable(2)),
            ("ap", ap_url.into()),
        ];
        let regions = regions.each_ref().map(|(name, url)| (*name, url.as_str()));
        let store = regions_store(&regions, &["exchange: {home_timeout: 5s}"]);
        let policy = crate::config::PolicySource::Builtin
            .parse(&format!(
                "default_tier: t
{store}limits:
  exact: {{algorithm: token_bucket, rate: 6/h, burst: 6, key: [tenant], scope: home}}
  near: {{algorithm: fixed_window, limit: 4, window: 1h, key: [tenant]}}
  soft: {{algorithm: fixed_window, limit: 90, window: 1h, key: [tenant], scope: aggregate}}
tiers:
  t: {{limits: [exact, near]}}
routes:
  - {{match: \"POST /soft\", limits: [soft]}}
tenants:
  acme: {{home_region: eu}}
  globex: {{home_region: ap}}
"
            ))
            .expect("valid policy");
        let clock = ServerClock::manual(crate::test_support::TEST_START_MS);
        let failure = crate::failure::FailureSettings::default();
        let node = RegionNode::new(&policy, Some("us"), &failure, clock.shared())
            .expect("a node")
            .expect("three regions");
        (policy, node, clock)
    }

    /// `tenant`'s planned limits.
    fn planned_for(policy: &Policy, tenant: &str) -> Vec<Planned> {
        let attrs = spillway_core::request::RequestAttrs {
            tenant: Some(tenant.into()),
            ..Default::default()
        };
        policy.resolve(&attrs).limits
    }

    /// A route failing to `degrade` (counted as route `r`), answered through `failover`.
    fn degrading(failover: &Failover) -> FarFailure<'_> {
        FarFailure {
            mode: FailureMode::Degrade,
            failover,
            label: Some("r"),
        }
    }

    /// Whether `checked` admitted, the failure mode that answered for a far region, and each
    /// limit's quota and remaining.
    fn summary(checked: &Checked) -> (bool, Option<FailureMode>, Vec<(u64, u64)>) {
        let told = (checked.outcomes.iter())
            .map(|o| (o.quota, o.decision.remaining))
            .collect();
        (checked.allowed, checked.fell_back.map(|f| f.mode), told)
    }

    /// The own store failing on its charge, after the home region's failure was decided by
    /// `degrade`: its limits are decided alike (the emergency quotas), within the same
    /// decision, counted as one degraded decision, and the home limits are charged once (a
    /// fallback of the whole request charged them a second time: 6 / 3 = 2 emergency units
    /// then lasted one request, not two).
    #[tokio::test(flavor = "current_thread")]
    async fn the_own_store_failing_after_a_far_one_is_decided_once() {
        let (policy, node, clock) = far_world(&spillway_testkit::policy::unreachable(3));
        let own = FailsCharges(MemoryStore::new(100, clock.shared()));
        let failover = Failover::new(Default::default(), clock.shared());
        let far = degrading(&failover);
        let planned = planned_for(&policy, "acme");
        let counts = spillway_testkit::metrics::LocalMetrics::hear();
        let mut admitted = Vec::new();
        for _ in 0..3 {
            let checked = node
                .check(&policy, &own, &planned, CheckMode::Consume, &far)
                .await
                .expect("decided by the failure mode, not a store error");
            let how = checked.fell_back.expect("the failure mode decided");
            assert_eq!(how.mode, FailureMode::Degrade);
            let quotas: Vec<u64> = checked.outcomes.iter().map(|o| o.quota).collect();
            // Denied by the home limit's emergency quota, the own store is only looked at.
            let want = if checked.allowed { [2, 2] } else { [2, 4] };
            assert_eq!(quotas, want, "the emergency quotas where they decided");
            admitted.push(checked.allowed);
        }
        assert_eq!(admitted, [true, true, false]);
        let decisions = crate::failure::report::DEGRADED_DECISIONS;
        let told = spillway_testkit::metrics::sample(&counts.render(), decisions, "");
        assert_eq!(told, 3, "one degraded decision per request");
    }

    /// One request whose `home` limits live in two far regions (two tenants, as an Envoy call
    /// may carry): under `closed`, the first far failure refuses it before the second region
    /// is charged; under `degrade`, the failed region's limits take the emergency quotas and
    /// the other region still counts its own. Real redis-server as `ap`.
    #[tokio::test(flavor = "current_thread")]
    async fn a_far_failure_settles_before_the_next_far_region_is_charged() {
        let ap = spillway_testkit::redis::RedisServer::start();
        let (policy, node, clock) = far_world(&ap.url());
        let own = MemoryStore::new(100, clock.shared());
        let failover = Failover::new(Default::default(), clock.shared());
        let mut planned = planned_for(&policy, "acme");
        planned.extend(planned_for(&policy, "globex"));
        let keys = || spillway_testkit::redis::command(ap.port(), "DBSIZE").unwrap_or_default();

        // Far regions are asked in their order in the policy: eu (failing) before ap.
        let closed = FarFailure {
            mode: FailureMode::Closed,
            failover: &failover,
            label: None,
        };
        let refused = node.check(&policy, &own, &planned, CheckMode::Consume, &closed);
        assert!(refused.await.is_err());
        assert_eq!(keys().trim(), ":0", "ap was not charged");

        let degrade = FarFailure {
            mode: FailureMode::Degrade,
            ..closed
        };
        let checked = node
            .check(&policy, &own, &planned, CheckMode::Consume, &degrade)
            .await
            .expect("decided");
        // acme's exact (emergency 2), acme's near (own store), globex's exact (ap), globex's near.
        let told = vec![(2, 1), (4, 3), (6, 5), (4, 3)];
        assert_eq!(summary(&checked), (true, Some(FailureMode::Degrade), told));
        assert_eq!(keys().trim(), ":1", "ap counted globex's exact");
    }

    /// The own store failing on its charge after the home region charged: the own limits
    /// alone take the failure mode (here `degrade`'s emergency quota), within the decision;
    /// the home limit keeps the home store's count and is not charged again by a fallback of
    /// the whole request. Real redis-server as `ap`, globex's home.
    #[tokio::test(flavor = "current_thread")]
    async fn the_own_store_failing_after_the_home_store_charged_is_decided_within() {
        let ap = spillway_testkit::redis::RedisServer::start();
        let (policy, node, clock) = far_world(&ap.url());
        let own = FailsCharges(MemoryStore::new(100, clock.shared()));
        let failover = Failover::new(Default::default(), clock.shared());
        let far = degrading(&failover);
        let planned = planned_for(&policy, "globex");
        let counts = spillway_testkit::metrics::LocalMetrics::hear();
        let checked = node
            .check(&policy, &own, &planned, CheckMode::Consume, &far)
            .await
            .expect("decided, not a store error");
        // exact: ap's count (6, one used); near: its emergency quota (4 / 3 = 2, one used).
        let told = vec![(6, 5), (2, 1)];
        assert_eq!(summary(&checked), (true, Some(FailureMode::Degrade), told));
        let decisions = crate::failure::report::DEGRADED_DECISIONS;
        let rendered = counts.render();
        assert_eq!(
            spillway_testkit::metrics::sample(&rendered, decisions, ""),
            1
        );
    }

    /// The own store down under `degrade`, three regions of three nodes: an `aggregate`
    /// limit's emergency quota is a part of what the region may still admit, here its share
    /// (30 of 90, the others having left 40), over 3 nodes: 10 a node, not a third of the
    /// whole limit (30 a node, the whole limit for the region on top of the others' 50); and
    /// what it admits is published as usual.
    #[tokio::test]
    async fn with_the_own_store_down_an_aggregate_limit_gets_a_part_of_its_regions_room() {
        use crate::decision::{decide, Ask, Outcome};
        let store = spillway_testkit::policy::unreachable_regions(&["us", "eu", "ap"], &[]);
        let text = crate::test_support::aggregate_policy_text(&store, 90, "1h");
        let clock = ServerClock::manual(crate::test_support::TEST_START_MS);
        let state = crate::state::AppState::for_test(&text)
            .clock(clock.clone())
            .store(Arc::new(FailingStore::down()));
        let policy = state.policy().clone();
        let failure = crate::failure::FailureSettings::default();
        let node = RegionNode::new(&policy, Some("us"), &failure, clock.shared())
            .expect("a node")
            .expect("three regions");
        let resolved = policy.resolve(&spillway_core::request::RequestAttrs {
            tenant: Some("acme".into()),
            ..Default::default()
        });
        let known = Known::one(&resolved.limits[0], clock.now(), &[0, 20, 30]);
        node.tally.publish_known(known, &[1, 2], clock.now());
        let regions = node.clone();
        let app = state.failure(failure).regions(Some(node)).build();
        let mut admitted = 0;
        for _ in 0..15 {
            let ask = Ask::resolved(&resolved, CheckMode::Consume);
            let Outcome::Decided(decided) = decide(&app, &policy, &ask).await else {
                panic!("degrade decides");
            };
            assert_eq!(decided.degraded, Some(FailureMode::Degrade));
            assert_eq!(decided.verdict.outcomes[0].quota, 10);
            admitted += u32::from(decided.verdict.allowed);
        }
        assert_eq!(admitted, 10);
        // A look (peek) admits nothing, so publishes nothing.
        let peek = Ask::resolved(&resolved, CheckMode::Peek);
        assert!(matches!(
            decide(&app, &policy, &peek).await,
            Outcome::Decided(_)
        ));
        // And the ten are published like any admission, once the store takes them.
        let pending = regions.tally.take_pending();
        assert_eq!(pending.values().sum::<u64>(), 10, "{pending:?}");
    }

    /// The own store failing at its charge after the home store answered, with an
    /// `aggregate` limit among its limits, under `degrade`: that limit's emergency quota is
    /// cut to the region's room (the others' 50 of 90 leave 40, its share is 30: 10 a node
    /// of 3), not a third of the whole limit, and what it admitted goes to the publication.
    #[tokio::test(flavor = "current_thread")]
    async fn an_aggregate_limit_decided_within_the_check_gets_the_regions_room() {
        let ap = spillway_testkit::redis::RedisServer::start();
        let (policy, node, clock) = far_world(&ap.url());
        let own = FailsCharges(MemoryStore::new(100, clock.shared()));
        let failover = Failover::new(Default::default(), clock.shared());
        let planned = policy
            .resolve(&spillway_core::request::RequestAttrs {
                tenant: Some("globex".into()),
                method: Some("POST".into()),
                path: Some("/soft".into()),
                ..Default::default()
            })
            .limits;
        let at = |name: &str| {
            let found = planned.iter().position(|p| &*p.def.name.to_arc() == name);
            found.expect("planned")
        };
        let known = Known::one(&planned[at("soft")], clock.now(), &[0, 20, 30]);
        node.tally.publish_known(known, &[1, 2], clock.now());
        let checked = node
            .check(
                &policy,
                &own,
                &planned,
                CheckMode::Consume,
                &degrading(&failover),
            )
            .await
            .expect("decided, not a store error");
        let (allowed, mode, told) = summary(&checked);
        assert_eq!((allowed, mode), (true, Some(FailureMode::Degrade)));
        // exact: ap's count; near: 4 / 3 = 2 a node; soft: the region's room, 30 / 3.
        assert_eq!(told[at("exact")], (6, 5));
        assert_eq!(told[at("near")], (2, 1));
        assert_eq!(told[at("soft")], (10, 9));
        let pending = node.tally.take_pending();
        assert_eq!(pending.values().sum::<u64>(), 1, "{pending:?}");
    }
}
