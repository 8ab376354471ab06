//! What the dashboard (`crate::ui`) shows that no other part keeps: decisions per second
//! ([`rates`], the lock-free ring of `spillway_core::rates`), what shadow limits would have
//! denied ([`shadow`]), the last policy reloads and when the catalog version in force was
//! applied.
//!
//! The first two are fed by `decision::observe` on every consuming decision (atomics only, no
//! lock: see each module); the rest change a few times a day.

pub mod shadow;
pub use spillway_core::rates;

use crate::decision::{Ask, Outcome};
use parking_lot::Mutex;
use rates::{Rates, Tally};
use serde::Serialize;
use shadow::ShadowDenials;
use spillway_core::request::CheckMode;
use spillway_core::time::Micros;
use std::collections::VecDeque;

/// Reloads remembered.
pub const RELOADS: usize = 20;

/// The node's live figures; see the module docs.
#[derive(Debug, Default)]
pub struct Live {
    /// The store's kind: `memory`, `redis` or `redis_cluster` (empty when not said).
    pub store_kind: &'static str,
    /// Decisions per second and store-call times.
    pub rates: Rates,
    /// Shadow limits' would-be denials.
    pub shadow: ShadowDenials,
    reloads: Mutex<VecDeque<ReloadEvent>>,
    catalog: Mutex<Option<CatalogApplied>>,
}

/// One policy reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadEvent {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// What asked for it: `file change` or `SIGHUP`.
    pub trigger: &'static str,
    /// `success` or `rejected`.
    pub outcome: &'static str,
    /// Why it was rejected (the policy error with its `file:line:col`).
    pub error: Option<String>,
}

/// When the catalog version in force was applied on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogApplied {
    /// The version.
    pub version: u64,
    /// When this node applied it, in milliseconds since the epoch.
    pub at_ms: u64,
}

impl Live {
    /// Empty figures for a node whose store is of `kind`.
    pub fn new(store_kind: &'static str) -> Self {
        Self {
            store_kind,
            ..Self::default()
        }
    }

    /// Counts a finished decision whose store call took `micros` (`decision::observe` calls
    /// this). Peeks are not decisions and are not counted.
    #[inline]
    pub fn observe(&self, now: Micros, ask: &Ask<'_>, outcome: &Outcome, micros: u64) {
        if ask.mode != CheckMode::Consume {
            return;
        }
        let tally = match outcome {
            Outcome::Refused(_) => Tally::Degraded,
            Outcome::Decided(d) if d.degraded.is_some() => Tally::Degraded,
            Outcome::Decided(d) => {
                self.shadow.record(now, &d.verdict.outcomes);
                if d.verdict.allowed {
                    Tally::Allowed
                } else {
                    Tally::Denied
                }
            }
        };
        self.rates.record(now, tally, micros);
    }

    /// Remembers a reload attempt (the newest [`RELOADS`] are kept).
    pub fn reloaded(&self, event: ReloadEvent) {
        let mut reloads = self.reloads.lock();
        if reloads.len() == RELOADS {
            reloads.pop_front();
        }
        reloads.push_back(event);
    }

    /// The reloads remembered, newest first.
    pub fn reloads(&self) -> Vec<ReloadEvent> {
        self.reloads.lock().iter().rev().cloned().collect()
    }

    /// Notes that catalog `version` was applied at `now`; a version already noted keeps its
    /// time.
    pub fn catalog_applied(&self, version: u64, now: Micros) {
        let mut noted = self.catalog.lock();
        if noted.is_none_or(|n| n.version != version) {
            *noted = Some(CatalogApplied {
                version,
                at_ms: now / 1_000,
            });
        }
    }

    /// When the catalog version last noted was applied.
    pub fn catalog(&self) -> Option<CatalogApplied> {
        *self.catalog.lock()
    }
}

/// Notes the catalog version in force now, and each new one as this node applies it, until
/// `shutdown`.
pub fn follow_catalog(
    app: std::sync::Arc<crate::state::AppState>,
    shutdown: crate::shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    let mut applied = app.catalog.applied();
    tokio::spawn(async move {
        loop {
            let version = app.catalog.status().version;
            app.live.catalog_applied(version, app.clock.now());
            tokio::select! {
                _ = shutdown.triggered() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    })
}
