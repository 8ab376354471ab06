//! Spillway's decision engine: given a request's attributes and the current policy, decide
//! allow or deny, exactly, and say when the client may come back. No network I/O lives here.
//!
//! # Layout
//! - [`time`]: integer microseconds and the injected [`time::Clock`].
//! - [`rate`]: parsing of `100/min`-style rates and `30s`-style durations.
//! - [`algorithm`]: the six algorithms as pure functions `(params, state, now, cost)`.
//! - [`policy`]: the YAML policy (limits, tiers, routes, tenants), its validation and the
//!   resolution of a request into the limits and keys that apply to it.
//! - [`key`]: the identity of one limit's counter.
//! - [`store`]: where state lives; [`store::MemoryStore`] is the embedded default.
//! - [`engine`]: multi-limit, all-or-nothing verdicts over a store.
//! - [`envoy_config`]: envoyproxy/ratelimit's descriptor YAML, compiled onto the same limits.
//! - [`headers`]: `X-RateLimit-*`, `Retry-After`, `RateLimit` and `RateLimit-Policy`.
//! - [`host`]: a `Host` (or authority) read one strict way: the tenant a host names, loopback.
//! - [`json`]: JSON strings with serde_json's escapes, for bodies written by hand.
//! - [`topk`]: heavy-hitter sketches over sliding windows (hot keys, most denied tenants).
//! - [`redact`]: passwords in connection URLs masked before any text shows them.
//! - [`text`]: a caller's text with its controls and invisible format characters escaped.
//! - [`rates`]: decisions per second over the last fifteen minutes, counted without a lock.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// These docs describe the internals too and link them: read them with `cargo doc
// --document-private-items` (as CI builds them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod algorithm;
pub mod catalog;
pub mod engine;
pub mod envoy_config;
pub mod headers;
pub mod host;
pub mod json;
pub mod key;
pub mod policy;
pub mod rate;
pub mod rates;
pub mod redact;
pub mod request;
pub mod store;
pub mod text;
pub mod time;
pub mod topk;
