//! [`Inline`]: polls a connection again at once when it wakes its own task while being
//! polled, instead of sending the task back through the runtime's queue.
//!
//! hyper's HTTP/1 connection does that once per request with a body: the request body's
//! channel wakes the connection when the handler takes the body's bytes, during the same
//! poll in which hyper runs the handler. The task then went back to the runtime's queue only
//! to be polled again straight away: about 240 instructions of the runtime's per check
//! (`docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session 19)").
//! The second poll of the connection itself still happens (nothing outside hyper can tell
//! whether a wake-up was needed), only without the round trip.

use super::task_waker::{OnTask, TaskWaker};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// How many times in a row one poll of the task answers a wake-up during the connection's
/// poll by polling it again at once. Past that the task is woken through the runtime as
/// before, so a connection that keeps waking itself still lets the thread's other
/// connections run. Besides a request body's wake-up, hyper yielding after 16 pipelined
/// messages lands here: it is absorbed once, so a pipelining client gets up to 32 requests
/// per poll of the task. A spent coop budget does not: tokio (1.54) defers that wake-up past
/// the poll, so it always goes through the runtime.
const AGAIN: u32 = 1;

/// [`InlineWake::state`]: the connection is being polled.
const POLLING: u8 = 1;
/// [`InlineWake::state`]: something woke the connection while it was being polled.
const WOKEN: u8 = 2;

/// The waker a connection is polled with: it wakes the task, unless the connection is being
/// polled at that moment, when it only notes the wake-up for [`Inline::poll`] to answer.
struct InlineWake {
    state: AtomicU8,
    task: Waker,
}

impl Wake for InlineWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Whichever of this and the end of the poll comes second sees the other's mark: a
        // wake-up is either seen by the poll or passed on to the task, never lost.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake_by_ref();
        }
    }
}

impl OnTask for InlineWake {
    fn for_task(task: Waker) -> Self {
        Self {
            state: AtomicU8::new(0),
            task,
        }
    }

    fn task(&self) -> &Waker {
        &self.task
    }
}

/// A connection task's [`InlineWake`], kept for the task it was made for.
#[derive(Default)]
pub(super) struct Inline {
    wake: TaskWaker<InlineWake>,
}

impl Inline {
    /// Polls the connection through `poll` on behalf of `task`, again at once (up to
    /// [`AGAIN`] times) when it woke itself meanwhile; past that, `task` is woken to poll it
    /// later.
    pub(super) fn poll<T>(
        &mut self,
        task: &Waker,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let (wake, waker, _) = self.wake.for_task(task);
        let mut again = AGAIN;
        loop {
            wake.state.store(POLLING, Ordering::Release);
            let polled = poll(&mut Context::from_waker(waker));
            let woken = wake.state.swap(0, Ordering::AcqRel) & WOKEN != 0;
            if polled.is_ready() || !woken {
                return polled;
            }
            if again == 0 {
                task.wake_by_ref();
                return Poll::Pending;
            }
            again -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::task_waker::counted::task;
    use super::*;

    /// A connection that wakes itself during its first poll (as hyper's does when the
    /// handler takes the body) is polled again in the same poll of the task, which is
    /// not woken.
    #[test]
    fn a_wake_up_during_the_poll_is_answered_at_once() {
        let (task, waker) = task();
        let mut inline = Inline::default();
        let mut polls = 0;
        let polled = inline.poll(&waker, |cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        assert_eq!(polled, Poll::Ready(()));
        assert_eq!(polls, 2);
        assert_eq!(task.wakes(), 0);
    }

    /// A connection that keeps waking itself is polled again once, then left to the
    /// runtime: the task is woken and the poll ends.
    #[test]
    fn a_connection_that_keeps_waking_itself_yields() {
        let (task, waker) = task();
        let mut inline = Inline::default();
        let mut polls = 0;
        let polled: Poll<()> = inline.poll(&waker, |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert_eq!(polled, Poll::Pending);
        assert_eq!(polls, 1 + AGAIN);
        assert_eq!(task.wakes(), 1);
    }

    /// A wake-up after the poll (the socket, another thread) reaches the task, through a
    /// waker the connection kept from its poll.
    #[test]
    fn a_wake_up_after_the_poll_wakes_the_task() {
        let (task, waker) = task();
        let mut inline = Inline::default();
        let mut kept = None;
        let polled: Poll<()> = inline.poll(&waker, |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert_eq!(polled, Poll::Pending);
        assert_eq!(task.wakes(), 0);
        let kept = kept.expect("kept");
        kept.wake_by_ref();
        assert_eq!(task.wakes(), 1);
        // The next poll uses the same waker: what the connection registered stays current.
        let again: Poll<()> = inline.poll(&waker, |cx| {
            assert!(cx.waker().will_wake(&kept));
            Poll::Pending
        });
        assert_eq!(again, Poll::Pending);
    }
}
