//! Leaky bucket as a meter: a level that drains at a constant rate; each request pours in its
//! cost and is refused if the bucket would overflow. A new key starts empty. It admits the
//! same traffic as a token bucket whose tokens are the bucket's free space, but reads the way
//! traffic-shaping people think of it (level and drain rather than tokens and refill).

use super::{Decision, Evaluation, ParamsId, ScaledRate};
use crate::rate::Rate;
use crate::time::Micros;

/// Leaky bucket parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeakyBucket {
    drain: ScaledRate,
    capacity: u64,
    id: ParamsId,
}

/// A leaky bucket key's state: the scaled level at the last update, and when that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyBucketState {
    /// Level in scaled units (one request unit is `drain.micros` units).
    pub level: u64,
    /// When `level` was last brought up to date, in microseconds.
    pub last_leak: Micros,
}

impl LeakyBucket {
    /// A bucket of `capacity` that drains at `drain`.
    pub fn new(drain: Rate, capacity: u64) -> Result<Self, String> {
        let drain = ScaledRate::new(drain);
        drain.check_capacity(capacity, "capacity")?;
        Ok(Self {
            id: drain.register(capacity),
            drain,
            capacity,
        })
    }

    /// The bucket `id` names in the register of parameters (see [`super::units`]).
    pub(crate) fn registered(id: ParamsId) -> Option<Self> {
        let (drain, capacity) = ScaledRate::registered(id)?;
        Some(Self {
            drain,
            capacity,
            id,
        })
    }

    /// The id of this bucket's numbers, which the in-memory store keeps with its states.
    #[inline]
    pub fn id(&self) -> ParamsId {
        self.id
    }

    /// The drain rate in scaled form, for stores that mirror this function elsewhere (Redis Lua).
    pub fn drain(&self) -> ScaledRate {
        self.drain
    }

    /// The bucket's capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Time for a full bucket to drain completely.
    pub fn drain_time(&self) -> Micros {
        self.drain.time_for(self.drain.scale(self.capacity))
    }

    /// Reads a state written by `from` (this limit with its numbers before a change) as this
    /// bucket: the level it held, rounded up to this bucket's units and, when the units
    /// change, at most the capacity (converted amounts stay exact integers). In the same units
    /// the level is kept as it is (above a smaller capacity it reads as full). The last leak
    /// time is kept, so the drain since then runs at the new rate. See [`super::carry`].
    pub fn carry_over(&self, state: &LeakyBucketState, from: &LeakyBucket) -> LeakyBucketState {
        let level = if from.drain.micros == self.drain.micros {
            state.level
        } else {
            let scaled = (u128::from(state.level) * u128::from(self.drain.micros))
                .div_ceil(u128::from(from.drain.micros));
            super::clamp_u64(scaled).min(self.max_level())
        };
        LeakyBucketState {
            level,
            last_leak: state.last_leak,
        }
    }

    /// Checks `cost` at `now`; see [`super::LimitParams::evaluate`].
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&LeakyBucketState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<LeakyBucketState> {
        let capacity = self.drain.scale(self.capacity);
        let (level, last) = match state {
            None => (0, now),
            Some(s) => {
                let drained = self.drain.refill(now.saturating_sub(s.last_leak));
                (s.level.saturating_sub(drained), now.max(s.last_leak))
            }
        };
        // A level above the capacity is possible only for a state kept from larger numbers
        // at the same drain rate (a counter survives a change of its limit's numbers); it has
        // no space left, and drains from where it is.
        let space = |l: u64| self.drain.whole(capacity.saturating_sub(l));
        let empty_in = |l: u64| self.drain.time_for(l);
        let keep = |l: u64| LeakyBucketState {
            level: l,
            last_leak: last,
        };
        let poured = level.saturating_add(self.drain.scale(cost));
        let decision = if cost > self.capacity {
            Decision::too_costly(self.capacity, space(level), empty_in(level))
        } else if poured <= capacity {
            return Evaluation {
                decision: Decision::allow(self.capacity, space(poured), empty_in(poured)),
                state: keep(poured),
                expires_at: last + empty_in(poured),
            };
        } else {
            let retry = self.drain.time_for(poured - capacity);
            Decision::over_limit(self.capacity, space(level), empty_in(level), retry)
        };
        Evaluation {
            decision,
            state: keep(level),
            expires_at: last + empty_in(level),
        }
    }
}

impl LeakyBucket {
    /// The highest level a key may reach, in scaled units ([`super::max_used`]).
    #[inline]
    pub fn max_level(&self) -> u64 {
        super::max_used(&self.drain, self.drain.scale(self.capacity))
    }

    /// Pours `cost` in at `now` whether or not it fits (a cost known only after the
    /// response): the level may rise above the capacity (at most [`LeakyBucket::max_level`]),
    /// and nothing is admitted until it has drained back to the capacity. The state is always
    /// meant to be stored; the decision tells the key's standing, as
    /// [`super::TokenBucket::charge`] does.
    pub fn charge(
        &self,
        state: Option<&LeakyBucketState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<LeakyBucketState> {
        let capacity = self.drain.scale(self.capacity);
        let (level, last) = match state {
            None => (0, now),
            Some(s) => {
                let drained = self.drain.refill(now.saturating_sub(s.last_leak));
                (s.level.saturating_sub(drained), now.max(s.last_leak))
            }
        };
        let need = self.drain.scale(cost).min(super::MAX_SCALED as u64);
        let max = self.max_level();
        let level = if need >= max - level.min(max) {
            max
        } else {
            level + need
        };
        let empty_in = self.drain.time_for(level);
        let decision = if level <= capacity {
            Decision::allow(self.capacity, self.drain.whole(capacity - level), empty_in)
        } else {
            Decision::over_limit(
                self.capacity,
                0,
                empty_in,
                self.drain.time_for(level - capacity),
            )
        };
        Evaluation {
            decision,
            state: LeakyBucketState {
                level,
                last_leak: last,
            },
            expires_at: last + empty_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};

    #[test]
    fn a_level_above_a_smaller_capacity_reads_as_full() {
        let big = LeakyBucket::new(Rate::new(100, SECOND).unwrap(), 70).unwrap();
        let small = LeakyBucket::new(Rate::new(100, SECOND).unwrap(), 10).unwrap();
        let mut state = None;
        for _ in 0..70 {
            state = Some(big.evaluate(state.as_ref(), 0, 1).state);
        }
        let e = small.evaluate(state.as_ref(), 0, 1);
        assert!(!e.decision.allowed);
        assert_eq!(e.decision.remaining, 0);
    }
    use crate::time::SECOND;
    use proptest::prelude::*;

    #[test]
    fn fills_then_drains() {
        let lb = LeakyBucket::new(Rate::new(2, SECOND).unwrap(), 4).unwrap();
        let mut r =
            Replay::new(|s: Option<&LeakyBucketState>, now, cost| lb.evaluate(s, now, cost));
        assert_eq!(r.step(0, 4).remaining, 0);
        let d = r.step(0, 1);
        assert_eq!(d.retry_after, Some(SECOND / 2));
        assert_eq!(r.step(SECOND, 2).remaining, 0);
        assert_eq!(r.peek(3 * SECOND, 1).remaining, 3);
    }

    proptest! {
        #[test]
        fn admits_at_most_capacity_plus_drain_times_t(
            count in 1u64..50, period_s in 1u64..120, capacity in 1u64..40,
            events in testkit::events(200, 5 * SECOND, 4),
        ) {
            let lb = LeakyBucket::new(Rate::new(count, period_s * SECOND).unwrap(), capacity).unwrap();
            testkit::check_bucket_bound(
                |s: Option<&LeakyBucketState>, now, cost| lb.evaluate(s, now, cost),
                &events, capacity, count, period_s * SECOND,
            )?;
        }

        #[test]
        fn retry_after_is_exact(
            count in 1u64..50, period_s in 1u64..120, capacity in 1u64..40,
            events in testkit::events(60, 3 * SECOND, 4), cost in 1u64..5,
        ) {
            let lb = LeakyBucket::new(Rate::new(count, period_s * SECOND).unwrap(), capacity).unwrap();
            testkit::check_retry_exact(|s: Option<&LeakyBucketState>, now, cost| lb.evaluate(s, now, cost), &events, cost)?;
        }

        #[test]
        fn overdraw_is_recorded_and_repaid_exactly(
            count in 1u64..50, period_s in 1u64..120, capacity in 1u64..40,
            events in testkit::metered_events(80, 5 * SECOND, 4, 60),
        ) {
            let lb = LeakyBucket::new(Rate::new(count, period_s * SECOND).unwrap(), capacity).unwrap();
            let period = period_s * SECOND;
            testkit::check_overdraw(
                testkit::Metered::new(
                    |s: Option<&LeakyBucketState>, now, cost| lb.evaluate(s, now, cost),
                    |s: Option<&LeakyBucketState>, now, cost| lb.charge(s, now, cost),
                ),
                &events,
                |t, at| Some(capacity as u128 + (at - t) as u128 * count as u128 / period as u128),
            )?;
        }
    }
}
