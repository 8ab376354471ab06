//! Serving threads: one task accepts connections on a port and deals them out in turn to a
//! set of threads, each running its own single-threaded tokio runtime and its own server.
//!
//! Both transports run this way. A connection then lives on one thread for its whole life: its
//! tasks are never stolen by another worker, its wake-ups never cross threads, and HTTP/2's
//! per-connection lock, which every stream of the connection takes, is never contended. On two
//! cores this cut the CPU per gRPC call by about 40% against one shared multi-threaded runtime
//! (`docs/BENCHMARKS.md`). The trade-off: one connection is served by one thread, and
//! connections are dealt out in turn, not by load.
//!
//! Shutdown, in this order: when the [`Shutdown`] fires the accept task closes the port and
//! drops its queues; each thread's server takes every connection still queued, sees its queue
//! end, and only then drains its connections gracefully (for the HTTP API, after giving the
//! connections just taken [`threads::FIRST_READ`] to read their first request; HTTP/2's two-step
//! GOAWAY needs no pause); [`Threads::finished`] resolves once all of them have.
//! (A server told to stop by the signal itself could stop while a connection was still queued
//! for it, and that client would get no answer at all.)
//!
//! Work a request starts on a shared store must not live on a serving thread; the failure
//! guard polls it on the main runtime ([`crate::failure::on_runtime`]).
//!
//! Layout: [`threads`] accepts and deals connections out to the per-thread runtimes;
//! [`http2`] is the HTTP/2 server a gRPC thread runs.

pub mod http2;
#[cfg(test)]
mod tests;
pub mod threads;

pub use http2::serve_http2;
pub use threads::{start, Incoming, Threads};
