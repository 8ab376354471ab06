//! The circuit breaker in front of a shared store.
//!
//! Closed: every call goes to the store; `threshold` failures in a row (errors or timeouts)
//! open it. Failures count once per wave: a call sent before the last counted failure was
//! seen failed in the same outage (a batch of requests sharing one lost reply, a burst that
//! all timed out together) and does not count again, so one lost reply, or one client's burst
//! that the store could not answer in time, does not open the breaker for every tenant; an
//! outage still opens it after `threshold` calls sent one after another's failure. (A store
//! answering only some calls in time, one in ten say, keeps resetting that count and so its
//! breaker closed: each call waits its budget and fails to its route's failure mode. A failure
//! ratio would open it, but measured here it also reopened a recovering master for as long as
//! its backlog made calls late, `tests/cluster_chaos.rs`, so it is not used.) Open: no
//! call goes to the store, each fails at once; after `cooldown` the next call becomes the one
//! probe (half-open). Half-open: only the probe is sent; its success closes the breaker, its
//! failure opens it for another cooldown. A probe that never reports (its request was
//! cancelled: a client resetting its streams) is given up at once, so the next call probes
//! (else a client cancelling every probe would hold the breaker open, and every tenant in
//! its failure mode); one given up unreported is in any case replaced after another cooldown,
//! so the breaker cannot stick half-open.
//!
//! A breaker guards one failure domain (see [`super::domains`]): the whole store, or one Redis
//! Cluster master. Breakers of one table share a [`Tally`], which keeps the store-wide
//! [`STATE`] gauge at the worst state of any of them; a named domain (a master's address) also
//! has its own [`DOMAIN_STATE`] gauge, rendered from the breakers at each scrape (see
//! `Failover::domain_exposition`), so that a domain that is gone leaves the exposition.
//!
//! Time is passed in, in microseconds from the process clock (monotonic in production, the
//! manual test clock under `--manual-clock`), so the state machine is tested without sleeping
//! and the integration tests move past a cooldown by advancing the clock.

use parking_lot::{Mutex, MutexGuard};
use spillway_core::time::Micros;
use std::sync::Arc;
use std::time::Duration;

/// Gauge of the store's breakers taken together: the worst state of any of them, 0 all
/// closed, 1 some half-open (none open), 2 some open.
pub const STATE: &str = "spillway_store_circuit_state";
/// Gauge of one named domain's breaker (label `domain`: a cluster master's `host:port`, as
/// Redis reports it): 0 closed, 1 half-open, 2 open. Not kept in the metrics recorder, which
/// cannot drop one series: `/metrics` renders it from the breakers each time.
pub const DOMAIN_STATE: &str = "spillway_store_domain_circuit_state";
/// Counter of state changes of any of the store's breakers, by the state left (`from`) and
/// the state entered (`to`).
pub const TRANSITIONS: &str = "spillway_store_circuit_transitions_total";

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go to the store.
    Closed,
    /// One probe call is allowed to find out whether the store is back.
    HalfOpen,
    /// Calls fail at once without touching the store.
    Open,
}

impl CircuitState {
    /// The lowercase name used in `/readyz`, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// The value of the [`STATE`] gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An ordinary call, the breaker being closed.
    Call,
    /// The half-open probe: its outcome decides the breaker's state.
    Probe,
    /// Refused: the breaker is open (or another probe is out).
    Rejected,
}

/// How many breakers of one table are in each state, behind the [`STATE`] gauge.
#[derive(Debug)]
pub struct Tally {
    /// Breakers half-open and open (the rest are closed).
    counts: Mutex<[usize; 2]>,
    /// Whether the table writes the store's circuit metrics ([`STATE`] and [`TRANSITIONS`]):
    /// only the node's own store's does (a far region's table would overwrite the gauge with
    /// its own states, and count its changes as the store's). [`DOMAIN_STATE`] is rendered
    /// from the breakers at each scrape, by the node's own store's `Failover` only.
    gauges: bool,
}

#[cfg(test)]
impl Default for Tally {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Tally {
    /// An empty tally; `gauges`: whether its breakers write the store's circuit metrics
    /// (which then show, at start, every breaker closed and each change at zero).
    pub fn new(gauges: bool) -> Self {
        if gauges {
            metrics::gauge!(STATE).set(CircuitState::Closed.gauge());
            // The four changes a breaker can make, visible at zero from the start.
            for (from, to) in [
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
                (CircuitState::HalfOpen, CircuitState::Open),
            ] {
                metrics::counter!(TRANSITIONS, "from" => from.as_str(), "to" => to.as_str())
                    .increment(0);
            }
        }
        Self {
            counts: Mutex::default(),
            gauges,
        }
    }

    /// Records one breaker moving from `from` to `to`, and sets [`STATE`] to the worst state.
    fn moved(&self, from: CircuitState, to: CircuitState) {
        let mut counts = self.counts.lock();
        let slot = |s: CircuitState| match s {
            CircuitState::Closed => None,
            CircuitState::HalfOpen => Some(0),
            CircuitState::Open => Some(1),
        };
        if let Some(i) = slot(from) {
            counts[i] = counts[i].saturating_sub(1);
        }
        if let Some(i) = slot(to) {
            counts[i] += 1;
        }
        if self.gauges {
            metrics::gauge!(STATE).set(Self::worst_of(*counts).gauge());
        }
    }

    fn worst_of(counts: [usize; 2]) -> CircuitState {
        match counts {
            [_, open] if open > 0 => CircuitState::Open,
            [half, _] if half > 0 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    /// The worst state of any breaker of the table.
    pub fn worst(&self) -> CircuitState {
        Self::worst_of(*self.counts.lock())
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    failures: u64,
    /// When the breaker last opened, or when the outstanding probe was sent.
    since: Micros,
    /// When the last counted failure was recorded: a call sent before it failed in the same
    /// wave and is not counted again.
    last_failure: Micros,
    /// The domain's name for metrics and logs (`None`: the store as a whole).
    domain: Option<Arc<str>>,
    /// The table's epoch at the last [`Breaker::rename`]: outcomes of calls admitted at an
    /// earlier epoch belong to the old domain and are ignored.
    renamed_at: u64,
}

/// A consecutive-failure circuit breaker; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u64,
    cooldown: Micros,
    tally: Arc<Tally>,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row and probes `cooldown`
    /// after opening, guarding a store as a whole (the only breaker behind its gauge).
    #[cfg(test)]
    pub fn new(threshold: u64, cooldown: Duration) -> Self {
        Self::in_table(threshold, cooldown, Arc::default())
    }

    /// A closed, unnamed breaker of a table whose breakers share `tally` (which registered
    /// the table's metrics).
    pub fn in_table(threshold: u64, cooldown: Duration, tally: Arc<Tally>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                failures: 0,
                since: 0,
                last_failure: 0,
                domain: None,
                renamed_at: 0,
            }),
            threshold: threshold.max(1),
            cooldown: Micros::try_from(cooldown.as_micros()).unwrap_or(Micros::MAX),
            tally,
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.inner.lock().state
    }

    /// The name of the domain it guards.
    pub fn domain(&self) -> Option<Arc<str>> {
        self.inner.lock().domain.clone()
    }

    /// Starts the breaker afresh, closed and with no failures, for the domain now named
    /// `domain` (its index was given to another master): whatever the old domain did says
    /// nothing about the new one. Not counted as a transition; the gauges follow. `epoch` is
    /// the table's epoch from now on (greater than any an earlier admission carries), so the
    /// outcomes of calls admitted before the rename do not count for the new domain.
    pub fn rename(&self, domain: Option<Arc<str>>, epoch: u64) {
        let mut inner = self.inner.lock();
        inner.renamed_at = epoch;
        let from = std::mem::replace(&mut inner.state, CircuitState::Closed);
        inner.failures = 0;
        inner.domain = domain;
        if from != CircuitState::Closed {
            self.tally.moved(from, CircuitState::Closed);
        }
    }

    /// Asks whether a call may go to the store at `now`.
    pub fn admit(&self, now: Micros) -> Admission {
        let mut held = self.hold();
        let admission = held.admission(now);
        held.take(admission, now);
        admission
    }

    /// The breaker locked, so that a request of several domains can look at all of its
    /// breakers before it takes from any (see [`super::domains::DomainBreakers::admit`]).
    pub fn hold(&self) -> Held<'_> {
        Held {
            breaker: self,
            inner: self.inner.lock(),
        }
    }

    /// [`Breaker::succeeded_in`] for a breaker outside any table (tests).
    #[cfg(test)]
    pub fn succeeded(&self, admission: Admission) -> bool {
        self.succeeded_in(admission, u64::MAX)
    }

    /// Records a call, admitted at the table's epoch `epoch`, that succeeded (ignored if the
    /// breaker was renamed since). Returns `true` when this closed the breaker (the store has
    /// recovered).
    pub fn succeeded_in(&self, admission: Admission, epoch: u64) -> bool {
        let mut inner = self.inner.lock();
        if epoch < inner.renamed_at {
            return false;
        }
        inner.failures = 0;
        if admission == Admission::Probe && inner.state != CircuitState::Closed {
            self.enter(&mut inner, CircuitState::Closed);
            return true;
        }
        false
    }

    /// [`Breaker::failed_in`] for a breaker outside any table (tests), for a call sent at
    /// `now`.
    #[cfg(test)]
    pub fn failed(&self, admission: Admission, now: Micros) -> bool {
        self.failed_in(admission, now, now, u64::MAX)
    }

    /// Records a call, sent at `sent` and admitted at the table's epoch `epoch`, that failed or
    /// timed out at `now` (ignored if the breaker was renamed since; not counted again if it was
    /// sent before the last counted failure, see the module docs). Returns `true` when this
    /// opened the breaker.
    pub fn failed_in(&self, admission: Admission, now: Micros, sent: Micros, epoch: u64) -> bool {
        let mut inner = self.inner.lock();
        if epoch < inner.renamed_at {
            return false;
        }
        if admission == Admission::Call && sent < inner.last_failure {
            return false;
        }
        inner.last_failure = now;
        inner.failures = inner.failures.saturating_add(1);
        let open = match inner.state {
            CircuitState::Closed => inner.failures >= self.threshold,
            CircuitState::HalfOpen => admission == Admission::Probe,
            CircuitState::Open => false,
        };
        if open {
            inner.since = now;
            self.enter(&mut inner, CircuitState::Open);
        }
        open
    }

    /// Records that the probe sent at `sent`, at the table's epoch `epoch`, will never report
    /// (its request was cancelled mid-call). The outstanding probe given up so lets the next
    /// call probe at once, rather than a cooldown after it was sent (an older probe, already
    /// replaced, changes nothing).
    pub fn probe_abandoned(&self, sent: Micros, epoch: u64) {
        let mut inner = self.inner.lock();
        if epoch < inner.renamed_at || inner.state != CircuitState::HalfOpen || inner.since != sent
        {
            return;
        }
        inner.since = inner.since.saturating_sub(self.cooldown);
    }

    fn enter(&self, inner: &mut Inner, state: CircuitState) {
        if inner.state == state {
            return;
        }
        let from = std::mem::replace(&mut inner.state, state);
        self.tally.moved(from, state);
        if self.tally.gauges {
            metrics::counter!(TRANSITIONS, "from" => from.as_str(), "to" => state.as_str())
                .increment(1);
        }
        tracing::warn!(
            circuit = state.as_str(),
            domain = inner.domain.as_deref(),
            "store circuit breaker changed state"
        );
    }
}

/// A [`Breaker`] held locked: what it would admit, and taking that admission, under one lock.
pub struct Held<'a> {
    breaker: &'a Breaker,
    inner: MutexGuard<'a, Inner>,
}

impl Held<'_> {
    /// What the breaker admits at `now`, changing nothing.
    pub fn admission(&self, now: Micros) -> Admission {
        match self.inner.state {
            CircuitState::Closed => Admission::Call,
            CircuitState::Open | CircuitState::HalfOpen
                if now.saturating_sub(self.inner.since) >= self.breaker.cooldown =>
            {
                Admission::Probe
            }
            _ => Admission::Rejected,
        }
    }

    /// Takes `admission`, as [`Held::admission`] gave it at `now`: a probe's turn is taken
    /// (the breaker goes half-open); anything else changes nothing.
    pub fn take(&mut self, admission: Admission, now: Micros) {
        if admission == Admission::Probe {
            self.inner.since = now;
            self.breaker.enter(&mut self.inner, CircuitState::HalfOpen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cooldown, one second, in the clock's microseconds.
    const COOL: Micros = 1_000_000;
    /// Any point in time: the breaker only compares differences.
    const T0: Micros = 1_800_000_000_000_000;

    fn breaker(threshold: u64) -> Breaker {
        Breaker::new(threshold, Duration::from_micros(COOL))
    }

    #[test]
    fn opens_after_the_threshold_and_refuses_until_the_cooldown() {
        let b = breaker(3);
        let t0 = T0;
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Call);
            assert!(!b.failed(Admission::Call, t0));
        }
        assert!(b.failed(Admission::Call, t0));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(t0 + COOL / 2), Admission::Rejected);
        assert_eq!(b.admit(t0 + COOL), Admission::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(
            b.admit(t0 + COOL),
            Admission::Rejected,
            "one probe at a time"
        );
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let b = breaker(2);
        let t0 = T0;
        b.failed(Admission::Call, t0);
        b.succeeded(Admission::Call);
        assert!(!b.failed(Admission::Call, t0));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn the_probe_decides() {
        let b = breaker(1);
        let t0 = T0;
        b.failed(Admission::Call, t0);
        let probe = b.admit(t0 + COOL);
        assert!(b.failed(probe, t0 + COOL), "a failed probe reopens");
        assert_eq!(b.admit(t0 + COOL + COOL / 2), Admission::Rejected);
        let probe = b.admit(t0 + 2 * COOL);
        assert_eq!(probe, Admission::Probe);
        assert!(b.succeeded(probe), "a good probe closes");
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(t0 + 2 * COOL), Admission::Call);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let b = breaker(1);
        let t0 = T0;
        b.failed(Admission::Call, t0);
        assert_eq!(b.admit(t0 + COOL), Admission::Probe);
        // The probe's request was cancelled and never reports.
        assert_eq!(b.admit(t0 + COOL + COOL / 2), Admission::Rejected);
        assert_eq!(b.admit(t0 + 2 * COOL), Admission::Probe);
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe_at_once() {
        let b = breaker(1);
        b.failed(Admission::Call, T0);
        assert_eq!(b.admit(T0 + COOL), Admission::Probe);
        b.probe_abandoned(T0 + COOL, u64::MAX);
        assert_eq!(
            b.admit(T0 + COOL + 1),
            Admission::Probe,
            "not a cooldown later"
        );
        // Given up as the probe it replaced, nothing changes.
        b.probe_abandoned(T0 + COOL, u64::MAX);
        assert_eq!(
            b.admit(T0 + COOL + 2),
            Admission::Rejected,
            "one probe at a time"
        );
    }

    #[test]
    fn failures_of_calls_sent_together_count_once() {
        let b = breaker(3);
        let failed = |sent: Micros, at: Micros| b.failed_in(Admission::Call, at, sent, u64::MAX);
        // A batch of ten sent at T0, all failing at T0 + 10 ms: one failure.
        for _ in 0..10 {
            assert!(!failed(T0, T0 + 10_000));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        // Calls sent after that failure was seen count: two more waves open it.
        assert!(!failed(T0 + 10_000, T0 + 20_000));
        assert!(
            !failed(T0 + 15_000, T0 + 25_000),
            "sent before the last was seen"
        );
        assert!(failed(T0 + 20_000, T0 + 30_000));
        assert_eq!(b.state(), CircuitState::Open);
    }

    /// One lost reply failing a batch of 64 requests, among a node's thousand answered calls a
    /// second, opens nothing.
    #[test]
    fn a_lost_batch_among_many_answers_opens_nothing() {
        let b = breaker(5);
        for i in 0..1_000u64 {
            b.succeeded_in(Admission::Call, u64::MAX);
            if i == 500 {
                for _ in 0..64 {
                    b.failed_in(
                        Admission::Call,
                        T0 + i * 1_000 + 10_000,
                        T0 + i * 1_000,
                        u64::MAX,
                    );
                }
            }
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn late_answers_from_ordinary_calls_do_not_close_an_open_breaker() {
        let b = breaker(1);
        let t0 = T0;
        b.failed(Admission::Call, t0);
        assert!(!b.succeeded(Admission::Call));
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn a_rename_starts_closed_and_ignores_outcomes_admitted_before_it() {
        let b = breaker(2);
        let before = b.admit(T0);
        b.failed(Admission::Call, T0);
        b.failed(Admission::Call, T0);
        assert_eq!(b.state(), CircuitState::Open);
        b.rename(Some("new".into()), 1);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "the new domain starts closed"
        );
        assert_eq!(b.domain().as_deref(), Some("new"));
        // Two failures admitted before the rename (epoch 0) would open it again.
        assert!(!b.failed_in(before, T0, T0, 0));
        assert!(!b.failed_in(before, T0, T0, 0));
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "the old domain's outcomes are ignored"
        );
        assert!(!b.failed_in(Admission::Call, T0, T0, 1));
        assert!(
            b.failed_in(Admission::Call, T0, T0, 1),
            "the new domain's own count"
        );
    }

    #[test]
    fn a_table_without_gauges_leaves_the_store_gauges_alone() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let b = Breaker::in_table(1, Duration::from_micros(COOL), Arc::new(Tally::new(false)));
            b.rename(Some("10.0.0.1:6379".into()), 1);
            b.failed(Admission::Call, T0);
            assert_eq!(b.state(), CircuitState::Open);
        });
        let text = handle.render();
        assert!(!text.contains(STATE), "{text}");
        assert!(!text.contains(DOMAIN_STATE), "{text}");
        assert!(!text.contains(TRANSITIONS), "{text}");
        // The node's own table does write them.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let b = breaker(1);
            b.failed(Admission::Call, T0);
        });
        assert!(handle.render().contains(&format!("{STATE} 2")));
    }
}
