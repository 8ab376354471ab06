//! The in-memory store's memory of recent report ids, so a retried report counts once.
//!
//! Bounded, expiring and shared fairly between tenants. Ids are kept per holder (the tenant
//! a report is charged to, or for a report without one the counters it charges:
//! [`ReportId::holder`]), each holder's in arrival order, for
//! [`REPORT_TTL`]. Three bounds keep memory bounded (about 80 bytes an id while few tenants
//! hold many ids; a few hundred bytes an id when each of very many tenants holds one):
//!
//! - a holder keeps at most [`MAX_REPORTS_PER_HOLDER`] ids; a newer id of its own makes it
//!   forget its oldest;
//! - the reports without a tenant ([`ReportId::pooled`]) keep at most
//!   [`MAX_REPORTS_PER_HOLDER`] ids between them, as one tenant would: when a new one finds
//!   their pool full, the pooled holder with the most ids forgets its oldest;
//! - all holders together keep at most [`MAX_REPORTS`]; when a new id finds the set full, the
//!   holder with the most ids (ties: any of them), the pool counting as one holder (and then
//!   its largest holder giving up the id), forgets its oldest.
//!
//! The guarantee: an id is forgotten before its hour is up only for a newer id of its own
//! tenant, or while its tenant holds at least as many ids as any other tenant. With `n`
//! tenants holding ids, a tenant holding fewer than `MAX_REPORTS / n` never loses one to
//! another tenant's traffic, however many fresh ids that tenant sends: a flooding tenant soon
//! holds the most and evicts its own, so it cannot make a smaller holder's retried report
//! count twice (and spend that tenant's budget). Under `principals:` the
//! tenant is the verified one, so a caller gets one holder per credential it owns. An
//! anonymous caller gets one per address it reports from, inside the pool: however many
//! addresses it uses, the tenants' ids see one holder, and within the pool the same guarantee
//! holds between addresses.
//!
//! All of it sits behind the store's one report mutex, taken only by reports (never on the
//! check path); each step costs O(log holders).

use crate::store::{ReportId, REPORT_TTL};
use crate::time::Micros;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// The most report ids remembered at once, over all tenants.
pub const MAX_REPORTS: usize = 100_000;

/// The most report ids one tenant keeps: a quarter of the set, so one tenant's flood never
/// fills it alone.
pub const MAX_REPORTS_PER_HOLDER: usize = MAX_REPORTS / 4;

/// One holder's ids.
#[derive(Debug, Default)]
struct Held {
    /// Whether it is a report without a tenant's, in the pool.
    pooled: bool,
    seen: HashSet<ReportId>,
    /// The same ids in the order they arrived (times never decrease: the store's clock is
    /// monotonic), so the expired and the oldest are at the front.
    order: VecDeque<(Micros, ReportId)>,
}

impl Held {
    /// Forgets the oldest id; whether there was one.
    fn pop_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((_, id)) => {
                self.seen.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Forgets ids older than [`REPORT_TTL`] at `now`.
    fn expire(&mut self, now: Micros) {
        while let Some(&(at, _)) = self.order.front() {
            if at + REPORT_TTL > now {
                break;
            }
            self.pop_oldest();
        }
        // A holder that once held many ids gives the room back once most have expired.
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            let keep = self.order.len() * 2;
            self.order.shrink_to(keep);
            self.seen.shrink_to(keep);
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Report ids seen recently, per holder, with when each was seen.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    holders: HashMap<u64, Held>,
    /// Every tenant's holder as `(ids held, holder)`, so the largest is the last.
    by_size: BTreeSet<(usize, u64)>,
    /// The same for the pooled holders (reports without a tenant).
    pool_by_size: BTreeSet<(usize, u64)>,
    /// Ids held over all holders.
    total: usize,
    /// Ids held over the pooled holders.
    pooled: usize,
}

impl Reports {
    /// Runs `change` on `holder`'s ids (a pooled holder if `pooled`, when it is new), keeping
    /// the size indexes and the totals in step, and drops the holder once it holds nothing.
    fn update<T>(&mut self, holder: u64, pooled: bool, change: impl FnOnce(&mut Held) -> T) -> T {
        let held = self.holders.entry(holder).or_insert_with(|| Held {
            pooled,
            ..Held::default()
        });
        let pooled = held.pooled;
        let before = held.len();
        let out = change(held);
        let after = held.len();
        if before != after {
            let by_size = if pooled {
                self.pooled = self.pooled + after - before;
                &mut self.pool_by_size
            } else {
                &mut self.by_size
            };
            by_size.remove(&(before, holder));
            if after > 0 {
                by_size.insert((after, holder));
            }
            self.total = self.total + after - before;
        }
        if after == 0 {
            self.holders.remove(&holder);
        }
        out
    }

    /// Whether `id` was seen within [`REPORT_TTL`] of `now`.
    #[cfg(test)]
    pub(crate) fn seen(&mut self, id: &ReportId, now: Micros) -> bool {
        if !self.holders.contains_key(&id.holder()) {
            return false;
        }
        self.update(id.holder(), id.pooled(), |held| {
            held.expire(now);
            held.seen.contains(id)
        })
    }

    /// Remembers `id` as seen at `now`, making room first as the module docs say; returns
    /// whether it was already known (a retry), in which case nothing changes.
    pub(crate) fn remember(&mut self, id: ReportId, now: Micros) -> bool {
        let (holder, pooled) = (id.holder(), id.pooled());
        let known = self.update(holder, pooled, |held| {
            held.expire(now);
            if held.seen.contains(&id) {
                return true;
            }
            if held.len() >= MAX_REPORTS_PER_HOLDER {
                held.pop_oldest();
            }
            false
        });
        if known {
            return true;
        }
        while pooled && self.pooled >= MAX_REPORTS_PER_HOLDER {
            if !self.forget_pooled() {
                break;
            }
        }
        while self.total >= MAX_REPORTS {
            // The pool counts as one holder, of all its ids.
            let forgot = match self.by_size.last() {
                Some(&(held, tenant)) if held > self.pooled => self.forget(tenant),
                _ => self.forget_pooled(),
            };
            if !forgot {
                break;
            }
        }
        self.update(holder, pooled, |held| {
            held.seen.insert(id);
            held.order.push_back((now, id));
        });
        false
    }

    /// Makes the largest pooled holder forget its oldest id; whether there was one.
    fn forget_pooled(&mut self) -> bool {
        match self.pool_by_size.last() {
            Some(&(_, largest)) => self.forget(largest),
            None => false,
        }
    }

    /// Makes `holder` forget its oldest id; whether there was one.
    fn forget(&mut self, holder: u64) -> bool {
        self.update(holder, false, Held::pop_oldest)
    }

    /// Forgets every expired id (the store's sweep calls this; `remember` only expires
    /// the holder it touches).
    pub(crate) fn sweep(&mut self, now: Micros) {
        let holders: Vec<u64> = self.holders.keys().copied().collect();
        for holder in holders {
            self.update(holder, false, |held| held.expire(now));
        }
    }

    /// How many ids are remembered.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// How many ids `holder` keeps.
    #[cfg(test)]
    fn held_by(&self, holder: u64) -> usize {
        self.holders.get(&holder).map_or(0, Held::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    fn id(holder: u64, n: u32) -> ReportId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[8..].copy_from_slice(&holder.to_le_bytes());
        ReportId::from_parts(b, holder, false)
    }

    /// Id `n` of the pooled holder `holder` (a report without a tenant).
    fn pooled_id(holder: u64, n: u32) -> ReportId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[8..].copy_from_slice(&holder.to_le_bytes());
        ReportId::from_parts(b, holder, true)
    }

    /// Checks the indexes agree with the ids held.
    fn consistent(r: &Reports) {
        let held: usize = r.holders.values().map(Held::len).sum();
        assert_eq!(held, r.total);
        assert_eq!(r.by_size.len() + r.pool_by_size.len(), r.holders.len());
        let pooled: usize = (r.holders.values().filter(|h| h.pooled))
            .map(Held::len)
            .sum();
        assert_eq!(pooled, r.pooled);
        for (holder, h) in &r.holders {
            assert!(h.len() > 0);
            assert_eq!(h.seen.len(), h.len());
            let by_size = if h.pooled {
                &r.pool_by_size
            } else {
                &r.by_size
            };
            assert!(by_size.contains(&(h.len(), *holder)));
        }
    }

    #[test]
    fn an_id_is_remembered_for_the_ttl() {
        let mut r = Reports::default();
        r.remember(id(1, 1), 0);
        assert!(r.seen(&id(1, 1), REPORT_TTL - 1));
        assert!(!r.seen(&id(2, 1), REPORT_TTL - 1), "another holder's id");
        assert!(!r.seen(&id(1, 1), REPORT_TTL));
        assert_eq!(r.len(), 0);
        consistent(&r);
    }

    #[test]
    fn one_holders_flood_stays_within_its_own_bound() {
        let mut r = Reports::default();
        for n in 0..(MAX_REPORTS_PER_HOLDER as u32 + 5000) {
            r.remember(id(7, n), u64::from(n) * SECOND / 1000);
        }
        assert_eq!(r.len(), MAX_REPORTS_PER_HOLDER);
        // The oldest were forgotten, the newest kept.
        assert!(!r.seen(&id(7, 0), 200 * SECOND));
        assert!(r.seen(&id(7, MAX_REPORTS_PER_HOLDER as u32 + 4999), 200 * SECOND));
        consistent(&r);
    }

    /// The attack: tenant A floods 200,000 fresh ids (from as many as four
    /// credentials, four holders, enough to fill the whole set); tenant B's earlier ids are
    /// all still known afterwards.
    #[test]
    fn a_flood_from_other_tenants_never_evicts_a_small_holders_ids() {
        let mut r = Reports::default();
        let b = 2;
        for n in 0..100 {
            r.remember(id(b, n), 0);
        }
        let attackers = [10, 11, 12, 13, 14];
        for n in 0..200_000u32 {
            let holder = attackers[n as usize % attackers.len()];
            r.remember(id(holder, n), SECOND + u64::from(n));
        }
        assert_eq!(r.len(), MAX_REPORTS, "memory stays bounded");
        for n in 0..100 {
            assert!(r.seen(&id(b, n), 10 * SECOND), "B's id {n} was evicted");
        }
        assert_eq!(r.held_by(b), 100);
        consistent(&r);
    }

    /// When the set is full, the largest holder gives way; a holder at or above its fair
    /// share can lose ids, one below it cannot.
    #[test]
    fn the_largest_holder_is_evicted_first() {
        let mut r = Reports::default();
        // Four holders at their bound: the set is full.
        for holder in 0..4u64 {
            for n in 0..MAX_REPORTS_PER_HOLDER as u32 {
                r.remember(id(holder, n), 0);
            }
        }
        assert_eq!(r.len(), MAX_REPORTS);
        // A fifth holder's ids each evict from a largest holder.
        for n in 0..1000 {
            r.remember(id(9, n), 1);
        }
        assert_eq!(r.len(), MAX_REPORTS);
        assert_eq!(r.held_by(9), 1000);
        let sizes: Vec<usize> = (0..4).map(|h| r.held_by(h)).collect();
        assert_eq!(sizes.iter().sum::<usize>(), MAX_REPORTS - 1000);
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{sizes:?}");
        // Each lost its oldest.
        for holder in 0..4 {
            assert!(!r.seen(&id(holder, 0), 2));
            assert!(r.seen(&id(holder, MAX_REPORTS_PER_HOLDER as u32 - 1), 2));
        }
        consistent(&r);
    }

    #[test]
    fn a_sweep_forgets_expired_ids_of_every_holder() {
        let mut r = Reports::default();
        for holder in 0..50 {
            r.remember(id(holder, 1), 0);
        }
        r.remember(id(99, 1), REPORT_TTL);
        r.sweep(REPORT_TTL);
        assert_eq!(r.len(), 1);
        assert!(r.seen(&id(99, 1), REPORT_TTL));
        consistent(&r);
    }

    #[test]
    fn remembering_a_known_id_again_changes_nothing() {
        let mut r = Reports::default();
        r.remember(id(1, 1), 0);
        r.remember(id(1, 1), 5);
        assert_eq!(r.len(), 1);
        consistent(&r);
    }

    /// Reports without a tenant keep one holder's bound between them: as many one-id holders
    /// as the whole set holds (an anonymous caller reporting from that many addresses) leave
    /// a tenant's two ids alone, where each of them, a holder among the tenants, would in the
    /// end have made the tenant the largest holder and pushed its ids out.
    #[test]
    fn reports_without_a_tenant_share_one_holders_bound() {
        let mut r = Reports::default();
        r.remember(id(1, 1), 0);
        r.remember(id(1, 2), 0);
        for h in 0..MAX_REPORTS as u64 {
            r.remember(pooled_id(1_000 + h, 0), 0);
        }
        assert_eq!(r.pooled, MAX_REPORTS_PER_HOLDER);
        assert!(r.seen(&id(1, 1), 0) && r.seen(&id(1, 2), 0));
        consistent(&r);
        // Within the pool the largest holder forgets first: one address's flood leaves
        // another's id.
        let mut r = Reports::default();
        r.remember(pooled_id(7, 0), 0);
        for n in 0..MAX_REPORTS_PER_HOLDER as u32 + 10 {
            r.remember(pooled_id(8, n), 0);
        }
        assert!(r.seen(&pooled_id(7, 0), 0));
        assert_eq!(r.pooled, MAX_REPORTS_PER_HOLDER);
        consistent(&r);
    }
}
