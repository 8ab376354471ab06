//! The one shutdown signal the whole process listens to.
//!
//! Every long-running piece (the HTTP server, the reload watcher, the sweeper) waits on the
//! same [`Shutdown`], so a single SIGTERM stops them all in order. The signal has two
//! stages: the first SIGTERM or SIGINT starts a graceful drain (stop accepting, let in-flight
//! requests finish within the grace period); a second one forces the process out at once, for
//! the operator who does not want to wait.

use std::sync::Arc;
use tokio::sync::watch;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// A cloneable handle on the process's shutdown state.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stage: Arc<watch::Sender<u8>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self {
            stage: Arc::new(watch::Sender::new(RUNNING)),
        }
    }

    /// Starts the graceful drain (a no-op if already draining).
    pub fn trigger(&self) {
        self.advance_to(DRAINING);
    }

    /// Gives up on draining: whoever waits in [`Shutdown::forced`] stops waiting.
    pub fn force(&self) {
        self.advance_to(FORCED);
    }

    fn advance_to(&self, stage: u8) {
        self.stage.send_if_modified(|current| {
            let moved = *current < stage;
            if moved {
                *current = stage;
            }
            moved
        });
    }

    /// Whether the drain has started.
    pub fn is_triggered(&self) -> bool {
        *self.stage.borrow() >= DRAINING
    }

    /// Resolves once the drain has started.
    pub async fn triggered(&self) {
        self.wait_for(DRAINING).await;
    }

    /// Resolves once the drain has been cut short.
    pub async fn forced(&self) {
        self.wait_for(FORCED).await;
    }

    async fn wait_for(&self, stage: u8) {
        let mut rx = self.stage.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|current| *current >= stage).await;
    }
}

/// Turns SIGTERM and SIGINT into `shutdown`: the first starts the drain, the second forces it.
pub fn listen_for_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for stage in [DRAINING, FORCED] {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if stage == DRAINING {
                tracing::info!(signal = name, "shutting down: no new connections, draining");
                shutdown.trigger();
            } else {
                tracing::warn!(
                    signal = name,
                    "second signal: abandoning in-flight requests"
                );
                shutdown.force();
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let task = tokio::spawn(async move { waiter.triggered().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        task.await.expect("waiter finishes");
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn forcing_implies_triggered_and_never_goes_back() {
        let shutdown = Shutdown::new();
        shutdown.force();
        assert!(shutdown.is_triggered(), "forcing triggers too");
        shutdown.trigger();
        assert!(
            shutdown.is_triggered(),
            "a later trigger does not undo anything"
        );
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            shutdown.triggered().await;
            shutdown.forced().await;
        })
        .await;
        assert!(waited.is_ok(), "both waits return at once");
    }
}
