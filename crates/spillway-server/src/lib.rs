//! The `spillway` server: everything between the network and `spillway-core`'s engine.
//!
//! The engine decides; this crate carries requests to it and answers for the process.
//!
//! # Layout
//! - [`cli`]: the command line (`serve`, `validate`, `check`), every flag also readable from a
//!   `SPILLWAY_*` environment variable.
//! - [`config`]: turns `serve` flags into validated [`config::ServerSettings`] and knows where
//!   the policy comes from ([`config::PolicySource`]).
//! - [`clock`]: the clock the process runs on (the system clock, or a manual one for tests).
//! - [`state`]: what the process shares: engine, store, failure handling, clock, policy info.
//! - [`decision`]: the step every request takes: planned limits → guarded store → failure
//!   mode → one [`decision::Outcome`], observed in one place; transports only translate it.
//! - [`app`]: the router that maps HTTP paths to handlers.
//! - [`catalog`]: the tenant catalog this node resolves against (the policy's `tenants:`, or a
//!   database followed by a sync task, with a local snapshot to boot from).
//! - [`admin`]: the admin API that reads and changes the catalog, behind a bearer token.
//! - [`ui`]: the dashboard at `/ui` and the JSON endpoints behind it (with the admin API when
//!   it has its own listener).
//! - [`failure`]: store time budget, circuit breaker and the per-route failure modes (open,
//!   closed, degrade with emergency quotas), used by [`decision`].
//! - [`grpc`]: Envoy's rate-limit service (RLS v3) and gRPC health, on their own port.
//! - [`http`]: one module per endpoint, plus the shared problem-document and verdict rendering.
//! - [`metrics`]: the Prometheus recorder and the names of everything it exports.
//! - [`principal`]: who is calling: JWTs, API keys and subdomains verified into the tenant,
//!   user and tier a request is counted under (the policy's `principals:` section).
//! - [`reload`]: hot policy reload on file changes and on `SIGHUP`.
//! - [`store`]: builds the store the policy's `store:` section (or `--store-url`) names, and
//!   ([`store::sentinel_login`]) the master's and the sentinels' logins of a `redis_sentinel`
//!   store.
//! - [`telemetry`]: what the limiter tells operators: hot keys and most denied tenants
//!   (`/v1/top`).
//! - [`sweeper`]: the once-a-second task that expires keys and refreshes store gauges.
//! - [`serving`]: the accept task, the serving threads that run each transport's servers, and
//!   their connection limits.
//! - [`shutdown`]: the one shared shutdown signal and the OS signals that fire it.
//! - [`serve`], [`validate`], [`client`]: the three subcommands.
//! - [`logging`]: tracing setup (text or JSON).
//! - [`telemetry`]: what the limiter tells operators: the decision log (and its
//!   `spillway decisions` reader) and OpenTelemetry traces of decisions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// These docs describe the internals too and link them: read them with `cargo doc
// --document-private-items` (as CI builds them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod decision;
pub mod failure;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod principal;
pub mod region;
pub mod reload;
pub mod serve;
pub mod serving;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod sweeper;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod ui;
pub mod validate;
