//! The in-memory store's memory of recent report ids, so a retried report counts once.
//!
//! Bounded and expiring: ids are kept in arrival order for [`REPORT_TTL`], and at most
//! [`MAX_REPORTS`] of them. When a new id finds the set full, the oldest is forgotten first,
//! so a client sending a flood of fresh ids costs a fixed amount of memory (about 50 bytes an
//! id) and can at worst make a retry of an old report count twice, never make a report count
//! less.

use crate::store::{ReportId, REPORT_TTL};
use crate::time::Micros;
use std::collections::{HashSet, VecDeque};

/// The most report ids remembered at once.
pub const MAX_REPORTS: usize = 100_000;

/// Report ids seen recently, with when each was seen.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    seen: HashSet<ReportId>,
    /// The same ids in the order they arrived (times never decrease: the store's clock is
    /// monotonic), so the expired and the oldest are at the front.
    order: VecDeque<(Micros, ReportId)>,
}

impl Reports {
    /// Forgets ids older than [`REPORT_TTL`] at `now`.
    fn expire(&mut self, now: Micros) {
        while let Some(&(at, id)) = self.order.front() {
            if at + REPORT_TTL > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    /// Whether `id` was seen within [`REPORT_TTL`] of `now`.
    pub(crate) fn seen(&mut self, id: &ReportId, now: Micros) -> bool {
        self.expire(now);
        self.seen.contains(id)
    }

    /// Remembers `id` as seen at `now`, forgetting the oldest id when full.
    pub(crate) fn remember(&mut self, id: ReportId, now: Micros) {
        self.expire(now);
        while self.order.len() >= MAX_REPORTS {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.insert(id) {
            self.order.push_back((now, id));
        }
    }

    /// How many ids are remembered.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    fn id(n: u32) -> ReportId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ReportId(b)
    }

    #[test]
    fn an_id_is_remembered_for_the_ttl() {
        let mut r = Reports::default();
        r.remember(id(1), 0);
        assert!(r.seen(&id(1), REPORT_TTL - 1));
        assert!(!r.seen(&id(1), REPORT_TTL));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_flood_of_ids_stays_within_the_bound() {
        let mut r = Reports::default();
        for n in 0..(MAX_REPORTS as u32 + 5000) {
            r.remember(id(n), u64::from(n) * SECOND / 1000);
        }
        assert_eq!(r.len(), MAX_REPORTS);
        assert_eq!(r.order.len(), MAX_REPORTS);
        // The oldest were forgotten, the newest kept.
        assert!(!r.seen(&id(0), 200 * SECOND));
        assert!(r.seen(&id(MAX_REPORTS as u32 + 4999), 200 * SECOND));
    }
}
