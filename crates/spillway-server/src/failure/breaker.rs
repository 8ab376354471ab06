//! The circuit breaker in front of a shared store.
//!
//! Closed: every call goes to the store; `threshold` failures in a row (errors or timeouts)
//! open it. Open: no call goes to the store, each fails at once; after `cooldown` the next
//! call becomes the one probe (half-open). Half-open: only the probe is sent; its success
//! closes the breaker, its failure opens it for another cooldown. A probe that never reports
//! (its request was cancelled) is replaced after another cooldown, so the breaker cannot
//! stick half-open.
//!
//! Time is passed in, in microseconds from the process clock (monotonic in production, the
//! manual test clock under `--manual-clock`), so the state machine is tested without sleeping
//! and the integration tests move past a cooldown by advancing the clock.

use parking_lot::Mutex;
use spillway_core::time::Micros;
use std::time::Duration;

/// Gauge of the breaker's state: 0 closed, 1 half-open, 2 open.
pub const STATE: &str = "spillway_store_circuit_state";
/// Counter of state changes, by the state left (`from`) and the state entered (`to`).
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

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    failures: u64,
    /// When the breaker last opened, or when the outstanding probe was sent.
    since: Micros,
}

/// A consecutive-failure circuit breaker; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u64,
    cooldown: Micros,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row and probes `cooldown`
    /// after opening.
    pub fn new(threshold: u64, cooldown: Duration) -> Self {
        metrics::gauge!(STATE).set(CircuitState::Closed.gauge());
        // The four changes the breaker can make, visible at zero from the start.
        for (from, to) in [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed),
            (CircuitState::HalfOpen, CircuitState::Open),
        ] {
            metrics::counter!(TRANSITIONS, "from" => from.as_str(), "to" => to.as_str())
                .increment(0);
        }
        Self {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                failures: 0,
                since: 0,
            }),
            threshold: threshold.max(1),
            cooldown: Micros::try_from(cooldown.as_micros()).unwrap_or(Micros::MAX),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.inner.lock().state
    }

    /// Asks whether a call may go to the store at `now`.
    pub fn admit(&self, now: Micros) -> Admission {
        let mut inner = self.inner.lock();
        match inner.state {
            CircuitState::Closed => Admission::Call,
            CircuitState::Open | CircuitState::HalfOpen
                if now.saturating_sub(inner.since) >= self.cooldown =>
            {
                inner.since = now;
                Self::enter(&mut inner, CircuitState::HalfOpen);
                Admission::Probe
            }
            _ => Admission::Rejected,
        }
    }

    /// Records a call that succeeded. Returns `true` when this closed the breaker (the store
    /// has recovered).
    pub fn succeeded(&self, admission: Admission) -> bool {
        let mut inner = self.inner.lock();
        inner.failures = 0;
        if admission == Admission::Probe && inner.state != CircuitState::Closed {
            Self::enter(&mut inner, CircuitState::Closed);
            return true;
        }
        false
    }

    /// Records a call that failed or timed out at `now`. Returns `true` when this opened the
    /// breaker.
    pub fn failed(&self, admission: Admission, now: Micros) -> bool {
        let mut inner = self.inner.lock();
        inner.failures = inner.failures.saturating_add(1);
        let open = match inner.state {
            CircuitState::Closed => inner.failures >= self.threshold,
            CircuitState::HalfOpen => admission == Admission::Probe,
            CircuitState::Open => false,
        };
        if open {
            inner.since = now;
            Self::enter(&mut inner, CircuitState::Open);
        }
        open
    }

    fn enter(inner: &mut Inner, state: CircuitState) {
        if inner.state == state {
            return;
        }
        let from = std::mem::replace(&mut inner.state, state);
        metrics::gauge!(STATE).set(state.gauge());
        metrics::counter!(TRANSITIONS, "from" => from.as_str(), "to" => state.as_str())
            .increment(1);
        tracing::warn!(
            circuit = state.as_str(),
            "store circuit breaker changed state"
        );
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
    fn late_answers_from_ordinary_calls_do_not_close_an_open_breaker() {
        let b = breaker(1);
        let t0 = T0;
        b.failed(Admission::Call, t0);
        assert!(!b.succeeded(Admission::Call));
        assert_eq!(b.state(), CircuitState::Open);
    }
}
