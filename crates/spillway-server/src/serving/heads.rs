//! The header deadline (`--header-timeout`): an HTTP/1 connection that takes longer than it
//! to send a whole request head, or keeps a keep-alive connection open that long without
//! asking anything, is cut off. This is the slowloris defence; it arms no timer per request.
//!
//! hyper has one (`header_read_timeout`), but it arms a boxed timer for every request (a
//! clock read, an allocation, an insertion into and removal from the runtime's timer wheel)
//! and asks for one more read after every answer to start it: about 1,500 instructions of a
//! check's 32,800 (`docs/BENCHMARKS.md`, "The HTTP floor (issue 16, session 17)"). Ours rides
//! on the look each connection's task already takes for the idle timeout
//! ([`super::connection`]): the task looks at the connection's [`Activity`] four times per
//! shortest limit, and a connection whose counts (requests started and ended, writes made)
//! have not moved, with no request in flight, through looks spanning the header timeout is
//! dropped, as hyper drops it (no answer; the socket is closed). A
//! request's own work is an atomic add when it starts, one when it ends and one per write,
//! all on the connection's own thread.
//!
//! What it keeps of hyper's behaviour, each tested through a real socket
//! (`tests/slow_clients.rs`):
//!
//! - the deadline runs whenever the connection waits for a request head: from the moment it
//!   is taken, and from each answer's last write to the next request, so a keep-alive
//!   connection idles at most the header timeout, as under hyper;
//! - a head sent in part, or a byte at a time, does not move the counts, so it is cut off;
//! - while a request is in flight (its body arriving, its answer being made) the deadline does
//!   not run (the body has `--body-timeout`); once the answer is made, each write moves the
//!   counts, so a large answer is not cut off while the client keeps reading it, but a client
//!   that stops reading for the header timeout is dropped (hyper held it for ever);
//! - pipelined requests move the counts like any others;
//! - HTTP/2 connections (prior knowledge on the API port, every connection on the gRPC port)
//!   have no header deadline, as under hyper, only the idle timeout (counting requests, not
//!   the server's acknowledgements of a client's pings) and, once asked to close, as long
//!   again before they are dropped: [`Watched`] notes the HTTP/2 preface as the protocol
//!   detection reads it.
//!
//! What differs: the cut comes between one and one and a quarter header timeouts after the
//! wait began, not at the instant (the looks are a quarter apart), and a connection that
//! sends nothing at all is cut after the header timeout too, where hyper's protocol detection
//! held it until the idle timeout.

use super::connection::Activity;
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first bytes of every HTTP/2 connection with prior knowledge, which hyper's protocol
/// detection looks for too.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// [`Watched::matched`] once the protocol is known either way.
const KNOWN: usize = usize::MAX;

pin_project! {
    /// A connection's socket, counting its writes in its [`Activity`] and telling it when the
    /// client opened with the HTTP/2 preface (`matched`: how many of the preface's bytes the
    /// client has sent so far, or [`KNOWN`] once the protocol is known either way).
    pub struct Watched<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        matched: usize,
        // The client sent the HTTP/2 preface: writes are no longer counted (the idle timeout
        // counts an HTTP/2 connection's requests, not the server's own acknowledgements).
        http2: bool,
    }
}

/// Counts a write in `activity`, unless the connection speaks HTTP/2.
fn wrote(activity: &Activity, http2: bool) {
    if !http2 {
        activity.wrote();
    }
}

impl<T> Watched<T> {
    /// `inner`, reporting to `activity`.
    pub fn new(inner: T, activity: &Arc<Activity>) -> Self {
        Self {
            inner,
            activity: activity.clone(),
            matched: 0,
            http2: false,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.matched == KNOWN {
            return this.inner.poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let from = *this.matched;
            let upto = (from + read.len()).min(H2_PREFACE.len());
            *this.matched = if read[..upto - from] != H2_PREFACE[from..upto] {
                KNOWN
            } else if upto == H2_PREFACE.len() {
                this.activity.spoke_http2();
                *this.http2 = true;
                KNOWN
            } else {
                upto
            };
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = written {
            wrote(this.activity, *this.http2);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = written {
            wrote(this.activity, *this.http2);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads what `sent` sends, in the pieces it is sent in, through [`Watched`]; whether the
    /// connection was taken for HTTP/2.
    async fn taken_for_http2(sent: &[&[u8]]) -> bool {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        let mut watched = Watched::new(server, &activity);
        for piece in sent {
            client.write_all(piece).await.expect("sent");
            let mut got = vec![0; piece.len()];
            watched.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, piece);
        }
        activity.http2()
    }

    #[tokio::test]
    async fn the_preface_marks_http2_in_one_read_or_many() {
        assert!(taken_for_http2(&[H2_PREFACE]).await);
        let (a, b) = H2_PREFACE.split_at(5);
        assert!(taken_for_http2(&[&a[..1], &a[1..], b, b"\0\0\x12\x04"]).await);
        assert!(!taken_for_http2(&[b"GET / HTTP/1.1\r\n"]).await);
        // A client that starts like the preface and then differs is not HTTP/2.
        assert!(!taken_for_http2(&[b"PRI * HTTP/1.1\r\n", b"\r\nSM\r\n\r\n"]).await);
        assert!(!taken_for_http2(&[&H2_PREFACE[..10]]).await);
    }

    #[tokio::test]
    async fn each_write_is_counted() {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        let mut watched = Watched::new(server, &activity);
        let quiet = activity.quiet();
        watched
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("written");
        assert_ne!(activity.quiet(), quiet);
        let mut got = [0; 17];
        client.read_exact(&mut got).await.expect("read");
    }
}
