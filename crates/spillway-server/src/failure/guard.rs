//! [`GuardedStore`]: a shared store behind a time budget and circuit breakers, one per failure
//! domain (see [`super::domains`]: the whole store, or each Redis Cluster master).
//!
//! Every `check` either fails at once (the breaker of a domain it touches is open) or is cut
//! off at the budget, whatever the store is doing: refusing connections, reconnecting, frozen,
//! slow or partitioned. The budget is a `tokio` timeout around the whole call, so it also
//! bounds the client's own reconnection (a call made while the connection is being
//! re-established waits for it, but never past the budget). When a breaker closes again, the
//! emergency state is kept: its counters expire with their own windows, so a store that flaps
//! cannot refill emergency quotas.
//!
//! Two clocks, on purpose: the budget is real elapsed time (`tokio`'s), since it bounds how long
//! a caller really waits; the breaker's cooldown reads the process clock like every other
//! time-dependent rule, so the tests step past it instead of sleeping.

use super::domains::DomainBreakers;
use super::emergency::EmergencyLimiter;
use super::on_runtime::OnRuntime;
use async_trait::async_trait;
use spillway_core::algorithm::Decision;
use spillway_core::request::CheckMode;
use spillway_core::store::{Charged, Check, ReportId, Store, StoreError};
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;

/// Gauge of the counters the emergency limiter holds, refreshed by the once-a-second sweep.
pub const EMERGENCY_KEYS: &str = "spillway_emergency_keys";

/// The message of a call refused by an open breaker.
pub const CIRCUIT_OPEN: &str = "circuit breaker open; the store is not being called";

/// A [`Store`] wrapper enforcing the budget and the breakers; see the module docs. It asks
/// its store for the failure domains of each call and keeps them to itself: to a caller it is
/// one store (nothing wraps a guard, so nothing would use them).
pub struct GuardedStore {
    inner: Arc<dyn Store>,
    budget: Duration,
    breakers: Arc<DomainBreakers>,
    emergency: Arc<EmergencyLimiter>,
    clock: Arc<dyn Clock>,
    /// The runtime the guard was built on (the main one), where store calls spawn their work.
    runtime: Option<tokio::runtime::Handle>,
}

impl GuardedStore {
    /// Guards `inner`: calls are cut at `budget`, failures feed the breakers of the domains
    /// they touch (which read time from `clock`), and `emergency` is swept with the store.
    pub fn new(
        inner: Arc<dyn Store>,
        budget: Duration,
        breakers: Arc<DomainBreakers>,
        emergency: Arc<EmergencyLimiter>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner,
            budget,
            breakers,
            emergency,
            clock,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

#[async_trait]
impl Store for GuardedStore {
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError> {
        // An answer from the store's own cache says nothing about its backend: it must neither
        // close the breaker (ending the outage while the backend is still down) nor reset
        // its count of consecutive failures.
        if let Some(decisions) = self.inner.local_answer(checks) {
            return Ok(decisions);
        }
        // A call this thread's own lane serves stays on this thread; any other goes to the
        // main runtime (see `super::on_runtime`).
        let here = self.inner.served_on_this_thread(checks);
        self.guarded(checks, here, self.inner.check(checks, mode))
            .await
    }

    async fn charge(
        &self,
        checks: &[Check<'_>],
        report: Option<ReportId>,
    ) -> Result<Charged, StoreError> {
        // A charge is never answered from a cache: it must reach the store to be recorded.
        // It spawns a task per slot that must outlive its caller: on the main runtime.
        self.guarded(checks, false, self.inner.charge(checks, report))
            .await
    }

    fn attach_thread(&self) {
        self.inner.attach_thread();
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Readiness asks the store directly: a ping is cheap and says more than the breaker.
        OnRuntime::new(self.runtime.clone(), self.inner.ping()).await
    }

    fn key_count(&self) -> u64 {
        self.inner.key_count()
    }

    fn evictions(&self) -> u64 {
        self.inner.evictions()
    }

    fn sweep(&self) -> u64 {
        self.emergency.sweep();
        metrics::gauge!(EMERGENCY_KEYS).set(self.emergency.key_count() as f64);
        self.inner.sweep()
    }
}

impl GuardedStore {
    /// Runs one store call for `checks` behind the breakers of the domains they touch and the
    /// budget, and tells the breakers how it went. `here`: the call is served by this
    /// thread's own lane ([`Store::served_on_this_thread`]), so it is polled where it is;
    /// otherwise with the main runtime entered.
    async fn guarded<T>(
        &self,
        checks: &[Check<'_>],
        here: bool,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send + Unpin,
    ) -> Result<T, StoreError> {
        let domains = self.inner.domains(checks);
        self.breakers.sync(&*self.inner);
        let Some(admitted) = self.breakers.admit(domains, self.clock.now()) else {
            return Err(StoreError::Unavailable(CIRCUIT_OPEN.into()));
        };
        // Dropped before the outcome is told (the request was cancelled), it gives up its
        // probes, so cancelling probes cannot hold a breaker open.
        let untold = Untold {
            breakers: &self.breakers,
            admitted: Some(admitted),
        };
        // On the main runtime, unless this thread's own lane serves it: a reconnecting client
        // must not leave the shared connection's task on a serving thread (see
        // `crate::serving`), while a lane's timers and I/O belong on its own thread (the main
        // runtime's timer wheel would be one more lock shared across threads).
        let runtime = if here { None } else { self.runtime.clone() };
        let call = OnRuntime::new(runtime, call);
        let outcome = match tokio::time::timeout(self.budget, call).await {
            Ok(outcome) => outcome,
            Err(_) => {
                metrics::counter!("spillway_store_errors_total", "kind" => "timeout").increment(1);
                Err(StoreError::Timeout(self.budget))
            }
        };
        let admitted = untold.told();
        match &outcome {
            Ok(_) => {
                self.breakers.succeeded(admitted);
            }
            // Never sent (this node's queue was full): nothing learnt of the store, and a
            // probe refused so is given up, for the next call to take.
            Err(err) if err.is_overload() => self.breakers.abandoned(admitted),
            Err(_) => {
                self.breakers.failed(admitted, self.clock.now());
            }
        }
        outcome
    }
}

/// A call's admission whose outcome is not told yet; dropped untold, its probes are given up
/// ([`DomainBreakers::abandoned`]).
struct Untold<'a> {
    breakers: &'a DomainBreakers,
    admitted: Option<super::domains::Admitted>,
}

impl Untold<'_> {
    /// The admission, its outcome about to be told: the guard is disarmed.
    fn told(mut self) -> super::domains::Admitted {
        self.admitted.take().expect("an admission is told once")
    }
}

impl Drop for Untold<'_> {
    fn drop(&mut self) {
        if let Some(admitted) = self.admitted.take() {
            self.breakers.abandoned(admitted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::breaker::CircuitState;
    use spillway_core::time::ManualClock;
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    use tokio::time::Instant;

    /// A store whose behaviour the test switches: 0 answers, 1 refuses, 2 hangs. With
    /// `cached` set it also has a local answer, which (as in the Redis store) only
    /// `local_answer` gives; `check` always asks the backend, which does what `mode` says.
    #[derive(Default)]
    struct Switch {
        mode: AtomicU8,
        calls: AtomicU64,
        cached: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Store for Switch {
        async fn check(&self, c: &[Check<'_>], _: CheckMode) -> Result<Vec<Decision>, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.mode.load(Ordering::SeqCst) {
                0 => Ok(Vec::with_capacity(c.len())),
                1 => Err(StoreError::Unavailable("refused".into())),
                _ => std::future::pending().await,
            }
        }
        fn local_answer(&self, c: &[Check<'_>]) -> Option<Vec<Decision>> {
            self.cached
                .load(Ordering::SeqCst)
                .then(|| Vec::with_capacity(c.len()))
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
    }

    /// A store whose check tells on which thread a task it spawns runs, and which says its
    /// calls are served on the calling thread when `here` is set.
    struct Where {
        here: bool,
        spawned_on: std::sync::Mutex<Option<String>>,
    }

    #[async_trait]
    impl Store for Where {
        async fn check(&self, c: &[Check<'_>], _: CheckMode) -> Result<Vec<Decision>, StoreError> {
            let name = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .expect("spawned");
            *self.spawned_on.lock().expect("lock") = name;
            Ok(Vec::with_capacity(c.len()))
        }
        fn served_on_this_thread(&self, _: &[Check<'_>]) -> bool {
            self.here
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
    }

    #[test]
    fn a_call_the_thread_serves_itself_stays_on_the_thread_others_go_to_the_main_runtime() {
        use crate::failure::on_runtime::tests::{main_runtime, MAIN};
        let main = main_runtime();
        let spawned_on = |here: bool| {
            let inner = Arc::new(Where {
                here,
                spawned_on: std::sync::Mutex::new(None),
            });
            let clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
            // Built on the main runtime, as the server builds it.
            let guard = main.block_on(async {
                Arc::new(GuardedStore::new(
                    inner.clone(),
                    Duration::from_secs(5),
                    Arc::new(DomainBreakers::new(3, COOLDOWN)),
                    Arc::new(EmergencyLimiter::new(clock.clone(), 3)),
                    clock,
                ))
            });
            std::thread::Builder::new()
                .name("a-serving-thread".into())
                .spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(guard.check(&[], CheckMode::Consume))
                        .expect("answered");
                })
                .expect("thread")
                .join()
                .expect("serving thread");
            let name = inner.spawned_on.lock().expect("lock").clone();
            name
        };
        assert_eq!(spawned_on(false).as_deref(), Some(MAIN));
        assert_eq!(spawned_on(true).as_deref(), Some("a-serving-thread"));
    }

    /// The breaker's cooldown in these tests.
    const COOLDOWN: Duration = Duration::from_secs(1);

    /// `inner` behind a 5 ms budget and a breaker that opens after 3 failures, on a manual
    /// clock the test moves (the budget runs on tokio's paused time).
    fn guarded(inner: Arc<dyn Store>) -> (GuardedStore, Arc<DomainBreakers>, Arc<ManualClock>) {
        let breaker = Arc::new(DomainBreakers::new(3, COOLDOWN));
        let clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
        let emergency = Arc::new(EmergencyLimiter::new(clock.clone(), 3));
        let store = GuardedStore::new(
            inner,
            Duration::from_millis(5),
            breaker.clone(),
            emergency,
            clock.clone(),
        );
        (store, breaker, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_costs_one_budget_then_nothing_until_the_probe() {
        let inner = Arc::new(Switch::default());
        inner.mode.store(2, Ordering::SeqCst);
        let (store, breaker, clock) = guarded(inner.clone());
        for _ in 0..3 {
            let started = Instant::now();
            let err = store
                .check(&[], CheckMode::Consume)
                .await
                .expect_err("hung");
            assert!(matches!(err, StoreError::Timeout(_)));
            assert_eq!(started.elapsed(), Duration::from_millis(5));
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        let started = Instant::now();
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect_err("open");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "an open breaker answers at once"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "and sends nothing");

        inner.mode.store(0, Ordering::SeqCst);
        clock.advance(COOLDOWN.as_micros() as u64 - 1);
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect_err("still open just before the cooldown ends");
        clock.advance(1);
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect("the probe gets through");
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// A client that cancels its request while it is the half-open probe (an HTTP/2 reset)
    /// gives the probe up: the next call probes at once, so cancelled probes cannot hold the
    /// breaker open, and every tenant in its failure mode.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_is_given_up_at_once() {
        let inner = Arc::new(Switch::default());
        inner.mode.store(2, Ordering::SeqCst);
        let (store, breaker, clock) = guarded(inner.clone());
        for _ in 0..3 {
            store
                .check(&[], CheckMode::Consume)
                .await
                .expect_err("hung");
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        clock.advance(COOLDOWN.as_micros() as u64);
        // The probe is sent, and its caller goes away before the budget is spent.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(1),
            store.check(&[], CheckMode::Consume),
        );
        assert!(cancelled.await.is_err(), "cancelled mid-call");
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        inner.mode.store(0, Ordering::SeqCst);
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect("the next call is the probe, at once");
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// A call refused before it was sent, this node's queue being full, says nothing of the
    /// store: however many, the breaker stays closed.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_does_not_open_the_breaker() {
        let (store, breaker, _) =
            guarded(Arc::new(crate::test_support::FailingStore::full_queue()));
        for _ in 0..10 {
            let err = store
                .check(&[], CheckMode::Consume)
                .await
                .expect_err("full");
            assert!(err.is_overload(), "{err:?}");
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_open_the_breaker_too() {
        let inner = Arc::new(Switch::default());
        inner.mode.store(1, Ordering::SeqCst);
        let (store, breaker, _) = guarded(inner);
        for _ in 0..3 {
            store
                .check(&[], CheckMode::Consume)
                .await
                .expect_err("refused");
        }
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_neither_close_the_breaker_nor_hide_failures() {
        let inner = Arc::new(Switch::default());
        inner.mode.store(1, Ordering::SeqCst);
        let (store, breaker, clock) = guarded(inner.clone());
        // Failures interleaved with cached answers still open the breaker.
        for _ in 0..3 {
            store
                .check(&[], CheckMode::Consume)
                .await
                .expect_err("refused");
            inner.cached.store(true, Ordering::SeqCst);
            store
                .check(&[], CheckMode::Consume)
                .await
                .expect("answered from the cache");
            inner.cached.store(false, Ordering::SeqCst);
        }
        assert_eq!(breaker.state(), CircuitState::Open);

        // Once the probe is due, a cached answer is not taken for the backend's recovery.
        clock.advance(COOLDOWN.as_micros() as u64);
        inner.cached.store(true, Ordering::SeqCst);
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect("answered from the cache");
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            3,
            "the backend was not asked"
        );
        inner.cached.store(false, Ordering::SeqCst);
        store
            .check(&[], CheckMode::Consume)
            .await
            .expect_err("the real probe fails");
        assert_eq!(breaker.state(), CircuitState::Open);
    }
}
