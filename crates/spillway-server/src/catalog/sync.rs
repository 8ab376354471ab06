//! Keeping a node's catalog current: load at start, follow changes, write a local snapshot.
//!
//! At start the node loads the whole catalog from the database within a time limit. If the
//! database does not answer, the node boots from the snapshot it last wrote to its own disk
//! (and says so, and reports itself stale), or, with no snapshot either, with an empty catalog
//! (every tenant on the default tier, and `/readyz` not ready) until the database answers.
//!
//! Then it follows: it asks for the changes after the version it has applied whenever a
//! Postgres notification arrives, an admin write on this node nudges it, or the poll interval
//! passes. Versions are allocated in commit order (see `spillway-catalog`), so "every change
//! after `n`" never misses one, deletions included; a lost notification only delays a change
//! by one poll. A database that stops answering leaves the catalog as it is (decisions go on)
//! and marks it stale; the next successful poll reads it whole again.
//!
//! A database can go back in time: restored from a backup, or failed over to a replica that
//! had not received the last writes, and then written again, reusing the versions the node
//! has applied. "Every change after `n`" would then miss what replaced them, and keep what
//! the restore removed (a revoked API key). So the node reads the database whole again when
//! its version is behind the node's, after the database was unreachable (a restore or a
//! failover cuts connections, though a pool may reconnect unseen between two polls), and when
//! the change the node applied last is neither the one the database holds at that version
//! nor among the changes after it (see [`follow`]).
//!
//! The snapshot is rewritten (atomically, off the async threads) after changes, at most once
//! per [`SNAPSHOT_EVERY`], and once more at shutdown.

use super::{CatalogNode, Origin};
use crate::clock::ServerClock;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use spillway_catalog::{snapshot, CatalogDb, Error as DbError};
use spillway_core::catalog::{Catalog, Change};
use spillway_core::engine::Engine;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most changes asked for at once; more are read page by page.
const PAGE: usize = 10_000;

/// Least time between two snapshot writes.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);

/// How a node follows its catalog database.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Time between polls when no notification arrives.
    pub poll: Duration,
    /// Where the node keeps its snapshot, if anywhere.
    pub snapshot: Option<PathBuf>,
    /// How long the first load may take before the node boots from its snapshot.
    pub boot_timeout: Duration,
    /// A migration asked for at start that could not run then (the database was down): the
    /// sync task retries it until the database answers.
    pub migrate: bool,
}

/// Loads the catalog before the node serves: from the database, else (it does not answer)
/// from the snapshot. A database that answers but cannot be read as a catalog (no schema:
/// never migrated, or a mistyped path that made a new empty SQLite file; a login without
/// the rights to read it) is a setting to fix, not an outage to ride out: the node would
/// serve every tenant on the default tier. That is `Err`, and the node does not start.
pub async fn boot(
    node: &CatalogNode,
    engine: &Engine,
    clock: &ServerClock,
    settings: &SyncSettings,
) -> Result<(), String> {
    let Some(db) = node.db().cloned() else {
        return Ok(());
    };
    let loaded = match tokio::time::timeout(settings.boot_timeout, db.load()).await {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(err)) if !err.is_unavailable() => {
            return Err(format!(
                "the catalog database answers but cannot be read as a catalog ({err}); if it \
                 was never migrated, run `spillway catalog migrate` or start with \
                 --catalog-migrate (and check the URL names the database you meant)"
            ));
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            settings.boot_timeout.as_millis()
        )),
    };
    match loaded {
        Ok((version, entries)) => {
            let count = entries.len();
            node.replace(engine, Origin::Database, |policy| {
                Catalog::build(policy, version, entries)
            });
            node.contact(clock.now(), Ok(()));
            tracing::info!(
                version,
                entries = count,
                backend = db.backend(),
                "catalog loaded"
            );
            if let Some(path) = &settings.snapshot {
                write_snapshot(node, path).await;
            }
        }
        Err(error) => {
            node.contact(clock.now(), Err(error.clone()));
            boot_from_snapshot(node, engine, settings.snapshot.as_deref(), &error).await;
        }
    }
    Ok(())
}

async fn boot_from_snapshot(node: &CatalogNode, engine: &Engine, path: Option<&Path>, error: &str) {
    let Some(path) = path else {
        tracing::error!(%error, "the catalog database is unreachable and no --catalog-snapshot \
            is configured: serving an empty catalog (every tenant on the default tier) until it \
            answers");
        return;
    };
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || snapshot::load(&owned)).await {
        Ok(Ok((version, entries))) => {
            let count = entries.len();
            node.replace(engine, Origin::Snapshot, |policy| {
                Catalog::build(policy, version, entries)
            });
            tracing::warn!(%error, snapshot = %path.display(), version, entries = count,
                "the catalog database is unreachable: serving this node's last snapshot until \
                 it answers");
        }
        Ok(Err(err)) => tracing::error!(%error, snapshot = %path.display(), snapshot_error = %err,
            "the catalog database is unreachable and the snapshot cannot be read: serving an \
             empty catalog (every tenant on the default tier) until it answers"),
        Err(err) => tracing::error!(%err, "the snapshot reader failed"),
    }
}

/// Follows the database until `shutdown`, then writes a last snapshot.
pub fn spawn(
    app: Arc<AppState>,
    settings: SyncSettings,
    shutdown: Shutdown,
) -> Option<JoinHandle<()>> {
    let db = app.catalog.db().cloned()?;
    Some(tokio::spawn(async move {
        let (node, engine, clock) = (&app.catalog, &app.engine, &app.clock);
        let mut notes = db.notifications();
        let mut written = node.status().version;
        let mut last_write = Instant::now();
        let mut migrate = settings.migrate;
        let mut place = Place::default();
        loop {
            if migrate {
                match db.migrate().await {
                    Ok(_) => migrate = false,
                    Err(err) if err.is_unavailable() => {}
                    Err(err) => {
                        tracing::error!(error = %err, "cannot migrate the catalog");
                        migrate = false;
                    }
                }
            }
            let result = follow(db.as_ref(), node, engine, &mut place).await;
            // Only an unreachable database may have been restored or failed over meanwhile;
            // one that answers wrongly (a row this build cannot read) would be read whole on
            // every poll for nothing.
            place.lost_contact = result.as_ref().is_err_and(|e| e.is_unavailable());
            let result = result.map_err(|e| e.to_string());
            node.contact(clock.now(), result.clone());
            if let Err(error) = result {
                tracing::warn!(%error, "catalog database unreachable; keeping the catalog in force");
            }
            let version = node.status().version;
            // A whole load at the same version (a database restored and written up to it
            // again) changed the catalog too.
            let unsaved = version != written || place.reloaded;
            if let Some(path) = &settings.snapshot {
                if unsaved && last_write.elapsed() >= SNAPSHOT_EVERY {
                    write_snapshot(node, path).await;
                    (written, last_write, place.reloaded) = (version, Instant::now(), false);
                }
            }
            let wait = if unsaved && settings.snapshot.is_some() {
                settings
                    .poll
                    .min(SNAPSHOT_EVERY.saturating_sub(last_write.elapsed()))
            } else {
                settings.poll
            };
            tokio::select! {
                () = shutdown.triggered() => break,
                () = node.nudged().notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(_) = async {
                    match notes.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // One read catches up on every announcement waiting.
                    if let Some(rx) = notes.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                }
            }
        }
        if let Some(path) = &settings.snapshot {
            if node.status().version != written || place.reloaded {
                write_snapshot(node, path).await;
            }
        }
    }))
}

/// Where the node stands in the database's history, between two calls of [`follow`].
#[derive(Debug, Default)]
struct Place {
    /// The change at the version the node applied, as the database held it then.
    mark: Option<Change>,
    /// The last call found the database unreachable: it may have been restored or failed
    /// over since.
    lost_contact: bool,
    /// The catalog was read whole since the snapshot was last written.
    reloaded: bool,
}

/// Brings the node up to the database: a whole load when it has not read the database itself
/// yet (it booted empty or from its snapshot), when the database is behind what the node
/// applied, when it was unreachable at the last call, or when its history is no longer the
/// node's (each of these: restored or failed over; what it says now is the truth); otherwise
/// every change after the version in force, page by page.
///
/// The history check: the database must still hold the change the node applied last (its
/// mark) at that version; or, when that entry was written again since, the changes after the
/// node's version must include it. Otherwise the versions the node applied were reused.
async fn follow(
    db: &dyn CatalogDb,
    node: &CatalogNode,
    engine: &Engine,
    place: &mut Place,
) -> Result<(), DbError> {
    let status = node.status();
    // The change at the node's version, read before the database's version: a write between
    // the two then shows as a version past it, not as a history gone.
    let mark = place.mark.as_ref().filter(|m| m.version == status.version);
    let at = match mark {
        Some(seen) => db.changes_since(seen.version.saturating_sub(1), 1).await?,
        None => Vec::new(),
    };
    let current = db.version().await?;
    // The entry the changes after the node's version must bring, if the mark moved on.
    let mut must_see = None;
    let mut diverged = false;
    if let Some(seen) = mark {
        match at.first() {
            Some(c) if c.version == seen.version => diverged = c != seen,
            // Nothing after the node's version either: nothing can have moved it on.
            _ if current <= seen.version => diverged = true,
            _ => must_see = Some(seen.key.clone()),
        }
    }
    let behind = current < status.version;
    if status.origin != Origin::Database || behind || place.lost_contact || diverged {
        if status.origin == Origin::Database {
            let why = match (behind, diverged) {
                (true, _) => "the database is behind this node",
                (_, true) => "the database holds another change at this node's version",
                _ => "the database was unreachable",
            };
            if behind || diverged {
                tracing::error!(applied = status.version, database = current,
                    "{why} (restored from a backup, or failed over?): reading the catalog whole again");
            } else {
                tracing::info!(applied = status.version, database = current,
                    "{why}: reading the catalog whole again, in case it was restored or failed over");
            }
        }
        return load_whole(db, node, engine, place).await;
    }
    if current == status.version {
        return Ok(());
    }
    loop {
        let applied = node.status().version;
        let changes = db.changes_since(applied, PAGE).await?;
        if must_see
            .as_ref()
            .is_some_and(|key| changes.iter().any(|c| &c.key == key))
        {
            must_see = None;
        }
        let Some(last) = changes.last() else { break };
        let full = changes.len() == PAGE;
        node.apply(engine, &changes);
        place.mark = (last.version == node.status().version).then(|| last.clone());
        if !full {
            break;
        }
    }
    if must_see.is_some() {
        // The entry the node applied last was neither where it wrote it nor written since.
        tracing::error!(
            applied = status.version,
            database = current,
            "the change this node applied last is gone from the database (restored from a \
             backup, or failed over?): reading the catalog whole again"
        );
        return load_whole(db, node, engine, place).await;
    }
    Ok(())
}

/// Reads the whole catalog and publishes it, and marks where the node now stands.
async fn load_whole(
    db: &dyn CatalogDb,
    node: &CatalogNode,
    engine: &Engine,
    place: &mut Place,
) -> Result<(), DbError> {
    let (version, entries) = db.load().await?;
    let count = entries.len();
    node.replace(engine, Origin::Database, |policy| {
        Catalog::build(policy, version, entries)
    });
    tracing::info!(version, entries = count, "catalog loaded from the database");
    place.reloaded = true;
    // The change at the version loaded, best effort: without it (a write since, or the read
    // failing) the history is checked again from the next change applied.
    let at = db.changes_since(version.saturating_sub(1), 1).await;
    place.mark = (at.ok().into_iter().flatten()).find(|c| c.version == version);
    Ok(())
}

/// Writes the catalog in force to `path`, off the async threads; a failure is logged.
async fn write_snapshot(node: &CatalogNode, path: &Path) {
    let (_, catalog) = node.current();
    let owned = path.to_path_buf();
    let version = catalog.version();
    let result = tokio::task::spawn_blocking(move || {
        let entries: Vec<_> = catalog.entries().collect();
        snapshot::save(
            &owned,
            catalog.version(),
            entries.iter().map(|(k, e)| (k, e)),
        )
    })
    .await;
    match result {
        Ok(Ok(())) => {
            tracing::debug!(version, snapshot = %path.display(), "catalog snapshot written")
        }
        Ok(Err(err)) => {
            tracing::warn!(snapshot = %path.display(), error = %err, "cannot write the catalog snapshot")
        }
        Err(err) => tracing::warn!(%err, "the snapshot writer failed"),
    }
}
