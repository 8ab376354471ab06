//! Reading a counter's state under numbers other than the ones that wrote it.
//!
//! A counter's identity is its limit's name, algorithm and key dimensions, not its numbers
//! (`crate::key`), so tightening a limit on reload, or a tenant's override of it, reads the
//! state the old numbers left instead of handing every key a fresh quota. What "the same
//! state under new numbers" means, per algorithm (each rounds so it never admits more than
//! the new numbers allow):
//!
//! What is kept is what was *used*, so 950 used of 1,000 is over a new limit of 900 and is
//! denied until enough is refilled, drained or out of the window; and a key that had used
//! nothing reads as fresh under any numbers (so a store may drop a state as soon as it is
//! fresh under the numbers that wrote it, as both stores do).
//!
//! - **Token bucket**: what was used at the last refill (the old capacity less the tokens),
//!   rounded up to the new units, is taken from the new capacity; what exceeds it (a debt
//!   from a charge after the fact, or more used than a smaller capacity holds) stays owed;
//!   the refill since the last update runs at the new rate.
//! - **GCRA**: the debt at the time of reading (drained at the old rate until then), rounded
//!   up to the new units, past the new burst if it was (a debt is never forgiven).
//! - **Leaky bucket**: the level, rounded up to the new units, above the new capacity if it
//!   was; the drain since the last update runs at the new rate.
//!
//! Only the shared bound `max_used` (ten years of refill) caps what is carried, as it caps
//! a charge.
//! - **Fixed and sliding window, sliding log**: their counts and timestamps do not depend on
//!   the numbers, so nothing is converted: a count is compared with the new limit as it is.
//!   When a window's *length* changes, the stored window keeps its start and lasts the new
//!   length (a fixed window until the first boundary of the new length at least that long
//!   after its start, `FixedWindow::end_of`, then realigns to the new length; a sliding
//!   window's following windows continue from that end); a sliding log counts the entries
//!   inside the new window.
//!
//! The bucket amounts are kept in units scaled by the rate, so converting needs the old
//! numbers: the in-memory store keeps a [`ParamsId`] with each state, and the Redis scripts
//! write the numbers they need into the state string; both convert exactly as these functions
//! do (the conformance vectors include changes of numbers). A GCRA or leaky-bucket state read
//! in its own units under a smaller burst or capacity is read as is (a debt or level above it
//! reads as full and drains from where it is). Changing a limit's algorithm changes its
//! identity, so it starts on fresh counters.
//!
//! A state is dropped once it is fresh under the numbers that wrote it (its expiry), so a key
//! idle past that point may read as fresh even where the new numbers (a slower refill, a
//! longer window) would still have counted it: it had fully recovered under the old ones.
//!
//! Known, and left as it is: the times a denial tells after a change of numbers can be off,
//! never what is admitted. A bucket tightened far below what a key used tells a retry and a
//! reset at the new, slower rate (days), while the store drops the state at its old expiry
//! (the Redis store's over-limit cache therefore replays a denial for an hour at most,
//! `local_cache::MAX_HELD`). A GCRA state is converted at the time of reading, from the stored
//! state, which drains at the old rate until a request is admitted; a rate loosened far above
//! the old one tells a retry at the new rate, too early, and a client obeying it is denied
//! again until the old debt has drained to what the new burst holds. Both last at most until
//! the first admission under the new numbers, which rewrites the state in them.

use super::{Gcra, LeakyBucket, LimitParams, ParamsId, State, StateRef, TokenBucket};
use crate::time::Micros;

impl LimitParams {
    /// The id of the numbers this limit's stored states are written under
    /// ([`ParamsId::OVERFLOW`] for the window algorithms, whose states need no conversion).
    #[inline]
    pub fn id(&self) -> ParamsId {
        match self {
            Self::TokenBucket(p) => p.id(),
            Self::Gcra(p) => p.id(),
            Self::LeakyBucket(p) => p.id(),
            Self::FixedWindow(_) | Self::SlidingWindow(_) | Self::SlidingLog(_) => {
                ParamsId::OVERFLOW
            }
        }
    }

    /// `state`, written by this limit with the parameters `from` (its numbers before a
    /// change), as these parameters read it at `now`; `None` when it reads as it is (same
    /// numbers, an algorithm without units, or another algorithm's state, which
    /// [`LimitParams::evaluate`] treats as fresh). See the module docs for what each algorithm
    /// keeps.
    pub fn carry_over(
        &self,
        from: &LimitParams,
        state: StateRef<'_>,
        now: Micros,
    ) -> Option<State> {
        if self == from {
            return None;
        }
        match (self, from, state) {
            (Self::TokenBucket(p), Self::TokenBucket(f), StateRef::TokenBucket(s)) => {
                Some(State::TokenBucket(p.carry_over(s, f)))
            }
            (Self::Gcra(p), Self::Gcra(f), StateRef::Gcra(s)) => {
                Some(State::Gcra(p.carry_over(s, f, now)))
            }
            (Self::LeakyBucket(p), Self::LeakyBucket(f), StateRef::LeakyBucket(s)) => {
                Some(State::LeakyBucket(p.carry_over(s, f)))
            }
            _ => None,
        }
    }

    /// [`LimitParams::carry_over`] for a state stored with the [`ParamsId`] of the numbers that
    /// wrote it, as the in-memory store keeps it.
    pub fn carry_over_from(&self, id: ParamsId, state: StateRef<'_>, now: Micros) -> Option<State> {
        if id == self.id() {
            return None;
        }
        let from = match self {
            Self::TokenBucket(_) => Self::TokenBucket(TokenBucket::registered(id)?),
            Self::Gcra(_) => Self::Gcra(Gcra::registered(id)?),
            Self::LeakyBucket(_) => Self::LeakyBucket(LeakyBucket::registered(id)?),
            _ => return None,
        };
        self.carry_over(&from, state, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{
        FixedWindow, Gcra, LeakyBucket, SlidingLog, SlidingWindow, TokenBucket,
    };
    use crate::rate::Rate;
    use crate::time::{DAY, HOUR, MINUTE, SECOND};
    use proptest::prelude::*;

    const T0: Micros = 1_700_000_000_000_000;

    fn bucket(alg: &str, count: u64, period: Micros, amount: u64) -> LimitParams {
        let rate = Rate::new(count, period).expect("rate");
        match alg {
            "token_bucket" => LimitParams::TokenBucket(TokenBucket::new(rate, amount).expect("tb")),
            "gcra" => LimitParams::Gcra(Gcra::new(rate, amount).expect("gcra")),
            _ => LimitParams::LeakyBucket(LeakyBucket::new(rate, amount).expect("lb")),
        }
    }

    /// Spends `n` units one by one at `at` under `params`, then reads the state under `to`.
    fn spend_then_read(
        params: &LimitParams,
        to: &LimitParams,
        n: u64,
        at: Micros,
    ) -> (State, Option<State>) {
        let mut state: Option<State> = None;
        for _ in 0..n {
            let e = params.evaluate(state.as_ref().map(State::as_ref), at, 1);
            assert!(e.decision.allowed);
            state = Some(e.state);
        }
        let state = state.expect("spent something");
        let carried = to.carry_over(params, state.as_ref(), at);
        (state, carried)
    }

    fn remaining_after(
        to: &LimitParams,
        state: &State,
        carried: Option<&State>,
        at: Micros,
    ) -> (bool, u64) {
        let read = carried.unwrap_or(state);
        let d = to.evaluate(Some(read.as_ref()), at, 1).decision;
        (d.allowed, d.remaining)
    }

    #[test]
    fn a_day_limit_tightened_below_what_was_used_denies() {
        // 950 used of 1,000 a day; the limit becomes 900 a day.
        let fixed = |limit| LimitParams::FixedWindow(FixedWindow::new(limit, DAY).expect("fw"));
        let (state, carried) = spend_then_read(&fixed(1000), &fixed(900), 950, T0);
        assert!(carried.is_none(), "a window's count needs no conversion");
        assert_eq!(remaining_after(&fixed(900), &state, None, T0), (false, 0));
        for alg in ["token_bucket", "gcra", "leaky_bucket"] {
            let (old, new) = (bucket(alg, 1000, DAY, 1000), bucket(alg, 900, DAY, 900));
            let (state, carried) = spend_then_read(&old, &new, 950, T0);
            assert!(carried.is_some(), "{alg}: another rate converts");
            assert_eq!(
                remaining_after(&new, &state, carried.as_ref(), T0),
                (false, 0),
                "{alg}"
            );
        }
        // Loosened, the 950 used stay used: 50 of 1,000 become 1,050 of 2,000.
        let (old, new) = (
            bucket("token_bucket", 1000, DAY, 1000),
            bucket("token_bucket", 2000, DAY, 2000),
        );
        let (state, carried) = spend_then_read(&old, &new, 950, T0);
        assert_eq!(
            remaining_after(&new, &state, carried.as_ref(), T0),
            (true, 1049)
        );
    }

    #[test]
    fn a_window_length_change_keeps_the_count_until_a_new_boundary() {
        let hour = LimitParams::FixedWindow(FixedWindow::new(10, HOUR).expect("fw"));
        let day = LimitParams::FixedWindow(FixedWindow::new(10, DAY).expect("fw"));
        let start = T0 - T0 % HOUR;
        // The first day boundary at least a day after the hour's start.
        let boundary = (start + DAY).div_ceil(DAY) * DAY;
        assert!(boundary > start + DAY, "T0's hour is not a day's start");
        let e = hour.evaluate(None, start + MINUTE, 10);
        let d = day
            .evaluate(Some(e.state.as_ref()), start + 2 * HOUR, 1)
            .decision;
        assert!(
            !d.allowed,
            "the hour's 10 count in the day-long window that starts with it"
        );
        assert_eq!(d.reset_after, boundary - (start + 2 * HOUR));
        assert_eq!(d.retry_after, Some(boundary - (start + 2 * HOUR)));
        let at = |t: Micros| day.evaluate(Some(e.state.as_ref()), t, 1).decision.allowed;
        assert!(
            !at(start + DAY),
            "the aligned day it overlaps goes on counting them"
        );
        assert!(!at(boundary - 1));
        assert!(at(boundary));

        let sliding = |w| LimitParams::SlidingWindow(SlidingWindow::new(10, w).expect("sw"));
        let e = sliding(MINUTE).evaluate(None, start, 10);
        let later = sliding(HOUR).evaluate(Some(e.state.as_ref()), start + 30 * MINUTE, 1);
        assert!(
            !later.decision.allowed,
            "still the current window under the new length"
        );
        let log = LimitParams::SlidingLog(SlidingLog::new(10, MINUTE).expect("sl"));
        let e = log.evaluate(None, start, 10);
        let longer = LimitParams::SlidingLog(SlidingLog::new(10, HOUR).expect("sl"));
        assert!(
            !longer
                .evaluate(Some(e.state.as_ref()), start + 30 * MINUTE, 1)
                .decision
                .allowed
        );
    }

    /// 10 an hour made 10 a day: one request at 23:10 counted in the hour from 23:00, and
    /// nine more after midnight in the window carried from it. The day from midnight has
    /// taken nine, so it admits one more at 23:00, not ten (it used to, when the carried
    /// window ended a day after 23:00 and the day from midnight started again at 0).
    #[test]
    fn a_lengthened_window_never_lets_the_aligned_window_admit_twice() {
        let hour = LimitParams::FixedWindow(FixedWindow::new(10, HOUR).expect("fw"));
        let day = LimitParams::FixedWindow(FixedWindow::new(10, DAY).expect("fw"));
        let midnight = (T0 / DAY + 1) * DAY;
        let e = hour.evaluate(None, midnight - 50 * MINUTE, 1);
        assert!(e.decision.allowed);
        let mut state = e.state;
        for i in 0..9 {
            let e = day.evaluate(Some(state.as_ref()), midnight + 30 * MINUTE + i, 1);
            assert!(e.decision.allowed, "request {i} after midnight");
            state = e.state;
        }
        let mut admitted = 0;
        for i in 0..10 {
            let e = day.evaluate(Some(state.as_ref()), midnight + 23 * HOUR + i, 1);
            if e.decision.allowed {
                admitted += 1;
                state = e.state;
            }
        }
        assert_eq!(
            admitted, 0,
            "the carried window goes on to midnight's day end"
        );
        let e = day.evaluate(Some(state.as_ref()), midnight + DAY, 10);
        assert!(e.decision.allowed, "the next day is whole");
        assert_eq!(e.expires_at, midnight + 2 * DAY);
    }

    #[test]
    fn registered_ids_convert_like_the_parameters() {
        let old = bucket("gcra", 7, SECOND, 20);
        let new = bucket("gcra", 5, SECOND, 10);
        let (state, carried) = spend_then_read(&old, &new, 12, T0);
        assert_eq!(
            new.carry_over_from(old.id(), state.as_ref(), T0 + 1),
            new.carry_over(&old, state.as_ref(), T0 + 1)
        );
        assert!(carried.is_some());
        assert_eq!(new.carry_over_from(new.id(), state.as_ref(), T0), None);
        assert_eq!(
            new.carry_over_from(ParamsId::OVERFLOW, state.as_ref(), T0),
            None
        );
    }

    #[test]
    fn a_debt_survives_a_change_of_numbers() {
        // 1,500 charged after the fact on 1,000 an hour: 500 in debt. No new numbers forgive
        // it: a zero-cost check stays denied, and the time until it passes covers the debt.
        for alg in ["token_bucket", "gcra", "leaky_bucket"] {
            let old = bucket(alg, 1000, HOUR, 1000);
            let state = old.charge(None, T0, 1500).state;
            for (count, amount) in [(900, 900), (1000, 1200), (1200, 1000), (1000, 500)] {
                let new = bucket(alg, count, HOUR, amount);
                let read = new.carry_over(&old, state.as_ref(), T0);
                let read = read.as_ref().unwrap_or(&state);
                let d = new.evaluate(Some(read.as_ref()), T0, 0).decision;
                assert!(!d.allowed, "{alg} {count}/{amount}: debt forgiven");
                // At least the part above the new amount at the faster of the two rates (a
                // token bucket's debt is a time, refilled at the new rate), less rounding.
                let owed = 1500 - amount.min(1500);
                let at_least = HOUR * owed / count.max(1000) - SECOND;
                assert!(
                    d.retry_after.unwrap_or(0) >= at_least,
                    "{alg} {count}/{amount}: retry {:?} < {at_least}",
                    d.retry_after
                );
            }
        }
    }

    fn algorithm() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("token_bucket"), Just("gcra"), Just("leaky_bucket")]
    }

    /// Numbers with awkward reductions: periods from a millisecond to a day, plus a few
    /// microseconds.
    fn numbers() -> impl Strategy<Value = (u64, u64, u64)> {
        (
            1u64..2000,
            prop_oneof![Just(1_000u64), Just(SECOND), Just(MINUTE), Just(DAY)],
            0u64..3,
            1u64..200,
        )
            .prop_map(|(count, period, odd, amount)| (count, period + odd, amount))
    }

    proptest! {
        #[test]
        fn converting_never_leaves_more_than_the_new_limit_and_same_numbers_change_nothing(
            alg in algorithm(), a in numbers(), b in numbers(),
            spend in 0u64..400, gap in 0u64..(2 * HOUR),
        ) {
            let old = bucket(alg, a.0, a.1, a.2);
            let new = bucket(alg, b.0, b.1, b.2);
            let mut state: Option<State> = None;
            let mut left = spend;
            while left > 0 {
                let e = old.evaluate(state.as_ref().map(State::as_ref), T0, 1);
                if !e.decision.allowed { break; }
                state = Some(e.state);
                left -= 1;
            }
            let Some(state) = state else { return Ok(()) };
            let now = T0 + gap;
            prop_assert_eq!(old.carry_over(&old, state.as_ref(), now), None);
            let read = new.carry_over(&old, state.as_ref(), now);
            let d = new.evaluate(Some(read.as_ref().unwrap_or(&state).as_ref()), now, 0).decision;
            prop_assert!(d.remaining <= new.quota());
            // Never more left than the new quota less what was used under the old numbers,
            // plus what either rate refills over the gap (the GCRA drains at the old rate until
            // it is read, the other two at the new one since their last update), plus one for
            // the fraction of a token either side may hold.
            let before = old.evaluate(Some(state.as_ref()), T0, 0).decision.remaining;
            let allowed = new.quota().saturating_sub(old.quota() - before);
            let refill = (u128::from(gap) * u128::from(a.0) / u128::from(a.1))
                .max(u128::from(gap) * u128::from(b.0) / u128::from(b.1));
            prop_assert!(
                u128::from(d.remaining) <= u128::from(allowed) + refill + 1,
                "{} left {} under new numbers, {} before", alg, d.remaining, before
            );
        }
    }
}
