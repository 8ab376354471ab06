//! One serving thread's connections, whatever the protocol: each on a task of its own, closed
//! when idle, drained together once the thread's queue ends.
//!
//! [`serve_each`] takes the connections dealt to the thread; the caller says how to serve one
//! (hyper's HTTP/2 server for gRPC, its HTTP/1-or-2 server for the API) and wraps its service
//! in [`Tracked`], which counts the requests in flight and gives each request body its
//! [`DeadlineBody`]. A connection's task closes it gracefully once it has had no request in
//! flight for the idle timeout, and holds the connection's slot (a permit of the port's cap)
//! until the connection ends.
//!
//! The idle check reads no clock per request: [`Activity`] counts requests starting and
//! ending (uncontended atomic additions, on the connection's own thread), and the
//! task looks at the count twice per idle period. Once three looks in a row have seen nothing
//! in flight and the same count, a whole idle period has passed quietly, so a connection is
//! closed between one and one and a half idle periods after its last request ended.

use super::deadline::DeadlineBody;
use super::limits::ConnectionLimits;
use super::threads::{Accepted, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// What a connection's requests have been doing, as its idle check sees it: two counters, each
/// bumped once per event (one atomic add per request start and one per end).
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicUsize,
    ended: AtomicUsize,
}

impl Activity {
    fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests have started, if none is in flight: unchanged between two looks
    /// means nothing happened in between. `ended` is read first: it never passes `started`,
    /// so equal counts mean every request that had started by then has ended.
    fn quiet(&self) -> Option<usize> {
        let ended = self.ended.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        (started == ended).then_some(started)
    }
}

/// A connection's service: `inner`, with each request counted in [`Activity`] while its
/// answer is being made, and each request body given the body deadline.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<S> Tracked<S> {
    /// `inner` serving one connection, counted in `activity`.
    pub fn new(inner: S, activity: &Arc<Activity>, limits: &ConnectionLimits) -> Self {
        Self {
            inner,
            activity: activity.clone(),
            body_timeout: limits.body_timeout,
        }
    }
}

impl<S, B> hyper::service::Service<http::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<http::Request<DeadlineBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn call(&self, request: http::Request<B>) -> Self::Future {
        self.activity.started();
        let request = request.map(|body| DeadlineBody::new(body, self.body_timeout));
        InFlight {
            future: self.inner.call(request),
            _ends: Ends(self.activity.clone()),
        }
    }
}

/// Counts a request as ended when dropped, answered or not.
struct Ends(Arc<Activity>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.ended();
    }
}

pin_project! {
    /// A request's answer being made; the request counts as in flight until this is dropped.
    pub struct InFlight<F> {
        #[pin]
        future: F,
        _ends: Ends,
    }
}

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Serves every connection dealt to this thread with `open(io, peer, activity)`, each on a
/// task of its own, until the queue ends; then waits `pause` (for connections just taken to
/// read their first request), shuts them all down gracefully and waits for them.
pub async fn serve_each<C, F>(
    mut incoming: Incoming,
    limits: ConnectionLimits,
    pause: Duration,
    mut open: F,
) where
    F: FnMut(TokioIo<TcpStream>, SocketAddr, &Arc<Activity>) -> C,
    C: GracefulConnection + Send + 'static,
    C::Error: std::fmt::Display,
{
    let (drain, draining) = watch::channel(());
    while let Some(Accepted { stream, peer, slot }) = incoming.queue.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take over a connection");
                continue;
            }
        };
        let activity = Arc::new(Activity::default());
        let connection = open(TokioIo::new(stream), peer, &activity);
        tokio::spawn(drive(
            connection,
            activity,
            limits.idle_timeout,
            draining.clone(),
            slot,
        ));
    }
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    drop(draining);
    // Every connection task holds a receiver; they are all gone once every connection ended.
    let _ = drain.send(());
    drain.closed().await;
}

/// Runs one connection to its end: gracefully shut down when it has been idle for `idle`, or
/// when the thread drains. `_slot` is its place under the port's connection cap.
async fn drive<C>(
    connection: C,
    activity: Arc<Activity>,
    idle: Duration,
    mut draining: watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let look = idle / 2;
    let check = tokio::time::sleep(look);
    let mut check = pin!(check);
    // The count at the last look, and how many looks in a row have seen it unchanged with
    // nothing in flight: two such looks span a whole idle period.
    let mut last = activity.quiet();
    let mut quiet_looks = 0;
    let mut closing = false;
    loop {
        tokio::select! {
            // In this order, without drawing a random start on every wake-up: the connection
            // wakes the task for each request, the others seldom.
            biased;
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "a connection ended with an error");
                }
                return;
            }
            _ = draining.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = check.as_mut(), if !closing => {
                let now = activity.quiet();
                if now.is_some() && now == last {
                    quiet_looks += 1;
                } else {
                    (last, quiet_looks) = (now, 0);
                }
                if quiet_looks >= 2 {
                    tracing::debug!(idle_ms = idle.as_millis() as u64, "closing an idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                } else {
                    check.as_mut().reset(tokio::time::Instant::now() + look);
                }
            }
        }
    }
}
