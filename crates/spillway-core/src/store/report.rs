//! Reports of costs known after the response: what a charge answers, and the identity that
//! makes a retried report count once.

use super::Check;
use crate::algorithm::Decision;
use crate::time::{Micros, SECOND};
use sha2::{Digest, Sha256};

/// How long a report id is remembered: a report retried within this time is recorded once.
/// Retries come within seconds; an hour leaves room for a queue that drains late.
pub const REPORT_TTL: Micros = 3600 * SECOND;

/// The largest cost a report may carry: 2^53. The Redis store's script computes in doubles,
/// which hold every whole number up to 2^53 exactly and no longer all of them above it, so a
/// larger cost could not be recorded as sent; the servers refuse it rather than round it.
/// (Every algorithm caps what a key may owe far below any such cost anyway, at ten years of
/// refill or a window's count of 2^53, and both stores saturate there, never wrap.)
pub const MAX_REPORTED_COST: u64 = 1 << 53;

/// What a charge recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// `false` when the report's id was seen before (a retry): nothing was charged this time.
    pub recorded: bool,
    /// One per check, in order: the key's standing after the charge (for a retry, now).
    pub decisions: Vec<Decision>,
}

/// A report's identity: a digest of the caller's request id, of the tenant it is charged to
/// and of every counter the report charges (limit fingerprint and key values). Scoping the id
/// by tenant and counters means one tenant's ids can never suppress another tenant's reports;
/// the same digest on every node (SHA-256, no per-process key) is what lets a Redis store
/// recognise a retry that reaches another node. 128 bits: a collision needs about 2^64
/// reports, so a caller cannot make two different requests share an identity short of
/// reusing an id.
///
/// It also names its holder, so a store that remembers ids in bounded memory can share that
/// memory fairly (the in-memory store evicts from the holder with the most ids first; see
/// `memory::reports`): a digest of the tenant, or, for a report that names none (an anonymous
/// caller's, or under a policy without tenants), of the counters it charges. Reports without a
/// tenant share one pool among the tenants (so however many addresses an anonymous caller
/// reports from, they cannot push out a tenant's ids), and within it each counter's ids are
/// held apart (so a flood from one address cannot push out another's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportId {
    id: [u8; 16],
    holder: u64,
    pooled: bool,
}

impl ReportId {
    /// The identity of a report with the caller's `request_id` charging `checks` to `tenant`
    /// (`None` for a report that names none: its holder is then its counters', in the pool).
    pub fn of(tenant: Option<&str>, request_id: &str, checks: &[Check<'_>]) -> Self {
        let part = |h: &mut Sha256, bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        let mut t = Sha256::new();
        // `None` and `Some("")` differ: a tag byte before the name.
        match tenant {
            Some(name) => {
                t.update([1]);
                part(&mut t, name.as_bytes());
            }
            None => t.update([0]),
        }
        let tenant_digest = t.finalize();
        let mut h = Sha256::new();
        part(&mut h, request_id.as_bytes());
        h.update(tenant_digest);
        // The counters' digest, for a report without a tenant, in the same walk.
        let mut counters = tenant.is_none().then(|| {
            let mut c = Sha256::new();
            c.update([2]);
            c
        });
        h.update((checks.len() as u64).to_le_bytes());
        for c in checks {
            h.update(c.key.fingerprint.to_le_bytes());
            part(&mut h, c.key.limit.as_bytes());
            h.update((c.key.values.len() as u64).to_le_bytes());
            if let Some(counters) = counters.as_mut() {
                part(counters, c.key.limit.as_bytes());
                counters.update((c.key.values.len() as u64).to_le_bytes());
            }
            for v in &c.key.values {
                part(&mut h, v.as_bytes());
                if let Some(counters) = counters.as_mut() {
                    part(counters, v.as_bytes());
                }
            }
        }
        let full = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        let pooled = counters.is_some();
        let held_by = counters.map_or(tenant_digest, Sha256::finalize);
        let mut holder = [0u8; 8];
        holder.copy_from_slice(&held_by[..8]);
        Self {
            id,
            holder: u64::from_le_bytes(holder),
            pooled,
        }
    }

    /// An identity from its parts, for tests of the stores.
    #[cfg(test)]
    pub(crate) fn from_parts(id: [u8; 16], holder: u64, pooled: bool) -> Self {
        Self { id, holder, pooled }
    }

    /// Whose id it is: the same for every report charged to one tenant, and for every report
    /// without a tenant that charges the same counters.
    pub fn holder(&self) -> u64 {
        self.holder
    }

    /// Whether the report names no tenant: its holder is one of the pool's.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// The id in lowercase hex (32 characters), as the Redis store names its marker key.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.id.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}
