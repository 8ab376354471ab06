//! Reading a request body whole, up to a limit: `/v1/check`'s JSON and a gRPC call's one
//! message are both read here, each endpoint turning the error into its own answer.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use std::pin::pin;

/// What stopped a body being read: `http_body_util::LengthLimitError` when it is longer than
/// the limit, else the body's own error (a [`super::BodyTimeout`] among its causes when it was
/// late).
pub type BodyError = axum::BoxError;

/// Reads a whole body of at most `limit` bytes; trailers are ignored.
///
/// A small body nearly always arrives in one frame, whose bytes are then the body as they
/// are; only a body in several non-empty frames is gathered into a buffer of its own.
/// (Collecting through `http_body_util`'s `Collected` kept every frame in a queue first, an
/// allocation and about 360 instructions per check: `docs/BENCHMARKS.md`, "Fewer
/// instructions per `/v1/check` (issue 16, session 18)".)
///
/// Reading stops once the body says it has ended: an HTTP/1 body whose `Content-Length` has
/// all arrived, an HTTP/2 stream its client ended. Asking such a body for the frame after
/// its last only to hear that there is none cost about 190 instructions per check
/// (`docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session 19)"); a
/// body of unknown length (chunked) is still read until it says `None`.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    let mut body = pin!(Limited::new(body, limit));
    let mut first = Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    let mut ended = body.is_end_stream();
    while !ended {
        let Some(frame) = body.as_mut().frame().await else {
            break;
        };
        ended = body.is_end_stream();
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        // An empty frame adds nothing, and must not turn a one-frame body into a copy.
        if data.is_empty() {
            continue;
        }
        match &mut gathered {
            Some(buffer) => buffer.extend_from_slice(&data),
            // A frame may be a slice of the connection's read buffer: one the body waits
            // with is copied out, so a small part cannot keep a large buffer alive.
            None if first.is_empty() && !ended => {
                first = Bytes::copy_from_slice(&data);
            }
            None if first.is_empty() => first = data,
            None => {
                let first = std::mem::take(&mut first);
                let mut buffer = BytesMut::with_capacity(first.len() + data.len());
                buffer.extend_from_slice(&first);
                buffer.extend_from_slice(&data);
                gathered = Some(buffer);
            }
        }
    }
    Ok(gathered.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    /// A body that knows when it has ended, as hyper's does once a `Content-Length` has all
    /// arrived, and fails if asked for a frame after that.
    struct Known(VecDeque<Bytes>);

    impl Body for Known {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(match self.0.pop_front() {
                Some(data) => Ok(Frame::data(data)),
                None => Err(std::io::Error::other("asked for a frame after its end")),
            }))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn known(frames: &[&'static str]) -> Known {
        Known(
            frames
                .iter()
                .map(|f| Bytes::from_static(f.as_bytes()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_body_that_has_ended_is_not_asked_for_more() {
        let sent = Bytes::from_static(br#"{"user":"u"}"#);
        let read = read_body(Known(VecDeque::from([sent.clone()])), 64)
            .await
            .expect("read");
        assert_eq!(read.as_ptr(), sent.as_ptr(), "the frame's own bytes");
        let read = read_body(known(&[r#"{"us"#, r#"er":"u"}"#]), 64).await;
        assert_eq!(read.expect("read"), &br#"{"user":"u"}"#[..]);
        let read = read_body(known(&[]), 64).await;
        assert_eq!(read.expect("read"), &b""[..]);
    }

    /// A connection's read buffer, which says when it is freed.
    struct ReadBuffer(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for ReadBuffer {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for ReadBuffer {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    /// A body whose first frame is one byte of a large read buffer, and whose second frame
    /// notes whether that buffer was freed while the reader waited for it.
    struct SliceThenEnd {
        first: Option<Bytes>,
        freed: Arc<AtomicBool>,
        freed_while_waiting: Arc<AtomicBool>,
        ended: bool,
    }

    impl Body for SliceThenEnd {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(first) = self.first.take() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            let freed = self.freed.load(Ordering::Relaxed);
            self.freed_while_waiting.store(freed, Ordering::Relaxed);
            self.ended = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"}")))))
        }

        fn is_end_stream(&self) -> bool {
            self.ended
        }
    }

    #[tokio::test]
    async fn a_part_the_body_waits_with_keeps_no_read_buffer_alive() {
        let freed = Arc::new(AtomicBool::new(false));
        let buffer = Bytes::from_owner(ReadBuffer(b"{".repeat(64 << 10), freed.clone()));
        let freed_while_waiting = Arc::new(AtomicBool::new(false));
        let body = SliceThenEnd {
            first: Some(buffer.slice(..1)),
            freed: freed.clone(),
            freed_while_waiting: freed_while_waiting.clone(),
            ended: false,
        };
        drop(buffer);
        assert!(!freed.load(Ordering::Relaxed), "the frame holds the buffer");
        let read = read_body(body, 64).await.expect("read");
        assert_eq!(read, &b"{}"[..]);
        assert!(freed_while_waiting.load(Ordering::Relaxed));
    }
}
