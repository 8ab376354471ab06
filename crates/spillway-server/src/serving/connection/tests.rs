//! The connection task on the paused clock: when a stand-in connection is asked to close,
//! dropped, or left alone.

use super::*;
use std::sync::atomic::AtomicUsize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A connection that never ends by itself, as a peer that neither sends nor closes: it
/// counts the times it is asked to close, and ends once asked if `ends_when_asked`.
struct Stuck {
    closes: Arc<AtomicUsize>,
    ends_when_asked: bool,
}

impl Future for Stuck {
    type Output = Result<(), std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ends_when_asked && self.closes.load(Ordering::SeqCst) > 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl Graceful for Stuck {
    type Failure = std::convert::Infallible;

    fn close(self: Pin<&mut Self>) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

/// One second to send a head, four to stay idle: a look every 250 ms.
const QUIET: Quiet = Quiet {
    idle: Duration::from_secs(4),
    header: Some(Duration::from_secs(1)),
};

/// Drives a stuck connection; the task answers how long it ran. Returns the drain
/// signal's sender and how many times the connection was asked to close.
fn drive_stuck(
    activity: &Arc<Activity>,
    ends_when_asked: bool,
) -> (watch::Sender<()>, Arc<AtomicUsize>, JoinHandle<Duration>) {
    let closes = Arc::new(AtomicUsize::new(0));
    let connection = Stuck {
        closes: closes.clone(),
        ends_when_asked,
    };
    let (drain, draining) = watch::channel(());
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a free slot");
    let activity = activity.clone();
    let began = Instant::now();
    let task = tokio::spawn(async move {
        drive(connection, activity, QUIET, draining, slot).await;
        began.elapsed()
    });
    (drain, closes, task)
}

/// An HTTP/2 connection (no header deadline) asked to close that stays quiet is dropped
/// once it has been quiet for the idle timeout and the header timeout more.
#[tokio::test(start_paused = true)]
async fn a_quiet_connection_asked_to_close_is_dropped_after_idle_and_header() {
    let activity = Arc::new(Activity::default());
    activity.spoke_http2();
    let (drain, closes, task) = drive_stuck(&activity, false);
    drain.send(()).expect("the connection listens");
    let ran = task.await.expect("drive ends");
    assert!(
        (Duration::from_secs(5)..=Duration::from_millis(5250)).contains(&ran),
        "dropped after {ran:?}"
    );
    assert_eq!(closes.load(Ordering::SeqCst), 1);
}

/// A connection asked to close with a request in flight is not dropped, however long
/// the request takes; once it ends, the quiet time counts from there.
#[tokio::test(start_paused = true)]
async fn a_connection_asked_to_close_with_a_request_in_flight_is_not_dropped() {
    let activity = Arc::new(Activity::default());
    activity.spoke_http2();
    activity.started();
    let (drain, closes, mut task) = drive_stuck(&activity, false);
    drain.send(()).expect("the connection listens");
    let in_flight = Duration::from_millis(60_100);
    assert!(
        tokio::time::timeout(in_flight, &mut task).await.is_err(),
        "dropped with a request in flight"
    );
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    activity.ended();
    let ran = task.await.expect("drive ends");
    let quiet = ran - in_flight;
    assert!(
        (Duration::from_secs(5)..=Duration::from_millis(5250)).contains(&quiet),
        "dropped {quiet:?} after its request ended"
    );
}

/// A drain signal sent while the task sleeps between looks wakes it at once (through its
/// `Nudge`): it is asked to close then, not at the next look (250 ms).
#[tokio::test(start_paused = true)]
async fn a_drain_sent_while_the_task_sleeps_closes_it_at_once() {
    let activity = Arc::new(Activity::default());
    activity.spoke_http2();
    let (drain, closes, task) = drive_stuck(&activity, true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "ended before the drain");
    drain.send(()).expect("the connection listens");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(task.is_finished(), "not closed 1 ms after the drain");
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    assert_eq!(task.await.expect("drive ends"), Duration::from_millis(100));
}

/// An idle connection is asked to close at the idle timeout and, closing at once, is
/// polled again straight away (not a look later).
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    let activity = Arc::new(Activity::default());
    activity.spoke_http2();
    let (_drain, closes, task) = drive_stuck(&activity, true);
    assert_eq!(task.await.expect("drive ends"), QUIET.idle);
    assert_eq!(closes.load(Ordering::SeqCst), 1);
}

/// An HTTP/1 connection that sends no head is dropped at the header deadline without
/// being asked to close.
#[tokio::test(start_paused = true)]
async fn an_http1_connection_without_a_head_is_dropped_at_the_header_deadline() {
    let activity = Arc::new(Activity::default());
    let (_drain, closes, task) = drive_stuck(&activity, false);
    assert_eq!(task.await.expect("drive ends"), Duration::from_secs(1));
    assert_eq!(closes.load(Ordering::SeqCst), 0);
}

/// A connection that wakes itself in its first poll and ends in its second, as hyper's
/// wakes itself when the handler takes a request's body.
struct WakesItself(u32);

impl Future for WakesItself {
    type Output = Result<(), std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0 += 1;
        if self.0 == 1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl Graceful for WakesItself {
    type Failure = std::convert::Infallible;

    fn close(self: Pin<&mut Self>) {}
}

/// A connection that wakes itself while being polled is polled again in the same poll of
/// its task, which is not woken to do it.
#[tokio::test(start_paused = true)]
async fn a_connection_that_wakes_itself_is_polled_again_at_once() {
    let (_drain, draining) = watch::channel(());
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a free slot");
    let activity = Arc::new(Activity::default());
    let mut task = pin!(drive(WakesItself(0), activity, QUIET, draining, slot));
    let (wakes, waker) = task_waker::counted::task();
    let polled = task.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(polled.is_ready(), "ended in the task's first poll");
    assert_eq!(wakes.wakes(), 0);
}
