//! Token bucket: a bucket of `burst` tokens that refills continuously at `rate`; a request
//! takes `cost` tokens if that many are there. A new key starts full.

use super::{Decision, Evaluation, ParamsId, ScaledRate};
use crate::rate::Rate;
use crate::time::Micros;

/// Token bucket parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    rate: ScaledRate,
    burst: u64,
    id: ParamsId,
}

/// A token bucket key's state: scaled tokens held at the last refill, and when that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketState {
    /// Tokens in scaled units (one token is `rate.micros` units); at most the burst.
    pub tokens: u64,
    /// When `tokens` was last brought up to date, in microseconds.
    pub last_refill: Micros,
}

impl TokenBucket {
    /// A bucket holding at most `burst` tokens and refilling at `rate`.
    pub fn new(rate: Rate, burst: u64) -> Result<Self, String> {
        let rate = ScaledRate::new(rate);
        rate.check_capacity(burst, "burst")?;
        Ok(Self {
            id: rate.register(burst),
            rate,
            burst,
        })
    }

    /// The bucket `id` names in the register of parameters (see [`super::units`]).
    pub(crate) fn registered(id: ParamsId) -> Option<Self> {
        let (rate, burst) = ScaledRate::registered(id)?;
        Some(Self { rate, burst, id })
    }

    /// The id of this bucket's numbers, which the in-memory store keeps with its states.
    #[inline]
    pub fn id(&self) -> ParamsId {
        self.id
    }

    /// The refill rate in scaled form, for stores that mirror this function elsewhere (Redis Lua).
    pub fn rate(&self) -> ScaledRate {
        self.rate
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Time for an empty bucket to refill completely.
    pub fn refill_time(&self) -> Micros {
        self.rate.time_for(self.rate.scale(self.burst))
    }

    /// Reads a state written by `from` (this limit with its numbers before a change) as this
    /// bucket: what it had used at its last refill (the old capacity less its tokens), rounded
    /// up to this bucket's units, is taken from this bucket's capacity (none left if it used
    /// at least that). The last refill time is kept, so the refill since then runs at the new
    /// rate. A full bucket stays full whatever the numbers. See [`super::carry`].
    pub fn carry_over(&self, state: &TokenBucketState, from: &TokenBucket) -> TokenBucketState {
        let used = from.rate.scale(from.burst).saturating_sub(state.tokens);
        let used = if from.rate.micros == self.rate.micros {
            used
        } else {
            super::clamp_u64(
                (u128::from(used) * u128::from(self.rate.micros))
                    .div_ceil(u128::from(from.rate.micros)),
            )
        };
        // Nothing used is forgiven: what is above the new capacity (a debt, or more used than
        // a smaller capacity holds) stays owed, up to `max_used`, repaid from the last refill.
        let capacity = self.rate.scale(self.burst);
        let used = used.min(super::max_used(&self.rate, capacity));
        if used <= capacity {
            return TokenBucketState {
                tokens: capacity - used,
                last_refill: state.last_refill,
            };
        }
        let extra = used - capacity;
        let q = self.rate.time_for(extra);
        TokenBucketState {
            tokens: q * self.rate.tokens - extra,
            last_refill: state.last_refill + q,
        }
    }

    /// What the bucket holds at `now`: scaled tokens, or (with no tokens) a debt in scaled
    /// units that a charge after the fact left behind (see [`TokenBucket::charge`]).
    ///
    /// A bucket in debt is stored with its last refill in the future: it will hold `tokens`
    /// at that time, so until then it owes the refill still to come less those tokens. A
    /// state whose last refill lies ahead because the clock stepped back reads the same way:
    /// the step costs tokens (never admits more), where it used to refill nothing.
    #[inline]
    fn standing(&self, state: Option<&TokenBucketState>, now: Micros) -> (u64, u64) {
        let capacity = self.rate.scale(self.burst);
        match state {
            None => (capacity, 0),
            Some(s) if s.last_refill > now => {
                let owed = self.rate.refill(s.last_refill - now);
                if s.tokens >= owed {
                    ((s.tokens - owed).min(capacity), 0)
                } else {
                    (0, (owed - s.tokens).min(self.max_debt()))
                }
            }
            Some(s) => {
                let elapsed = now - s.last_refill;
                let refilled = s
                    .tokens
                    .saturating_add(self.rate.refill(elapsed))
                    .min(capacity);
                (refilled, 0)
            }
        }
    }

    /// The most a key may owe, in scaled units: what [`super::max_used`] leaves beyond the
    /// capacity.
    #[inline]
    pub fn max_debt(&self) -> u64 {
        let capacity = self.rate.scale(self.burst);
        super::max_used(&self.rate, capacity) - capacity
    }

    /// The state holding `tokens` (or owing `debt`) at `now`.
    #[inline]
    fn state_of(&self, tokens: u64, debt: u64, now: Micros) -> TokenBucketState {
        if debt == 0 {
            return TokenBucketState {
                tokens,
                last_refill: now,
            };
        }
        // Repaid `q` microseconds from now, with `q x rate - debt` (less than one
        // microsecond's refill) already refilled by then.
        let q = self.rate.time_for(debt);
        TokenBucketState {
            tokens: q * self.rate.tokens - debt,
            last_refill: now + q,
        }
    }

    /// Checks `cost` tokens at `now`; see [`super::LimitParams::evaluate`]. A key in debt is
    /// denied whatever the cost (even zero) until the debt is repaid.
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&TokenBucketState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<TokenBucketState> {
        let capacity = self.rate.scale(self.burst);
        let (tokens, debt) = self.standing(state, now);
        let need = self.rate.scale(cost);
        // Time until the bucket is full again: its free space plus what it owes.
        let full_in = |t: u64, d: u64| self.rate.time_for(capacity - t + d);
        let keep = self.state_of(tokens, debt, now);
        if cost > self.burst {
            let decision =
                Decision::too_costly(self.burst, self.rate.whole(tokens), full_in(tokens, debt));
            return Evaluation {
                decision,
                state: keep,
                expires_at: now + full_in(tokens, debt),
            };
        }
        if debt == 0 && tokens >= need {
            let left = tokens - need;
            Evaluation {
                decision: Decision::allow(self.burst, self.rate.whole(left), full_in(left, 0)),
                state: self.state_of(left, 0, now),
                expires_at: now + full_in(left, 0),
            }
        } else {
            // need - tokens + debt, where either tokens or debt is zero.
            let retry = self.rate.time_for(need - tokens.min(need) + debt);
            Evaluation {
                decision: Decision::over_limit(
                    self.burst,
                    self.rate.whole(tokens),
                    full_in(tokens, debt),
                    retry,
                ),
                state: keep,
                expires_at: now + full_in(tokens, debt),
            }
        }
    }

    /// Records `cost` tokens used at `now` whether or not the bucket holds them (a cost known
    /// only after the response): what the bucket lacks becomes a debt, at most
    /// [`TokenBucket::max_debt`], that the refill repays before anything is admitted again.
    /// The state is always meant to be stored. The decision tells the key's standing after
    /// the charge: allowed while it owes nothing, else denied with `retry_after` the time
    /// until the debt is repaid (when a zero-cost check passes again).
    pub fn charge(
        &self,
        state: Option<&TokenBucketState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<TokenBucketState> {
        let capacity = self.rate.scale(self.burst);
        let (tokens, debt) = self.standing(state, now);
        let need = self.rate.scale(cost).min(super::MAX_SCALED as u64);
        let max_debt = self.max_debt();
        let (tokens, debt) = if debt == 0 && tokens >= need {
            (tokens - need, 0)
        } else if need - tokens.min(need) >= max_debt - debt.min(max_debt) {
            (0, max_debt)
        } else {
            (0, debt + need - tokens.min(need))
        };
        let full_in = self.rate.time_for(capacity - tokens + debt);
        let decision = if debt == 0 {
            Decision::allow(self.burst, self.rate.whole(tokens), full_in)
        } else {
            Decision::over_limit(self.burst, 0, full_in, self.rate.time_for(debt))
        };
        Evaluation {
            decision,
            state: self.state_of(tokens, debt, now),
            expires_at: now + full_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};
    use crate::time::{MINUTE, SECOND};
    use proptest::prelude::*;

    fn bucket(count: u64, period: Micros, burst: u64) -> TokenBucket {
        TokenBucket::new(Rate::new(count, period).unwrap(), burst).unwrap()
    }

    #[test]
    fn new_key_starts_full_and_drains() {
        let tb = bucket(10, SECOND, 3);
        let mut r =
            Replay::new(|s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost));
        assert_eq!(r.step(0, 1).remaining, 2);
        assert_eq!(r.step(0, 2).remaining, 0);
        let denied = r.step(0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Some(100_000)); // one token every 100 ms
        assert!(r.step(100_000, 1).allowed);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let tb = bucket(100, MINUTE, 20);
        let mut r =
            Replay::new(|s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost));
        r.step(0, 20);
        assert_eq!(r.step(10 * MINUTE, 1).remaining, 19);
    }

    #[test]
    fn cost_above_burst_is_a_distinct_denial() {
        let tb = bucket(100, MINUTE, 20);
        let d = tb.evaluate(None, 0, 21).decision;
        assert_eq!(d.denial, Some(super::super::Denial::CostExceedsLimit));
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn reports_reset_and_limit() {
        let tb = bucket(1, SECOND, 5);
        let d = tb.evaluate(None, 0, 2).decision;
        assert_eq!((d.limit, d.remaining, d.reset_after), (5, 3, 2 * SECOND));
    }

    #[test]
    fn overdraw_is_repaid_by_refill() {
        // 1000 tokens an hour, burst 1000: the generation budget.
        let tb = bucket(1000, 3600 * SECOND, 1000);
        let mut m = testkit::Metered::new(
            |s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost),
            |s: Option<&TokenBucketState>, now, cost| tb.charge(s, now, cost),
        );
        assert!(m.step(0, 0).allowed);
        assert_eq!(m.charge(0, 900).remaining, 100);
        assert!(m.step(0, 0).allowed);
        let d = m.charge(0, 400);
        assert!(!d.allowed);
        // 300 owed at 3.6 s a token.
        assert_eq!(d.retry_after, Some(300 * 3_600_000));
        let denied = m.step(0, 0);
        assert_eq!(denied.retry_after, Some(300 * 3_600_000));
        assert_eq!(denied.reset_after, 1300 * 3_600_000);
        assert!(!m.step(300 * 3_600_000 - 1, 0).allowed);
        assert!(m.step(300 * 3_600_000, 0).allowed);
        assert_eq!(m.peek(301 * 3_600_000, 1).remaining, 0);
    }

    #[test]
    fn a_debt_is_capped_at_ten_years_of_refill() {
        let tb = bucket(1, SECOND, 5);
        let e = tb.charge(None, 0, u64::MAX);
        // Repaid, and the bucket full again, within ten years.
        assert_eq!(
            e.decision.retry_after,
            Some(crate::algorithm::MAX_WINDOW - 5 * SECOND)
        );
        assert_eq!(e.decision.reset_after, crate::algorithm::MAX_WINDOW);
        assert!(e.state.last_refill <= crate::algorithm::MAX_WINDOW);
    }

    proptest! {
        #[test]
        fn admits_at_most_burst_plus_rate_times_t(
            count in 1u64..50, period_s in 1u64..120, burst in 1u64..40,
            events in testkit::events(200, 5 * SECOND, 4),
        ) {
            let tb = bucket(count, period_s * SECOND, burst);
            testkit::check_bucket_bound(
                |s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost),
                &events, burst, count, period_s * SECOND,
            )?;
        }

        #[test]
        fn retry_after_is_exact(
            count in 1u64..50, period_s in 1u64..120, burst in 1u64..40,
            events in testkit::events(60, 3 * SECOND, 4), cost in 1u64..5,
        ) {
            let tb = bucket(count, period_s * SECOND, burst);
            testkit::check_retry_exact(
                |s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost), &events, cost,
            )?;
        }

        #[test]
        fn tokens_never_exceed_capacity(
            count in 1u64..1000, period_s in 1u64..120, burst in 1u64..40,
            events in testkit::events(100, 100 * SECOND, 3),
        ) {
            let tb = bucket(count, period_s * SECOND, burst);
            let mut r = Replay::new(|s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost));
            for (at, cost) in events {
                let d = r.step(at, cost);
                prop_assert!(d.remaining <= burst);
                if let Some(s) = r.state() {
                    prop_assert!(s.tokens <= tb.rate.scale(burst));
                }
            }
        }

        #[test]
        fn overdraw_is_recorded_and_repaid_exactly(
            count in 1u64..50, period_s in 1u64..120, burst in 1u64..40,
            events in testkit::metered_events(80, 5 * SECOND, 4, 60),
        ) {
            let tb = bucket(count, period_s * SECOND, burst);
            let period = period_s * SECOND;
            testkit::check_overdraw(
                testkit::Metered::new(
                    |s: Option<&TokenBucketState>, now, cost| tb.evaluate(s, now, cost),
                    |s: Option<&TokenBucketState>, now, cost| tb.charge(s, now, cost),
                ),
                &events,
                |t, at| Some(burst as u128 + (at - t) as u128 * count as u128 / period as u128),
            )?;
        }
    }
}
