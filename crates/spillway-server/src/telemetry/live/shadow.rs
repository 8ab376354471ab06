//! How many requests each shadow-mode limit would have denied: since the node started and in
//! the last fifteen minutes, to decide whether to enforce it (`GET /ui/api/shadow`).
//!
//! Limit names come from the policy, never from requests, so the table is bounded by the
//! policies this node has loaded; it is capped at [`MAX_LIMITS`] all the same. The request
//! path does work only for a decision in which a shadow limit said no: it loads the current
//! table (an `ArcSwap` snapshot, no lock), finds the limit's slot by comparing the name's
//! pointer (the policy's own `Arc<str>`, so usually the first comparison that matches), else
//! its text, with no hashing, and bumps the slot's counters. Only the first denial of a limit
//! takes a mutex, to publish a table with a slot for it.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use spillway_core::engine::LimitOutcome;
use spillway_core::time::{Micros, MINUTE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most limits counted; a policy with more shadow limits than this is not one a person reads
/// (and the slot search is linear).
pub const MAX_LIMITS: usize = 256;
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
    /// Every limit counted so far, with its slot; replaced whole when one is added.
    limits: ArcSwap<Vec<(Arc<str>, Arc<Counts>)>>,
    /// Held while a table with a new slot is made, so two first denials do not race.
    adding: Mutex<()>,
}

/// The slot of `limit` in `table`: by pointer first, then by text.
fn find<'t>(table: &'t [(Arc<str>, Arc<Counts>)], limit: &Arc<str>) -> Option<&'t Arc<Counts>> {
    table
        .iter()
        .find(|(name, _)| Arc::ptr_eq(name, limit))
        .or_else(|| table.iter().find(|(name, _)| **name == **limit))
        .map(|(_, counts)| counts)
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
                self.count(now, o.name.as_arc());
            }
        }
    }

    fn count(&self, now: Micros, limit: &Arc<str>) {
        let table = self.limits.load();
        match find(&table, limit) {
            Some(counts) => Self::bump(counts, now),
            None => {
                drop(table);
                if let Some(counts) = self.add(limit) {
                    Self::bump(&counts, now);
                }
            }
        }
    }

    /// Publishes a table with a slot for `limit` (cold: once per limit), unless full.
    #[cold]
    fn add(&self, limit: &Arc<str>) -> Option<Arc<Counts>> {
        let _adding = self.adding.lock();
        let table = self.limits.load_full();
        if let Some(counts) = find(&table, limit) {
            return Some(counts.clone());
        }
        if table.len() >= MAX_LIMITS {
            return None;
        }
        let counts = Arc::new(Counts::default());
        let mut next = Vec::with_capacity(table.len() + 1);
        next.extend(table.iter().cloned());
        next.push((limit.clone(), counts.clone()));
        self.limits.store(Arc::new(next));
        Some(counts)
    }

    #[inline]
    fn bump(counts: &Counts, now: Micros) {
        counts.total.fetch_add(1, Ordering::Relaxed);
        // A read first: the line is written only when time has moved on.
        if counts.last.load(Ordering::Relaxed) < now {
            counts.last.fetch_max(now, Ordering::Relaxed);
        }
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
        let table = self.limits.load_full();
        let minute = now / MINUTE;
        let row = |limit: &Arc<str>| {
            let Some(c) = find(&table, limit) else {
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
        let mut others: Vec<&Arc<str>> = table
            .iter()
            .map(|(name, _)| name)
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

    #[test]
    fn a_name_equal_in_text_but_not_in_pointer_shares_the_slot() {
        let counts = ShadowDenials::default();
        counts.record(5, &[outcome("same", true, false)]);
        counts.record(6, &[outcome("same", true, false)]);
        let names: Vec<Arc<str>> = vec!["same".into()];
        let rows = counts.rows(6, &names);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].would_deny_total, 2);
    }
}
