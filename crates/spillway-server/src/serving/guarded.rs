//! [`GuardedBody`]: a request body that fails with [`BodyTimeout`] when it takes too long to
//! arrive, so a client trickling a body cannot hold a request (and its connection) forever,
//! and with [`BodyMemoryFull`](super::BodyMemoryFull) when the bytes it holds while waiting
//! would take the process's bodies past `--max-body-memory` ([`super::body_memory`]).
//!
//! Both start only the first time the body is found incomplete: a body that arrived with its
//! headers, the usual case for a rate-limit call, is read without either, so the hot path reads
//! no clock, registers no timer and touches no shared counter. Each transport turns the errors
//! into its own answers: the HTTP API into a 408 or 503 problem, the gRPC port into
//! `DEADLINE_EXCEEDED` or `RESOURCE_EXHAUSTED`.

use super::body_memory::{Charge, WAITING};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The error a [`GuardedBody`] ends with when its time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The timeout behind `err`, if it or one of its sources is one: how a handler that only
    /// sees its framework's body error tells a late body from a broken one.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        cause::<Self>(err).copied()
    }
}

/// The first error of type `T` in `err`'s chain of sources, `err` included.
pub(super) fn cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

pin_project! {
    /// `inner`, cut off with [`BodyTimeout`] once `limit` has passed since it was first found
    /// incomplete, or with [`BodyMemoryFull`](super::BodyMemoryFull) when what it holds
    /// while waiting ([`WAITING`] and the bytes it handed out) does not fit in its `charge`.
    /// Either way the charge is given back at once.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        limit: Duration,
        #[pin]
        timer: Option<Sleep>,
        // Bytes handed out since the body last waited, not yet charged.
        unheld: usize,
        charge: Charge,
        ended: bool,
    }
}

impl<B> GuardedBody<B> {
    /// `inner` with `limit` to arrive in full, holding what it waits with in `charge`.
    pub fn new(inner: B, limit: Duration, charge: Charge) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            unheld: 0,
            charge,
            ended: false,
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                *this.unheld += data.len();
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        // The reader keeps what it was handed while it waits for the rest, and the request
        // its head: charged once, on the first wait.
        let head = if this.charge.holds() { 0 } else { WAITING };
        let due = head + std::mem::take(this.unheld);
        if due > 0 {
            if let Err(full) = this.charge.add(due) {
                *this.ended = true;
                this.charge.release();
                return Poll::Ready(Some(Err(Box::new(full))));
            }
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => {
                *this.ended = true;
                this.charge.release();
                Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.limit)))))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::body_memory::{BodyMemory, BodyMemoryFull};
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that hands out its `steps` in turn (`Some` a frame at once, `None` a wait of one
    /// poll), after which it either stalls (its next frame never comes) or ends.
    struct Frames {
        steps: VecDeque<Option<&'static str>>,
        stalls: bool,
    }

    fn stalls_after(steps: &[Option<&'static str>]) -> Frames {
        Frames {
            steps: steps.iter().copied().collect(),
            stalls: true,
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.steps.pop_front() {
                Some(Some(data)) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(data.as_bytes())))))
                }
                Some(None) => Poll::Pending,
                None if self.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    /// A charge under `cap` of a count of the test's own.
    fn charge(memory: &'static BodyMemory, cap: usize) -> Charge {
        Charge::new(memory, cap)
    }

    /// What one poll of a body gives.
    type Next = Poll<Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>>;

    /// Polls `body` for its next frame once.
    fn poll_once(body: &mut Pin<Box<GuardedBody<Frames>>>) -> Next {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        body.as_mut().poll_frame(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_cut_off_at_its_limit_and_gives_back_its_charge() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let limit = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let mut body = Box::pin(GuardedBody::new(
            stalls_after(&[Some("first")]),
            limit,
            charge(&MEMORY, usize::MAX),
        ));
        let err = loop {
            if let Err(err) = body.frame().await.expect("no end") {
                break err;
            }
        };
        assert_eq!(started.elapsed(), limit);
        assert_eq!(BodyTimeout::find(err.as_ref()), Some(BodyTimeout(limit)));
        assert_eq!(
            err.to_string(),
            "the request body did not arrive within 300 ms"
        );
        assert_eq!(MEMORY.held(), 0, "given back as it is cut off");
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_is_read_as_it_is_and_holds_nothing() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let body = Frames {
            steps: VecDeque::from([Some("who"), Some("le")]),
            stalls: false,
        };
        // No room at all: bytes that never wait are never charged.
        let read = GuardedBody::new(body, Duration::from_millis(1), charge(&MEMORY, 0))
            .collect()
            .await
            .expect("read");
        assert_eq!(read.to_bytes(), &b"whole"[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_holds_its_head_and_what_it_handed_out_until_dropped() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let steps = [Some("fir"), Some("st"), None, Some("second")];
        let mut body = Box::pin(GuardedBody::new(
            stalls_after(&steps),
            Duration::from_secs(10),
            charge(&MEMORY, usize::MAX),
        ));
        for _ in 0..2 {
            assert!(poll_once(&mut body).is_ready(), "a frame at once");
        }
        assert_eq!(MEMORY.held(), 0, "nothing is held before a wait");
        assert!(poll_once(&mut body).is_pending(), "a wait");
        assert_eq!(MEMORY.held(), WAITING + 5);
        assert!(poll_once(&mut body).is_ready(), "the second part");
        assert!(poll_once(&mut body).is_pending(), "it stalls");
        assert_eq!(MEMORY.held(), WAITING + 11, "the head is charged once");
        drop(body);
        assert_eq!(MEMORY.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whose_wait_would_pass_the_cap_is_refused_at_once() {
        static MEMORY: BodyMemory = BodyMemory::new();
        let cap = WAITING + 8;
        let mut other = charge(&MEMORY, cap);
        other.add(4).expect("another body holds some");
        let mut body = Box::pin(GuardedBody::new(
            stalls_after(&[Some("first")]),
            Duration::from_secs(10),
            charge(&MEMORY, cap),
        ));
        assert!(poll_once(&mut body).is_ready(), "a frame at once");
        let Poll::Ready(Some(Err(err))) = poll_once(&mut body) else {
            panic!("refused at once, not left waiting");
        };
        assert_eq!(
            BodyMemoryFull::find(err.as_ref()),
            Some(BodyMemoryFull { cap })
        );
        assert_eq!(BodyTimeout::find(err.as_ref()), None);
        assert_eq!(MEMORY.held(), 4, "the refused body holds nothing");
        assert!(body.is_end_stream());
        assert!(
            matches!(poll_once(&mut body), Poll::Ready(None)),
            "and has ended"
        );
        // Once the other is gone, a body the size of the cap waits.
        drop(other);
        let mut body = Box::pin(GuardedBody::new(
            stalls_after(&[Some("eight by")]),
            Duration::from_secs(10),
            charge(&MEMORY, cap),
        ));
        assert!(poll_once(&mut body).is_ready());
        assert!(poll_once(&mut body).is_pending(), "it waits");
        assert_eq!(MEMORY.held(), cap);
    }

    #[test]
    fn other_errors_are_not_timeouts() {
        let other = std::io::Error::other("reset");
        assert_eq!(BodyTimeout::find(&other), None);
    }
}
