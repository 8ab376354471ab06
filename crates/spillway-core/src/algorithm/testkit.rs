//! Shared helpers for the algorithms' unit and property tests: replaying a sequence of
//! `(time, cost)` events the way the engine would (a denied request changes nothing) and the
//! invariants every algorithm is checked against.

use super::{Decision, Evaluation};
use crate::time::Micros;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Replays events against one key, committing the new state only when a request is allowed.
pub struct Replay<S, F> {
    eval: F,
    state: Option<S>,
}

impl<S: Clone, F: FnMut(Option<&S>, Micros, u64) -> Evaluation<S>> Replay<S, F> {
    /// A replay of a fresh key.
    pub fn new(eval: F) -> Self {
        Self { eval, state: None }
    }

    /// Sends a request of `cost` at `now`, keeping its state if it was allowed.
    pub fn step(&mut self, now: Micros, cost: u64) -> Decision {
        let e = (self.eval)(self.state.as_ref(), now, cost);
        if e.decision.allowed {
            self.state = Some(e.state);
        }
        e.decision
    }

    /// Evaluates without committing anything.
    pub fn peek(&mut self, now: Micros, cost: u64) -> Decision {
        (self.eval)(self.state.as_ref(), now, cost).decision
    }

    /// The committed state, if any request was allowed yet.
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }
}

/// Up to `n` events with non-decreasing times (gaps up to `max_gap`) and costs `1..=max_cost`.
pub fn events(
    n: usize,
    max_gap: Micros,
    max_cost: u64,
) -> impl Strategy<Value = Vec<(Micros, u64)>> {
    let start = 1_700_000_000_000_000u64;
    prop::collection::vec((prop_oneof![Just(0u64), 0..max_gap], 1..=max_cost), 1..n).prop_map(
        move |raw| {
            let mut now = start;
            raw.into_iter()
                .map(|(gap, cost)| {
                    now += gap;
                    (now, cost)
                })
                .collect()
        },
    )
}

/// Admitted requests as `(time, cost)`, replaying `events` against `eval`.
pub fn admitted<S: Clone>(
    eval: impl FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    events: &[(Micros, u64)],
) -> Vec<(Micros, u64)> {
    let mut r = Replay::new(eval);
    events
        .iter()
        .filter(|(at, cost)| r.step(*at, *cost).allowed)
        .copied()
        .collect()
}

/// A bucket never admits more than `burst + rate x T` over any interval of length `T`.
pub fn check_bucket_bound<S: Clone>(
    eval: impl FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    events: &[(Micros, u64)],
    burst: u64,
    count: u64,
    period: Micros,
) -> Result<(), TestCaseError> {
    let ok = admitted(eval, events);
    for i in 0..ok.len() {
        let mut sum = 0u128;
        for j in i..ok.len() {
            sum += ok[j].1 as u128;
            let span = (ok[j].0 - ok[i].0) as u128;
            let bound = burst as u128 + span * count as u128 / period as u128;
            prop_assert!(
                sum <= bound,
                "admitted {} in {}us, bound {}",
                sum,
                span,
                bound
            );
        }
    }
    Ok(())
}

/// No window `[t, t + window)` holds more than `limit` admitted cost.
pub fn check_window_bound<S: Clone>(
    eval: impl FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    events: &[(Micros, u64)],
    limit: u64,
    window: Micros,
    aligned: bool,
) -> Result<(), TestCaseError> {
    let ok = admitted(eval, events);
    for i in 0..ok.len() {
        let start = if aligned {
            ok[i].0 - ok[i].0 % window
        } else {
            ok[i].0
        };
        let sum: u64 = ok[i..]
            .iter()
            .take_while(|(at, _)| *at < start + window)
            .map(|(_, c)| c)
            .sum();
        prop_assert!(sum <= limit, "{} admitted in a window of {}us", sum, window);
    }
    Ok(())
}

/// After replaying `events`, a request of `cost` that is denied with `retry_after = r` is
/// allowed at exactly `now + r` and still denied at `now + r - 1`, with no other traffic.
pub fn check_retry_exact<S: Clone>(
    eval: impl FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    events: &[(Micros, u64)],
    cost: u64,
) -> Result<(), TestCaseError> {
    let mut r = Replay::new(eval);
    for (at, c) in events {
        r.step(*at, *c);
    }
    let now = events.last().map(|e| e.0).unwrap_or(0);
    let d = r.peek(now, cost);
    if let Some(retry) = d.retry_after {
        prop_assert!(!d.allowed);
        prop_assert!(retry > 0);
        prop_assert!(
            r.peek(now + retry, cost).allowed,
            "not allowed at now + retry"
        );
        prop_assert!(
            !r.peek(now + retry - 1, cost).allowed,
            "allowed before retry"
        );
    } else if !d.allowed {
        prop_assert_eq!(d.denial, Some(super::Denial::CostExceedsLimit));
    }
    Ok(())
}

/// Replays a mix of checks and charges after the fact against one key: a check commits its
/// state only when allowed, a charge always.
pub struct Metered<S, F, G> {
    eval: F,
    charge: G,
    state: Option<S>,
}

impl<S, F, G> Metered<S, F, G>
where
    S: Clone,
    F: FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    G: FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
{
    /// A replay of a fresh key.
    pub fn new(eval: F, charge: G) -> Self {
        Self {
            eval,
            charge,
            state: None,
        }
    }

    /// A check of `cost` at `now`, kept if allowed.
    pub fn step(&mut self, now: Micros, cost: u64) -> Decision {
        let e = (self.eval)(self.state.as_ref(), now, cost);
        if e.decision.allowed {
            self.state = Some(e.state);
        }
        e.decision
    }

    /// A charge of `cost` at `now`, always kept.
    pub fn charge(&mut self, now: Micros, cost: u64) -> Decision {
        let e = (self.charge)(self.state.as_ref(), now, cost);
        self.state = Some(e.state);
        e.decision
    }

    /// A check without committing anything.
    pub fn peek(&mut self, now: Micros, cost: u64) -> Decision {
        (self.eval)(self.state.as_ref(), now, cost).decision
    }
}

/// Up to `n` events with non-decreasing times: `(time, cost, is_charge)`, charges costing up
/// to `max_charge` (past the limit, to overdraw), checks up to `max_cost`.
pub fn metered_events(
    n: usize,
    max_gap: Micros,
    max_cost: u64,
    max_charge: u64,
) -> impl Strategy<Value = Vec<(Micros, u64, bool)>> {
    let start = 1_700_000_000_000_000u64;
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..max_gap],
            0..=max_cost,
            0..=max_charge,
            any::<bool>(),
        ),
        1..n,
    )
    .prop_map(move |raw| {
        let mut now = start;
        raw.into_iter()
            .map(|(gap, cost, charged, is_charge)| {
                now += gap;
                (now, if is_charge { charged } else { cost }, is_charge)
            })
            .collect()
    })
}

/// The properties every algorithm that records costs after the fact must keep, over a mix
/// of checks and charges:
/// - a charge's decision tells the standing a zero-cost check sees at the same time;
/// - a key in debt is denied, and its `retry_after` is exact: a zero-cost check passes at
///   `now + retry_after` and not a microsecond before;
/// - nothing charged is lost: whenever a check is admitted at `t_j`, everything charged or
///   admitted since any earlier event `t_i` fits in `bound(t_j - t_i)` (the burst plus the
///   refill for the buckets; the limit, within one aligned window, for the windows, where
///   `bound` returns `None` when the span leaves the window).
pub fn check_overdraw<S, F, G>(
    mut m: Metered<S, F, G>,
    events: &[(Micros, u64, bool)],
    bound: impl Fn(Micros, Micros) -> Option<u128>,
) -> Result<(), TestCaseError>
where
    S: Clone,
    F: FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
    G: FnMut(Option<&S>, Micros, u64) -> Evaluation<S>,
{
    let mut used: Vec<(Micros, u64)> = Vec::new();
    for &(at, cost, is_charge) in events {
        if is_charge {
            let d = m.charge(at, cost);
            used.push((at, cost));
            let look = m.peek(at, 0);
            prop_assert_eq!(d.allowed, look.allowed, "charge and look disagree");
            if !d.allowed {
                prop_assert_eq!(d.retry_after, look.retry_after);
            }
        } else if m.step(at, cost).allowed {
            used.push((at, cost));
            let mut sum = 0u128;
            for &(t, c) in used.iter().rev() {
                sum += u128::from(c);
                if let Some(b) = bound(t, at) {
                    prop_assert!(sum <= b, "{} used since {}, bound {}", sum, t, b);
                }
            }
        }
    }
    let now = events.last().map_or(0, |e| e.0);
    let d = m.peek(now, 0);
    if !d.allowed {
        let retry = d.retry_after.unwrap_or(0);
        prop_assert!(retry > 0, "a key in debt must say when to retry");
        prop_assert!(
            m.peek(now + retry, 0).allowed,
            "still denied at now + retry"
        );
        prop_assert!(!m.peek(now + retry - 1, 0).allowed, "allowed before retry");
    }
    Ok(())
}
