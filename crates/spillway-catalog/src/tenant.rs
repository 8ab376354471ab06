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
//! deletion cut short (the database lost midway) leaves some of them deleted and the tenant
//! in place, and asking again finishes it. A key written for the tenant while it is being
//! deleted can outlive it; delete it (or the tenant again) to finish.

use crate::{CatalogDb, Error};
use spillway_core::catalog::{Entry, EntryKey, Kind};

/// Entries read per list page while looking for a tenant's users and keys.
const PAGE: usize = 1000;

/// What [`delete_tenant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantDeletion {
    /// The tenant is gone at catalog `version`, with these of its users and keys.
    Deleted {
        /// The catalog version of the tenant's deletion (the last write).
        version: u64,
        /// Its users deleted with it.
        users: usize,
        /// Its API keys deleted with it.
        api_keys: usize,
    },
    /// The catalog holds no such tenant; nothing was written.
    NotFound,
    /// The tenant still has users or keys and `cascade` was not asked; nothing was written.
    Holds {
        /// Its users.
        users: usize,
        /// Its API keys.
        api_keys: usize,
    },
}

/// The catalog keys of a tenant's API keys and users.
pub async fn belongings(db: &dyn CatalogDb, tenant: &str) -> Result<Belongings, Error> {
    let mut found = Belongings::default();
    let mut after: Option<EntryKey> = None;
    loop {
        let page = db.list(Kind::ApiKey, None, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(key, _, _)| key.clone());
        found
            .api_keys
            .extend(page.into_iter().filter_map(|(key, entry, _)| match entry {
                Entry::ApiKey(record) if record.tenant == tenant => Some(key),
                _ => None,
            }));
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
        found.users.extend(page.into_iter().map(|(key, _, _)| key));
        if !full {
            break;
        }
    }
    Ok(found)
}

/// A tenant's users and API keys, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Belongings {
    /// Its API keys.
    pub api_keys: Vec<EntryKey>,
    /// Its users.
    pub users: Vec<EntryKey>,
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
        (None, _) => return Ok(TenantDeletion::NotFound),
        (Some(now), Some(want)) if now != want => {
            return Err(Error::Conflict { current: Some(now) })
        }
        _ => {}
    }
    let found = belongings(db, tenant).await?;
    let (users, api_keys) = (found.users.len(), found.api_keys.len());
    if !cascade && users + api_keys > 0 {
        return Ok(TenantDeletion::Holds { users, api_keys });
    }
    for belonging in found.api_keys.iter().chain(&found.users) {
        db.delete(belonging, None).await?;
    }
    match db.delete(&key, if_version).await? {
        Some(version) => Ok(TenantDeletion::Deleted {
            version,
            users,
            api_keys,
        }),
        None => Ok(TenantDeletion::NotFound),
    }
}
