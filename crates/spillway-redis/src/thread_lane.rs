//! Thread lanes: a serving thread's own connection and batcher, so that its requests' Redis
//! calls are sent, read and answered without leaving the thread.
//!
//! The server serves requests on threads that each run a single-threaded runtime. Through
//! the store's shared [`Batcher`], a request would hand its call to a dispatcher on the main
//! runtime, whose connection's task writes and reads the socket, and the answer would wake the
//! serving thread from there: two or more wake-ups across threads per call (system calls,
//! context switches, cold caches). A thread that calls [`ThreadLanes::attach`] (the server's
//! serving threads do, once, through [`spillway_core::store::Store::attach_thread`]) gets a
//! lane of its own instead: a connection and a dispatcher made on its runtime, in the
//! background. Once that connection is up, the thread's single-slot requests go through it;
//! until then they use the shared path, as does every other thread (the main runtime, tasks
//! finishing multi-slot requests, reports).
//!
//! A lane batches as the shared batcher does (see [`crate::batch`]), over the requests of its
//! own thread only, and with the bounds of [`crate::batch`] for its own queue. Its connection
//! reconnects on its own, like the shared one.
//!
//! Lanes are made for a single server only. A cluster (one connection per master, and the
//! slot map) and Sentinel (a master that moves) keep the shared path on every thread.
//!
//! # Lifetime
//! A lane's task (its connection being made, then its dispatcher) lives on its thread's
//! runtime and ends with it, after the thread's server has drained its connections. It also
//! ends as soon as its store is dropped: the store holds the sending half of a watch channel
//! every lane listens to, and a lane whose store is gone takes itself out of its thread's list,
//! dropping its batcher and with it the connection. So no connection outlives its store.

use crate::batch::Batcher;
use crate::login::Refusal;
use crate::runner::{Conn, Runner};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Gauge of the thread lanes whose connection is up, over every store of the process.
pub const THREAD_LANES: &str = "spillway_redis_thread_lanes";

/// The first wait after a lane's connection failed to be made; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts to make a lane's connection.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Ids of stores, so a thread tells its lanes of different stores apart.
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's lanes, one per store it attached to (almost always one).
    static LANES: RefCell<Vec<Lane>> = const { RefCell::new(Vec::new()) };
}

/// One store's lane on this thread.
struct Lane {
    store: u64,
    /// `None` while its connection is being made.
    batcher: Option<Arc<Batcher>>,
    /// Closed (its sender dropped) once the store is gone.
    store_alive: watch::Receiver<()>,
}

/// How a lane connects to a single server.
struct Connect {
    url: String,
    settings: redis::aio::ConnectionManagerConfig,
}

/// A store's side of its thread lanes; see the module docs.
pub(crate) struct ThreadLanes {
    id: u64,
    /// `None`: this store makes no thread lanes (a cluster or Sentinel).
    connect: Option<Arc<Connect>>,
    /// Dropped with the store, which ends every lane.
    alive: watch::Sender<()>,
}

impl ThreadLanes {
    /// Lanes for a single server at `url`, each connecting with `settings`.
    pub(crate) fn server(url: &str, settings: redis::aio::ConnectionManagerConfig) -> Self {
        Self::make(Some(Arc::new(Connect {
            url: url.to_owned(),
            settings,
        })))
    }

    /// No thread lanes: every call takes the shared path.
    pub(crate) fn none() -> Self {
        Self::make(None)
    }

    fn make(connect: Option<Arc<Connect>>) -> Self {
        Self {
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            connect,
            alive: watch::channel(()).0,
        }
    }

    /// Starts this thread's lane, calling like `template` (its timeout, Functions or scripts,
    /// injected time) over a connection of its own, on the current runtime; nothing outside a
    /// single-threaded runtime (a task on a multi-threaded one may run on any of its workers,
    /// so it could not keep to this thread), for a store without lanes, or if the thread has
    /// one already.
    pub(crate) fn attach(&self, template: &Runner) {
        let Some(connect) = self.connect.clone() else {
            return;
        };
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        if !matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)) {
            return;
        }
        let fresh = LANES.with_borrow_mut(|lanes| {
            // Lanes of stores gone whose task could not take them out (their runtime ended
            // first) are dropped here.
            lanes.retain(|lane| lane.store_alive.has_changed().is_ok());
            if lanes.iter().any(|lane| lane.store == self.id) {
                return false;
            }
            lanes.push(Lane {
                store: self.id,
                batcher: None,
                store_alive: self.alive.subscribe(),
            });
            true
        });
        if !fresh {
            return;
        }
        let (id, template, mut store_alive) = (self.id, template.clone(), self.alive.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                () = run(id, &connect, template) => {}
                _ = store_alive.changed() => {}
            }
            let _ = LANES.try_with(|lanes| lanes.borrow_mut().retain(|lane| lane.store != id));
        });
    }

    /// This thread's lane for the store, once its connection is up.
    pub(crate) fn here(&self) -> Option<Arc<Batcher>> {
        self.connect.as_ref()?;
        LANES
            .try_with(|lanes| {
                lanes
                    .borrow()
                    .iter()
                    .find(|lane| lane.store == self.id)
                    .and_then(|lane| lane.batcher.clone())
            })
            .ok()
            .flatten()
    }

    /// Whether this thread has the store's lane up.
    pub(crate) fn ready_here(&self) -> bool {
        self.connect.is_some()
            && LANES
                .try_with(|lanes| {
                    lanes
                        .borrow()
                        .iter()
                        .any(|lane| lane.store == self.id && lane.batcher.is_some())
                })
                .unwrap_or(false)
    }
}

/// A lane's life on its thread: makes its connection (again after a wait while that fails),
/// hands its batcher to the thread's list, and drives its dispatcher, which runs until the
/// task is dropped (the store gone, or the runtime ended).
async fn run(id: u64, connect: &Connect, template: Runner) {
    let mut wait = RETRY_FIRST;
    let conn = loop {
        let refusal = Refusal::store("the username/password in its URL");
        match refusal
            .connect_server(&connect.url, connect.settings.clone())
            .await
        {
            Ok(conn) => break conn,
            Err(err) => {
                tracing::debug!(error = %err, retry_ms = wait.as_millis() as u64,
                    "a serving thread's Redis connection failed; its requests take the shared one");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    };
    let (batcher, dispatcher) = Batcher::new(template.with_conn(Conn::Server(conn)));
    let placed = LANES
        .try_with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            let lane = lanes.iter_mut().find(|lane| lane.store == id)?;
            lane.batcher = Some(Arc::new(batcher));
            Some(())
        })
        .ok()
        .flatten();
    if placed.is_none() {
        return;
    }
    let _counted = Up::new();
    dispatcher.await;
}

/// A lane counted in [`THREAD_LANES`] while it lives, however its task ends (its store
/// dropped, or its runtime shut down).
struct Up;

impl Up {
    fn new() -> Self {
        metrics::gauge!(THREAD_LANES).increment(1.0);
        Self
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        metrics::gauge!(THREAD_LANES).decrement(1.0);
    }
}
