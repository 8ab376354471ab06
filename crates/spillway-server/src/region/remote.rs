//! Another region's store, connected on first use.
//!
//! Connecting takes several round trips (the connection, the library's load, the module's
//! probe), which on a far link can be more than one call's budget, so it runs in a task of its
//! own: a call cut at its budget leaves the attempt running, and a later call finds the store
//! connected instead of starting over. There is one attempt in flight per region at a time;
//! a call made meanwhile waits on it (within its own budget). A failed attempt answers the
//! calls after it at once with its error until the breaker's cooldown has passed since it
//! failed; the first call after that starts the next attempt. So a region that refuses or
//! swallows connections costs at most one attempt per cooldown, however many calls come.

use crate::config::SettingsError;
use async_trait::async_trait;
use spillway_core::algorithm::Decision;
use spillway_core::policy::StoreConfig;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Domains, Store, StoreError};
use spillway_core::time::{Clock, Micros};
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
/// home budget. A store that refuses the login (a setting to fix) is logged as an error once;
/// any other failed attempt that no call was left waiting for (the calls were cut at their
/// budget) is logged as a warning with its reason. Every call it fails stays counted
/// (`spillway_region_home_calls_total`, outcome `failed`).
pub(super) struct Remote(Arc<Link>);

/// What a [`Remote`] connects with, shared with the task connecting it.
struct Link {
    name: Arc<str>,
    config: StoreConfig,
    /// Whether a refused login was logged.
    refusal: spillway_redis::login::TellOnce,
    budget: Duration,
    /// How long a failed attempt answers for the region (the breaker's cooldown), on `clock`.
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
    /// The last one failed at `at`, with `error`.
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
        if let Some(mut running) = self.0.clone().attempt()? {
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
    /// The attempt to wait on: the one in flight, or a new one; `None` once the store is
    /// connected; within the backoff of a failed attempt, its error.
    fn attempt(self: Arc<Self>) -> Result<Option<watch::Receiver<Outcome>>, StoreError> {
        let mut state = self.attempt.lock();
        // Set before the state leaves `Running`: a call that missed it above sees it here.
        if self.store.get().is_some() {
            return Ok(None);
        }
        match &*state {
            // A task that ended without telling (a panic) leaves its attempt to a new one.
            Attempt::Running(outcome) if outcome.has_changed().is_ok() => {
                return Ok(Some(outcome.clone()));
            }
            Attempt::Failed { at, error }
                if self.clock.now().saturating_sub(*at) < self.backoff =>
            {
                return Err(error.clone());
            }
            _ => {}
        }
        let (tell, outcome) = watch::channel(None);
        *state = Attempt::Running(outcome.clone());
        drop(state);
        tokio::spawn(self.run(tell));
        Ok(Some(outcome))
    }

    /// One attempt, bounded by [`CONNECT_WITHIN`] (or twice the budget); tells its outcome
    /// to whoever waits.
    async fn run(self: Arc<Self>, tell: watch::Sender<Outcome>) {
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
                let error = StoreError::Unavailable(format!("{e:#}"));
                let at = self.clock.now();
                *self.attempt.lock() = Attempt::Failed {
                    at,
                    error: error.clone(),
                };
                // The state's own receiver is gone: what is left are the calls still waiting.
                self.tell_failure(&e, tell.receiver_count() == 0);
                Err(error)
            }
        };
        tell.send_replace(Some(outcome));
    }

    /// Logs a failed attempt: a refused login (a setting to fix) as an error, once; any other
    /// failure as a warning when no call is left to hear why (`unheard`: the calls waiting for
    /// it were cut at their budget and answered only that they timed out).
    fn tell_failure(&self, e: &anyhow::Error, unheard: bool) {
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
            let cooldown = Duration::from_micros(self.backoff);
            tracing::warn!(
                region = %self.name,
                "{e:#}; calls to it fail at once for {cooldown:?}, then one tries again"
            );
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
        crate::store::build(config, login, 1, clock, self.budget, false).await
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
