//! The principal checks' metrics. Labels are fixed reason words, never a token, key or tenant.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `spillway_principal_rejected_total` | counter | `reason` |
//! | `spillway_principal_token_verifications_total` | counter | none (cache misses: signatures checked) |
//! | `spillway_principal_jwks_fetches_total` | counter | none |
//! | `spillway_principal_cache_entries` | gauge | none |

use super::Reason;
use metrics::{counter, gauge};

/// Requests refused for their credential, by reason.
pub const REJECTED: &str = "spillway_principal_rejected_total";
/// Tokens whose signature was checked (the cache did not know them).
pub const VERIFICATIONS: &str = "spillway_principal_token_verifications_total";
/// Fetches of a JWKS URL.
pub const JWKS_FETCHES: &str = "spillway_principal_jwks_fetches_total";
/// Verified tokens held in the cache.
pub const CACHE_ENTRIES: &str = "spillway_principal_cache_entries";

pub(crate) fn record_rejected(reason: Reason) {
    counter!(REJECTED, "reason" => reason.as_str()).increment(1);
}

pub(crate) fn record_verification() {
    counter!(VERIFICATIONS).increment(1);
}

pub(crate) fn record_jwks_fetch() {
    counter!(JWKS_FETCHES).increment(1);
}

pub(crate) fn record_cache_entries(entries: usize) {
    gauge!(CACHE_ENTRIES).set(entries as f64);
}
