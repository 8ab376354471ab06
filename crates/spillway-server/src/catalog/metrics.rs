//! The catalog's metrics (described in [`describe`], called by `crate::metrics::install`).
//!
//! | metric | type | labels |
//! |--------|------|--------|
//! | `spillway_catalog_version` | gauge | none |
//! | `spillway_catalog_entries` | gauge | `kind` (`tenant`, `user`, `api_key`) |
//! | `spillway_catalog_invalid_entries` | gauge | none |
//! | `spillway_catalog_skipped_total` | counter | none |
//! | `spillway_catalog_stale` | gauge | none |
//! | `spillway_catalog_contact_timestamp_seconds` | gauge | none |
//!
//! The catalog's age is `time() - spillway_catalog_contact_timestamp_seconds` in PromQL.

use super::CatalogStatus;
use metrics::{counter, gauge};

/// The version of the last catalog change applied.
pub const VERSION: &str = "spillway_catalog_version";
/// Entries in the catalog in force, by kind.
pub const ENTRIES: &str = "spillway_catalog_entries";
/// Entries with a part the policy in force refuses.
pub const INVALID: &str = "spillway_catalog_invalid_entries";
/// Parts of entries left out because the policy refuses them, each time it happens.
pub const SKIPPED: &str = "spillway_catalog_skipped_total";
/// 1 while the database did not answer the last attempt (the catalog may miss changes).
pub const STALE: &str = "spillway_catalog_stale";
/// When the database last answered, in seconds since the epoch.
pub const CONTACT: &str = "spillway_catalog_contact_timestamp_seconds";

/// Describes the catalog's metrics to the recorder.
pub fn describe() {
    metrics::describe_gauge!(
        VERSION,
        "Version of the last tenant catalog change applied."
    );
    metrics::describe_gauge!(ENTRIES, "Entries in the tenant catalog in force, by kind.");
    metrics::describe_gauge!(
        INVALID,
        "Catalog entries with a part the policy in force refuses (ignored until fixed)."
    );
    metrics::describe_counter!(
        SKIPPED,
        "Catalog entry parts left out because the policy refuses them."
    );
    metrics::describe_gauge!(
        STALE,
        "1 while the catalog database did not answer the last attempt."
    );
    metrics::describe_gauge!(
        CONTACT,
        "When the catalog database last answered, in Unix seconds."
    );
}

pub(super) fn applied(status: &CatalogStatus) {
    gauge!(VERSION).set(status.version as f64);
    gauge!(ENTRIES, "kind" => "tenant").set(status.tenants as f64);
    gauge!(ENTRIES, "kind" => "user").set(status.users as f64);
    gauge!(ENTRIES, "kind" => "api_key").set(status.api_keys as f64);
    gauge!(INVALID).set(status.invalid as f64);
}

pub(super) fn contact(status: &CatalogStatus) {
    gauge!(STALE).set(if status.stale { 1.0 } else { 0.0 });
    if let Some(at) = status.contact_at {
        gauge!(CONTACT).set(at as f64 / 1e6);
    }
}

pub(super) fn skipped(count: usize) {
    if count > 0 {
        counter!(SKIPPED).increment(count as u64);
    }
}
