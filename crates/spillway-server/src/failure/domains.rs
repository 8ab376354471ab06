//! [`DomainBreakers`]: one circuit breaker per failure domain of the store.
//!
//! A domain is what fails together (see [`spillway_core::store::Domains`]): the whole store
//! for a single Redis server, Sentinel's master or a far region; each master for a Redis
//! Cluster. The table has [`MAX_DOMAINS`] breakers, made at start, indexed as the store
//! numbers its domains, so memory is fixed whatever the topology does.
//!
//! A request is admitted only if the breaker of every domain it touches admits it: one open
//! breaker refuses it at once, and takes no probe from its other domains (they are looked at
//! in index order, each locked once, until one refuses; none is taken unless all admit). Its
//! outcome is recorded against **every** domain it touched: a success resets each one's
//! failure count, a failure or timeout counts against each. The store
//! cannot tell which master of a multi-master request failed (a timeout says nothing about
//! who was slow), so a request spanning a hung master and a healthy one counts against both;
//! the healthy master's own single-master requests keep resetting its count, so it opens only
//! if most of its traffic spans the hung master too, and then those requests were failing
//! anyway. Keys tagged by the tenant (the layout's advice) keep requests on one master.
//!
//! When the store gives a domain index to another part of itself (a master replaced by a
//! failover, or gone), [`DomainBreakers::sync`] notices the changed generation, asks the
//! names again and starts each renamed breaker afresh, closed: a new master's slots never
//! inherit the old master's open breaker.

use super::breaker::{Admission, Breaker, CircuitState, Tally};
use parking_lot::Mutex;
use spillway_core::store::{Domains, Store, MAX_DOMAINS};
use spillway_core::time::Micros;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a request's domains admitted it: which as ordinary calls, which as probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admitted {
    calls: Domains,
    probes: Domains,
    /// The table's epoch when admitted: a breaker renamed since ignores the outcome.
    epoch: u64,
    /// When it was admitted (the call was sent), on the breakers' clock.
    at: Micros,
}

/// The breakers of every domain; see the module docs.
#[derive(Debug)]
pub struct DomainBreakers {
    breakers: Box<[Breaker]>,
    tally: Arc<Tally>,
    /// The store's domain generation the names were last taken at (`u64::MAX`: never).
    seen: AtomicU64,
    /// Bumped by each [`DomainBreakers::sync`] that renames a breaker; carried by admissions.
    epoch: AtomicU64,
    syncing: Mutex<()>,
}

impl DomainBreakers {
    /// [`DomainBreakers::with_gauges`] writing the gauges (tests).
    #[cfg(test)]
    pub fn new(threshold: u64, cooldown: Duration) -> Self {
        Self::with_gauges(threshold, cooldown, true)
    }

    /// Closed breakers that each open after `threshold` failures in a row and probe
    /// `cooldown` after opening; `gauges`: whether the table writes the store's circuit
    /// metrics (only the node's own store's table does, not a far region's).
    pub fn with_gauges(threshold: u64, cooldown: Duration, gauges: bool) -> Self {
        let tally = Arc::new(Tally::new(gauges));
        Self {
            breakers: (0..MAX_DOMAINS)
                .map(|_| Breaker::in_table(threshold, cooldown, tally.clone()))
                .collect(),
            tally,
            seen: AtomicU64::new(u64::MAX),
            epoch: AtomicU64::new(0),
            syncing: Mutex::new(()),
        }
    }

    /// Takes the store's domain names again if its generation moved since the last look
    /// (cheap otherwise: one comparison).
    pub fn sync(&self, store: &dyn Store) {
        let generation = store.domain_generation();
        if self.seen.load(Ordering::Acquire) == generation {
            return;
        }
        let _one_at_a_time = self.syncing.lock();
        if self.seen.load(Ordering::Acquire) == generation {
            return;
        }
        // Renamed breakers take the next epoch before it is published: an admission that
        // read the old epoch, whether it reached the breaker before or after the rename, has
        // its outcome ignored (at worst one sent just after is ignored too).
        let next = self.epoch.load(Ordering::Acquire) + 1;
        let mut renamed = false;
        for (index, breaker) in self.breakers.iter().enumerate() {
            let name = store.domain_name(index);
            if breaker.domain().as_deref() != name.as_deref() {
                if let Some(old) = breaker.domain() {
                    tracing::info!(
                        domain = &*old,
                        now = name.as_deref().unwrap_or("unused"),
                        "a store failure domain changed hands; its breaker starts closed"
                    );
                }
                breaker.rename(name.map(Arc::from), next);
                renamed = true;
            }
        }
        if renamed {
            self.epoch.store(next, Ordering::Release);
        }
        self.seen.store(generation, Ordering::Release);
    }

    /// Asks every domain in `domains` whether a call may go at `now`; `None` if any refuses.
    /// A request with no domain (no checks) is admitted.
    pub fn admit(&self, domains: Domains, now: Micros) -> Option<Admitted> {
        let mut admitted = Admitted {
            epoch: self.epoch.load(Ordering::Acquire),
            at: now,
            ..Admitted::default()
        };
        self.admit_all(domains.iter(), now, &mut admitted)
            .then_some(admitted)
    }

    /// Locks the breaker of each domain in `rest` in turn, stopping at the first that would
    /// refuse; once every one is held and would admit, takes each admission on the way back.
    /// So each breaker is locked once, and a request refused by one domain takes no probe
    /// from another. Domains come in increasing order, so two requests never wait for each
    /// other's locks.
    fn admit_all(
        &self,
        mut rest: impl Iterator<Item = usize>,
        now: Micros,
        admitted: &mut Admitted,
    ) -> bool {
        let Some(index) = rest.next() else {
            return true;
        };
        let mut held = self.breakers[index].hold();
        let admission = held.admission(now);
        if admission == Admission::Rejected || !self.admit_all(rest, now, admitted) {
            return false;
        }
        held.take(admission, now);
        match admission {
            Admission::Probe => admitted.probes = admitted.probes.with(index),
            _ => admitted.calls = admitted.calls.with(index),
        }
        true
    }

    /// Records a call that succeeded, against each of its domains. Returns the domains whose
    /// breaker this closed, and logs them: each by name, and "the store answers again" once no
    /// breaker is left open or half-open.
    pub fn succeeded(&self, admitted: Admitted) -> Domains {
        let mut closed = Domains::default();
        for (set, admission) in Self::parts(admitted) {
            for index in set.iter() {
                if self.breakers[index].succeeded_in(admission, admitted.epoch) {
                    closed = closed.with(index);
                }
            }
        }
        if !closed.is_empty() {
            for name in closed.iter().filter_map(|i| self.breakers[i].domain()) {
                tracing::info!(domain = &*name, "a store failure domain answers again");
            }
            if self.state() == CircuitState::Closed {
                tracing::info!(
                    "the store answers again; emergency counters expire with their windows"
                );
            }
        }
        closed
    }

    /// Records a call that failed or timed out at `now`, against each of its domains.
    pub fn failed(&self, admitted: Admitted, now: Micros) {
        for (set, admission) in Self::parts(admitted) {
            for index in set.iter() {
                self.breakers[index].failed_in(admission, now, admitted.at, admitted.epoch);
            }
        }
    }

    /// Records a call that will never report (its request was cancelled mid-call): a probe
    /// among its domains is given up, so the next call there probes at once.
    pub fn abandoned(&self, admitted: Admitted) {
        for index in admitted.probes.iter() {
            self.breakers[index].probe_abandoned(admitted.at, admitted.epoch);
        }
    }

    fn parts(admitted: Admitted) -> [(Domains, Admission); 2] {
        [
            (admitted.calls, Admission::Call),
            (admitted.probes, Admission::Probe),
        ]
    }

    /// The worst state of any breaker: `open` if any domain's breaker is open.
    pub fn state(&self) -> CircuitState {
        self.tally.worst()
    }

    /// The state of domain `index`'s breaker.
    #[cfg(test)]
    pub fn domain_state(&self, index: usize) -> CircuitState {
        self.breakers
            .get(index)
            .map_or(CircuitState::Closed, Breaker::state)
    }

    /// Each named domain with its breaker's state (at most [`MAX_DOMAINS`]), for the
    /// per-domain gauge. A domain the store no longer names (a master no slot maps to) is not
    /// among them.
    pub fn named(&self) -> Vec<(Arc<str>, CircuitState)> {
        self.breakers
            .iter()
            .filter_map(|b| b.domain().map(|name| (name, b.state())))
            .collect()
    }

    /// Each named domain whose breaker is not closed, with its state (at most
    /// [`MAX_DOMAINS`]), for `/readyz`.
    pub fn not_closed(&self) -> Vec<(String, CircuitState)> {
        self.breakers
            .iter()
            .filter_map(|b| {
                let state = b.state();
                (state != CircuitState::Closed)
                    .then(|| b.domain().map(|name| (name.to_string(), state)))
                    .flatten()
            })
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use async_trait::async_trait;
    use spillway_core::algorithm::Decision;
    use spillway_core::request::CheckMode;
    use spillway_core::store::{Check, StoreError};
    use std::sync::atomic::AtomicU64;

    /// The cooldown, one second, in the clock's microseconds.
    const COOL: Micros = 1_000_000;
    /// Any point in time: breakers only compare differences.
    const T0: Micros = 1_800_000_000_000_000;

    fn table() -> DomainBreakers {
        DomainBreakers::new(2, Duration::from_micros(COOL))
    }

    fn set(indices: &[usize]) -> Domains {
        indices.iter().fold(Domains::default(), |s, &i| s.with(i))
    }

    /// Fails calls to `domains` until their breakers open.
    fn open(t: &DomainBreakers, domains: Domains, now: Micros) {
        for _ in 0..2 {
            let a = t.admit(domains, now).expect("closed");
            t.failed(a, now);
        }
    }

    #[test]
    fn one_open_domain_leaves_the_others_deciding() {
        let t = table();
        open(&t, set(&[1]), T0);
        assert_eq!(t.domain_state(1), CircuitState::Open);
        assert_eq!(t.state(), CircuitState::Open, "the aggregate tells");
        assert!(
            t.admit(set(&[1]), T0).is_none(),
            "the failed master: at once"
        );
        let a = t.admit(set(&[2]), T0).expect("a healthy master still goes");
        assert!(t.succeeded(a).is_empty());
        assert!(t.admit(set(&[1, 2]), T0).is_none(), "spanning the open one");
        assert_eq!(t.domain_state(2), CircuitState::Closed);
    }

    #[test]
    fn a_multi_domain_failure_counts_against_each_and_a_success_resets_each() {
        let t = table();
        let both = set(&[1, 2]);
        let a = t.admit(both, T0).unwrap();
        t.failed(a, T0);
        let a = t.admit(set(&[2]), T0).unwrap();
        t.succeeded(a);
        let a = t.admit(both, T0).unwrap();
        t.failed(a, T0);
        assert_eq!(t.domain_state(1), CircuitState::Open, "two in a row");
        assert_eq!(t.domain_state(2), CircuitState::Closed, "reset in between");
    }

    #[test]
    fn the_cooldown_and_probe_work_per_domain_on_the_clock() {
        let t = table();
        open(&t, set(&[1]), T0);
        open(&t, set(&[2]), T0 + COOL / 2);
        assert!(t.admit(set(&[1]), T0 + COOL - 1).is_none());
        let probe = t.admit(set(&[1]), T0 + COOL).expect("domain 1's probe");
        assert!(
            t.admit(set(&[2]), T0 + COOL).is_none(),
            "domain 2 opened later"
        );
        assert_eq!(t.succeeded(probe), set(&[1]), "the probe closes domain 1");
        assert_eq!(t.domain_state(1), CircuitState::Closed);
        assert_eq!(t.state(), CircuitState::Open, "domain 2 still open");
        let probe = t.admit(set(&[2]), T0 + COOL + COOL / 2).unwrap();
        t.succeeded(probe);
        assert_eq!(t.state(), CircuitState::Closed);
    }

    #[test]
    fn a_request_refused_by_one_domain_takes_no_probe_from_another() {
        // Domain 1 may probe, domain 2 may not; then the other way round (the refusing domain
        // looked at first).
        for (probing, refusing) in [(1, 2), (2, 1)] {
            let t = table();
            open(&t, set(&[probing]), T0);
            open(&t, set(&[refusing]), T0 + COOL / 2);
            assert!(t.admit(set(&[1, 2]), T0 + COOL).is_none());
            assert_eq!(
                t.domain_state(probing),
                CircuitState::Open,
                "looked, did not take"
            );
            let probe = t.admit(set(&[probing]), T0 + COOL);
            assert_eq!(
                probe.map(|a| a.probes),
                Some(set(&[probing])),
                "the probe is still free"
            );
        }
    }

    #[test]
    fn a_request_over_several_domains_takes_each_admission_once() {
        let t = table();
        open(&t, set(&[1]), T0);
        let a = t.admit(set(&[1, 2, 3]), T0 + COOL).expect("all admit");
        assert_eq!((a.probes, a.calls), (set(&[1]), set(&[2, 3])));
        assert_eq!(t.domain_state(1), CircuitState::HalfOpen);
        assert!(
            t.admit(set(&[1, 3]), T0 + COOL).is_none(),
            "one probe at a time"
        );
        assert_eq!(t.succeeded(a), set(&[1]));
        assert_eq!(t.state(), CircuitState::Closed);
    }

    #[test]
    fn no_domain_is_admitted_without_touching_a_breaker() {
        let t = table();
        open(&t, set(&[0]), T0);
        let admitted = t.admit(Domains::default(), T0).expect("admitted");
        assert_eq!((admitted.calls, admitted.probes), Default::default());
    }

    /// A store whose domain names and generation a test sets.
    #[derive(Default)]
    pub(crate) struct Named {
        names: Mutex<Vec<Option<String>>>,
        generation: AtomicU64,
    }

    impl Named {
        /// The store's view changes: these names per index, under `generation`.
        pub(crate) fn name(&self, names: Vec<Option<String>>, generation: u64) {
            *self.names.lock() = names;
            self.generation.store(generation, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Store for Named {
        async fn check(&self, _: &[Check<'_>], _: CheckMode) -> Result<Vec<Decision>, StoreError> {
            Ok(Vec::new())
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn key_count(&self) -> u64 {
            0
        }
        fn evictions(&self) -> u64 {
            0
        }
        fn sweep(&self) -> u64 {
            0
        }
        fn domain_generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
        fn domain_name(&self, index: usize) -> Option<String> {
            self.names.lock().get(index).cloned().flatten()
        }
    }

    #[test]
    fn a_domain_that_changes_hands_starts_closed() {
        let t = table();
        let store = Named::default();
        store.name(vec![None, Some("10.0.0.1:6379".into())], 1);
        t.sync(&store);
        open(&t, set(&[1]), T0);
        assert_eq!(
            t.not_closed(),
            vec![("10.0.0.1:6379".into(), CircuitState::Open)]
        );

        // The same generation: nothing is looked at again, the breaker stays open.
        t.sync(&store);
        assert_eq!(t.domain_state(1), CircuitState::Open);

        // A failover: index 1 now names the promoted replica.
        store.name(vec![None, Some("10.0.0.2:6379".into())], 2);
        t.sync(&store);
        assert_eq!(t.domain_state(1), CircuitState::Closed);
        assert_eq!(t.state(), CircuitState::Closed, "the aggregate follows");
        assert!(t.admit(set(&[1]), T0).is_some(), "no cooldown to wait out");
        assert_eq!(t.breakers[1].domain().as_deref(), Some("10.0.0.2:6379"));
        assert_eq!(
            t.named(),
            vec![(Arc::from("10.0.0.2:6379"), CircuitState::Closed)],
            "the old master is no longer reported"
        );
    }

    #[test]
    fn outcomes_admitted_before_a_rename_do_not_count_for_the_new_domain() {
        let t = table();
        let store = Named::default();
        store.name(vec![None, Some("10.0.0.1:6379".into())], 1);
        t.sync(&store);
        // Two calls to the old master are in flight when it fails over.
        let (a, b) = (
            t.admit(set(&[1]), T0).unwrap(),
            t.admit(set(&[1]), T0).unwrap(),
        );
        store.name(vec![None, Some("10.0.0.2:6379".into())], 2);
        t.sync(&store);
        t.failed(a, T0);
        t.failed(b, T0);
        assert_eq!(
            t.domain_state(1),
            CircuitState::Closed,
            "the old master's timeouts"
        );
        let c = t.admit(set(&[1]), T0).unwrap();
        t.failed(c, T0);
        let c = t.admit(set(&[1]), T0).unwrap();
        t.failed(c, T0);
        assert_eq!(
            t.domain_state(1),
            CircuitState::Open,
            "the new master's own count"
        );
    }

    #[test]
    fn other_opened_before_the_first_map_closes_when_it_is_unnamed() {
        let t = table();
        let store = Named::default();
        store.name(vec![Some("other".into())], 1);
        t.sync(&store);
        open(&t, set(&[0]), T0);
        assert_eq!(t.not_closed(), vec![("other".into(), CircuitState::Open)]);
        // The map arrives: no slot is left in index 0, so the store unnames it.
        store.name(vec![None, Some("10.0.0.1:6379".into())], 2);
        t.sync(&store);
        assert_eq!(t.domain_state(0), CircuitState::Closed);
        assert_eq!(
            t.state(),
            CircuitState::Closed,
            "the aggregate gauge follows"
        );
        assert!(t.not_closed().is_empty(), "/readyz no longer lists other");
    }

    /// What `tracing` logged while `f` ran, as text.
    fn logged(f: impl FnOnce()) -> String {
        let logs = crate::test_support::Logs::capture();
        f();
        logs.text()
    }

    #[test]
    fn a_closed_breaker_logs_its_domain_and_the_store_is_back_only_when_all_are() {
        let t = table();
        let store = Named::default();
        store.name(
            vec![
                None,
                Some("10.0.0.1:6379".into()),
                Some("10.0.0.2:6379".into()),
            ],
            1,
        );
        t.sync(&store);
        open(&t, set(&[1, 2]), T0);
        let first = logged(|| {
            let probe = t.admit(set(&[1]), T0 + COOL).unwrap();
            t.succeeded(probe);
        });
        // The breaker's own state-change warning names the domain too: look at the line.
        let line = first
            .lines()
            .find(|l| l.contains("a store failure domain answers again"))
            .unwrap_or_else(|| panic!("no answers-again line: {first}"));
        assert!(line.contains("domain=\"10.0.0.1:6379\""), "{line}");
        assert!(!first.contains("10.0.0.2:6379"), "{first}");
        assert!(
            !first.contains("the store answers again"),
            "domain 2 is still open: {first}"
        );
        let last = logged(|| {
            let probe = t.admit(set(&[2]), T0 + COOL).unwrap();
            t.succeeded(probe);
        });
        let line = last
            .lines()
            .find(|l| l.contains("a store failure domain answers again"))
            .unwrap_or_else(|| panic!("no answers-again line: {last}"));
        assert!(line.contains("domain=\"10.0.0.2:6379\""), "{line}");
        assert!(last.contains("the store answers again"), "{last}");
    }
}
