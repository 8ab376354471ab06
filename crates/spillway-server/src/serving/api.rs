//! [`serve_http`]: the HTTP/1-or-2 server an HTTP serving thread runs over its share of the
//! connections, with the header deadline ([`super::heads`]) and the connection limits applied.
//!
//! Not `axum::serve`: it offers no way to set a header deadline or a stream cap, so a client
//! that sent nothing, or its headers a byte at a time, was served forever.

use super::connection::{serve_each, Quiet, Tracked};
use super::guarded::GuardedBody;
use super::threads::FIRST_READ;
use super::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;

/// How an HTTP/1 connection writes its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Head and body copied into one buffer and sent in one `write` (hyper's `writev(false)`),
    /// for the public API, whose answers are small: copying a decision's few hundred bytes
    /// costs less than hyper's vectored write (a queue of buffers and 64 slices laid out on
    /// every flush; `docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16,
    /// session 16)"). The buffer keeps its capacity between answers, so each keep-alive
    /// connection holds one as large as the largest answer it has sent.
    Flattened,
    /// hyper's default: the body queued behind the head, not copied, so a large answer (the
    /// admin listener's UI assets) leaves no buffer of its size behind on the connection.
    Queued,
}

/// The largest HTTP/1 request head taken (and the most an HTTP/1 connection buffers): larger
/// ones are answered 431. hyper's default, about 400 KiB, let each of `--max-connections`
/// clients trickling a head hold that much until the header timeout (1.6 GiB at the default
/// cap); proxies send far less (nginx's own limit is four 8 KiB lines).
pub const MAX_HEAD: usize = 64 << 10;

/// Serves every connection dealt to this thread with the service `make(peer)` builds for it
/// (HTTP/1, or HTTP/2 with prior knowledge), each on a task of its own, until the queue ends.
/// Then it gives the connections it just took [`FIRST_READ`] to read their first request
/// (hyper's protocol-detecting connection drops one that has read nothing when told to shut
/// down, leaving its client without an answer), shuts them all down gracefully and waits for
/// them. HTTP/1 answers are written as `writes` says.
///
/// The service is hyper's kind (a tower service goes in through hyper-util's
/// `TowerToHyperService`), so the API's own needs no adapter per request.
pub async fn serve_http<M, S>(incoming: Incoming, writes: Writes, mut make: M)
where
    M: FnMut(SocketAddr) -> S,
    S: hyper::service::Service<
            http::Request<GuardedBody<hyper::body::Incoming>>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limits = incoming.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // No timer for HTTP/1: hyper's header-read timeout, which needs one (and, with one, is on
    // by default), arms a timer per request; the connection's task keeps our own deadline.
    http1.header_read_timeout(None);
    http1.max_buf_size(MAX_HEAD);
    if writes == Writes::Flattened {
        http1.writev(false);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams);
    let quiet = Quiet {
        idle: limits.idle_timeout,
        header: Some(limits.header_timeout),
    };
    serve_each(incoming, quiet, FIRST_READ, |io, peer, activity| {
        let service = Tracked::new(make(peer), activity, &limits);
        builder.serve_connection(io, service).into_owned()
    })
    .await;
}
