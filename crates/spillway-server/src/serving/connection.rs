//! One serving thread's connections, whatever the protocol: each on a task of its own, closed
//! when idle, drained together once the thread's queue ends.
//!
//! [`serve_each`] takes the connections dealt to the thread; the caller says how to serve one
//! (hyper's HTTP/2 server for gRPC, its HTTP/1-or-2 server for the API) and wraps its service
//! in [`Tracked`], which counts the requests in flight and gives each request body its
//! [`GuardedBody`] (the body deadline, and its share of `--max-body-memory`). A connection's
//! task closes it gracefully once it has had no request in flight for the idle timeout, and
//! holds the connection's slot (a permit of the port's cap) until the connection ends.
//!
//! The idle check and the header deadline ([`super::heads`]) read no clock per request:
//! [`Activity`] counts requests starting and ending and the socket's writes (uncontended
//! atomic additions, on the connection's own thread), and the task looks at the counts four
//! times per shortest limit. A look that sees nothing in flight and the same counts as the
//! look before adds a quarter period of quiet; once the quiet looks in a row span a limit, the
//! connection is closed, between one and one and a quarter of that limit after it went quiet:
//! gracefully for the idle timeout, dropped for the header deadline. The look timer and the
//! drain signal are polled only when one of them woke the task (`Nudge`), so the wake-up a
//! request makes polls neither. A connection that wakes itself while being polled (hyper's,
//! when the handler takes a request's body) is polled again at once, not sent back through
//! the runtime's queue ([`inline`]).

use super::body_memory::{self, Charge};
use super::guarded::GuardedBody;
use super::heads::Watched;
use super::limits::ConnectionLimits;
use super::threads::{Accepted, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use inline::Inline;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use task_waker::{OnTask, TaskWaker};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// What a connection's requests have been doing, as its idle check and header deadline see
/// it: three counters, each bumped once per event (one atomic add per request start, one per
/// end, one per write to the socket), and whether the client opened with HTTP/2's preface.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicUsize,
    ended: AtomicUsize,
    writes: AtomicUsize,
    http2: AtomicBool,
}

impl Activity {
    fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// The socket took a write (part of an answer).
    pub(super) fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// The client opened with HTTP/2's preface.
    pub(super) fn spoke_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// Whether the client opened with HTTP/2's preface (so there is no header deadline).
    pub(super) fn http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// How many requests have started and, on HTTP/1, writes been made, if no request is in
    /// flight: unchanged between two looks means nothing happened in between. `ended` is read
    /// first: it never passes `started`, so equal counts mean every request that had started
    /// by then has ended. An HTTP/2 connection's writes are not counted ([`Watched`] stops at
    /// the preface): the server writes on its own to acknowledge a client's `PING` and
    /// `SETTINGS`, so a client pinging would otherwise keep a connection with no request open
    /// for ever.
    pub(super) fn quiet(&self) -> Option<(usize, usize)> {
        let ended = self.ended.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        (started == ended).then(|| (started, self.writes.load(Ordering::Relaxed)))
    }
}

/// How long a connection may stay quiet (no request in flight, nothing written): `idle`
/// before it is closed gracefully, and, for HTTP/1, `header` before it is dropped (the
/// header deadline, [`super::heads`]).
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// `--idle-timeout`, for every connection.
    pub idle: Duration,
    /// `--header-timeout`, for the HTTP API's HTTP/1 connections; `None` on the gRPC port.
    pub header: Option<Duration>,
}

impl Quiet {
    /// How many looks a connection's task takes per shortest limit.
    const LOOKS: u32 = 4;

    /// The time between two looks.
    fn look(self) -> Duration {
        self.header.map_or(self.idle, |h| h.min(self.idle)) / Self::LOOKS
    }
}

/// A connection's service: `inner`, with each request counted in [`Activity`] while its
/// answer is being made, and each request body given the body deadline and a charge on the
/// process's body memory.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
    max_body_memory: usize,
}

impl<S> Tracked<S> {
    /// `inner` serving one connection, counted in `activity`.
    pub fn new(inner: S, activity: &Arc<Activity>, limits: &ConnectionLimits) -> Self {
        Self {
            inner,
            activity: activity.clone(),
            body_timeout: limits.body_timeout,
            max_body_memory: limits.max_body_memory,
        }
    }
}

impl<S, B> hyper::service::Service<http::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<http::Request<GuardedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn call(&self, request: http::Request<B>) -> Self::Future {
        self.activity.started();
        let request = request.map(|body| {
            let charge = Charge::new(&body_memory::PROCESS, self.max_body_memory);
            GuardedBody::new(body, self.body_timeout, charge)
        });
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
/// task of its own, closed once quiet as `quiet` says, until the queue ends; then waits
/// `pause` (for connections just taken to read their first request), shuts them all down
/// gracefully and waits for them.
pub async fn serve_each<C, F>(mut incoming: Incoming, quiet: Quiet, pause: Duration, mut open: F)
where
    F: FnMut(TokioIo<Watched<TcpStream>>, SocketAddr, &Arc<Activity>) -> C,
    C: Graceful + Send + 'static,
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
        let io = TokioIo::new(Watched::new(stream, &activity));
        let connection = open(io, peer, &activity);
        tokio::spawn(drive(connection, activity, quiet, draining.clone(), slot));
    }
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    drop(draining);
    // Every connection task holds a receiver; they are all gone once every connection ended.
    let _ = drain.send(());
    drain.closed().await;
}

/// A connection [`drive`] can run: a future that ends with the connection, which can be asked
/// to close gracefully. Every hyper server connection is one (hyper-util's own trait for
/// that is sealed, so the unit tests' stand-in needs this one).
pub trait Graceful: Future<Output = Result<(), Self::Failure>> {
    /// What the connection ends with when it fails.
    type Failure: std::fmt::Display;

    /// Asks the connection to finish its requests in flight and close.
    fn close(self: Pin<&mut Self>);
}

impl<C> Graceful for C
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    type Failure = C::Error;

    fn close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs one connection to its end: gracefully shut down when it has been idle for
/// `quiet.idle` or when the thread drains, dropped when an HTTP/1 connection has waited
/// `quiet.header` for a request head (draining or not), and dropped when, asked to close, it
/// stays quiet (no request in flight) for `quiet.header` more (`quiet.idle` where there is no
/// header deadline): an HTTP/2 peer that never finishes its handshake or never acknowledges
/// the closing `PING` holds no slot for ever. `_slot` is its place under the port's
/// connection cap.
///
/// The task wakes once per request for the connection, and seldom for anything else: the
/// look timer and the drain signal are polled only after they woke it themselves (through a
/// [`Nudge`]), not on every wake-up as a `select!` would (about 600 instructions per check,
/// counted in `docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session
/// 18)"), and a connection that wakes itself while being polled, as hyper's does once per
/// request with a body, is polled again at once ([`Inline`]) rather than woken.
async fn drive<C: Graceful>(
    connection: C,
    activity: Arc<Activity>,
    quiet: Quiet,
    mut draining: watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
) {
    let mut connection = pin!(connection);
    let look = quiet.look();
    let mut check = pin!(tokio::time::sleep(look));
    // Kept for the connection's life, so it joins the drain signal's waiters once instead
    // of on every wake-up; never polled again once it has fired.
    let mut drained = pin!(draining.changed());
    let mut looks = Looks::new(&activity);
    let mut closing = false;
    let mut seldom = Seldom::default();
    let mut inline = Inline::default();
    std::future::poll_fn(|cx| loop {
        let polled = inline.poll(cx.waker(), |own| connection.as_mut().poll(own));
        if let Poll::Ready(ended) = polled {
            if let Err(err) = ended {
                tracing::debug!(error = %err, "a connection ended with an error");
            }
            return Poll::Ready(());
        }
        let Some(nudge) = seldom.due(cx.waker()) else {
            return Poll::Pending;
        };
        let mut nudged = Context::from_waker(&nudge);
        let mut closed_now = false;
        if !closing && drained.as_mut().poll(&mut nudged).is_ready() {
            closing = true;
            closed_now = true;
            connection.as_mut().close();
        }
        // Closing gracefully waits for a request head hyper is still reading, or (HTTP/2)
        // for a handshake the client never finishes or a `PING` it never answers, so the
        // looks go on while closing.
        while check.as_mut().poll(&mut nudged).is_ready() {
            match looks.take(&activity, quiet, look, closing) {
                Verdict::Wait => {}
                Verdict::Close => {
                    closing = true;
                    closed_now = true;
                    connection.as_mut().close();
                }
                Verdict::Drop => return Poll::Ready(()),
            }
            check.as_mut().reset(tokio::time::Instant::now() + look);
        }
        if !closed_now {
            return Poll::Pending;
        }
        // Asked to close: the connection is polled again to start closing.
    })
    .await;
}

/// What one look at a connection's [`Activity`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing yet.
    Wait,
    /// Idle for `quiet.idle`: close it gracefully.
    Close,
    /// Past the header deadline, or quiet too long after being asked to close: drop it.
    Drop,
}

/// The counts at the last look, and how many looks in a row have seen them unchanged with
/// nothing in flight: the connection has been quiet at least that many looks' time.
struct Looks {
    last: Option<(usize, usize)>,
    quiet_looks: u32,
}

impl Looks {
    fn new(activity: &Activity) -> Self {
        Self {
            last: activity.quiet(),
            quiet_looks: 0,
        }
    }

    /// One look, a `look` after the last one, at a connection already asked to close or not.
    fn take(
        &mut self,
        activity: &Activity,
        quiet: Quiet,
        look: Duration,
        closing: bool,
    ) -> Verdict {
        let now = activity.quiet();
        if now.is_some() && now == self.last {
            self.quiet_looks = self.quiet_looks.saturating_add(1);
        } else {
            (self.last, self.quiet_looks) = (now, 0);
        }
        let quiet_for = look.saturating_mul(self.quiet_looks);
        if quiet.header.is_some_and(|header| quiet_for >= header) && !activity.http2() {
            tracing::debug!(
                header_ms = quiet_for.as_millis() as u64,
                "dropping a connection that sent no request head in time"
            );
            return Verdict::Drop;
        }
        if closing && quiet_for >= quiet.idle + quiet.header.unwrap_or(quiet.idle) {
            tracing::debug!(
                quiet_ms = quiet_for.as_millis() as u64,
                "dropping a quiet connection that did not close when asked"
            );
            return Verdict::Drop;
        }
        if !closing && quiet_for >= quiet.idle {
            tracing::debug!(
                idle_ms = quiet.idle.as_millis() as u64,
                "closing an idle connection"
            );
            return Verdict::Close;
        }
        Verdict::Wait
    }
}

/// Wakes a connection's task for one of its seldom events (the look timer, the drain
/// signal) and notes that it did.
struct Nudge {
    nudged: AtomicBool,
    task: Waker,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.nudged.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl OnTask for Nudge {
    fn for_task(task: Waker) -> Self {
        Self {
            nudged: AtomicBool::new(false),
            task,
        }
    }

    fn task(&self) -> &Waker {
        &self.task
    }
}

/// The [`Nudge`] of the task now driving a connection.
#[derive(Default)]
struct Seldom {
    nudge: TaskWaker<Nudge>,
}

impl Seldom {
    /// The waker to poll the seldom events with, if they are due: one of them woke the task
    /// since the last time (and the flag is cleared for the next), or the task polling is
    /// not the one they were last polled for (the first poll; in theory a move to another
    /// task), so they must be polled to register with it.
    fn due(&mut self, task: &Waker) -> Option<Waker> {
        let (nudge, waker, made) = self.nudge.for_task(task);
        let nudged = nudge.nudged.swap(false, Ordering::Acquire);
        (made || nudged).then(|| waker.clone())
    }
}

mod inline;
mod task_waker;
#[cfg(test)]
mod tests;
