//! GCRA (generic cell rate algorithm): one theoretical arrival time (TAT) per key instead of a
//! token count and a timestamp. It admits exactly what a token bucket with the same rate and
//! burst admits: the TAT is how far "in debt" the key is, and a request passes while that debt
//! stays within the burst.
//!
//! The emission interval `period / count` is rarely a whole number of microseconds, so the TAT
//! is kept as a whole microsecond plus a remainder in units of `1 / tokens` microsecond; both
//! parts stay small enough for a Lua double.

use super::{Decision, Evaluation, ParamsId, ScaledRate};
use crate::rate::Rate;
use crate::time::Micros;

/// GCRA parameters: an emission rate and the burst it tolerates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gcra {
    rate: ScaledRate,
    burst: u64,
    id: ParamsId,
}

/// A GCRA key's state: the theoretical arrival time `tat + rem / rate.tokens` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraState {
    /// Whole microseconds of the TAT.
    pub tat: Micros,
    /// The TAT's fraction of a microsecond, in units of `1 / rate.tokens`.
    pub rem: u64,
}

impl Gcra {
    /// A limiter admitting `rate` on average with bursts of up to `burst`.
    pub fn new(rate: Rate, burst: u64) -> Result<Self, String> {
        let rate = ScaledRate::new(rate);
        rate.check_capacity(burst, "burst")?;
        Ok(Self {
            id: rate.register(burst),
            rate,
            burst,
        })
    }

    /// The limiter `id` names in the register of parameters (see [`super::units`]).
    pub(crate) fn registered(id: ParamsId) -> Option<Self> {
        let (rate, burst) = ScaledRate::registered(id)?;
        Some(Self { rate, burst, id })
    }

    /// The id of this limiter's numbers, which the in-memory store keeps with its states.
    #[inline]
    pub fn id(&self) -> ParamsId {
        self.id
    }

    /// The emission rate in scaled form, for stores that mirror this function elsewhere (Redis Lua).
    pub fn rate(&self) -> ScaledRate {
        self.rate
    }

    /// The most admitted at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Time for a fully used key to become fresh again.
    pub fn refill_time(&self) -> Micros {
        self.rate.time_for(self.rate.scale(self.burst))
    }

    /// Reads a state written by `from` (this limit with its numbers before a change) at `now`:
    /// the debt it held at `now` (measured at the old rate, which the state's TAT is written
    /// in), rounded up to this limit's units and at most [`Gcra::max_used`] (a debt above the burst
    /// is kept, never forgiven), becomes the new TAT.
    /// Under the same rate the state is read as it is (a debt above a smaller burst reads as
    /// full). See [`super::carry`].
    pub fn carry_over(&self, state: &GcraState, from: &Gcra, now: Micros) -> GcraState {
        if from.rate == self.rate {
            return *state;
        }
        let from = &from.rate;
        let debt = debt_at(state, now, from.tokens);
        let carried = if from.micros == self.rate.micros {
            debt
        } else {
            super::clamp_u64(
                (u128::from(debt) * u128::from(self.rate.micros)).div_ceil(u128::from(from.micros)),
            )
        };
        let (whole, rem) = self.rate.split(carried.min(self.max_used()));
        GcraState {
            tat: now + whole,
            rem,
        }
    }

    /// Checks `cost` at `now`; see [`super::LimitParams::evaluate`].
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&GcraState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<GcraState> {
        // Everything is measured from `now` in scaled units (one token is rate.micros units,
        // one microsecond is rate.tokens units), so no product involves the absolute time and
        // every quantity stays below 2^53 (which the Lua mirror relies on).
        let debt = state.map_or(0, |s| debt_at(s, now, self.rate.tokens));
        let window = self.rate.scale(self.burst);
        // The TAT `debt` scaled units after `now`.
        let to_state = |d: u64| {
            let (whole, rem) = self.rate.split(d);
            GcraState {
                tat: now + whole,
                rem,
            }
        };
        let remaining = |d: u64| self.rate.whole(window.saturating_sub(d));
        let fresh_in = |d: u64| self.rate.time_for(d);
        if cost > self.burst {
            return Evaluation {
                decision: Decision::too_costly(self.burst, remaining(debt), fresh_in(debt)),
                state: to_state(debt),
                expires_at: now + fresh_in(debt),
            };
        }
        let new_debt = debt.saturating_add(self.rate.scale(cost));
        if new_debt <= window {
            Evaluation {
                decision: Decision::allow(self.burst, remaining(new_debt), fresh_in(new_debt)),
                state: to_state(new_debt),
                expires_at: now + fresh_in(new_debt),
            }
        } else {
            let retry = self.rate.time_for(new_debt - window);
            Evaluation {
                decision: Decision::over_limit(self.burst, remaining(debt), fresh_in(debt), retry),
                state: to_state(debt),
                expires_at: now + fresh_in(debt),
            }
        }
    }
}

impl Gcra {
    /// The most a key may have used, in scaled units ([`super::max_used`]); the TAT stays
    /// within `now` plus the longer of ten years and the refill time.
    #[inline]
    pub fn max_used(&self) -> u64 {
        super::max_used(&self.rate, self.rate.scale(self.burst))
    }

    /// Records `cost` used at `now` whether or not the burst has room for it (a cost known
    /// only after the response): the TAT moves on by the whole cost, past the burst if need
    /// be (at most [`Gcra::max_used`]), and nothing is admitted until it is back within it.
    /// The state is always meant to be stored; the decision tells the key's standing, as
    /// [`super::TokenBucket::charge`] does.
    pub fn charge(
        &self,
        state: Option<&GcraState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<GcraState> {
        let debt = state.map_or(0, |s| debt_at(s, now, self.rate.tokens));
        let window = self.rate.scale(self.burst);
        let need = self.rate.scale(cost).min(super::MAX_SCALED as u64);
        let max = self.max_used();
        let used = if need >= max - debt.min(max) {
            max
        } else {
            debt + need
        };
        let (whole, rem) = self.rate.split(used);
        let fresh_in = self.rate.time_for(used);
        let remaining = self.rate.whole(window.saturating_sub(used));
        let decision = if used <= window {
            Decision::allow(self.burst, remaining, fresh_in)
        } else {
            Decision::over_limit(self.burst, 0, fresh_in, self.rate.time_for(used - window))
        };
        Evaluation {
            decision,
            state: GcraState {
                tat: now + whole,
                rem,
            },
            expires_at: now + fresh_in,
        }
    }
}

/// How far `state` is in debt at `now`, in scaled units of a rate refilling `per` units a
/// microsecond (0 once its TAT has passed). Always inlined: `evaluate` is on every check.
#[inline(always)]
fn debt_at(state: &GcraState, now: Micros, per: u64) -> u64 {
    if state.tat > now {
        (state.tat - now)
            .saturating_mul(per)
            .saturating_add(state.rem)
    } else if state.tat == now {
        state.rem
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};
    use crate::algorithm::{TokenBucket, TokenBucketState};
    use crate::time::SECOND;
    use proptest::prelude::*;

    fn gcra(count: u64, period: Micros, burst: u64) -> Gcra {
        Gcra::new(Rate::new(count, period).unwrap(), burst).unwrap()
    }

    #[test]
    fn fractional_emission_interval_is_exact() {
        // 3 per second: an emission interval of 333,333.33 us.
        let g = gcra(3, SECOND, 1);
        let mut r = Replay::new(|s: Option<&GcraState>, now, cost| g.evaluate(s, now, cost));
        assert!(r.step(0, 1).allowed);
        let d = r.step(0, 1);
        assert_eq!(d.retry_after, Some(333_334));
        assert!(!r.step(333_333, 1).allowed);
        assert!(r.step(333_334, 1).allowed);
        // The TAT is now 666,667.33 us (kept as 666,667 + 1/3): the next request must wait
        // for the whole fractional interval, not a rounded one.
        assert_eq!(
            r.state(),
            Some(&GcraState {
                tat: 666_667,
                rem: 1
            })
        );
        assert!(!r.step(666_667, 1).allowed);
        assert!(r.step(666_668, 1).allowed);
    }

    proptest! {
        #[test]
        fn admits_exactly_what_a_token_bucket_admits(
            count in 1u64..50, period_ms in 1u64..120_000, burst in 1u64..40,
            events in testkit::events(200, 3 * SECOND, 4),
        ) {
            let rate = Rate::new(count, period_ms * 1000).unwrap();
            let g = Gcra::new(rate, burst).unwrap();
            let tb = TokenBucket::new(rate, burst).unwrap();
            let mut rg = Replay::new(|s: Option<&GcraState>, now, cost| g.evaluate(s, now, cost));
            let mut rt = Replay::new(|s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost));
            for (at, cost) in events {
                prop_assert_eq!(rg.step(at, cost), rt.step(at, cost));
            }
        }

        #[test]
        fn retry_after_is_exact(
            count in 1u64..50, period_ms in 1u64..120_000, burst in 1u64..40,
            events in testkit::events(60, 3 * SECOND, 4), cost in 1u64..5,
        ) {
            let g = gcra(count, period_ms * 1000, burst);
            testkit::check_retry_exact(|s: Option<&GcraState>, now, cost| g.evaluate(s, now, cost), &events, cost)?;
        }

        #[test]
        fn charges_agree_with_a_token_bucket(
            count in 1u64..50, period_ms in 1u64..120_000, burst in 1u64..40,
            events in testkit::metered_events(120, 3 * SECOND, 4, 60),
        ) {
            let rate = Rate::new(count, period_ms * 1000).unwrap();
            let g = Gcra::new(rate, burst).unwrap();
            let tb = TokenBucket::new(rate, burst).unwrap();
            let mut mg = testkit::Metered::new(
                |s: Option<&GcraState>, now, cost| g.evaluate(s, now, cost),
                |s: Option<&GcraState>, now, cost| g.charge(s, now, cost),
            );
            let mut mt = testkit::Metered::new(
                |s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost),
                |s: Option<&TokenBucketState>, now, cost| tb.charge(s, now, cost),
            );
            for (at, cost, is_charge) in events {
                if is_charge {
                    prop_assert_eq!(mg.charge(at, cost), mt.charge(at, cost));
                } else {
                    prop_assert_eq!(mg.step(at, cost), mt.step(at, cost));
                }
            }
        }

        #[test]
        fn overdraw_is_recorded_and_repaid_exactly(
            count in 1u64..50, period_s in 1u64..120, burst in 1u64..40,
            events in testkit::metered_events(80, 5 * SECOND, 4, 60),
        ) {
            let g = gcra(count, period_s * SECOND, burst);
            let period = period_s * SECOND;
            testkit::check_overdraw(
                testkit::Metered::new(
                    |s: Option<&GcraState>, now, cost| g.evaluate(s, now, cost),
                    |s: Option<&GcraState>, now, cost| g.charge(s, now, cost),
                ),
                &events,
                |t, at| Some(burst as u128 + (at - t) as u128 * count as u128 / period as u128),
            )?;
        }
    }
}
