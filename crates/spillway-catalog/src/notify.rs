//! PostgreSQL notifications: one task per [`crate::CatalogDb::notifications`] call that
//! `LISTEN`s on [`crate::postgres::CHANNEL`] and forwards each announced version.
//!
//! The listener holds its own connection. When it is lost (the server restarted, a failover,
//! `pg_terminate_backend`), sqlx's `PgListener` reconnects and listens again; if that fails
//! too, the task drops the listener and starts a new one, backing off from 100 ms to 5 s.
//! Whatever was announced while disconnected is gone, so after every (re)connection the task
//! sends the catalog's current version: a reader that wakes on it asks for the changes it
//! missed at once instead of waiting for its next poll.
//!
//! The channel is bounded. If the reader falls 1,024 versions behind, newer announcements are
//! dropped: a reader that far behind is already busy catching up with `changes_since`, which
//! returns everything committed, announced or not.

use crate::db::Notifications;
use crate::postgres::{read_version, CHANNEL};
use crate::Error;
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError, Sender};

const CAPACITY: usize = 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the listening task; it ends when the receiver is dropped or the pool is closed.
pub(crate) fn spawn(pool: PgPool) -> Notifications {
    let (tx, rx) = mpsc::channel(CAPACITY);
    tokio::spawn(async move {
        tokio::select! {
            _ = run(&pool, &tx) => {}
            _ = tx.closed() => {}
        }
    });
    rx
}

/// What became of a listening session.
enum Ended {
    /// Nobody is listening any more, or the pool was closed: stop.
    Done,
    /// The connection failed (after having been up, when `connected`): try again.
    Failed { error: Error, connected: bool },
}

async fn run(pool: &PgPool, tx: &Sender<u64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match session(pool, tx).await {
            Ended::Done => return,
            Ended::Failed { error, connected } => {
                if pool.is_closed() {
                    return;
                }
                if connected {
                    backoff = MIN_BACKOFF;
                }
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                    "catalog notifications: listener connection lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Connects, listens and forwards until the connection fails beyond what `PgListener`
/// recovers from by itself.
async fn session(pool: &PgPool, tx: &Sender<u64>) -> Ended {
    let failed = |connected| {
        move |e| Ended::Failed {
            error: Error::db("listening for catalog notifications", e),
            connected,
        }
    };
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => return failed(false)(e),
    };
    if let Err(e) = listener.listen(CHANNEL).await {
        return failed(false)(e);
    }
    tracing::debug!("catalog notifications: listening");
    if let Some(ended) = resync(pool, tx).await {
        return ended;
    }
    loop {
        match listener.try_recv().await {
            Ok(Some(note)) => match note.payload().parse::<u64>() {
                Ok(version) => {
                    if forward(tx, version).is_err() {
                        return Ended::Done;
                    }
                }
                Err(_) => tracing::warn!(
                    payload = note.payload(),
                    "catalog notifications: ignoring a payload that is not a version"
                ),
            },
            // Lost and already reconnected (and listening again) by PgListener.
            Ok(None) => {
                tracing::info!("catalog notifications: reconnected");
                if let Some(ended) = resync(pool, tx).await {
                    return ended;
                }
            }
            Err(sqlx::Error::PoolClosed) => return Ended::Done,
            Err(e) => return failed(true)(e),
        }
    }
}

/// Sends the current version after a (re)connection; `Some` if the session must end.
async fn resync(pool: &PgPool, tx: &Sender<u64>) -> Option<Ended> {
    match read_version(pool).await {
        Ok(version) => forward(tx, version).err().map(|()| Ended::Done),
        Err(error) => Some(Ended::Failed {
            error,
            connected: true,
        }),
    }
}

/// Hands a version to the reader; `Err` once the reader is gone.
fn forward(tx: &Sender<u64>, version: u64) -> Result<(), ()> {
    match tx.try_send(version) {
        Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
        Err(TrySendError::Closed(_)) => Err(()),
    }
}
