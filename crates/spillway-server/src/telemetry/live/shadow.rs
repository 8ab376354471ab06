//! How many requests each shadow-mode limit would have denied: since the node started and in
//! the last fifteen minutes, to decide whether to enforce it (`GET /ui/api/shadow`).
//!
//! Limit names come from the policy, never from requests, so the map is bounded by the
//! policies this node has loaded; it is capped at [`MAX_LIMITS`] all the same. The request
//! path takes a read lock only for a decision in which a shadow limit said no, and a write
//! lock only the first time a limit does.

use parking_lot::RwLock;
use spillway_core::engine::LimitOutcome;
use spillway_core::time::{Micros, MINUTE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most limits counted; a policy with more shadow limits than this is not one a person reads.
pub const MAX_LIMITS: usize = 1024;
/// Minutes kept per limit for the recent count (one more than shown, the current one).
const MINUTES: usize = 16;

/// One limit's counts.
#[derive(Debug, Default)]
struct Counts {
    total: AtomicU64,
    last: AtomicU64,
    /// Per minute: the minute number in the top 24 bits, the count below.
    minutes: [AtomicU64; MINUTES],
}

/// The counts of every shadow limit that has said no; see the module docs.
#[derive(Debug, Default)]
pub struct ShadowDenials {
    limits: RwLock<HashMap<Arc<str>, Arc<Counts>>>,
}

/// One limit's row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShadowRow {
    /// The limit.
    pub limit: Arc<str>,
    /// Requests it would have denied since this node started.
    pub would_deny_total: u64,
    /// Requests it would have denied in the last fifteen minutes.
    pub would_deny_15m: u64,
    /// When it last would have denied one, in milliseconds since the epoch.
    pub last_ms: Option<u64>,
}

impl ShadowDenials {
    /// Counts the shadow limits among `outcomes` that would have denied the request.
    #[inline]
    pub fn record(&self, now: Micros, outcomes: &[LimitOutcome]) {
        for o in outcomes {
            if o.shadow && !o.decision.allowed {
                self.count(now, &o.name);
            }
        }
    }

    fn count(&self, now: Micros, limit: &Arc<str>) {
        let found = self.limits.read().get(limit).cloned();
        let counts = match found {
            Some(counts) => counts,
            None => {
                let mut limits = self.limits.write();
                if limits.len() >= MAX_LIMITS && !limits.contains_key(limit) {
                    return;
                }
                limits.entry(limit.clone()).or_default().clone()
            }
        };
        counts.total.fetch_add(1, Ordering::Relaxed);
        counts.last.fetch_max(now, Ordering::Relaxed);
        let minute = now / MINUTE;
        let cell = &counts.minutes[(minute % MINUTES as u64) as usize];
        let tag = (minute & 0xFF_FFFF) << 40;
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            if current & !((1 << 40) - 1) == tag {
                cell.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match cell.compare_exchange_weak(current, tag | 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// A row for each of `limits` (the policy's shadow limits, so one that never said no
    /// shows a zero), then any other limit counted (of an earlier policy), by name.
    pub fn rows<'a>(
        &self,
        now: Micros,
        limits: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Vec<ShadowRow> {
        let map = self.limits.read();
        let minute = now / MINUTE;
        let row = |limit: &Arc<str>| {
            let Some(c) = map.get(limit) else {
                return ShadowRow {
                    limit: limit.clone(),
                    would_deny_total: 0,
                    would_deny_15m: 0,
                    last_ms: None,
                };
            };
            let recent = (0..15u64)
                .filter_map(|back| minute.checked_sub(back))
                .map(|m| {
                    let v = c.minutes[(m % MINUTES as u64) as usize].load(Ordering::Relaxed);
                    if v >> 40 == m & 0xFF_FFFF {
                        v & ((1 << 40) - 1)
                    } else {
                        0
                    }
                })
                .sum();
            let last = c.last.load(Ordering::Relaxed);
            ShadowRow {
                limit: limit.clone(),
                would_deny_total: c.total.load(Ordering::Relaxed),
                would_deny_15m: recent,
                last_ms: (last > 0).then_some(last / 1_000),
            }
        };
        let mut rows: Vec<ShadowRow> = Vec::new();
        for limit in limits {
            if !rows.iter().any(|r| r.limit == *limit) {
                rows.push(row(limit));
            }
        }
        let mut others: Vec<&Arc<str>> = map
            .keys()
            .filter(|k| !rows.iter().any(|r| r.limit == **k))
            .collect();
        others.sort();
        rows.extend(others.into_iter().map(row));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::algorithm::Decision;

    fn outcome(name: &str, shadow: bool, allowed: bool) -> LimitOutcome {
        LimitOutcome {
            name: name.into(),
            decision: Decision {
                allowed,
                limit: 10,
                remaining: 0,
                reset_after: 0,
                retry_after: None,
                denial: None,
            },
            shadow,
            quota: 10,
            window: MINUTE,
        }
    }

    #[test]
    fn only_shadow_limits_that_said_no_are_counted() {
        let counts = ShadowDenials::default();
        let t0 = 1_800_000_000_000_000;
        let outcomes = [
            outcome("enforced", false, false),
            outcome("quiet", true, true),
            outcome("strict", true, false),
        ];
        for i in 0..3 {
            counts.record(t0 + i * MINUTE, &outcomes);
        }
        let names: Vec<Arc<str>> = vec!["strict".into(), "quiet".into()];
        let rows = counts.rows(t0 + 2 * MINUTE, &names);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].limit.as_ref(), "strict");
        assert_eq!(rows[0].would_deny_total, 3);
        assert_eq!(rows[0].would_deny_15m, 3);
        assert_eq!(rows[0].last_ms, Some((t0 + 2 * MINUTE) / 1_000));
        assert_eq!(rows[1].would_deny_total, 0);
        // Twenty minutes on, the recent count has emptied; the total stays.
        let rows = counts.rows(t0 + 22 * MINUTE, &names);
        assert_eq!(rows[0].would_deny_15m, 0);
        assert_eq!(rows[0].would_deny_total, 3);
    }

    #[test]
    fn limits_of_an_earlier_policy_are_listed_after_and_the_map_is_capped() {
        let counts = ShadowDenials::default();
        for i in 0..MAX_LIMITS + 10 {
            counts.record(1, &[outcome(&format!("l{i}"), true, false)]);
        }
        assert_eq!(counts.rows(1, &[]).len(), MAX_LIMITS);
    }
}
