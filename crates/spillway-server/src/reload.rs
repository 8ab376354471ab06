//! Hot policy reload, on file changes and on `SIGHUP`.
//!
//! The watcher watches the policy file's *directory*, not the file: editors and deploy tools
//! replace files by writing a temporary file and renaming it over the old one, and Kubernetes
//! updates a mounted ConfigMap by swapping a `..data` symlink, and a watch on the old file
//! would see none of that. Any change in the directory starts a short debounce (so a burst of
//! events becomes one reload); then the file is read, and if its text differs from the last
//! text seen it is validated. `SIGHUP` reloads unconditionally.
//!
//! A valid policy replaces the engine's in one atomic swap; every limit's counters carry over,
//! since a counter's identity is the limit's name, algorithm and key, not its numbers: a limit
//! whose numbers changed has its state read under the new ones
//! (`spillway_core::algorithm::carry`).
//! An invalid one is logged with every problem, counted as `rejected`, and the old policy keeps
//! serving; invalid as start-up finds it, seeds of one cluster that disagree on the login
//! included ([`spillway_core::policy::Policy::check_seed_logins`]). All reloads run on one
//! task, so they never race each other.

use crate::config::PolicySource;
use crate::metrics::{self, ReloadOutcome};
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::state::PolicyInfo;
use crate::telemetry::live::ReloadEvent;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Quiet time after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Most debounce rounds one reload waits through, so a directory that never stops changing
/// still gets its policy read (after about two seconds).
const MAX_DEBOUNCE_ROUNDS: usize = 10;

/// What asked for a reload; logged with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in the policy file's directory.
    FileChange,
    /// The process received `SIGHUP`.
    Signal,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Self::FileChange => "file change",
            Self::Signal => "SIGHUP",
        }
    }
}

/// Applies new policy text to the running server.
pub struct Reloader {
    app: Arc<AppState>,
    source: PolicySource,
    last_text: String,
    /// Whether `--store-url` stands in for the policy's `store.nodes`, whose seeds' logins
    /// are then not checked, as at start.
    store_url_given: bool,
}

impl Reloader {
    /// A reloader for `source`, whose policy currently in force was parsed from `current_text`;
    /// `store_url_given`: `--store-url` stands in for the policy's `store.nodes`.
    pub fn new(
        app: Arc<AppState>,
        source: PolicySource,
        current_text: String,
        store_url_given: bool,
    ) -> Self {
        Self {
            app,
            source,
            last_text: current_text,
            store_url_given,
        }
    }

    /// Reads the source and, when asked by a signal or when the text changed, validates and
    /// applies it. Returns `None` when nothing was attempted.
    pub async fn reload(&mut self, trigger: Trigger) -> Option<ReloadOutcome> {
        let source = self.source.describe();
        let text = match self.source.read().await {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(%source, trigger = trigger.name(), error = %err,
                    "policy reload rejected; keeping the previous policy");
                metrics::record_reload(ReloadOutcome::Rejected);
                self.remember(trigger, Some(err.to_string()));
                return Some(ReloadOutcome::Rejected);
            }
        };
        if trigger == Trigger::FileChange && text == self.last_text {
            tracing::debug!(%source, "policy file unchanged; nothing to reload");
            return None;
        }
        // Checked as start-up checks it, before the store is compared: a store whose seeds
        // disagree is a mistake to fix in the file, not a change that a restart would take.
        let parsed = self.source.parse_checked(&text, self.store_url_given);
        self.last_text = text;
        let (outcome, error) = match parsed {
            Ok(policy)
                if policy.store() != self.app.engine.policy().store()
                    || policy.regions() != self.app.engine.policy().regions() =>
            {
                tracing::warn!(%source, trigger = trigger.name(),
                    "policy reload rejected: the store: section changed, which needs a restart; \
                     keeping the previous policy");
                let why = "the store: section changed, which needs a restart";
                (ReloadOutcome::Rejected, Some(why.to_owned()))
            }
            Ok(policy) if policy.has_static_tenants() && self.app.catalog.db().is_some() => {
                tracing::warn!(%source, trigger = trigger.name(),
                    "policy reload rejected: it has a `tenants:` section, but tenants come from \
                     the catalog database (--catalog); keeping the previous policy");
                let why = "it has a `tenants:` section, but tenants come from the catalog \
                           database (--catalog)";
                (ReloadOutcome::Rejected, Some(why.to_owned()))
            }
            Ok(policy) => {
                let limits = policy.limits().count();
                // The catalog in force is recompiled against the new policy and published with
                // it, under the catalog's lock, so a catalog change cannot slip in between.
                let published =
                    (self.app.catalog).policy_loaded(&self.app.engine, Arc::new(policy));
                if let Err(why) = published {
                    // The same file is taken once the entries are mended: saved again
                    // unchanged, or on SIGHUP.
                    self.last_text.clear();
                    tracing::warn!(%source, trigger = trigger.name(),
                        "policy reload rejected: {why}; keeping the previous policy");
                    metrics::record_reload(ReloadOutcome::Rejected);
                    self.remember(trigger, Some(why));
                    return Some(ReloadOutcome::Rejected);
                }
                self.app.policy_info.store(Arc::new(PolicyInfo {
                    source: source.clone(),
                    loaded_at: self.app.clock.now(),
                    limits,
                }));
                (self.app.principals)
                    .prepare(&self.app.engine.policy(), self.app.clock.now())
                    .await;
                tracing::info!(%source, trigger = trigger.name(), limits, "policy reloaded");
                (ReloadOutcome::Success, None)
            }
            Err(err) => {
                tracing::warn!(%source, trigger = trigger.name(), error = %err,
                    "policy reload rejected; keeping the previous policy");
                (ReloadOutcome::Rejected, Some(err.to_string()))
            }
        };
        metrics::record_reload(outcome);
        self.remember(trigger, error);
        Some(outcome)
    }

    /// Tells the dashboard how a reload went (`error`: why it was rejected).
    fn remember(&self, trigger: Trigger, error: Option<String>) {
        self.app.live.reloaded(ReloadEvent {
            at_ms: self.app.clock.now() / 1_000,
            trigger: trigger.name(),
            outcome: if error.is_none() {
                "success"
            } else {
                "rejected"
            },
            error,
        });
    }
}

/// The directory to watch for a policy file.
fn watched_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Something the reload task keeps current: the policy, or the Envoy descriptor config.
pub trait Reload: Send + 'static {
    /// The directories whose changes should trigger a reload; empty when there is nothing
    /// on disk to follow (the built-in policy).
    fn watch_dirs(&self) -> Vec<PathBuf>;

    /// Reads the source and applies it if it changed (or unconditionally on `SIGHUP`).
    fn reload(
        &mut self,
        trigger: Trigger,
    ) -> impl std::future::Future<Output = Option<ReloadOutcome>> + Send;
}

impl Reload for Reloader {
    fn watch_dirs(&self) -> Vec<PathBuf> {
        self.source.path().map(watched_dir).into_iter().collect()
    }

    async fn reload(&mut self, trigger: Trigger) -> Option<ReloadOutcome> {
        Reloader::reload(self, trigger).await
    }
}

/// Starts watching the reloadable's directories (when it has any) and listening for `SIGHUP`.
/// A watcher that cannot start is logged and left out; `SIGHUP` still works.
pub fn spawn<R: Reload>(mut reloader: R, shutdown: Shutdown) -> std::io::Result<JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let (events_tx, mut events) = mpsc::channel::<()>(16);
    let dirs = reloader.watch_dirs();
    let watcher = (!dirs.is_empty()).then_some(()).and_then(|()| {
        let started = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                // Reads (ours included) are not changes; reacting to them would loop.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                // A full channel already holds a wake-up; dropping this one loses nothing.
                Ok(_) => {
                    let _ = events_tx.try_send(());
                }
                Err(err) => tracing::warn!(error = %err, "policy file watcher error"),
            }
        })
        .and_then(|mut watcher| {
            for dir in &dirs {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
            }
            Ok(watcher)
        });
        let dir = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match started {
            Ok(watcher) => {
                tracing::info!(%dir, "watching the policy directory for changes");
                Some(watcher)
            }
            Err(err) => {
                tracing::warn!(%dir, error = %err,
                    "cannot watch the policy directory; reload with SIGHUP instead");
                None
            }
        }
    });
    Ok(tokio::spawn(async move {
        // Keep the watcher alive for as long as the task runs.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = hangup.recv() => {
                    if dirs.is_empty() {
                        tracing::info!("SIGHUP: running on the built-in policy; nothing to reload");
                        continue;
                    }
                    reloader.reload(Trigger::Signal).await;
                }
                Some(()) = events.recv() => {
                    settle(&mut events).await;
                    reloader.reload(Trigger::FileChange).await;
                }
            }
        }
    }))
}

/// Waits until no event has arrived for [`DEBOUNCE`], or for at most
/// [`MAX_DEBOUNCE_ROUNDS`] rounds.
async fn settle(events: &mut mpsc::Receiver<()>) {
    for _ in 0..MAX_DEBOUNCE_ROUNDS {
        match tokio::time::timeout(DEBOUNCE, events.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_of_a_bare_file_name_is_the_current_one() {
        assert_eq!(watched_dir(Path::new("spillway.yaml")), PathBuf::from("."));
        assert_eq!(
            watched_dir(Path::new("/etc/spillway/spillway.yaml")),
            PathBuf::from("/etc/spillway")
        );
    }
}
