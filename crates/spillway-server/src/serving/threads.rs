//! The accept task and the serving threads it deals connections out to, each running its own
//! single-threaded tokio runtime; see the [module docs](super) for why and for the shutdown
//! order.

use super::limits::ConnectionLimits;
use crate::shutdown::Shutdown;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// A connection as the accept task hands it over: out of the accepting runtime's reactor,
/// with its peer's address and its slot under the port's connection cap, which it holds until
/// it closes.
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub(super) stream: std::net::TcpStream,
    /// Its peer.
    pub(super) peer: SocketAddr,
    /// Its place under `--max-connections`, given back when dropped.
    pub(super) slot: OwnedSemaphorePermit,
}

/// How long a thread whose queue has ended lets its newest connections read their first
/// request before its server starts to drain.
pub(super) const FIRST_READ: Duration = Duration::from_millis(50);

/// The first wait after a failed accept; it doubles with each failure in a row.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait after failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connections dealt to one thread, and the limits they are served under.
#[derive(Debug)]
pub struct Incoming {
    pub(super) queue: mpsc::UnboundedReceiver<Accepted>,
    /// The port's limits.
    pub limits: ConnectionLimits,
}

/// A running set of serving threads and their accept task.
pub struct Threads {
    what: &'static str,
    accept: Option<JoinHandle<()>>,
    /// One per thread still serving, answered when its server has ended.
    serving: Vec<oneshot::Receiver<Result<(), String>>>,
}

/// Starts `threads` threads (at least one) named `spillway-<what>-N`, each running
/// `serve(incoming)` to completion on a runtime of its own, and the task that deals
/// `listener`'s connections out to them until `shutdown` fires, never holding more than
/// `limits.max_connections` open at once. `serve` must end once its [`Incoming`] has ended,
/// draining gracefully, and should not watch `shutdown` itself (see the module docs). `what`
/// names the server in logs.
pub fn start<F, Fut, E>(
    what: &'static str,
    threads: usize,
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: Shutdown,
    serve: F,
) -> anyhow::Result<Threads>
where
    F: FnOnce(Incoming) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let threads = threads.max(1);
    let mut queues = Vec::with_capacity(threads);
    let mut serving = Vec::with_capacity(threads);
    for n in 0..threads {
        // Built here, so a failure stops start-up instead of leaving a thread missing.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("cannot start a {what} thread's runtime"))?;
        let (queue, connections) = mpsc::unbounded_channel();
        let (report, done) = oneshot::channel();
        let incoming = Incoming {
            queue: connections,
            limits,
        };
        let serve = serve.clone();
        std::thread::Builder::new()
            .name(format!("spillway-{}-{n}", what.to_ascii_lowercase()))
            .spawn(move || {
                let result = runtime
                    .block_on(serve(incoming))
                    .map_err(|err| err.to_string());
                // Nobody may be waiting any more if start-up failed after this thread began.
                let _ = report.send(result);
            })
            .with_context(|| format!("cannot start a {what} thread"))?;
        queues.push(queue);
        serving.push(done);
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let accept = tokio::spawn(deal_out(what, listener, slots, queues, shutdown));
    Ok(Threads {
        what,
        accept: Some(accept),
        serving,
    })
}

/// Accepts connections and hands them to the threads in turn until `shutdown` fires, or until
/// every thread has stopped; then closes the port and drops the queues. A connection is
/// accepted only once it has a slot: with every slot taken, accepting waits (clients queue in
/// the kernel's backlog) until a connection closes. Failed accepts back off, doubling the wait
/// up to [`ACCEPT_BACKOFF_MAX`]. A thread whose queue is gone (it stopped) is skipped from
/// then on.
async fn deal_out(
    what: &'static str,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    mut queues: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: Shutdown,
) {
    let mut next = 0;
    let mut backoff = ACCEPT_BACKOFF;
    // Logged once each time the port reaches its cap, not once per connection waiting.
    let mut at_cap = false;
    while !queues.is_empty() {
        if slots.available_permits() > 0 {
            at_cap = false;
        } else if !at_cap {
            tracing::warn!("every {what} connection slot is taken; new connections wait");
            at_cap = true;
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.triggered() => break,
            () = every_closed(&queues) => {
                queues.clear();
                break;
            }
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.triggered() => break,
            () = every_closed(&queues) => {
                queues.clear();
                break;
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF;
                accepted
            }
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // the connections already open keep being served; try again after a wait
                // that grows while the failures go on, so they cannot spin a core.
                tracing::warn!(error = %err, retry_ms = backoff.as_millis() as u64,
                    "cannot accept a {what} connection");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.triggered() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Responses go out in one write each, so Nagle's algorithm could only delay them.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a {what} connection");
        }
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        let mut handover = match stream.into_std() {
            Ok(stream) => Accepted { stream, peer, slot },
            Err(err) => {
                tracing::warn!(error = %err, "cannot hand a {what} connection over");
                continue;
            }
        };
        while !queues.is_empty() {
            next %= queues.len();
            match queues[next].send(handover) {
                Ok(()) => {
                    next += 1;
                    break;
                }
                Err(mpsc::error::SendError(back)) => {
                    tracing::error!("a {what} serving thread has stopped; serving on without it");
                    queues.remove(next);
                    handover = back;
                }
            }
        }
    }
    if queues.is_empty() {
        tracing::error!("every {what} serving thread has stopped; closing the port");
    }
}

/// Resolves once every thread has dropped its queue (they have all stopped).
async fn every_closed(queues: &[mpsc::UnboundedSender<Accepted>]) {
    for queue in queues {
        queue.closed().await;
    }
}

impl Threads {
    /// Resolves once the accept task and every thread's server have ended (which they do only
    /// after the shutdown signal), logging any server that failed. Cancel-safe: a call dropped
    /// part way resumes where it stopped.
    pub async fn finished(&mut self) {
        if let Some(accept) = &mut self.accept {
            let _ = accept.await;
            self.accept = None;
        }
        while let Some(first) = self.serving.first_mut() {
            let ended = first.await;
            self.serving.remove(0);
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "a {} server failed", self.what),
                Err(_) => tracing::warn!("a {} thread ended without reporting", self.what),
            }
        }
    }

    /// Stops accepting at once; threads still serving are left to the process's exit.
    pub fn abandon(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.serving.clear();
    }
}
