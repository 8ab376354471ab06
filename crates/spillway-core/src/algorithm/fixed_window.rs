//! Fixed window counter: at most `limit` per window, windows aligned to multiples of their
//! length since the Unix epoch (so `1m` windows start on the minute, `1d` at midnight UTC, and
//! a `30s` window at :00 and :30).

use super::{Decision, Evaluation};
use crate::time::Micros;

/// Fixed window parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FixedWindow {
    limit: u64,
    window: Micros,
}

/// A fixed window key's state: which window is being counted, and the count in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindowState {
    /// Start of the counted window, in microseconds.
    pub start: Micros,
    /// Cost admitted in that window.
    pub count: u64,
}

impl FixedWindow {
    /// At most `limit` per `window`.
    pub fn new(limit: u64, window: Micros) -> Result<Self, String> {
        super::check_window(limit, window, super::MAX_SCALED as u64)?;
        Ok(Self { limit, window })
    }

    /// The per-window limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub fn window(&self) -> Micros {
        self.window
    }

    /// Where the window counted from `start` ends: one length after it, rounded up to the next
    /// boundary of this length. A window this limit opened starts on a boundary, so that is
    /// one length. A window carried over from another length (`super::carry`) goes on to the
    /// boundary: ended one length after its start, it would leave the aligned window it
    /// overlaps to start again at 0, and that window could admit up to twice the limit
    /// (10 an hour made 10 a day: counted from the hour before midnight, the day from
    /// midnight would take 10 more at 23:00).
    fn end_of(&self, start: Micros) -> Micros {
        let end = start.saturating_add(self.window);
        end.div_ceil(self.window).saturating_mul(self.window)
    }

    /// The window counted at `now`: its start, its count and its end; a fresh one aligned to
    /// this length unless `state`'s lasts past `now`.
    #[inline]
    fn counted(&self, state: Option<&FixedWindowState>, now: Micros) -> (Micros, u64, Micros) {
        if let Some(s) = state {
            let end = self.end_of(s.start);
            if end > now {
                return (s.start, s.count, end);
            }
        }
        let aligned = now - now % self.window;
        (aligned, 0, aligned.saturating_add(self.window))
    }

    /// Checks `cost` at `now`; see [`super::LimitParams::evaluate`].
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<&FixedWindowState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<FixedWindowState> {
        // The stored window lasts until `end_of` its start. For a state this limit wrote, that
        // is "it is the current aligned window" (or a later one: the clock stepped back, so
        // keep counting in it). After the window's length changed, the counted window keeps
        // its start and count until the first boundary of the new length at least one new
        // length after it; windows align to the new length from then on (see `super::carry`).
        let (start, count, end) = self.counted(state, now);
        let reset = end.saturating_sub(now);
        let keep = |count| FixedWindowState { start, count };
        let left = self.limit.saturating_sub(count);
        if cost > self.limit {
            let reset = if count == 0 { 0 } else { reset };
            return Evaluation {
                decision: Decision::too_costly(self.limit, left, reset),
                state: keep(count),
                expires_at: end,
            };
        }
        if count + cost <= self.limit {
            let used = count + cost;
            let reset = if used == 0 { 0 } else { reset };
            Evaluation {
                decision: Decision::allow(self.limit, self.limit - used, reset),
                state: keep(used),
                expires_at: end,
            }
        } else {
            Evaluation {
                decision: Decision::over_limit(self.limit, left, reset, reset),
                state: keep(count),
                expires_at: end,
            }
        }
    }
}

impl FixedWindow {
    /// Records `cost` in the current window at `now` whether or not it fits (a cost known only
    /// after the response): the count may pass the limit (up to 2^53, the Lua mirror's exact
    /// range), and nothing is admitted until the window ends. The state is always meant to be
    /// stored; the decision tells the key's standing, as [`super::TokenBucket::charge`] does.
    pub fn charge(
        &self,
        state: Option<&FixedWindowState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<FixedWindowState> {
        let (start, count, end) = self.counted(state, now);
        let count = count.saturating_add(cost).min(super::MAX_SCALED as u64);
        let reset = if count == 0 {
            0
        } else {
            end.saturating_sub(now)
        };
        let decision = if count <= self.limit {
            Decision::allow(self.limit, self.limit - count, reset)
        } else {
            Decision::over_limit(self.limit, 0, reset, reset)
        };
        Evaluation {
            decision,
            state: FixedWindowState { start, count },
            expires_at: end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};
    use crate::time::{MINUTE, SECOND};
    use proptest::prelude::*;

    #[test]
    fn windows_align_to_the_unit() {
        let fw = FixedWindow::new(2, MINUTE).unwrap();
        let mut r =
            Replay::new(|s: Option<&FixedWindowState>, now, cost| fw.evaluate(s, now, cost));
        let t = 10 * MINUTE + 45 * SECOND;
        assert!(r.step(t, 1).allowed);
        assert!(r.step(t, 1).allowed);
        let d = r.step(t, 1);
        assert_eq!(
            (d.allowed, d.retry_after, d.reset_after),
            (false, Some(15 * SECOND), 15 * SECOND)
        );
        assert!(r.step(11 * MINUTE, 1).allowed);
    }

    #[test]
    fn cost_above_limit_is_a_distinct_denial() {
        let fw = FixedWindow::new(2, MINUTE).unwrap();
        let d = fw.evaluate(None, 0, 3).decision;
        assert_eq!(
            (d.denial, d.retry_after),
            (Some(super::super::Denial::CostExceedsLimit), None)
        );
    }

    proptest! {
        #[test]
        fn never_exceeds_limit_in_an_aligned_window(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::events(200, 5 * SECOND, 4),
        ) {
            let fw = FixedWindow::new(limit, window_s * SECOND).unwrap();
            testkit::check_window_bound(
                |s: Option<&FixedWindowState>, now, cost| fw.evaluate(s, now, cost),
                &events, limit, window_s * SECOND, true,
            )?;
        }

        #[test]
        fn retry_after_is_exact(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::events(60, 5 * SECOND, 4), cost in 1u64..5,
        ) {
            let fw = FixedWindow::new(limit, window_s * SECOND).unwrap();
            testkit::check_retry_exact(|s: Option<&FixedWindowState>, now, cost| fw.evaluate(s, now, cost), &events, cost)?;
        }

        #[test]
        fn overdraw_is_recorded_and_repaid_exactly(
            limit in 1u64..30, window_s in 1u64..120,
            events in testkit::metered_events(80, 5 * SECOND, 4, 60),
        ) {
            let a = FixedWindow::new(limit, window_s * SECOND).unwrap();
            let w = window_s * SECOND;
            testkit::check_overdraw(
                testkit::Metered::new(
                    |s: Option<&FixedWindowState>, now, cost| a.evaluate(s, now, cost),
                    |s: Option<&FixedWindowState>, now, cost| a.charge(s, now, cost),
                ),
                &events,
                |t, at| (t >= at - at % w).then_some(limit as u128),
            )?;
        }
    }
}
