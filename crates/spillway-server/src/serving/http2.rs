//! [`serve_http2`]: the HTTP/2 server a gRPC serving thread runs over its share of the
//! connections.

use super::connection::{serve_each, Quiet, Tracked};
use super::guarded::GuardedBody;
use super::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Serves every connection dealt to this thread as HTTP/2 with `service`, each on a task of
/// its own, until the queue ends; then shuts them all down gracefully and waits for them.
/// (HTTP/2's two-step GOAWAY lets calls already sent be answered, even on a connection not
/// read yet, so no pause is needed before draining.) Each connection may hold
/// `--max-streams` streams at once; it is closed once idle and its request bodies have
/// `--body-timeout` to arrive ([`super::limits`]). hyper's default limit on streams a client
/// makes the server reset is kept.
pub async fn serve_http2<S, B>(incoming: Incoming, service: S)
where
    S: hyper::service::Service<
            http::Request<GuardedBody<hyper::body::Incoming>>,
            Response = http::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = incoming.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams);
    let quiet = Quiet {
        idle: limits.idle_timeout,
        header: None,
    };
    serve_each(incoming, quiet, Duration::ZERO, |io, _, activity| {
        builder.serve_connection(io, Tracked::new(service.clone(), activity, &limits))
    })
    .await;
}
