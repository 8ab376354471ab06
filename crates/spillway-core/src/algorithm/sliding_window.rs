//! Sliding window counter: the count of the current aligned window plus the previous window's
//! count weighted by how much of it the sliding window still overlaps. It smooths the burst a
//! fixed window allows at its boundary while keeping two counters per key.
//!
//! The weighting is done in exact integers (`prev x (window - elapsed) + curr x window` against
//! `limit x window`), so there is no rounding to disagree about between Rust and Lua.

use super::{Decision, Evaluation};
use crate::time::Micros;

/// Sliding window counter parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlidingWindow {
    limit: u64,
    window: Micros,
}

/// A sliding window key's state: the current aligned window and the counts of it and the one
/// before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindowState {
    /// Start of the current aligned window, in microseconds.
    pub start: Micros,
    /// Cost admitted in the window before `start` (a limit fits in 32 bits, keeping the state
    /// at 16 bytes).
    pub prev: u32,
    /// Cost admitted since `start`.
    pub curr: u32,
}

impl SlidingWindow {
    /// About `limit` per sliding `window`.
    pub fn new(limit: u64, window: Micros) -> Result<Self, String> {
        super::check_window(limit, window, u64::from(u32::MAX))?;
        Ok(Self { limit, window })
    }

    /// The limit per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub fn window(&self) -> Micros {
        self.window
    }

    /// Checks `cost` at `now`; see [`super::LimitParams::evaluate`].
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&SlidingWindowState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<SlidingWindowState> {
        let w = self.window;
        let aligned = now - now % w;
        // The stored window is current while it lasts one window length from its start, and
        // becomes the previous window for the length after that. For a state this limit wrote
        // (aligned starts) that is "it is the current aligned window, or the one before".
        // After the window's length changed, the stored window keeps its start and lasts the
        // new length, and the windows that follow it continue from its end (see
        // `super::carry`). A state that counts nothing is a fresh key wherever it started
        // (the stores drop it as soon as it is written).
        let s = match state {
            Some(s) if s.prev == 0 && s.curr == 0 => SlidingWindowState {
                start: aligned,
                prev: 0,
                curr: 0,
            },
            Some(s) if s.start + w > now => *s,
            Some(s) if s.start + 2 * w > now => SlidingWindowState {
                start: s.start + w,
                prev: s.curr,
                curr: 0,
            },
            _ => SlidingWindowState {
                start: aligned,
                prev: 0,
                curr: 0,
            },
        };
        let elapsed = now.saturating_sub(s.start);
        let (wu, limit_w) = (w as u128, self.limit as u128 * w as u128);
        let weighted = s.prev as u128 * (wu - elapsed as u128) + s.curr as u128 * wu;
        let remaining = |used: u128| super::clamp_u64(limit_w.saturating_sub(used) / wu);
        let reset = |st: &SlidingWindowState| {
            if st.curr > 0 {
                st.start + 2 * w - now
            } else if st.prev > 0 {
                st.start + w - now
            } else {
                0
            }
        };
        if cost > self.limit {
            return Evaluation {
                decision: Decision::too_costly(self.limit, remaining(weighted), reset(&s)),
                state: s,
                expires_at: now + reset(&s),
            };
        }
        let with_cost = weighted + cost as u128 * wu;
        if with_cost <= limit_w {
            // curr + cost <= limit <= u32::MAX here.
            let next = SlidingWindowState {
                curr: (u64::from(s.curr) + cost) as u32,
                ..s
            };
            Evaluation {
                decision: Decision::allow(self.limit, remaining(with_cost), reset(&next)),
                state: next,
                expires_at: now + reset(&next),
            }
        } else {
            let retry = self.retry_at(&s, cost) - now;
            Evaluation {
                decision: Decision::over_limit(self.limit, remaining(weighted), reset(&s), retry),
                state: s,
                expires_at: now + reset(&s),
            }
        }
    }

    /// Records `cost` in the current window at `now` whether or not it fits (a cost known only
    /// after the response): the window's count may pass the limit (up to 2^32 - 1, the
    /// state's width), and nothing is admitted until its weight has slid out of the window.
    /// The state is always meant to be stored; the decision tells the key's standing, as
    /// [`super::TokenBucket::charge`] does.
    pub fn charge(
        &self,
        state: Option<&SlidingWindowState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<SlidingWindowState> {
        // Read the state as a zero-cost check does (rolled into the current window), add the
        // whole cost, and tell the standing as a zero-cost check then sees it.
        let s = self.evaluate(state, now, 0).state;
        let curr = u64::from(s.curr)
            .saturating_add(cost)
            .min(u64::from(u32::MAX)) as u32;
        let next = SlidingWindowState { curr, ..s };
        let after = self.evaluate(Some(&next), now, 0);
        Evaluation {
            decision: after.decision,
            state: next,
            expires_at: after.expires_at,
        }
    }

    /// The earliest time a request of `cost` (at most the limit) passes with no other traffic.
    fn retry_at(&self, s: &SlidingWindowState, cost: u64) -> Micros {
        let w = self.window as u128;
        // The elapsed time into a window from which `prev` weighs little enough to leave
        // `room` for the request: prev x (w - e) <= room x w.
        let free_from = |prev: u32, room: u64| -> u128 {
            if prev == 0 {
                0
            } else {
                w.saturating_sub(room as u128 * w / prev as u128)
            }
        };
        let curr = u64::from(s.curr);
        if curr + cost <= self.limit {
            let e = free_from(s.prev, self.limit - curr - cost);
            if e < w {
                return s.start + e as Micros;
            }
        }
        // Next window: today's count becomes the weighted previous one.
        let e = free_from(s.curr, self.limit - cost);
        s.start + self.window + e as Micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};
    use crate::time::{MINUTE, SECOND};
    use proptest::prelude::*;

    #[test]
    fn previous_window_is_weighted_by_overlap() {
        let sw = SlidingWindow::new(10, MINUTE).unwrap();
        let mut r =
            Replay::new(|s: Option<&SlidingWindowState>, now, cost| sw.evaluate(s, now, cost));
        assert!(r.step(0, 10).allowed);
        // A quarter into the next window the previous 10 still weigh 7.5: 2 more fit, 3 do not.
        let t = MINUTE + 15 * SECOND;
        assert_eq!(r.peek(t, 2).remaining, 0);
        let d = r.peek(t, 3);
        assert!(!d.allowed);
        // 3 fit once the previous window weighs 7: 30% overlap left, at 1m18s.
        assert_eq!(d.retry_after, Some(3 * SECOND));
    }

    proptest! {
        #[test]
        fn never_exceeds_limit_in_an_aligned_window(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::events(200, 5 * SECOND, 4),
        ) {
            let sw = SlidingWindow::new(limit, window_s * SECOND).unwrap();
            testkit::check_window_bound(
                |s: Option<&SlidingWindowState>, now, cost| sw.evaluate(s, now, cost),
                &events, limit, window_s * SECOND, true,
            )?;
        }

        #[test]
        fn retry_after_is_exact(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::events(60, 5 * SECOND, 4), cost in 1u64..5,
        ) {
            let sw = SlidingWindow::new(limit, window_s * SECOND).unwrap();
            testkit::check_retry_exact(|s: Option<&SlidingWindowState>, now, cost| sw.evaluate(s, now, cost), &events, cost)?;
        }

        #[test]
        fn overdraw_is_recorded_and_repaid_exactly(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::metered_events(80, 5 * SECOND, 4, 60),
        ) {
            let a = SlidingWindow::new(limit, window_s * SECOND).unwrap();
            let w = window_s * SECOND;
            testkit::check_overdraw(
                testkit::Metered::new(
                    |s: Option<&SlidingWindowState>, now, cost| a.evaluate(s, now, cost),
                    |s: Option<&SlidingWindowState>, now, cost| a.charge(s, now, cost),
                ),
                &events,
                |t, at| (t >= at - at % w).then_some(limit as u128),
            )?;
        }
    }
}
