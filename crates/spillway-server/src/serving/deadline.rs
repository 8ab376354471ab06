//! [`DeadlineBody`]: a request body that fails with [`BodyTimeout`] when it takes too long to
//! arrive, so a client trickling a body cannot hold a request (and its connection) forever.
//!
//! The timer starts only the first time the body is found incomplete: a body that arrived
//! with its headers, the usual case for a rate-limit call, is read without one, so the hot path
//! reads no clock and registers no timer. Each transport turns the error into its own answer:
//! the HTTP API into a 408 problem, the gRPC port into `DEADLINE_EXCEEDED`.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The error a [`DeadlineBody`] ends with when its time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The timeout behind `err`, if it or one of its sources is one: how a handler that only
    /// sees its framework's body error tells a late body from a broken one.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if let Some(timeout) = err.downcast_ref::<Self>() {
                return Some(*timeout);
            }
            cause = err.source();
        }
        None
    }
}

pin_project! {
    /// `inner`, cut off with [`BodyTimeout`] once `limit` has passed since it was first found
    /// incomplete.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        limit: Duration,
        #[pin]
        timer: Option<Sleep>,
        timed_out: bool,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner` with `limit` to arrive in full.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            timed_out: false,
        }
    }
}

impl<B> Body for DeadlineBody<B>
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
        if *this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => {
                *this.timed_out = true;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.limit)))))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body whose first frame comes at once and whose second never does.
    struct Stalls(bool);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_cut_off_at_its_limit() {
        let limit = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let err = DeadlineBody::new(Stalls(false), limit)
            .collect()
            .await
            .expect_err("cut off");
        assert_eq!(started.elapsed(), limit);
        assert_eq!(BodyTimeout::find(err.as_ref()), Some(BodyTimeout(limit)));
        assert_eq!(
            err.to_string(),
            "the request body did not arrive within 300 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_is_read_as_it_is() {
        let body = http_body_util::Full::new(Bytes::from_static(b"whole"));
        let read = DeadlineBody::new(body, Duration::from_millis(1))
            .collect()
            .await
            .expect("read");
        assert_eq!(read.to_bytes(), &b"whole"[..]);
    }

    #[test]
    fn other_errors_are_not_timeouts() {
        let other = std::io::Error::other("reset");
        assert_eq!(BodyTimeout::find(&other), None);
    }
}
