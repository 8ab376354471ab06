//! [`serve_http2`]: the HTTP/2 server a gRPC serving thread runs over its share of the
//! connections.

use super::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio_stream::StreamExt;

/// Serves every connection dealt to this thread as HTTP/2 with `service`, each on a task of
/// its own, until the queue ends; then shuts them all down gracefully and waits for them.
/// (HTTP/2's two-step GOAWAY lets calls already sent be answered, even on a connection not
/// read yet.) Settings follow tonic's server (no cap on streams per connection), except that
/// hyper's default limit on streams a client makes the server reset is kept.
pub async fn serve_http2<S, B>(incoming: Incoming, service: S)
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None);
    let graceful = GracefulShutdown::new();
    let mut connections = incoming.into_stream();
    while let Some(connection) = connections.next().await {
        let stream = match connection {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take over a connection");
                continue;
            }
        };
        let served =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(err) = served.await {
                tracing::debug!(error = %err, "an HTTP/2 connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
