//! Limits metered after the fact (`charge: after`): a request is admitted while the limit has
//! room for at least one unit, nothing is consumed up front, and the real cost is charged
//! afterwards, past the limit if need be (a debt the refill or the passing window repays).
//!
//! Each algorithm's own `charge` records the cost and tells whether the key owes nothing;
//! [`LimitParams::charge`] tells the standing as the next admission will see it, which is what
//! the stores answer. The Redis script mirrors both (`lua/check.lua`, `admit`).

use super::{wrap, Evaluation, LimitParams, State, StateRef};
use crate::time::Micros;

impl LimitParams {
    /// Whether the algorithm can record a cost after the fact beyond its limit
    /// ([`LimitParams::charge`]): every one but the sliding log, whose state is one entry per
    /// admitted request and has no room for a debt.
    pub fn supports_charge(&self) -> bool {
        !matches!(self, Self::SlidingLog(_))
    }

    /// Admits a request on a limit metered after the fact (`charge: after`) at `now`: only
    /// while the limit has room for at least one unit (as a request of cost 1 would pass), so
    /// a key that has used exactly its limit, or owes more, is denied. Nothing is consumed:
    /// the real cost is charged afterwards ([`LimitParams::charge`]), and the returned state
    /// is never meant to be stored.
    ///
    /// Admitted, the decision is what a zero-cost look sees (the remaining count untouched);
    /// denied, it is the cost-1 denial, whose `retry_after` is the time until one unit is free
    /// (any debt repaid, and one unit refilled or out of the window).
    pub fn admit(&self, state: Option<StateRef<'_>>, now: Micros) -> Evaluation<State> {
        // One evaluation when there is room: a cost of 1 passes exactly when the zero-cost
        // look leaves at least one unit (every algorithm), so only a key without that room is
        // evaluated again, for the cost-1 denial and its retry time.
        let look = self.evaluate(state, now, 0);
        if look.decision.allowed && look.decision.remaining >= 1 {
            return look;
        }
        self.evaluate(state, now, 1)
    }

    /// Records `cost` against `state` at `now` unconditionally, even past the limit (a cost known
    /// only after the response); the key then owes the excess, and is not admitted until refill or
    /// the passing window has repaid it and freed a unit. The new state is always meant to be
    /// stored. The decision tells the key's standing after the charge, as [`LimitParams::admit`]
    /// sees it at once: allowed while at least one unit is free; else denied
    /// ([`Denial::OverLimit`](super::Denial::OverLimit)) with `retry_after` the time until one is.
    /// (Each algorithm's own `charge` answers whether the key owes nothing; the stores and the Lua
    /// mirrors use this standing.)
    ///
    /// The sliding log ([`LimitParams::supports_charge`] is false) records the cost only if it
    /// fits, as [`LimitParams::evaluate`] does; policies refuse metered sliding-log limits.
    pub fn charge(&self, state: Option<StateRef<'_>>, now: Micros, cost: u64) -> Evaluation<State> {
        let e = self.record(state, now, cost);
        if !self.supports_charge() {
            return e;
        }
        let standing = self.admit(Some(e.state.as_ref()), now).decision;
        Evaluation {
            decision: standing,
            ..e
        }
    }

    /// Each algorithm's own charge (see [`LimitParams::charge`]).
    fn record(&self, state: Option<StateRef<'_>>, now: Micros, cost: u64) -> Evaluation<State> {
        use StateRef as R;
        match (self, state) {
            (Self::TokenBucket(p), Some(R::TokenBucket(s))) => {
                wrap(p.charge(Some(s), now, cost), State::TokenBucket)
            }
            (Self::TokenBucket(p), _) => wrap(p.charge(None, now, cost), State::TokenBucket),
            (Self::Gcra(p), Some(R::Gcra(s))) => wrap(p.charge(Some(s), now, cost), State::Gcra),
            (Self::Gcra(p), _) => wrap(p.charge(None, now, cost), State::Gcra),
            (Self::FixedWindow(p), Some(R::FixedWindow(s))) => {
                wrap(p.charge(Some(s), now, cost), State::FixedWindow)
            }
            (Self::FixedWindow(p), _) => wrap(p.charge(None, now, cost), State::FixedWindow),
            (Self::SlidingWindow(p), Some(R::SlidingWindow(s))) => {
                wrap(p.charge(Some(s), now, cost), State::SlidingWindow)
            }
            (Self::SlidingWindow(p), _) => wrap(p.charge(None, now, cost), State::SlidingWindow),
            (Self::LeakyBucket(p), Some(R::LeakyBucket(s))) => {
                wrap(p.charge(Some(s), now, cost), State::LeakyBucket)
            }
            (Self::LeakyBucket(p), _) => wrap(p.charge(None, now, cost), State::LeakyBucket),
            (Self::SlidingLog(_), _) => self.evaluate(state, now, cost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit;
    use crate::algorithm::{Denial, FixedWindow, Gcra, LeakyBucket, SlidingWindow, TokenBucket};
    use crate::rate::Rate;
    use crate::time::{HOUR, MINUTE, SECOND};
    use proptest::prelude::*;

    /// Ten minutes into an aligned hour.
    const T: Micros = 1_700_002_800_000_000 + 10 * MINUTE;

    const METERED: [&str; 5] = [
        "token_bucket",
        "gcra",
        "leaky_bucket",
        "fixed_window",
        "sliding_window",
    ];

    fn limit(alg: &str, count: u64, period: Micros, amount: u64) -> LimitParams {
        let rate = || Rate::new(count, period).expect("rate");
        match alg {
            "token_bucket" => {
                LimitParams::TokenBucket(TokenBucket::new(rate(), amount).expect("tb"))
            }
            "gcra" => LimitParams::Gcra(Gcra::new(rate(), amount).expect("gcra")),
            "leaky_bucket" => {
                LimitParams::LeakyBucket(LeakyBucket::new(rate(), amount).expect("lb"))
            }
            "fixed_window" => {
                LimitParams::FixedWindow(FixedWindow::new(count, period).expect("fw"))
            }
            _ => LimitParams::SlidingWindow(SlidingWindow::new(count, period).expect("sw")),
        }
    }

    /// A denial's `retry_after` is exact: admitted then, and not a microsecond before.
    fn assert_retry_exact(p: &LimitParams, state: &State, now: Micros, alg: &str) -> Micros {
        let d = p.admit(Some(state.as_ref()), now).decision;
        assert!(!d.allowed, "{alg}: admitted at {now}");
        assert_eq!(d.denial, Some(Denial::OverLimit), "{alg}");
        let retry = d.retry_after.expect("a denial says when");
        let early = p.admit(Some(state.as_ref()), now + retry - 1).decision;
        assert!(!early.allowed, "{alg}: admitted before the retry time");
        let then = p.admit(Some(state.as_ref()), now + retry).decision;
        assert!(then.allowed, "{alg}: denied at the retry time");
        assert!(then.remaining >= 1, "{alg}");
        retry
    }

    #[test]
    fn a_budget_reported_exactly_leaves_no_room_until_one_unit_is_free() {
        for alg in METERED {
            let p = limit(alg, 1000, HOUR, 1000);
            let fresh = p.admit(None, T).decision;
            assert!(fresh.allowed && fresh.remaining == 1000, "{alg}: {fresh:?}");
            // 1,000 of 1,000 reported: nothing owed, nothing left.
            let e = p.charge(None, T, 1000);
            assert!(!e.decision.allowed, "{alg}: {:?}", e.decision);
            assert_eq!(e.decision.remaining, 0, "{alg}");
            let retry = assert_retry_exact(&p, &e.state, T, alg);
            assert_eq!(
                e.decision.retry_after,
                Some(retry),
                "{alg}: the report's standing"
            );
            let expected = match alg {
                // One token of 1,000 an hour: 3.6 s.
                "token_bucket" | "gcra" | "leaky_bucket" => 3_600_000,
                // The window's 50 minutes left.
                "fixed_window" => 50 * MINUTE,
                // The next window, and 3.6 s into it for the previous 1,000 to weigh 999.
                _ => 50 * MINUTE + 3_600_000,
            };
            assert_eq!(retry, expected, "{alg}");
        }
    }

    #[test]
    fn a_check_that_used_the_whole_limit_leaves_no_room_either() {
        for alg in METERED {
            let p = limit(alg, 10, MINUTE, 10);
            let e = p.evaluate(None, T, 10);
            assert!(e.decision.allowed && e.decision.remaining == 0, "{alg}");
            assert_retry_exact(&p, &e.state, T, alg);
            // One unit left: admitted, and nothing consumed.
            let e = p.evaluate(None, T, 9);
            let d = p.admit(Some(e.state.as_ref()), T);
            assert!(d.decision.allowed, "{alg}");
            assert_eq!(d.decision.remaining, 1, "{alg}");
            assert_eq!(
                d.decision,
                p.evaluate(Some(e.state.as_ref()), T, 0).decision
            );
        }
    }

    #[test]
    fn a_debt_is_repaid_before_one_unit_is_free() {
        // The budget: 900 then 400 reported, 300 owed, then one token more to admit.
        for alg in ["token_bucket", "gcra", "leaky_bucket"] {
            let p = limit(alg, 1000, HOUR, 1000);
            let e = p.charge(None, T, 900);
            assert!(e.decision.allowed && e.decision.remaining == 100, "{alg}");
            let e = p.charge(Some(e.state.as_ref()), T + SECOND, 400);
            let retry = assert_retry_exact(&p, &e.state, T + SECOND, alg);
            // 300 tokens owed and one to free, 3.6 s each, less the second refilled since.
            assert_eq!(retry, 301 * 3_600_000 - SECOND, "{alg}");
        }
    }

    #[test]
    fn a_huge_charge_never_wraps_into_credit() {
        for alg in METERED {
            let p = limit(alg, 1000, HOUR, 1000);
            let used = p.evaluate(None, T, 10).state;
            for cost in [1 << 53, (1 << 53) + 1, u64::MAX - 1, u64::MAX] {
                for start in [None, Some(&used)] {
                    let e = p.charge(start.map(State::as_ref), T, cost);
                    assert!(!e.decision.allowed, "{alg} {cost}");
                    assert_eq!(e.decision.remaining, 0, "{alg} {cost}");
                    let retry = e.decision.retry_after.expect("denied until repaid");
                    // At least the whole limit's refill or window, and at most ten years.
                    assert!(retry >= HOUR - 10 * MINUTE, "{alg} {cost}: {retry}");
                    assert!(retry <= super::super::MAX_WINDOW, "{alg} {cost}: {retry}");
                    // Charging more on top never shortens the wait.
                    let again = p.charge(Some(e.state.as_ref()), T, cost);
                    assert!(again.decision.retry_after >= Some(retry), "{alg} {cost}");
                    assert!(
                        !p.admit(Some(again.state.as_ref()), T + 40 * MINUTE)
                            .decision
                            .allowed
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn admission_is_a_look_for_room_for_one_unit_and_a_charge_tells_it(
            alg in prop::sample::select(METERED.to_vec()),
            count in 1u64..50, period_s in 1u64..120, amount in 1u64..40,
            events in testkit::metered_events(60, 5 * SECOND, 4, 60),
        ) {
            let p = limit(alg, count, period_s * SECOND, amount);
            let mut state: Option<State> = None;
            for (at, cost, is_charge) in events {
                let read = state.as_ref().map(State::as_ref);
                if is_charge {
                    let e = p.charge(read, at, cost);
                    // The charge's answer is what a cost-1 request would meet next: the same
                    // verdict, and when denied the same decision (checked against `evaluate`,
                    // not against `admit`, which the charge itself is built on).
                    let after = Some(e.state.as_ref());
                    let one = p.evaluate(after, at, 1).decision;
                    prop_assert_eq!(e.decision.allowed, one.allowed);
                    if one.allowed {
                        prop_assert_eq!(e.decision, p.evaluate(after, at, 0).decision);
                    } else {
                        prop_assert_eq!(e.decision, one);
                    }
                    state = Some(e.state);
                    continue;
                }
                let admitted = p.admit(read, at).decision;
                let one = p.evaluate(read, at, 1).decision;
                prop_assert_eq!(admitted.allowed, one.allowed);
                if admitted.allowed {
                    prop_assert!(admitted.remaining >= 1);
                    prop_assert_eq!(admitted, p.evaluate(read, at, 0).decision);
                } else {
                    prop_assert_eq!(admitted, one);
                    let retry = admitted.retry_after.unwrap_or(0);
                    prop_assert!(retry > 0);
                    prop_assert!(p.admit(read, at + retry).decision.allowed);
                    prop_assert!(!p.admit(read, at + retry - 1).decision.allowed);
                }
            }
        }
    }
}
