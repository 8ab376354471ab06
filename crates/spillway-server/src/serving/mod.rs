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
//! Shutdown, in this order: when the [`Shutdown`](crate::shutdown::Shutdown) fires the accept task
//! closes the port and drops its queues; each thread's server takes every connection still queued,
//! sees its queue end, and only then drains its connections gracefully (for the HTTP API, after
//! giving the connections just taken `FIRST_READ` (50 ms) to read their first request; HTTP/2's
//! two-step GOAWAY needs no pause); [`Threads::finished`] resolves once all of them have. (A server
//! told to stop by the signal itself could stop while a connection was still queued for it, and
//! that client would get no answer at all.)
//!
//! Each port has a cap on open connections, and each connection a cap on HTTP/2 streams and
//! timeouts for headers, idleness and request bodies ([`limits`]), so slow or idle clients
//! cannot hold the server.
//!
//! Each thread, once its runtime runs, calls the store's `attach_thread`: a Redis store on a
//! single server gives the thread its own connection and batcher, so the thread's checks
//! never leave it. Any other work a request starts on a shared store must not live on a
//! serving thread; the failure guard polls it on the main runtime
//! ([`crate::failure::on_runtime`]).
//!
//! Layout: [`threads`] accepts (under the connection cap) and deals connections out to the
//! per-thread runtimes; [`connection`] runs each connection on its task, closes idle ones and
//! drains; [`api`] is the HTTP API's server and [`http2`] the gRPC port's; [`heads`] cuts off
//! HTTP/1 clients slow to send a request head; [`guarded`] cuts off request bodies that
//! trickle in, or that would take the bytes held for bodies still arriving past their cap
//! ([`body_memory`]); [`limits`] holds the settings.

pub mod api;
mod body;
pub mod body_memory;
pub mod connection;
pub mod guarded;
pub mod heads;
pub mod http2;
pub mod limits;
#[cfg(test)]
mod tests;
pub mod threads;

pub use api::{serve_http, Writes};
pub use body::{read_body, BodyError};
pub use body_memory::BodyMemoryFull;
pub use guarded::{BodyTimeout, GuardedBody};
pub use http2::serve_http2;
pub use limits::ConnectionLimits;
pub use threads::{start, Incoming, Threads};
