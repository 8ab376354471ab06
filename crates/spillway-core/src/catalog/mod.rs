//! The tenant catalog: what changes at runtime (a tenant's tier, per-tenant and per-user
//! overrides of limit numbers, API keys), as opposed to the policy, which engineers review.
//!
//! `record` is the stored form, shared with the database backends (`spillway-catalog`).

pub mod record;

pub use record::{
    ApiKeyRecord, Change, Entry, EntryKey, Kind, OverrideRecord, TenantRecord, UserRecord,
};
