//! Sliding log: the exact algorithm. Each admitted request's time is kept until it leaves the
//! window, so no window of the configured length ever holds more than `limit`. Memory per key
//! is bounded by the limit: entries that share a timestamp are merged, and every entry counts
//! at least one unit of a total that never exceeds the limit.

use super::{Decision, Evaluation};
use crate::time::Micros;
use std::collections::VecDeque;

/// Sliding log parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlidingLog {
    limit: u64,
    window: Micros,
}

/// The largest limit a sliding log takes. Its state holds up to `limit` entries, and each
/// check reads (and, in memory, copies) them all under the key's lock, so a log of a million
/// entries would stall every key sharing it for milliseconds per request.
pub const MAX_LOG_LIMIT: u64 = 10_000;

/// A sliding log key's state: admitted `(time, cost)` entries, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlidingLogState {
    /// Admissions still inside the window, oldest first, at most one per timestamp.
    pub entries: VecDeque<(Micros, u64)>,
}

impl SlidingLog {
    /// Exactly at most `limit` in any `window`; `limit` is at most [`MAX_LOG_LIMIT`].
    pub fn new(limit: u64, window: Micros) -> Result<Self, String> {
        if limit > MAX_LOG_LIMIT {
            return Err(format!(
                "limit {limit} is too large for sliding_log (at most {MAX_LOG_LIMIT}): it keeps \
                 an entry per admitted request and reads them all on every check; use \
                 sliding_window for large limits"
            ));
        }
        super::check_window(limit, window, MAX_LOG_LIMIT)?;
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

    /// Checks `cost` at `now`; see [`super::LimitParams::evaluate`]. A request at `now` counts
    /// the admissions in `(now - window, now]`.
    pub fn evaluate(
        &self,
        state: Option<&SlidingLogState>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<SlidingLogState> {
        let live = |&&(at, _): &&(Micros, u64)| at + self.window > now;
        let mut entries: VecDeque<(Micros, u64)> = state
            .map(|s| s.entries.iter().filter(live).copied().collect())
            .unwrap_or_default();
        let used: u64 = entries.iter().map(|e| e.1).sum();
        let reset = |entries: &VecDeque<(Micros, u64)>| {
            entries
                .back()
                .map_or(0, |&(at, _)| (at + self.window).saturating_sub(now))
        };
        let left = self.limit.saturating_sub(used);
        if cost > self.limit || used + cost > self.limit {
            let r = reset(&entries);
            let decision = if cost > self.limit {
                Decision::too_costly(self.limit, left, r)
            } else {
                Decision::over_limit(
                    self.limit,
                    left,
                    r,
                    self.retry_after(&entries, used + cost, now),
                )
            };
            return Evaluation {
                decision,
                expires_at: now + r,
                state: SlidingLogState { entries },
            };
        }
        match entries.back_mut() {
            Some((at, n)) if *at >= now => *n += cost,
            _ if cost > 0 => entries.push_back((now, cost)),
            _ => {}
        }
        let r = reset(&entries);
        Evaluation {
            decision: Decision::allow(self.limit, self.limit - used - cost, r),
            expires_at: now + r,
            state: SlidingLogState { entries },
        }
    }

    /// Time until enough of the oldest entries leave the window for `wanted - limit` units.
    fn retry_after(&self, entries: &VecDeque<(Micros, u64)>, wanted: u64, now: Micros) -> Micros {
        let mut excess = wanted - self.limit;
        for &(at, n) in entries {
            if n >= excess {
                return at + self.window - now;
            }
            excess -= n;
        }
        // Unreachable while the entries sum to `used`; fall back to a full window.
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::testkit::{self, Replay};
    use crate::time::SECOND;
    use proptest::prelude::*;

    #[test]
    fn oldest_entries_leave_the_window() {
        let sl = SlidingLog::new(3, 10 * SECOND).unwrap();
        let mut r = Replay::new(|s: Option<&SlidingLogState>, now, cost| sl.evaluate(s, now, cost));
        assert!(r.step(0, 1).allowed);
        assert!(r.step(2 * SECOND, 2).allowed);
        let d = r.step(3 * SECOND, 1);
        assert_eq!(d.retry_after, Some(7 * SECOND));
        assert!(r.step(10 * SECOND, 1).allowed);
        assert_eq!(r.state().map(|s| s.entries.len()), Some(2));
    }

    proptest! {
        #[test]
        fn never_exceeds_limit_in_any_window(
            limit in 1u64..30, window_s in 1u64..60,
            events in testkit::events(200, 3 * SECOND, 4),
        ) {
            let sl = SlidingLog::new(limit, window_s * SECOND).unwrap();
            testkit::check_window_bound(
                |s: Option<&SlidingLogState>, now, cost| sl.evaluate(s, now, cost),
                &events, limit, window_s * SECOND, false,
            )?;
        }

        #[test]
        fn memory_is_bounded_by_the_limit(
            limit in 1u64..30, events in testkit::events(200, SECOND, 4),
        ) {
            let sl = SlidingLog::new(limit, 60 * SECOND).unwrap();
            let mut r = Replay::new(|s: Option<&SlidingLogState>, now, cost| sl.evaluate(s, now, cost));
            for (at, cost) in events {
                r.step(at, cost);
                prop_assert!(r.state().map_or(0, |s| s.entries.len() as u64) <= limit);
            }
        }

        #[test]
        fn retry_after_is_exact(
            limit in 1u64..30, window_s in 1u64..60,
            events in testkit::events(60, 3 * SECOND, 4), cost in 1u64..5,
        ) {
            let sl = SlidingLog::new(limit, window_s * SECOND).unwrap();
            testkit::check_retry_exact(|s: Option<&SlidingLogState>, now, cost| sl.evaluate(s, now, cost), &events, cost)?;
        }
    }
}
