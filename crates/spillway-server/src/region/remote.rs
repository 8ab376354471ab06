//! Another region's store, connected on first use.
//!
//! Connecting takes several round trips (the connection, the library's load, the module's
//! probe), which on a far link can be more than one call's budget, so it runs in a task of its
//! own: a call cut at its budget leaves the attempt running, and a later call finds the store
//! connected instead of starting over. There is one attempt in flight per region at a time;
//! a call made meanwhile waits on it (within its own budget). A failed attempt answers the
//! calls after it at once with its error until the breaker's cooldown has passed since it
//! started; the first call after that starts the next attempt. So a region that refuses or
//! swallows connections costs at most one attempt per cooldown or per attempt's length,
//! whichever is longer, however many calls come; and an attempt that outlasted the cooldown
//! (a link that swallows packets) leaves no backoff behind it for the breaker's probe to hit.

use crate::config::SettingsError;
use async_trait::async_trait;
use spillway_core::algorithm::Decision;
use spillway_core::policy::StoreConfig;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Domains, Store, StoreError};
use spillway_core::time::{Clock, Micros};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long an attempt to connect a far region's store keeps at it, at least: many calls'
/// budgets, so a far link's round trips fit (a budget longer than half of it gets twice its
/// length, so the connection's own limit and the library's load after it fit too). Bounded,
/// so that an attempt on a link that swallows packets ends and the next one can start.
pub(super) const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// What an attempt ended with, once it has (`None` while it runs).
type Outcome = Option<Result<(), StoreError>>;

/// Another region's store (see the module docs). The guard around it cuts every call at the
/// home budget. A store that refuses the login (a setting to fix) is logged as an error once,
/// and so is an attempt that panicked (a bug); any other failed attempt that no call was left
/// waiting for (the calls were cut at their budget) is logged as a warning with its reason.
/// Every call it fails stays counted
/// (`spillway_region_home_calls_total`, outcome `failed`).
pub(super) struct Remote(Arc<Link>);

/// What a [`Remote`] connects with, shared with the task connecting it.
struct Link {
    name: Arc<str>,
    config: StoreConfig,
    /// Whether a refused login was logged.
    refusal: spillway_redis::login::TellOnce,
    /// Whether an attempt that panicked was logged.
    panic_told: AtomicBool,
    budget: Duration,
    /// How long a failed attempt answers for the region from its start (the breaker's
    /// cooldown), on `clock`.
    backoff: Micros,
    clock: Arc<dyn Clock>,
    store: OnceLock<Arc<dyn Store>>,
    attempt: parking_lot::Mutex<Attempt>,
}

/// Where connecting stands while the store is not connected.
enum Attempt {
    /// None in flight: none made yet, or the store is connected.
    Idle,
    /// One is in flight; its outcome is sent on this channel.
    Running(watch::Receiver<Outcome>),
    /// The last one, started at `at`, failed with `error`.
    Failed { at: Micros, error: StoreError },
}

impl Remote {
    /// Region `name`'s store on `config`, whose calls have `budget` and whose failed attempts
    /// answer for `backoff` (on `clock`).
    pub(super) fn new(
        name: Arc<str>,
        config: StoreConfig,
        budget: Duration,
        backoff: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self(Arc::new(Link {
            name,
            config,
            refusal: Default::default(),
            panic_told: AtomicBool::new(false),
            budget,
            backoff: Micros::try_from(backoff.as_micros()).unwrap_or(Micros::MAX),
            clock,
            store: OnceLock::new(),
            attempt: parking_lot::Mutex::new(Attempt::Idle),
        }))
    }

    /// The connected store, or the outcome of the attempt in flight (started here if none is
    /// and the last one's backoff has passed).
    async fn store(&self) -> Result<&Arc<dyn Store>, StoreError> {
        if let Some(store) = self.0.store.get() {
            return Ok(store);
        }
        if let Some(mut running) = self.0.clone().attempt(Link::run)? {
            let outcome = match running.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                // The task ended without telling: its runtime is shutting down.
                None => {
                    return Err(StoreError::Unavailable(format!(
                        "connecting to region {}'s store was stopped",
                        self.0.name
                    )))
                }
            }
        }
        self.0.store.get().ok_or_else(|| {
            StoreError::Unavailable(format!("region {}'s store is not connected", self.0.name))
        })
    }
}

impl Link {
    /// The attempt to wait on: the one in flight, or a new one (`run` in a task of its own);
    /// `None` once the store is connected; within the backoff of a failed attempt, its error.
    fn attempt<F>(
        self: Arc<Self>,
        run: impl FnOnce(Arc<Self>, Telling) -> F,
    ) -> Result<Option<watch::Receiver<Outcome>>, StoreError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut state = self.attempt.lock();
        // Set before the state leaves `Running`: a call that missed it above sees it here.
        if self.store.get().is_some() {
            return Ok(None);
        }
        let now = self.clock.now();
        match &*state {
            // A task that ended without telling (its runtime stopping) leaves its attempt to a
            // new one.
            Attempt::Running(outcome) if outcome.has_changed().is_ok() => {
                return Ok(Some(outcome.clone()));
            }
            Attempt::Failed { at, error } if now.saturating_sub(*at) < self.backoff => {
                return Err(error.clone());
            }
            _ => {}
        }
        let (tell, outcome) = watch::channel(None);
        *state = Attempt::Running(outcome.clone());
        drop(state);
        let telling = Telling {
            link: self.clone(),
            tell,
            started: now,
        };
        tokio::spawn(run(self, telling));
        Ok(Some(outcome))
    }

    /// One attempt, bounded by [`CONNECT_WITHIN`] (or twice the budget); tells its outcome
    /// to whoever waits.
    async fn run(self: Arc<Self>, telling: Telling) {
        let within = CONNECT_WITHIN.max(self.budget * 2);
        let made = match tokio::time::timeout(within, self.connect()).await {
            Ok(made) => made,
            Err(_) => Err(anyhow::anyhow!(
                "region {}'s store did not connect within {within:?}",
                self.name
            )),
        };
        let outcome = match made {
            Ok(store) => {
                // Only this task sets it, once: the state was `Running` until now.
                let _ = self.store.set(store);
                *self.attempt.lock() = Attempt::Idle;
                Ok(())
            }
            Err(e) => {
                let error = telling.failed(&e);
                // The state's own receiver is gone: what is left are the calls still waiting.
                self.tell_failure(&e, telling.tell.receiver_count() == 0, telling.started);
                Err(error)
            }
        };
        telling.tell.send_replace(Some(outcome));
    }

    /// Logs a failed attempt that started at `started`: a refused login (a setting to fix)
    /// as an error, once; any other failure as a warning when no call is left to hear why
    /// (`unheard`: the calls waiting for it were cut at their budget and answered only that
    /// they timed out).
    fn tell_failure(&self, e: &anyhow::Error, unheard: bool, started: Micros) {
        // `build` tells a refused login as a setting error, naming the region's server.
        let refused = e.chain().any(|cause| cause.is::<SettingsError>());
        if refused {
            if self.refusal.first() {
                tracing::error!(
                    region = %self.name,
                    "{e:#}; calls to it fail until it accepts the login (told once)"
                );
            }
        } else if unheard {
            let spent = self.clock.now().saturating_sub(started);
            let left = Duration::from_micros(self.backoff.saturating_sub(spent));
            if left.is_zero() {
                tracing::warn!(region = %self.name, "{e:#}; the next call to it tries again");
            } else {
                tracing::warn!(
                    region = %self.name,
                    "{e:#}; calls to it fail at once for {left:?}, then one tries again"
                );
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Arc<dyn Store>> {
        // Regions run on `redis` and `redis_cluster` stores, whose URLs carry logins.
        let no_sentinel = spillway_redis::SentinelAuth::default();
        let (config, clock) = (&self.config, self.clock.clone());
        let owner = format!("region {}", self.name);
        let hint = crate::store::login_hints::region(&self.name);
        let login = crate::store::Login {
            sentinel: &no_sentinel,
            owner: &owner,
            hint: &hint,
            // Connected again after each failed attempt until it answers.
            ask_seeds: self.refusal.ask_seeds(),
        };
        // Called only through the region's own failure guard, with the same budget (see
        // `RegionNode::new`).
        crate::store::build(config, login, 1, clock, self.budget, false, true).await
    }
}

/// An attempt's way to tell its outcome: to the calls waiting (`tell`) and, for a failure, to
/// the link's state, as started at `started`. Dropped untold while its task unwinds (the
/// connecting panicked), it records and tells that as the attempt's failure, so the backoff
/// holds and the calls waiting hear why; dropped untold otherwise (the runtime stopping), it
/// only closes `tell`.
struct Telling {
    link: Arc<Link>,
    tell: watch::Sender<Outcome>,
    started: Micros,
}

impl Telling {
    /// Records the attempt as failed with `e`; the error to tell.
    fn failed(&self, e: &anyhow::Error) -> StoreError {
        let error = StoreError::Unavailable(format!("{e:#}"));
        *self.link.attempt.lock() = Attempt::Failed {
            at: self.started,
            error: error.clone(),
        };
        error
    }
}

impl Drop for Telling {
    fn drop(&mut self) {
        if self.tell.borrow().is_some() || !std::thread::panicking() {
            return;
        }
        let name = &self.link.name;
        let e = anyhow::anyhow!("connecting to region {name}'s store panicked");
        let error = self.failed(&e);
        if !self.link.panic_told.swap(true, Ordering::Relaxed) {
            tracing::error!(
                region = %name,
                "{e}; calls to it fail, one attempt per cooldown (told once)"
            );
        }
        self.tell.send_replace(Some(Err(error)));
    }
}

#[cfg(test)]
impl Remote {
    /// Starts an attempt as a call does, whose task panics where it would connect.
    pub(super) fn start_panicking_attempt(&self) {
        let started = self.0.clone().attempt(|_, telling| async move {
            let _telling = telling;
            panic!("a bug where the attempt connects");
        });
        assert!(matches!(started, Ok(Some(_))), "an attempt started");
    }
}

#[async_trait]
impl Store for Remote {
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError> {
        self.store().await?.check(checks, mode).await
    }

    fn local_answer(&self, checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        self.0.store.get()?.local_answer(checks)
    }

    // A far region's cluster gets a breaker per master too (before it connects: one).
    fn domains(&self, checks: &[Check<'_>]) -> Domains {
        self.0
            .store
            .get()
            .map_or(Domains::WHOLE, |s| s.domains(checks))
    }

    fn domain_generation(&self) -> u64 {
        self.0.store.get().map_or(0, |s| s.domain_generation())
    }

    fn domain_name(&self, index: usize) -> Option<String> {
        self.0.store.get()?.domain_name(index)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store().await?.ping().await
    }

    fn key_count(&self) -> u64 {
        0
    }

    fn evictions(&self) -> u64 {
        0
    }

    fn sweep(&self) -> u64 {
        self.0.store.get().map_or(0, |s| s.sweep())
    }
}
