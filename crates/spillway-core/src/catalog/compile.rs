//! Records to the catalog's compiled form, and the checks a record must pass to be written.
//!
//! A record is checked twice, with different consequences. When it is written (admin API,
//! CLI) every problem refuses the write and is reported by field ([`Catalog::check`]). When a
//! node compiles what is already stored (at start, on a change, after a policy reload), a
//! part the policy in force refuses (an unknown tier, an override of a limit that no longer
//! exists or whose numbers no longer fit) is left out and reported as [`Skipped`]: the rest of
//! the entry still applies, and nothing stored is lost, so the part comes back when the policy
//! accepts it again.

use super::layered::Layered;
use super::record::{is_digest, Change, Entry, EntryKey, OverrideRecord};
use super::{Catalog, Extra, KeySlot, Skipped, Slot, NO_TIER};
use crate::policy::{OverrideOwner, Policy};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest tenant or user id the catalog takes, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// One problem with a record someone tried to write: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// A dotted path into the record, e.g. `tier` or `overrides.free-minute.rate`; `tenant`,
    /// `user` or `digest` for the key.
    pub field: String,
    /// What is wrong, in words the caller can act on.
    pub message: String,
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn issue(field: impl Into<String>, message: impl Into<String>) -> FieldIssue {
    FieldIssue {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a tenant or user id: present, at most [`MAX_ID_LEN`] bytes, no control characters
/// (ids end up in logs and headers), and no white space at either end (a header or host
/// naming it loses that). An entry stored with such an id before this rule can still be
/// deleted, not written again.
pub(crate) fn check_id(field: &str, id: &str, out: &mut Vec<FieldIssue>) {
    if id.is_empty() {
        out.push(issue(field, format!("the {field} id must not be empty")));
    } else if id.len() > MAX_ID_LEN {
        let message = format!(
            "the {field} id is {} bytes long; at most {MAX_ID_LEN} are allowed",
            id.len()
        );
        out.push(issue(field, message));
    } else if id
        .chars()
        .any(|c| c.is_control() || crate::text::is_invisible_format(c))
    {
        let message = format!(
            "the {field} id contains a control or invisible formatting character (bidi \
             override, zero-width, byte-order mark, line separator), which could make two ids \
             look alike in logs"
        );
        out.push(issue(field, message));
    } else if id.trim() != id {
        let message = format!(
            "the {field} id starts or ends with white space, which a header naming it loses"
        );
        out.push(issue(field, message));
    }
}

/// Checks a tenant's `home_region`: a region the policy's `store.regions` names (any
/// well-formed name when it names none).
fn check_home(policy: &Policy, home: &str, out: &mut Vec<FieldIssue>) {
    match policy.regions() {
        Some(regions) if regions.index(home).is_none() => {
            out.push(issue("home_region", unknown_region(policy, home)));
        }
        Some(_) => {}
        None => {
            let bad = home.is_empty()
                || home.len() > 64
                || !home
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if bad {
                let message = "a region name is 1 to 64 letters, digits, `-`, `_` or `.`";
                out.push(issue("home_region", message));
            }
        }
    }
}

/// Why `home` is refused as a home region.
fn unknown_region(policy: &Policy, home: &str) -> String {
    let names: Vec<&str> = (policy.regions().into_iter())
        .flat_map(|r| r.names().iter().map(|n| &**n))
        .collect();
    format!(
        "no region named `{home}` (the policy's store names {})",
        names.join(", ")
    )
}

impl Catalog {
    /// Checks that `entry` may be written under `key` with `policy` in force: the key well
    /// formed, the kinds matching, the tier known, each override naming a limit the tenant (or
    /// user) can meet, with numbers that fit the limit's algorithm. Returns every problem.
    pub fn check(
        &self,
        policy: &Policy,
        key: &EntryKey,
        entry: &Entry,
    ) -> Result<(), Vec<FieldIssue>> {
        let mut out = Vec::new();
        match key {
            EntryKey::Tenant { tenant } => check_id("tenant", tenant, &mut out),
            EntryKey::User { tenant, user } => {
                check_id("tenant", tenant, &mut out);
                check_id("user", user, &mut out);
            }
            EntryKey::ApiKey { digest } if !is_digest(digest) => out.push(issue(
                "digest",
                "an API key is stored as the SHA-256 digest of the key: 64 lowercase hex digits",
            )),
            EntryKey::ApiKey { .. } => {}
        }
        if key.kind() != entry.kind() {
            let message = format!(
                "a {} entry cannot be written under a {} key",
                entry.kind().as_str(),
                key.kind().as_str()
            );
            out.push(issue("kind", message));
            return Err(out);
        }
        let tier = |name: &Option<String>, out: &mut Vec<FieldIssue>| -> Option<Option<usize>> {
            let Some(name) = name else { return Some(None) };
            match policy.tier_position(name) {
                Some(index) => Some(Some(index)),
                None => {
                    let known: Vec<&str> = policy.tiers().collect();
                    let message = format!(
                        "no tier named `{name}` (the policy defines {})",
                        known.join(", ")
                    );
                    out.push(issue("tier", message));
                    None
                }
            }
        };
        match (key, entry) {
            (EntryKey::Tenant { tenant }, Entry::Tenant(record)) => {
                if let Some(home) = &record.home_region {
                    check_home(policy, home, &mut out);
                }
                if let Some(own) = tier(&record.tier, &mut out) {
                    let tier = own.unwrap_or(policy.default_tier_index());
                    let owner = OverrideOwner::Tenant(tenant);
                    check_overrides(policy, tier, &record.overrides, owner, &mut out);
                }
            }
            (EntryKey::User { tenant, user }, Entry::User(record)) => {
                if let Some(own) = tier(&record.tier, &mut out) {
                    let tenants = self.standing(Some(tenant), None).tier;
                    let tier = own.or(tenants).unwrap_or(policy.default_tier_index());
                    let owner = OverrideOwner::User { tenant, user };
                    check_overrides(policy, tier, &record.overrides, owner, &mut out);
                }
            }
            (EntryKey::ApiKey { .. }, Entry::ApiKey(record)) => {
                check_id("tenant", &record.tenant, &mut out);
                if let Some(user) = &record.user {
                    check_id("user", user, &mut out);
                }
                tier(&record.tier, &mut out);
            }
            _ => unreachable!("kinds were compared above"),
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// Applies `changes` to this catalog, compiling each against `policy`; `fresh` when the
    /// catalog is empty and being built (one pass into one table instead of overlays).
    pub(super) fn absorb(
        &mut self,
        policy: &Policy,
        changes: impl Iterator<Item = Change>,
        fresh: bool,
    ) -> Vec<Skipped> {
        debug_assert!(!fresh || self.tenants.is_empty() && self.users.is_empty());
        let mut skipped = Vec::new();
        let mut tenants = Vec::new();
        let mut users = Vec::new();
        let mut keys = Vec::new();
        for change in changes {
            let Change { key, entry, .. } = change;
            match (key, entry) {
                (EntryKey::Tenant { tenant }, entry) => {
                    let slot = match entry {
                        Some(Entry::Tenant(r)) => {
                            let owner = OverrideOwner::Tenant(&tenant);
                            let key = || EntryKey::Tenant {
                                tenant: tenant.clone(),
                            };
                            let home = r.home_region.map(Arc::from);
                            let slot = self.slot(
                                policy,
                                &r.tier,
                                r.overrides,
                                home,
                                owner,
                                key,
                                &mut skipped,
                            );
                            Some(slot)
                        }
                        _ => None,
                    };
                    tenants.push((tenant.into_boxed_str(), slot));
                }
                (EntryKey::User { tenant, user }, entry) => {
                    let slot = match entry {
                        Some(Entry::User(r)) => {
                            let owner = OverrideOwner::User {
                                tenant: &tenant,
                                user: &user,
                            };
                            let key = || EntryKey::User {
                                tenant: tenant.clone(),
                                user: user.clone(),
                            };
                            let slot = self.slot(
                                policy,
                                &r.tier,
                                r.overrides,
                                None,
                                owner,
                                key,
                                &mut skipped,
                            );
                            Some(slot)
                        }
                        _ => None,
                    };
                    users.push(((tenant.into_boxed_str(), user.into_boxed_str()), slot));
                }
                (EntryKey::ApiKey { digest }, entry) => {
                    let slot = match entry {
                        Some(Entry::ApiKey(r)) => {
                            let tier = self.intern(policy, r.tier.as_deref());
                            if self.tier_refused(tier) {
                                skipped.push(unknown_tier(
                                    EntryKey::ApiKey {
                                        digest: digest.clone(),
                                    },
                                    r.tier.as_deref(),
                                ));
                            }
                            Some(KeySlot {
                                tenant: r.tenant.into_boxed_str(),
                                user: r.user.map(String::into_boxed_str),
                                tier,
                            })
                        }
                        _ => None,
                    };
                    keys.push((digest.into_boxed_str(), slot));
                }
            }
        }
        if fresh {
            self.tenants = layered(tenants);
            self.users = layered(users);
            self.api_keys = layered(keys);
            self.invalid = self.count_invalid();
        } else {
            // Kept by difference, so a change costs its own entries, not the whole catalog's.
            let before = self.invalid_among(&tenants, &users, &keys);
            self.tenants = self.tenants.with_changes(tenants.clone());
            self.users = self.users.with_changes(users.clone());
            self.api_keys = self.api_keys.with_changes(keys.clone());
            let after = self.invalid_among(&tenants, &users, &keys);
            self.invalid = (self.invalid + after).saturating_sub(before);
        }
        skipped
    }

    /// A tenant's or user's slot: its tier interned, its overrides compiled; every part the
    /// policy refuses is left out and recorded in `skipped`.
    #[allow(clippy::too_many_arguments)]
    fn slot(
        &mut self,
        policy: &Policy,
        tier: &Option<String>,
        written: BTreeMap<String, OverrideRecord>,
        home: Option<Arc<str>>,
        owner: OverrideOwner<'_>,
        key: impl Fn() -> EntryKey,
        skipped: &mut Vec<Skipped>,
    ) -> Slot {
        let tier = self.intern(policy, tier.as_deref());
        let mut invalid = false;
        if self.tier_refused(tier) {
            skipped.push(unknown_tier(key(), Some(&self.tiers.names[tier as usize])));
        }
        if written.is_empty() && home.is_none() {
            return Slot { tier, extra: None };
        }
        let home_known = match (&home, policy.regions()) {
            (Some(name), Some(regions)) => {
                let known = regions.index(name).is_some();
                if !known {
                    invalid = true;
                    skipped.push(Skipped {
                        key: key(),
                        field: "home_region".into(),
                        message: unknown_region(policy, name),
                    });
                }
                known
            }
            // Without regions there is one world, and every home is in it.
            _ => home.is_some(),
        };
        let mut compiled = Vec::with_capacity(written.len());
        for (limit, record) in &written {
            match policy.compile_override(limit, record, owner) {
                Ok(def) => compiled.push(Arc::new(def)),
                Err(issues) => {
                    invalid = true;
                    skipped.extend(issues.into_iter().map(|i| Skipped {
                        key: key(),
                        field: i.field,
                        message: i.message,
                    }));
                }
            }
        }
        let extra = Extra {
            written,
            compiled: compiled.into_boxed_slice(),
            invalid,
            home,
            home_known,
        };
        Slot {
            tier,
            extra: Some(Arc::new(extra)),
        }
    }

    /// The id of tier `name`, interning it (and looking it up in `policy`) if new.
    fn intern(&mut self, policy: &Policy, name: Option<&str>) -> u16 {
        let Some(name) = name else { return NO_TIER };
        if let Some(&id) = self.tiers.ids.get(name) {
            return id;
        }
        let tiers = Arc::make_mut(&mut self.tiers);
        // Past 65,534 distinct names (write-time checks make this unreachable in practice:
        // only names the policy defines are written), further ones read as naming none.
        let id = match u16::try_from(tiers.names.len()) {
            Ok(id) if id != NO_TIER => id,
            _ => return NO_TIER,
        };
        let name: Arc<str> = name.into();
        tiers.names.push(Arc::clone(&name));
        tiers.ids.insert(name.clone(), id);
        let mut map = self.tier_map.to_vec();
        map.push(policy.tier_position(&name));
        self.tier_map = map.into();
        id
    }

    /// Whether `tier` names a tier the policy does not have.
    fn tier_refused(&self, tier: u16) -> bool {
        tier != NO_TIER && self.tier_map[tier as usize].is_none()
    }

    /// Whether a tenant's or user's slot has a part the policy refused.
    fn slot_refused(&self, slot: &Slot) -> bool {
        self.tier_refused(slot.tier) || slot.extra.as_ref().is_some_and(|e| e.invalid)
    }

    /// Whether the entry under `key` is held with a part the policy that compiled it refused
    /// (false when there is no such entry).
    pub fn refused_in_part(&self, key: &EntryKey) -> bool {
        match key {
            EntryKey::Tenant { tenant } => {
                (self.tenants.get(tenant.as_str())).is_some_and(|s| self.slot_refused(s))
            }
            EntryKey::User { tenant, user } => (self.users.get(&super::UserRef(tenant, user)))
                .is_some_and(|s| self.slot_refused(s)),
            EntryKey::ApiKey { digest } => {
                (self.api_keys.get(digest.as_str())).is_some_and(|s| self.tier_refused(s.tier))
            }
        }
    }

    /// How many of the entries named in these changes are invalid in this catalog (each
    /// distinct key counted once).
    fn invalid_among(
        &self,
        tenants: &[(Box<str>, Option<Slot>)],
        users: &[UserChange],
        keys: &[(Box<str>, Option<KeySlot>)],
    ) -> usize {
        use std::collections::HashSet;
        let slot = |s: &Slot| self.slot_refused(s);
        let t: HashSet<&str> = tenants.iter().map(|(k, _)| &**k).collect();
        let u: HashSet<(&str, &str)> = users.iter().map(|((t, u), _)| (&**t, &**u)).collect();
        let a: HashSet<&str> = keys.iter().map(|(k, _)| &**k).collect();
        let t = t
            .into_iter()
            .filter(|k| self.tenants.get(*k).is_some_and(slot));
        let u = u
            .into_iter()
            .filter(|(t, u)| self.users.get(&super::UserRef(t, u)).is_some_and(slot));
        let a = a.into_iter().filter(|k| {
            self.api_keys
                .get(*k)
                .is_some_and(|s| self.tier_refused(s.tier))
        });
        t.count() + u.count() + a.count()
    }

    fn count_invalid(&self) -> usize {
        let slot = |s: &Slot| self.slot_refused(s);
        let tenants = self.tenants.iter().filter(|(_, s)| slot(s)).count();
        let users = self.users.iter().filter(|(_, s)| slot(s)).count();
        let keys = self
            .api_keys
            .iter()
            .filter(|(_, s)| self.tier_refused(s.tier));
        tenants + users + keys.count()
    }
}

/// One user's change: its (tenant, user) key and its new slot, or `None` when deleted.
type UserChange = ((Box<str>, Box<str>), Option<Slot>);

fn layered<K: std::hash::Hash + Eq + Clone, V: Clone>(
    entries: Vec<(K, Option<V>)>,
) -> Layered<K, V> {
    let mut map = Layered::with_capacity(entries.len());
    for (key, value) in entries {
        match value {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
    Layered::from_map(map)
}

fn unknown_tier(key: EntryKey, name: Option<&str>) -> Skipped {
    Skipped {
        key,
        field: "tier".into(),
        message: format!(
            "the policy has no tier named `{}`; the entry is judged as naming none",
            name.unwrap_or_default()
        ),
    }
}

/// Checks each override in `written` for an entry on `tier`.
fn check_overrides(
    policy: &Policy,
    tier: usize,
    written: &BTreeMap<String, OverrideRecord>,
    owner: OverrideOwner<'_>,
    out: &mut Vec<FieldIssue>,
) {
    for (limit, record) in written {
        if let Err(issues) = policy.compile_override(limit, record, owner) {
            out.extend(issues);
            continue;
        }
        if !policy.tier_meets(tier, limit) {
            let message = format!(
                "limit `{limit}` never applies on tier `{}` (it is not global, not in the tier \
                 and not on any route), so overriding it has no effect",
                policy.tier_name(tier)
            );
            out.push(issue(format!("overrides.{limit}"), message));
        }
    }
}
