//! Serving threads: one task accepts connections on a port and deals them out in turn to a
//! set of threads, each running its own single-threaded tokio runtime and its own server.
//!
//! Both transports run this way. A connection then lives on one thread for its whole life: its
//! tasks are never stolen by another worker, its wake-ups never cross threads, and HTTP/2's
//! per-connection lock, which every stream of the connection takes, is never contended. On two
//! cores this cut the CPU per gRPC call by about 40% against one shared multi-threaded runtime
//! (`docs/BENCHMARKS.md`). The trade-off: one connection is served by one thread, and
//! connections are dealt out in turn, not by load.
//!
//! Shutdown, in this order: when the [`Shutdown`] fires the accept task closes the port and
//! drops its queues; each thread's server takes every connection still queued, sees its queue
//! end, and only then drains its connections gracefully (for the HTTP API, after giving the
//! connections just taken [`FIRST_READ`] to read their first request; HTTP/2's two-step
//! GOAWAY needs no pause); [`Threads::finished`] resolves once all of them have.
//! (A server told to stop by the signal itself could stop while a connection was still queued
//! for it, and that client would get no answer at all.)
//!
//! Work a request starts on a shared store must not live on a serving thread: a store client
//! that reconnects spawns its connection's task wherever it is asked, and a serving thread's
//! runtime only runs while that thread serves. [`OnRuntime`] polls such work with the main
//! runtime entered, so whatever it spawns lands there.

use crate::shutdown::Shutdown;
use anyhow::Context;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// A connection as the accept task hands it over: out of the accepting runtime's reactor,
/// with its peer's address.
type Accepted = (std::net::TcpStream, SocketAddr);

/// How long a thread whose queue has ended lets its newest connections read their first
/// request before its server starts to drain.
const FIRST_READ: Duration = Duration::from_millis(50);

/// The connections dealt to one thread.
#[derive(Debug)]
pub struct Incoming {
    queue: mpsc::UnboundedReceiver<Accepted>,
    local: SocketAddr,
    /// Notified once the queue has ended and every connection in it was taken.
    ended: Arc<Notify>,
}

impl Incoming {
    /// The connections as a stream that ends with the queue, for servers that take one and
    /// drain once it ends ([`serve_http2`]).
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

/// Serves every connection dealt to this thread as HTTP/2 with `service`, each on a task of
/// its own, until the queue ends; then shuts them all down gracefully and waits for them.
/// (HTTP/2's two-step GOAWAY lets calls already sent be answered, even on a connection not
/// read yet.) Settings follow tonic's server (no cap on streams per connection), except that
/// hyper's default limit on streams a client makes the server reset is kept.
pub async fn serve_http2<S, B>(incoming: Incoming, service: S)
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None);
    let graceful = GracefulShutdown::new();
    let mut connections = incoming.into_stream();
    while let Some(connection) = connections.next().await {
        let stream = match connection {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take over a connection");
                continue;
            }
        };
        let served =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(err) = served.await {
                tracing::debug!(error = %err, "an HTTP/2 connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
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

/// A future polled with a given runtime entered, so that whatever it spawns, and the I/O and
/// timers it creates, belong to that runtime rather than to the thread polling it. Store
/// calls are already boxed futures, hence `Unpin`.
pub struct OnRuntime<F> {
    runtime: Option<Handle>,
    future: F,
}

impl<F: Future + Unpin> OnRuntime<F> {
    /// `future`, entering `runtime` on each poll (or nothing, without one).
    pub fn new(runtime: Option<Handle>, future: F) -> Self {
        Self { runtime, future }
    }
}

impl<F: Future + Unpin> Future for OnRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.runtime.as_ref().map(Handle::enter);
        Pin::new(&mut this.future).poll(cx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn work_polled_on_a_serving_thread_spawns_on_the_given_runtime() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-main-runtime")
            .enable_all()
            .build()
            .expect("runtime");
        let handle = main.handle().clone();
        let spawned_on = |runtime: Option<Handle>| {
            std::thread::spawn(move || {
                let serving = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                serving.block_on(OnRuntime::new(
                    runtime,
                    Box::pin(async {
                        tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                            .await
                            .expect("spawned task")
                    }),
                ))
            })
            .join()
            .expect("serving thread")
        };
        assert_eq!(
            spawned_on(Some(handle)).as_deref(),
            Some("the-main-runtime")
        );
        // Without a runtime to enter, the task stays on the serving thread (unnamed here).
        assert_eq!(spawned_on(None), None);
    }

    /// A connection whose request has already arrived, queued just as the queue ends (the
    /// accept task stopping at shutdown), is still answered before the server drains.
    #[test]
    fn a_connection_queued_as_the_queue_ends_is_answered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = send_get(addr);
        let (accepted, peer) = listener.accept().expect("accept");
        let (incoming, runtime) = the_last_connection_queued(accepted, peer, addr);
        runtime
            .block_on(async {
                let ended = incoming.ended();
                let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
                axum::serve(incoming, router)
                    .with_graceful_shutdown(ended)
                    .await
            })
            .expect("served");
        assert_eq!(status_line(client), "HTTP/1.1 200 OK");
    }

    /// The HTTP/2 server's version: a connection whose request has already arrived, queued
    /// just as the queue ends, is answered before its server drains.
    #[test]
    fn an_http2_connection_queued_as_the_queue_ends_is_answered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The client, on a thread of its own: one GET, then it keeps its connection going
        // (answering the server's pings) until the server closes it.
        let client = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
                tokio::spawn(connection);
                let request = http::Request::get(format!("http://{addr}/"))
                    .body(())
                    .expect("request");
                let (response, _) = client
                    .ready()
                    .await
                    .expect("ready")
                    .send_request(request, true)
                    .expect("sent");
                response.await.map(|r| r.status().as_u16())
            })
        });
        let (accepted, peer) = listener.accept().expect("accept");
        // Queue the connection only once its request is in the socket: a HEADERS frame
        // after the 24-byte preface.
        let mut seen = vec![0; 4096];
        loop {
            let n = accepted.peek(&mut seen).expect("peek");
            if has_headers_frame(&seen[..n]) {
                break;
            }
            std::thread::yield_now();
        }
        let (incoming, runtime) = the_last_connection_queued(accepted, peer, addr);
        let ok = hyper::service::service_fn(|_: http::Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        });
        runtime.block_on(serve_http2(incoming, ok));
        // Whatever the server left unserved closes here, so a miss fails instead of hanging.
        drop(runtime);
        let status = client.join().expect("client thread");
        assert_eq!(status.expect("an answer, not a refusal"), 200);
    }

    /// Whether `bytes` (a client's first bytes) hold an HTTP/2 HEADERS frame.
    fn has_headers_frame(bytes: &[u8]) -> bool {
        let mut at = 24; // the connection preface
        while bytes.len() >= at + 9 {
            let length = usize::from(bytes[at]) << 16
                | usize::from(bytes[at + 1]) << 8
                | usize::from(bytes[at + 2]);
            if bytes[at + 3] == 0x1 {
                return true;
            }
            at += 9 + length;
        }
        false
    }

    /// A thread's queue holding `accepted` and then ending, as at shutdown, and a runtime of
    /// the kind a serving thread runs to serve it on.
    fn the_last_connection_queued(
        accepted: std::net::TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> (Incoming, tokio::runtime::Runtime) {
        accepted.set_nonblocking(true).expect("nonblocking");
        let (queue, connections) = mpsc::unbounded_channel();
        queue.send((accepted, peer)).expect("queued");
        let incoming = Incoming {
            queue: connections,
            local,
            ended: Arc::new(Notify::new()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (incoming, runtime)
    }

    /// A fresh connection to `addr` with one whole GET sent on it.
    fn send_get(addr: SocketAddr) -> std::net::TcpStream {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send");
        stream
    }

    /// The status line of the response read to the end of `stream` (empty if none came).
    fn status_line(mut stream: std::net::TcpStream) -> String {
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.lines().next().unwrap_or_default().to_owned()
    }

    /// One GET over a fresh connection; the status line.
    fn get(addr: SocketAddr) -> String {
        status_line(send_get(addr))
    }

    /// When every thread has stopped, the set ends on its own, with no connection arriving
    /// and no signal, so the process can exit instead of holding a port nobody serves.
    #[tokio::test]
    async fn the_threads_end_once_every_one_has_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut threads = start(
            "test",
            2,
            listener,
            Shutdown::new(),
            |incoming: Incoming| {
                drop(incoming);
                async { Err("this thread stops at once") }
            },
        )
        .expect("threads start");
        tokio::time::timeout(Duration::from_secs(10), threads.finished())
            .await
            .expect("the set ends without a signal");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the port is closed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_skip_a_thread_that_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let started = Arc::new(AtomicUsize::new(0));
        let (stopped, has_stopped) = std::sync::mpsc::channel::<()>();
        let mut threads = start(
            "test",
            2,
            listener,
            shutdown.clone(),
            move |incoming: Incoming| {
                let first = started.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        drop(incoming);
                        let _ = stopped.send(());
                        return Err("this thread stops at once");
                    }
                    let ended = incoming.ended();
                    let router =
                        axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
                    axum::serve(incoming, router)
                        .with_graceful_shutdown(ended)
                        .await
                        .map_err(|_| "serve failed")
                }
            },
        )
        .expect("threads start");
        // Once one thread has stopped, every connection must still be answered.
        tokio::task::spawn_blocking(move || {
            has_stopped.recv().expect("a thread stopped");
            for _ in 0..6 {
                assert_eq!(get(addr), "HTTP/1.1 200 OK");
            }
        })
        .await
        .expect("client");
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), threads.finished())
            .await
            .expect("the threads drain and end");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the port is closed"
        );
    }
}
