//! Spillway's Redis store: limit state in a Redis server (found directly or through Sentinel)
//! or a Redis Cluster, shared by any
//! number of stateless `spillway` nodes, which together admit exactly what the policy allows.
//!
//! # How a check runs
//! All of a request's limits go to Redis in one call of one Lua function (`FCALL` of a
//! Functions library loaded once, or `EVALSHA` of a plain script on servers without Functions;
//! see [`script`]): it reads every limit's state, evaluates each with a Lua mirror of the engine's
//! pure Rust function, and writes the new states, each with a `PX` expiry at the moment the
//! state becomes indistinguishable from a fresh key, only if every enforced limit allows. A
//! server that loads the native module (crate `spillway-redis-module`) gets the same call as
//! `SPILLWAY.CHECK` instead, the same check in compiled code (see `module`).
//!
//! # Time
//! The script reads the time with Redis `TIME` (microseconds), so every node evaluates
//! against the same clock whatever its own clock says. Only tests inject a time.
//!
//! # Layout
//! - [`config`]: where to connect, how to log in, and the key prefix.
//! - [`sentinel`]: a master found through Sentinel and followed across failovers.
//! - [`keys`]: the key layout, value encoding and hash slots.
//! - [`script`]: the Lua sources (`lua/`), arguments and replies.
//! - [`store`]: [`RedisStore`], the [`spillway_core::store::Store`] implementation.
//! - [`multi_slot`]: requests spanning several cluster slots (all slots at once, refunded
//!   unless all admit, finished by a task of their own).
//! - `functions`: calling the library (`FCALL`) or, without Functions, the scripts.
//! - `module`: sending checks to the native Redis module (`SPILLWAY.CHECK`, crate
//!   `spillway-redis-module`) when the server has it loaded.
//! - `runner`: script calls on one connection (shared, or a serving thread's own), cheap to
//!   clone into such a task.
//! - [`batch`]: concurrent requests (checks and reports) to one server, or one cluster slot,
//!   coalesced into one call, each still all-or-nothing on its own; each slot's queue bounded
//!   on its own, and a call refused during resharding retried request by request.
//! - [`thread_conn`]: a serving thread's own connection and batcher (a single server,
//!   directly or through Sentinel, or one per cluster master), so its calls never leave the
//!   thread.
//! - `own_conn` and `resp`: that thread connection's socket, written and read by its callers
//!   with our own minimal RESP2 encoder and parser (no task, channel or timer of its own).
//! - [`topology`]: which cluster master serves each slot, as failure domains for the server's
//!   per-master circuit breakers, and where the serving threads send each slot's checks.
//! - [`local_cache`]: denying repeated over-limit requests without a round trip.
//! - [`error`]: typed, counted errors.
//! - [`connection`]: the on-demand connection of the server's other Redis users (the
//!   decision log's stream, the regions' exchange, the top-k board), made within a deadline.
//! - [`login`]: a refused login told apart from an outage, naming the server that refused it
//!   (the store's and the other Redis users' alike).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// These docs describe the internals too and link them: read them with `cargo doc
// --document-private-items` (as CI builds them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod batch;
pub mod config;
pub mod connection;
pub mod error;
mod functions;
pub mod keys;
pub mod local_cache;
pub mod login;
mod module;
pub mod multi_slot;
mod own_conn;
mod resp;
mod runner;
pub mod script;
pub mod sentinel;
pub mod store;
pub mod thread_conn;
pub mod topology;

pub use config::{Credentials, RedisConfig, SentinelAuth, Target};
pub use store::RedisStore;
