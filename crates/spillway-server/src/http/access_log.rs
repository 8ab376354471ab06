//! A debug-level access log: one event when a request's headers have arrived and one when its
//! response is ready, with status and latency.
//!
//! Off by default (it is `debug`); turn it on with `--log-filter spillway_server=debug` when
//! chasing a problem. The start event also tells a test that a request is truly in flight,
//! which the graceful-shutdown test relies on. Only the method and path are logged, never
//! headers or bodies, which can carry credentials.

use crate::metrics::Stopwatch;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// Whether the access log would be written: its events are debug-level.
pub fn enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// The middleware; install with `axum::middleware::from_fn(access_log::log)` when
/// [`enabled`].
pub async fn log(request: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    // A path may hold any character from U+0080 up (hyper refuses only ASCII controls).
    let path = spillway_core::text::printable(request.uri().path()).into_owned();
    tracing::debug!(%method, %path, "request started");
    let stopwatch = Stopwatch::start();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        micros = stopwatch.elapsed().as_micros() as u64,
        "request finished"
    );
    response
}
