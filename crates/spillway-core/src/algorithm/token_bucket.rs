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
        TokenBucketState {
            tokens: self.rate.scale(self.burst).saturating_sub(used),
            last_refill: state.last_refill,
        }
    }

    /// Checks `cost` tokens at `now`; see [`super::LimitParams::evaluate`].
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&TokenBucketState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<TokenBucketState> {
        let capacity = self.rate.scale(self.burst);
        // A clock that steps backwards refills nothing rather than going negative.
        let (tokens, last) = match state {
            None => (capacity, now),
            Some(s) => {
                let elapsed = now.saturating_sub(s.last_refill);
                let refilled = s
                    .tokens
                    .saturating_add(self.rate.refill(elapsed))
                    .min(capacity);
                (refilled, now.max(s.last_refill))
            }
        };
        let need = self.rate.scale(cost);
        let full_in = |t: u64| self.rate.time_for(capacity - t);
        let keep = |t: u64| TokenBucketState {
            tokens: t,
            last_refill: last,
        };
        if cost > self.burst {
            let decision =
                Decision::too_costly(self.burst, self.rate.whole(tokens), full_in(tokens));
            return Evaluation {
                decision,
                state: keep(tokens),
                expires_at: last + full_in(tokens),
            };
        }
        if tokens >= need {
            let left = tokens - need;
            Evaluation {
                decision: Decision::allow(self.burst, self.rate.whole(left), full_in(left)),
                state: keep(left),
                expires_at: last + full_in(left),
            }
        } else {
            let retry = self.rate.time_for(need - tokens);
            Evaluation {
                decision: Decision::over_limit(
                    self.burst,
                    self.rate.whole(tokens),
                    full_in(tokens),
                    retry,
                ),
                state: keep(tokens),
                expires_at: last + full_in(tokens),
            }
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
    }
}
