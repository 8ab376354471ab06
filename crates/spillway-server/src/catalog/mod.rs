//! The node's side of the tenant catalog: which catalog the engine resolves against, where it
//! came from, and how current it is.
//!
//! Without a database (`--catalog` unset) the catalog is the policy file's `tenants:` section
//! and changes only with the policy. With one, [`sync`] loads it at start (or, when the
//! database is down, the last snapshot this node wrote to its disk), follows its changes
//! (Postgres notifications wake it; it also polls, so a lost notification only delays a
//! change), and publishes each new catalog here. A policy reload recompiles the catalog in
//! force against the new policy. Both go through [`CatalogNode`], under one lock, so neither
//! can publish a catalog compiled against a policy that is no longer in force.
//!
//! The request path never sees any of this: the engine's policy carries its catalog, swapped
//! atomically, and a request does a hash lookup in it.

pub mod cli;
pub mod metrics;
pub mod settings;
pub mod sync;

use parking_lot::Mutex;
use serde::Serialize;
use spillway_catalog::CatalogDb;
use spillway_core::catalog::{Catalog, Change, Skipped};
use spillway_core::engine::Engine;
use spillway_core::policy::Policy;
use spillway_core::text::printable;
use spillway_core::time::Micros;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Most skipped parts logged one by one per publication; the rest are counted.
const LOGGED_SKIPS: usize = 20;

/// Where the catalog in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The policy file's `tenants:` section (no database configured).
    Policy,
    /// Nothing yet: the database could not be read at start and no snapshot was found.
    Empty,
    /// The node's local snapshot, read at start because the database was unreachable.
    Snapshot,
    /// The database.
    Database,
}

/// How current the catalog in force is, for `/readyz`, `/v1/admin/version` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogStatus {
    /// Where the catalog in force came from.
    pub origin: Origin,
    /// The version of the last change applied.
    pub version: u64,
    /// When the node last heard from the database (a load or a poll that succeeded), by the
    /// server's clock, in microseconds since the epoch; `None` if never.
    #[serde(skip)]
    pub contact_at: Option<Micros>,
    /// Whether the catalog may be missing changes: the database did not answer the last
    /// attempt, or never has.
    pub stale: bool,
    /// The last error talking to the database, if the last attempt failed.
    pub error: Option<String>,
    /// Entries with a part the policy in force refuses (ignored until fixed).
    pub invalid: usize,
    /// How many tenants, users and API keys it holds.
    pub tenants: usize,
    /// See `tenants`.
    pub users: usize,
    /// See `tenants`.
    pub api_keys: usize,
}

/// The policy as loaded and the catalog compiled against it: what the engine resolves with.
struct Published {
    policy: Arc<Policy>,
    catalog: Arc<Catalog>,
}

/// The catalog this node resolves against, and its database if there is one.
pub struct CatalogNode {
    published: Mutex<Published>,
    db: Option<Arc<dyn CatalogDb>>,
    status: Mutex<CatalogStatus>,
    applied: watch::Sender<u64>,
    /// Wakes the sync task at once (after an admin write on this node).
    nudge: Notify,
}

impl std::fmt::Debug for CatalogNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogNode").finish_non_exhaustive()
    }
}

impl CatalogNode {
    /// A node whose catalog is `policy`'s `tenants:` section, or, with `db`, empty until
    /// [`sync`] loads it.
    pub fn new(policy: Arc<Policy>, db: Option<Arc<dyn CatalogDb>>) -> Self {
        let (catalog, origin) = match db {
            None => (Arc::clone(policy.catalog()), Origin::Policy),
            Some(_) => (Arc::new(Catalog::empty(&policy)), Origin::Empty),
        };
        let (tenants, users, api_keys) = catalog.counts();
        let status = CatalogStatus {
            origin,
            version: catalog.version(),
            contact_at: None,
            stale: db.is_some(),
            error: None,
            invalid: catalog.invalid(),
            tenants,
            users,
            api_keys,
        };
        Self {
            published: Mutex::new(Published { policy, catalog }),
            db,
            status: Mutex::new(status),
            applied: watch::channel(0).0,
            nudge: Notify::new(),
        }
    }

    /// The database behind the catalog, if any.
    pub fn db(&self) -> Option<&Arc<dyn CatalogDb>> {
        self.db.as_ref()
    }

    /// The policy as loaded and the catalog in force, compiled against it.
    pub fn current(&self) -> (Arc<Policy>, Arc<Catalog>) {
        let published = self.published.lock();
        (
            Arc::clone(&published.policy),
            Arc::clone(&published.catalog),
        )
    }

    /// How current the catalog is.
    pub fn status(&self) -> CatalogStatus {
        self.status.lock().clone()
    }

    /// The version applied, watched: an admin write waits on it to answer once its own node
    /// has the change.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Asks the sync task to look for changes now.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub(crate) fn nudged(&self) -> &Notify {
        &self.nudge
    }

    /// A reloaded policy: the catalog in force (the database's), or the new policy's own
    /// (`tenants:`), compiled against it and published with it. Refused, with nothing
    /// published, when the new policy cannot take part of a catalog entry in force (an
    /// override of a limit it renames, removes or gives another algorithm; a tier it drops):
    /// dropping it would quietly lift a tenant's own limit, as the same override in a
    /// `tenants:` section would refuse the file. The message names the first few. Entries
    /// the policy in force already holds in part do not refuse it.
    pub fn policy_loaded(&self, engine: &Engine, policy: Arc<Policy>) -> Result<(), String> {
        let mut published = self.published.lock();
        let catalog = if self.db.is_some() {
            let (catalog, skipped) = published.catalog.recompile(&policy);
            // Entries held in part already (written against another policy) do not stop it.
            let (before, lost): (Vec<Skipped>, Vec<Skipped>) =
                (skipped.into_iter()).partition(|s| published.catalog.refused_in_part(&s.key));
            if !lost.is_empty() {
                return Err(refused_by(&lost));
            }
            report_skipped("policy reload", &before);
            Arc::new(catalog)
        } else {
            Arc::clone(policy.catalog())
        };
        engine.replace_policy(Arc::new(policy.with_catalog(Arc::clone(&catalog))));
        published.policy = policy;
        published.catalog = Arc::clone(&catalog);
        // Noted under the lock, so a later publication's status is never overwritten by an
        // earlier one's.
        self.note(&catalog, None);
        Ok(())
    }

    /// A whole catalog read from `origin` (a load at start or after a gap, or a snapshot).
    pub(crate) fn replace(
        &self,
        engine: &Engine,
        origin: Origin,
        build: impl FnOnce(&Policy) -> (Catalog, Vec<Skipped>),
    ) {
        let mut published = self.published.lock();
        let (catalog, skipped) = build(&published.policy);
        report_skipped("catalog load", &skipped);
        let catalog = Arc::new(catalog);
        engine.replace_policy(Arc::new(
            published.policy.with_catalog(Arc::clone(&catalog)),
        ));
        published.catalog = Arc::clone(&catalog);
        self.note(&catalog, Some(origin));
    }

    /// Changes read from the database, applied to the catalog in force.
    pub(crate) fn apply(&self, engine: &Engine, changes: &[Change]) {
        let mut published = self.published.lock();
        let applied = published.catalog.version();
        if changes.iter().all(|c| c.version <= applied) {
            return; // heard already: nothing to publish
        }
        let (catalog, skipped) = published.catalog.apply(&published.policy, changes);
        report_skipped("catalog change", &skipped);
        let catalog = Arc::new(catalog);
        engine.replace_policy(Arc::new(
            published.policy.with_catalog(Arc::clone(&catalog)),
        ));
        published.catalog = Arc::clone(&catalog);
        self.note(&catalog, Some(Origin::Database));
    }

    /// Records a contact with the database: `Ok` when it answered, else why not.
    pub(crate) fn contact(&self, now: Micros, result: Result<(), String>) {
        let mut status = self.status.lock();
        match result {
            Ok(()) => {
                status.contact_at = Some(now);
                status.stale = false;
                status.error = None;
            }
            Err(error) => {
                status.stale = true;
                status.error = Some(error);
            }
        }
        metrics::contact(&status);
    }

    fn note(&self, catalog: &Catalog, origin: Option<Origin>) {
        let mut status = self.status.lock();
        if let Some(origin) = origin {
            status.origin = origin;
        }
        status.version = catalog.version();
        status.invalid = catalog.invalid();
        (status.tenants, status.users, status.api_keys) = catalog.counts();
        metrics::applied(&status);
        drop(status);
        self.applied.send_replace(catalog.version());
    }
}

/// Why a reload is refused for the catalog entries it cannot take: the first few, by entry
/// and field, then a count.
fn refused_by(skipped: &[Skipped]) -> String {
    let mut named: Vec<String> = (skipped.iter().take(LOGGED_SKIPS))
        .map(|s| {
            let entry = printable(&s.key.to_string()).into_owned();
            format!("{entry} {}: {}", s.field, printable(&s.message))
        })
        .collect();
    if skipped.len() > LOGGED_SKIPS {
        named.push(format!("and {} more", skipped.len() - LOGGED_SKIPS));
    }
    format!(
        "the catalog has entries this policy cannot take, which would lose their own numbers \
         (change or remove them first, with the admin API or `spillway catalog`, then reload \
         again: SIGHUP, or save the file): {}",
        named.join("; ")
    )
}

/// Logs what a policy refuses in the catalog (a few lines, then a count) and counts it.
fn report_skipped(during: &str, skipped: &[Skipped]) {
    for s in skipped.iter().take(LOGGED_SKIPS) {
        // Ids and the names in the message come from the database's rows.
        let entry = printable(&s.key.to_string()).into_owned();
        let message = printable(&s.message).into_owned();
        tracing::warn!(%entry, field = %s.field, "{during}: catalog entry part ignored: {message}");
    }
    if skipped.len() > LOGGED_SKIPS {
        tracing::warn!(
            "{during}: {} more catalog entry parts ignored (see spillway_catalog_skipped_total)",
            skipped.len() - LOGGED_SKIPS
        );
    }
    metrics::skipped(skipped.len());
}
