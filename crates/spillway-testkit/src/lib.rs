//! Test support shared by Spillway's crates (a dev-dependency only).
//!
//! - [`redis`]: real `redis-server` processes and three-master clusters, started on free
//!   loopback ports in temporary directories and killed when dropped. Nothing assumes a Redis
//!   is already running.
//! - [`sentinel`]: a Redis Sentinel deployment (a master, a replica, three `redis-sentinel`
//!   processes tuned to fail over within a few seconds) whose master a test can kill.
//! - [`postgres`]: real PostgreSQL clusters (`initdb` + `postgres` from Debian's package) on
//!   free loopback ports in temporary directories, which can be stopped, killed and restarted
//!   with their data, and whose connections can be terminated.
//! - [`otlp`]: an OpenTelemetry collector speaking OTLP/gRPC on a free loopback port, which
//!   keeps every span it is sent, for tests of the server's traces.
//! - [`proxy`]: a loopback TCP proxy that delays replies, to make a server slow on demand.
//! - [`policy`]: pieces of test policies several suites share (a regions `store:` section).
//! - [`metrics`]: a Prometheus recorder of a test's own thread, and the sum of a metric's
//!   samples in its rendering.
//! - [`alloc`]: a counting global allocator for tests and measurements of allocations.
//! - [`vectors`]: the one table of conformance vectors (`vectors/conformance.json`) that every
//!   store must reproduce exactly, and the code that generated it from the engine.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; see the module.
pub mod alloc;
pub mod metrics;
pub mod otlp;
pub mod policy;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod vectors;
pub mod zipf;
