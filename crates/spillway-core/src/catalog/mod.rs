//! The tenant catalog: what changes at runtime (a tenant's tier, per-tenant and per-user
//! overrides of limit numbers, API keys), as opposed to the policy, which engineers review.
//!
//! - `record`: the stored form, shared with the database backends (`spillway-catalog`).
//! - [`Catalog`]: the whole catalog compiled against one policy, immutable, looked up on
//!   every request without a lock: a tenant is one hash probe (two when changes arrived
//!   recently, `layered`), its tier an index, its overrides compiled limit definitions ready to
//!   replace the tier's. Changes produce a new `Catalog` sharing what did not change.
//! - `compile`: records to that form, and the checks a record must pass to be written.
//!
//! Precedence, per request: the request's own tier (when the policy knows it), else the
//! user's tier, else the tenant's, else the policy's default; for each limit, the user's
//! override, else the tenant's, else the limit as the tier defines it.

mod compile;
mod layered;
pub mod record;

pub(crate) use compile::check_id;
pub use compile::FieldIssue;
pub use record::{
    ApiKeyRecord, Change, Entry, EntryKey, Kind, OverrideRecord, TenantRecord, UserRecord,
};

use crate::policy::{LimitDef, Policy};
use hashbrown::Equivalent;
use layered::Layered;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The tier id of an entry that names none.
const NO_TIER: u16 = u16::MAX;

/// A slot's home region as written, for records.
fn home(slot: &Slot) -> Option<String> {
    slot.extra.as_ref()?.home.as_deref().map(str::to_owned)
}

/// The catalog, compiled against one policy. Cheap to clone (a handful of `Arc`s).
#[derive(Debug, Clone)]
pub struct Catalog {
    version: u64,
    /// Tier names as entries wrote them, interned: an entry holds a `u16`.
    tiers: Arc<TierNames>,
    /// For each interned tier name, the policy's index of that tier (`None`: the policy has
    /// no such tier, and entries naming it are judged as naming none).
    tier_map: Arc<[Option<usize>]>,
    tenants: Layered<Box<str>, Slot>,
    users: Layered<(Box<str>, Box<str>), Slot>,
    api_keys: Layered<Box<str>, KeySlot>,
    /// How many entries have a part the policy refuses (an unknown tier, an invalid
    /// override), which is ignored until the policy or the entry changes.
    invalid: usize,
    /// Which policy compiled it ([`Policy::id`]).
    policy: u64,
}

/// One tenant or user: its tier and, rarely, its overrides.
#[derive(Debug, Clone)]
struct Slot {
    tier: u16,
    extra: Option<Arc<Extra>>,
}

/// Overrides as written (kept for recompiling and exporting) and as compiled.
#[derive(Debug)]
struct Extra {
    written: BTreeMap<String, OverrideRecord>,
    compiled: Box<[Arc<LimitDef>]>,
    /// Whether a part was refused by the policy that compiled it.
    invalid: bool,
    /// A tenant's home region as written (kept even when the policy does not know it).
    home: Option<Arc<str>>,
    /// Whether the policy's regions hold `home`.
    home_known: bool,
}

/// What an API key stands for.
#[derive(Debug, Clone)]
struct KeySlot {
    tenant: Box<str>,
    user: Option<Box<str>>,
    tier: u16,
}

/// Interned tier names. Grows only (a name no entry uses any more stays, harmlessly).
#[derive(Debug, Default, Clone)]
struct TierNames {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u16>,
}

/// An entry left out, in part, because the policy refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry.
    pub key: EntryKey,
    /// What was refused, e.g. `tier` or `overrides.free-minute.rate`.
    pub field: String,
    /// Why.
    pub message: String,
}

/// What the catalog says about one request's tenant and user.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Standing<'a> {
    /// The policy's index of the user's tier, else the tenant's, if either names one.
    pub tier: Option<usize>,
    tenant: &'a [Arc<LimitDef>],
    user: &'a [Arc<LimitDef>],
}

impl<'a> Standing<'a> {
    /// The definition that replaces `def` for this request (the user's override, else the
    /// tenant's), if any.
    #[inline]
    pub(crate) fn replacement(&self, def: &LimitDef) -> Option<&'a Arc<LimitDef>> {
        fn find<'a>(list: &'a [Arc<LimitDef>], def: &LimitDef) -> Option<&'a Arc<LimitDef>> {
            // `Arc<str>`'s `==` tries the pointer first, and an override shares its limit's name.
            list.iter().find(|o| o.name == def.name)
        }
        find(self.user, def).or_else(|| find(self.tenant, def))
    }
}

/// What an API key stands for, as the catalog holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a> {
    /// The tenant the key belongs to.
    pub tenant: &'a str,
    /// The user it acts as, if any.
    pub user: Option<&'a str>,
    /// The tier it names, if any (as written; it may be unknown to the policy).
    pub tier: Option<&'a str>,
}

/// A `(tenant, user)` pair of borrowed strings, looked up without building the owned key.
#[derive(Clone, Copy)]
pub(super) struct UserRef<'a>(pub(super) &'a str, pub(super) &'a str);

impl Hash for UserRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same bytes a `(Box<str>, Box<str>)` feeds the hasher.
        (self.0, self.1).hash(state);
    }
}

impl Equivalent<(Box<str>, Box<str>)> for UserRef<'_> {
    fn equivalent(&self, key: &(Box<str>, Box<str>)) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

impl Catalog {
    /// An empty catalog at version 0, for `policy`.
    pub fn empty(policy: &Policy) -> Self {
        Self {
            policy: policy.id(),
            ..Self::placeholder()
        }
    }

    /// An empty catalog compiled against no policy, for the moment a policy is being built.
    pub(crate) fn placeholder() -> Self {
        Self {
            version: 0,
            tiers: Arc::default(),
            tier_map: Arc::from(Vec::new()),
            tenants: Layered::default(),
            users: Layered::default(),
            api_keys: Layered::default(),
            invalid: 0,
            policy: 0,
        }
    }

    /// The catalog holding exactly `entries`, at `version`, compiled against `policy`; with
    /// every part the policy refuses.
    pub fn build(
        policy: &Policy,
        version: u64,
        entries: impl IntoIterator<Item = (EntryKey, Entry)>,
    ) -> (Self, Vec<Skipped>) {
        let changes = entries.into_iter().map(|(key, entry)| Change {
            version,
            key,
            entry: Some(entry),
        });
        let mut catalog = Self::empty(policy);
        let skipped = catalog.absorb(policy, changes, true);
        catalog.version = version;
        (catalog, skipped)
    }

    /// This catalog with `changes` applied in order, at the last change's version. Changes
    /// at or below the current version were applied already and are ignored, so a change
    /// heard twice (a notification and a poll) is harmless.
    pub fn apply(&self, policy: &Policy, changes: &[Change]) -> (Self, Vec<Skipped>) {
        let fresh = changes.iter().filter(|c| c.version > self.version).cloned();
        let mut next = self.clone();
        let skipped = next.absorb(policy, fresh, false);
        if let Some(last) = changes.iter().map(|c| c.version).max() {
            next.version = next.version.max(last);
        }
        (next, skipped)
    }

    /// The same entries compiled against another policy (after a reload): tiers looked up
    /// again, overrides recompiled. Entries the new policy refuses in part are returned.
    pub fn recompile(&self, policy: &Policy) -> (Self, Vec<Skipped>) {
        Self::build(policy, self.version, self.entries())
    }

    /// The version of the last change applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many tenants, users and API keys it holds.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.tenants.len(), self.users.len(), self.api_keys.len())
    }

    /// How many entries have a part the policy in force refuses (ignored until fixed).
    pub fn invalid(&self) -> usize {
        self.invalid
    }

    /// Every entry as a record, for the local snapshot and exports; in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (EntryKey, Entry)> + '_ {
        let tier = |id: u16| (id != NO_TIER).then(|| self.tiers.names[id as usize].to_string());
        let overrides = |slot: &Slot| {
            slot.extra
                .as_ref()
                .map(|e| e.written.clone())
                .unwrap_or_default()
        };
        let tenants = self.tenants.iter().map(move |(id, slot)| {
            let key = EntryKey::Tenant {
                tenant: id.to_string(),
            };
            let record = TenantRecord {
                tier: tier(slot.tier),
                overrides: overrides(slot),
                home_region: home(slot),
            };
            (key, Entry::Tenant(record))
        });
        let users = self.users.iter().map(move |((tenant, user), slot)| {
            let key = EntryKey::User {
                tenant: tenant.to_string(),
                user: user.to_string(),
            };
            let record = UserRecord {
                tier: tier(slot.tier),
                overrides: overrides(slot),
            };
            (key, Entry::User(record))
        });
        let keys = self.api_keys.iter().map(move |(digest, slot)| {
            let key = EntryKey::ApiKey {
                digest: digest.to_string(),
            };
            let record = ApiKeyRecord {
                tenant: slot.tenant.to_string(),
                user: slot.user.as_deref().map(str::to_owned),
                tier: tier(slot.tier),
            };
            (key, Entry::ApiKey(record))
        });
        tenants.chain(users).chain(keys)
    }

    /// The entry under `key`, as a record.
    pub fn get(&self, key: &EntryKey) -> Option<Entry> {
        let tier = |id: u16| (id != NO_TIER).then(|| self.tiers.names[id as usize].to_string());
        let overrides = |slot: &Slot| {
            slot.extra
                .as_ref()
                .map(|e| e.written.clone())
                .unwrap_or_default()
        };
        match key {
            EntryKey::Tenant { tenant } => self.tenants.get(tenant.as_str()).map(|slot| {
                Entry::Tenant(TenantRecord {
                    tier: tier(slot.tier),
                    overrides: overrides(slot),
                    home_region: home(slot),
                })
            }),
            EntryKey::User { tenant, user } => self.users.get(&UserRef(tenant, user)).map(|s| {
                Entry::User(UserRecord {
                    tier: tier(s.tier),
                    overrides: overrides(s),
                })
            }),
            EntryKey::ApiKey { digest } => self.api_keys.get(digest.as_str()).map(|slot| {
                Entry::ApiKey(ApiKeyRecord {
                    tenant: slot.tenant.to_string(),
                    user: slot.user.as_deref().map(str::to_owned),
                    tier: tier(slot.tier),
                })
            }),
        }
    }

    /// The home region the catalog gives `tenant`, if it gives one the policy's regions hold.
    #[inline]
    pub fn home_region(&self, tenant: &str) -> Option<&str> {
        if self.tenants.is_empty() {
            return None;
        }
        let extra = self.tenants.get(tenant)?.extra.as_deref()?;
        extra.home.as_deref().filter(|_| extra.home_known)
    }

    /// Whether the catalog holds tenant `tenant` (by its exact id).
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some()
    }

    /// What an API key (by its digest, 64 lowercase hex digits) stands for.
    pub fn api_key(&self, digest: &str) -> Option<ApiKey<'_>> {
        if self.api_keys.is_empty() {
            return None;
        }
        let slot = self.api_keys.get(digest)?;
        Some(ApiKey {
            tenant: &slot.tenant,
            user: slot.user.as_deref(),
            tier: (slot.tier != NO_TIER).then(|| &*self.tiers.names[slot.tier as usize]),
        })
    }

    /// The policy this catalog was compiled against ([`Policy::id`]).
    pub(crate) fn policy_id(&self) -> u64 {
        self.policy
    }

    /// The tier and overrides of a request's tenant and user. With an empty catalog, no
    /// lookup at all; otherwise one probe per table that has entries.
    #[inline]
    pub(crate) fn standing(&self, tenant: Option<&str>, user: Option<&str>) -> Standing<'_> {
        let Some(tenant) = tenant.filter(|_| !self.tenants.is_empty() || !self.users.is_empty())
        else {
            return Standing::default();
        };
        let tier = |slot: &Slot| match slot.tier {
            NO_TIER => None,
            id => self.tier_map[id as usize],
        };
        fn compiled(slot: &Slot) -> &[Arc<LimitDef>] {
            slot.extra.as_deref().map_or(&[], |e| &e.compiled)
        }
        let mut standing = Standing::default();
        if let Some(slot) = self.tenants.get(tenant) {
            standing.tier = tier(slot);
            standing.tenant = compiled(slot);
        }
        if let Some(user) = user.filter(|_| !self.users.is_empty()) {
            if let Some(slot) = self.users.get(&UserRef(tenant, user)) {
                standing.tier = tier(slot).or(standing.tier);
                standing.user = compiled(slot);
            }
        }
        standing
    }
}

#[cfg(test)]
mod tests;
