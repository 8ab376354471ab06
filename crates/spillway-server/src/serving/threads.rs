//! The accept task and the serving threads it deals connections out to, each running its own
//! single-threaded tokio runtime; see the [module docs](super) for why and for the shutdown
//! order.

use crate::shutdown::Shutdown;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// A connection as the accept task hands it over: out of the accepting runtime's reactor,
/// with its peer's address.
pub(super) type Accepted = (std::net::TcpStream, SocketAddr);

/// How long a thread whose queue has ended lets its newest connections read their first
/// request before its server starts to drain.
pub(super) const FIRST_READ: Duration = Duration::from_millis(50);

/// The connections dealt to one thread.
#[derive(Debug)]
pub struct Incoming {
    pub(super) queue: mpsc::UnboundedReceiver<Accepted>,
    pub(super) local: SocketAddr,
    /// Notified once the queue has ended and every connection in it was taken.
    pub(super) ended: Arc<Notify>,
}

impl Incoming {
    /// The connections as a stream that ends with the queue, for servers that take one and
    /// drain once it ends ([`super::serve_http2`]).
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<TcpStream>> {
        UnboundedReceiverStream::new(self.queue).map(|(stream, _)| TcpStream::from_std(stream))
    }

    /// Resolves once the queue has ended and every connection in it has been taken through
    /// [`accept`](axum::serve::Listener::accept): the stop signal for axum, whose listener
    /// cannot report an end of its own.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let ended = self.ended.clone();
        async move { ended.notified().await }
    }
}

/// For axum: `accept` waits for the next connection dealt to this thread. Once the queue has
/// ended it fires [`Incoming::ended`] and waits forever.
impl axum::serve::Listener for Incoming {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        while let Some((stream, peer)) = self.queue.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(err) => tracing::warn!(error = %err, "cannot take over a connection"),
            }
        }
        // The connections just taken have not been read yet, and hyper's protocol-detecting
        // connection drops one that has read nothing when told to shut down, leaving its
        // client without an answer. Let them read what has already arrived first.
        tokio::time::sleep(FIRST_READ).await;
        // A stored permit: the signal fires even if nobody waits on it yet.
        self.ended.notify_one();
        std::future::pending().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
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
/// `listener`'s connections out to them until `shutdown` fires. `serve` must end once its [`Incoming`] has ended, draining
/// gracefully, and should not watch `shutdown` itself (see the module docs). `what` names the
/// server in logs.
pub fn start<F, Fut, E>(
    what: &'static str,
    threads: usize,
    listener: TcpListener,
    shutdown: Shutdown,
    serve: F,
) -> anyhow::Result<Threads>
where
    F: FnOnce(Incoming) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
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
            local,
            ended: Arc::new(Notify::new()),
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
    let accept = tokio::spawn(deal_out(what, listener, queues, shutdown));
    Ok(Threads {
        what,
        accept: Some(accept),
        serving,
    })
}

/// Accepts connections and hands them to the threads in turn until `shutdown` fires, or until
/// every thread has stopped; then closes the port and drops the queues. A thread whose queue is
/// gone (it stopped) is skipped from then on.
async fn deal_out(
    what: &'static str,
    listener: TcpListener,
    mut queues: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: Shutdown,
) {
    let mut next = 0;
    while !queues.is_empty() {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.triggered() => break,
            () = every_closed(&queues) => {
                queues.clear();
                break;
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // the connections already open keep being served; try again shortly.
                tracing::warn!(error = %err, "cannot accept a {what} connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Responses go out in one write each, so Nagle's algorithm could only delay them.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a {what} connection");
        }
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        let mut handover = match stream.into_std() {
            Ok(stream) => (stream, peer),
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
