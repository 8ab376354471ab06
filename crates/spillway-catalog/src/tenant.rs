//! Deleting a tenant with what belongs to it: its users and its API keys.
//!
//! A tenant's users and keys name it by id. Left behind when the tenant goes, a key would still
//! authenticate as that id (at the default tier), and a tenant created later with the same id
//! would inherit them: the old key's holder would spend the new tenant's budget. So a tenant
//! that still has users or keys is not deleted unless asked to take them with it
//! ([`delete_tenant`] with `cascade`): its keys first, so that access goes before anything
//! else, then its users, then the tenant.
//!
//! Backend-agnostic: written over [`CatalogDb`]'s list and delete, for the admin API and the
//! CLI alike. Each entry is its own write (its own catalog version), not one transaction: a
//! deletion cut short (the database lost midway, or the tenant changed meanwhile, which
//! fails its `If-Match`) leaves some of them deleted and the tenant in place, and asking again
//! finishes it. With `cascade`, users and keys are cleared even when the tenant itself is
//! gone (those an older build's deletion left behind), so asking again also clears a key
//! written for the tenant while it was being deleted. Each is deleted only at the version it
//! was read at: one changed meanwhile is read again, and kept if it no longer names the
//! tenant (a key moved to another).
//!
//! Finding a tenant's keys reads every API key in the catalog (keys are stored by digest),
//! a thousand at a time: an admin operation's cost, not a request's.

use crate::{CatalogDb, Error};
use spillway_core::catalog::{Entry, EntryKey, Kind};

/// Entries read per list page while looking for a tenant's users and keys.
const PAGE: usize = 1000;

/// What [`delete_tenant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantDeletion {
    /// The tenant is gone at catalog `version`, with these of its users and keys (with
    /// `cascade`, also when the tenant itself was gone already and only they were left).
    Deleted {
        /// The catalog version of the tenant's deletion (the last write).
        version: u64,
        /// Its users deleted with it.
        users: usize,
        /// Its API keys deleted with it.
        api_keys: usize,
    },
    /// The catalog holds no such tenant (and, with `cascade`, nothing of it); nothing was
    /// written.
    NotFound,
    /// The tenant still has users or keys and `cascade` was not asked; nothing was written.
    Holds {
        /// Its users.
        users: usize,
        /// Its API keys.
        api_keys: usize,
    },
}

/// Why a tenant that holds `users` users and `api_keys` API keys was not deleted, for the
/// admin API and the CLI to say alike; `cascade` is how their caller asks for them to go too.
pub fn still_holds(tenant: &str, users: usize, api_keys: usize, cascade: &str) -> String {
    format!(
        "tenant `{tenant}` still has {users} user(s) and {api_keys} API key(s): a key left \
         behind would still act for `{tenant}`, and for any tenant created later with that id; \
         delete them first, or {cascade} to delete them with it"
    )
}

/// The catalog keys of a tenant's API keys and users, each with its version as read.
pub async fn belongings(db: &dyn CatalogDb, tenant: &str) -> Result<Belongings, Error> {
    let mut found = Belongings::default();
    let mut after: Option<EntryKey> = None;
    loop {
        let page = db.list(Kind::ApiKey, None, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(key, _, _)| key.clone());
        let ours = page
            .into_iter()
            .filter(|(_, entry, _)| names(entry, tenant));
        found
            .api_keys
            .extend(ours.map(|(key, _, version)| (key, version)));
        if !full {
            break;
        }
    }
    let mut after: Option<EntryKey> = None;
    loop {
        let page = db
            .list(Kind::User, Some(tenant), after.as_ref(), PAGE)
            .await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(key, _, _)| key.clone());
        found
            .users
            .extend(page.into_iter().map(|(key, _, version)| (key, version)));
        if !full {
            break;
        }
    }
    Ok(found)
}

/// Whether `entry` belongs to `tenant`: a user under it (by its key), or a key naming it.
fn names(entry: &Entry, tenant: &str) -> bool {
    match entry {
        Entry::ApiKey(record) => record.tenant == tenant,
        _ => true,
    }
}

/// A tenant's API keys and users, by catalog key, each with its version as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Belongings {
    /// Its API keys.
    pub api_keys: Vec<(EntryKey, u64)>,
    /// Its users.
    pub users: Vec<(EntryKey, u64)>,
}

/// Deletes `key` if it is still at `version`; changed meanwhile, deletes it at its new
/// version if it still belongs to `tenant`, and keeps it if not. Gone meanwhile is done.
pub async fn delete_belonging(
    db: &dyn CatalogDb,
    tenant: &str,
    key: &EntryKey,
    version: u64,
) -> Result<(), Error> {
    match db.delete(key, Some(version)).await {
        Ok(_) => Ok(()),
        Err(Error::Conflict { current: None }) => Ok(()),
        Err(Error::Conflict { .. }) => match db.get(key).await? {
            Some((entry, now)) if names(&entry, tenant) => {
                db.delete(key, Some(now)).await.map(|_| ())
            }
            _ => Ok(()),
        },
        Err(other) => Err(other),
    }
}

/// Deletes tenant `tenant` if its version is `if_version` (any, when `None`; as for
/// [`CatalogDb::delete`], a mismatch is [`Error::Conflict`] and nothing is written). A tenant
/// with users or API keys is deleted only with `cascade`, which deletes them first (see the
/// module docs); without it the answer is [`TenantDeletion::Holds`].
pub async fn delete_tenant(
    db: &dyn CatalogDb,
    tenant: &str,
    if_version: Option<u64>,
    cascade: bool,
) -> Result<TenantDeletion, Error> {
    let key = EntryKey::Tenant {
        tenant: tenant.to_owned(),
    };
    // The condition is checked before anything that belongs to the tenant is touched.
    let current = db.get(&key).await?.map(|(_, version)| version);
    match (current, if_version) {
        (None, Some(want)) if want > 0 => return Err(Error::Conflict { current: None }),
        (Some(now), Some(want)) if now != want => {
            return Err(Error::Conflict { current: Some(now) })
        }
        (None, _) if !cascade => return Ok(TenantDeletion::NotFound),
        _ => {}
    }
    let found = belongings(db, tenant).await?;
    let (users, api_keys) = (found.users.len(), found.api_keys.len());
    if !cascade && users + api_keys > 0 {
        return Ok(TenantDeletion::Holds { users, api_keys });
    }
    for (belonging, version) in found.api_keys.iter().chain(&found.users) {
        delete_belonging(db, tenant, belonging, *version).await?;
    }
    let version = match current {
        Some(_) => db.delete(&key, if_version).await?,
        // Gone already: what it left behind was cleared, at the catalog's version now.
        None if users + api_keys > 0 => Some(db.version().await?),
        None => None,
    };
    Ok(match version {
        Some(version) => TenantDeletion::Deleted {
            version,
            users,
            api_keys,
        },
        None => TenantDeletion::NotFound,
    })
}
