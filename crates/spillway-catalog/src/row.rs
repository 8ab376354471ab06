//! How an entry maps onto a row, shared by both backends: the key's three columns, the
//! checks a key and an entry must pass before they are written, and the body's JSON.
//!
//! Every entry lives in one table, `spillway_catalog_entries`, keyed by `(kind, scope, id)`:
//!
//! | kind | scope | id |
//! | --- | --- | --- |
//! | `tenant` | `''` | the tenant |
//! | `user` | the tenant | the user |
//! | `api_key` | `''` | the key's digest |
//!
//! One table gives one version index for the change feed and one shape of query for every
//! kind; ordering by `(scope, id)` is key order within a kind (users grouped by tenant).

use crate::Error;
use spillway_core::catalog::record::{
    is_digest, ApiKeyRecord, OverrideRecord, TenantRecord, UserRecord,
};
use spillway_core::catalog::{Entry, EntryKey, Kind};

/// The longest id (tenant, user) the catalog accepts, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A key's columns: `(kind, scope, id)`.
pub(crate) fn columns(key: &EntryKey) -> (&'static str, &str, &str) {
    match key {
        EntryKey::Tenant { tenant } => (Kind::Tenant.as_str(), "", tenant),
        EntryKey::User { tenant, user } => (Kind::User.as_str(), tenant, user),
        EntryKey::ApiKey { digest } => (Kind::ApiKey.as_str(), "", digest),
    }
}

/// The kind named by a `kind` column.
pub(crate) fn kind_of(column: &str) -> Result<Kind, Error> {
    match column {
        "tenant" => Ok(Kind::Tenant),
        "user" => Ok(Kind::User),
        "api_key" => Ok(Kind::ApiKey),
        other => Err(Error::Invalid(format!(
            "stored row has unknown kind `{other}`"
        ))),
    }
}

/// The key a row's columns name.
pub(crate) fn key_of(kind: Kind, scope: String, id: String) -> EntryKey {
    match kind {
        Kind::Tenant => EntryKey::Tenant { tenant: id },
        Kind::User => EntryKey::User {
            tenant: scope,
            user: id,
        },
        Kind::ApiKey => EntryKey::ApiKey { digest: id },
    }
}

fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::Invalid(format!("{what} must not be empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::Invalid(format!(
            "{what} is {} bytes long; at most {MAX_ID_LEN} are allowed",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} `{}` contains a control character",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Refuses a key the catalog cannot hold: an empty, overlong or control-character id, or an
/// API key that is not a lowercase hex SHA-256 digest.
pub fn check_key(key: &EntryKey) -> Result<(), Error> {
    match key {
        EntryKey::Tenant { tenant } => check_id("tenant id", tenant),
        EntryKey::User { tenant, user } => {
            check_id("tenant id", tenant)?;
            check_id("user id", user)
        }
        EntryKey::ApiKey { digest } if is_digest(digest) => Ok(()),
        EntryKey::ApiKey { .. } => Err(Error::Invalid(
            "api key digest must be 64 lowercase hex digits (the SHA-256 of the key)".into(),
        )),
    }
}

/// Checks `key` and that `entry` is of the same kind, and returns the entry's body as JSON.
pub(crate) fn encode(key: &EntryKey, entry: &Entry) -> Result<String, Error> {
    check_key(key)?;
    if key.kind() != entry.kind() {
        return Err(Error::Invalid(format!(
            "{key} cannot hold a {} entry (the key is a {})",
            entry.kind().as_str(),
            key.kind().as_str()
        )));
    }
    let body = match entry {
        Entry::Tenant(r) => serde_json::to_string(r),
        Entry::User(r) => serde_json::to_string(r),
        Entry::ApiKey(r) => serde_json::to_string(r),
    };
    body.map_err(|e| Error::Invalid(format!("{key}: body does not encode: {e}")))
}

/// Decodes a stored body of the given kind; `key` and `version` name the row in the error.
pub(crate) fn decode(kind: Kind, body: &str, key: &EntryKey, version: i64) -> Result<Entry, Error> {
    let entry = match kind {
        Kind::Tenant => serde_json::from_str(body).map(Entry::Tenant),
        Kind::User => serde_json::from_str(body).map(Entry::User),
        Kind::ApiKey => serde_json::from_str(body).map(Entry::ApiKey),
    };
    entry.map_err(|e| {
        Error::Invalid(format!(
            "stored row for {key} (version {version}) does not decode: {e}"
        ))
    })
}

/// A stored row as a node reads it to follow the catalog (`load`, `changes_since`): fields
/// this build does not know (written by a newer Spillway during a rolling upgrade) are
/// ignored with a warning, and a row that still does not decode is skipped with an error in
/// the log (`None`), so one bad row never stops every later change from arriving.
pub(crate) fn decode_stored(kind: Kind, body: &str, key: &EntryKey, version: i64) -> Option<Entry> {
    let strict = match decode(kind, body, key, version) {
        Ok(entry) => return Some(entry),
        Err(err) => err,
    };
    let known = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .map(|mut value| {
            keep_known(kind, &mut value);
            value.to_string()
        })
        .and_then(|trimmed| decode(kind, &trimmed, key, version).ok());
    match known {
        Some(entry) => {
            tracing::warn!(%key, version, "catalog row has fields this build does not know; they are ignored: {strict}");
            Some(entry)
        }
        None => {
            tracing::error!(%key, version, "catalog row skipped: {strict}");
            None
        }
    }
}

/// Drops the members of a stored body that this build's record types do not have.
fn keep_known(kind: Kind, value: &mut serde_json::Value) {
    let own = match kind {
        Kind::Tenant => TenantRecord::FIELDS,
        Kind::User => UserRecord::FIELDS,
        Kind::ApiKey => ApiKeyRecord::FIELDS,
    };
    let Some(map) = value.as_object_mut() else {
        return;
    };
    map.retain(|name, _| own.contains(&name.as_str()));
    if let Some(serde_json::Value::Object(overrides)) = map.get_mut("overrides") {
        for one in overrides.values_mut() {
            if let Some(fields) = one.as_object_mut() {
                fields.retain(|name, _| OverrideRecord::FIELDS.contains(&name.as_str()));
            }
        }
    }
}

/// A version as the databases store it (`BIGINT`).
pub(crate) fn to_db(version: u64) -> Result<i64, Error> {
    i64::try_from(version).map_err(|_| Error::Invalid(format!("version {version} is out of range")))
}

/// A stored version as the API speaks it; a negative one is a corrupt row.
pub(crate) fn from_db(version: i64) -> Result<u64, Error> {
    u64::try_from(version)
        .map_err(|_| Error::Other(format!("stored version {version} is negative")))
}

/// A row limit as the databases take it.
pub(crate) fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Where a page of [`crate::CatalogDb::list`] starts: the `(scope, id)` of `after`, or the
/// start of the kind (every real id is non-empty, so `("", "")` sorts before all of them).
pub(crate) fn list_start(kind: Kind, after: Option<&EntryKey>) -> Result<(&str, &str), Error> {
    match after {
        None => Ok(("", "")),
        Some(key) if key.kind() == kind => {
            let (_, scope, id) = columns(key);
            Ok((scope, id))
        }
        Some(key) => Err(Error::Invalid(format!(
            "cannot list {} entries after {key}, which is a {}",
            kind.as_str(),
            key.kind().as_str()
        ))),
    }
}

/// Checks a write's `if_version` condition against the entry's current version (`None`:
/// absent or deleted). `Some(0)` asks for absence, `Some(n)` for version `n`.
pub(crate) fn check_condition(if_version: Option<u64>, current: Option<u64>) -> Result<(), Error> {
    match (if_version, current) {
        (None, _) | (Some(0), None) => Ok(()),
        (Some(wanted), Some(now)) if wanted == now => Ok(()),
        _ => Err(Error::Conflict { current }),
    }
}

/// Keeps the last of several writes to one key, in their order otherwise, so a bulk insert
/// never touches a row twice.
pub(crate) fn dedup_last(entries: Vec<(EntryKey, Entry)>) -> Vec<(EntryKey, Entry)> {
    let mut last = std::collections::HashMap::with_capacity(entries.len());
    for (i, (key, _)) in entries.iter().enumerate() {
        last.insert(key.clone(), i);
    }
    if last.len() == entries.len() {
        return entries;
    }
    entries
        .into_iter()
        .enumerate()
        .filter(|(i, (key, _))| last.get(key) == Some(i))
        .map(|(_, kv)| kv)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::catalog::{TenantRecord, UserRecord};

    fn tenant(id: &str) -> EntryKey {
        EntryKey::Tenant { tenant: id.into() }
    }

    #[test]
    fn keys_round_trip_through_columns() {
        let keys = [
            tenant("acme"),
            EntryKey::User {
                tenant: "acme".into(),
                user: "bob".into(),
            },
            EntryKey::ApiKey {
                digest: "a".repeat(64),
            },
        ];
        for key in keys {
            let (kind, scope, id) = columns(&key);
            let back = key_of(kind_of(kind).unwrap(), scope.into(), id.into());
            assert_eq!(back, key);
        }
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let err = check_key(&tenant("")).unwrap_err().to_string();
        assert!(err.contains("tenant id must not be empty"), "{err}");
        let err = check_key(&tenant(&"x".repeat(300)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 256"), "{err}");
        let err = check_key(&tenant("a\0b")).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
        let err = check_key(&EntryKey::ApiKey {
            digest: "ABC".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("64 lowercase hex"), "{err}");
    }

    #[test]
    fn kind_mismatch_is_refused() {
        let err = encode(&tenant("acme"), &Entry::User(UserRecord::default()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold a user entry"), "{err}");
    }

    #[test]
    fn bodies_round_trip() {
        let key = tenant("acme");
        let entry = Entry::Tenant(TenantRecord {
            tier: Some("paid".into()),
            ..Default::default()
        });
        let body = encode(&key, &entry).unwrap();
        assert_eq!(body, r#"{"tier":"paid"}"#);
        assert_eq!(decode(Kind::Tenant, &body, &key, 1).unwrap(), entry);
        let err = decode(Kind::Tenant, "{\"tyer\":1}", &key, 9).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn conditions() {
        assert!(check_condition(None, Some(3)).is_ok());
        assert!(check_condition(Some(0), None).is_ok());
        assert!(check_condition(Some(3), Some(3)).is_ok());
        assert!(matches!(
            check_condition(Some(0), Some(3)),
            Err(Error::Conflict { current: Some(3) })
        ));
        assert!(matches!(
            check_condition(Some(2), Some(3)),
            Err(Error::Conflict { current: Some(3) })
        ));
        assert!(matches!(
            check_condition(Some(2), None),
            Err(Error::Conflict { current: None })
        ));
    }

    #[test]
    fn dedup_keeps_the_last_write() {
        let e = |t: &str| {
            Entry::Tenant(TenantRecord {
                tier: Some(t.into()),
                ..Default::default()
            })
        };
        let out = dedup_last(vec![
            (tenant("a"), e("1")),
            (tenant("b"), e("2")),
            (tenant("a"), e("3")),
        ]);
        assert_eq!(out, vec![(tenant("b"), e("2")), (tenant("a"), e("3"))]);
    }
}

#[cfg(test)]
mod stored_tests {
    use super::*;

    #[test]
    fn stored_rows_from_a_newer_build_are_read_for_what_is_known() {
        let key = EntryKey::Tenant {
            tenant: "acme".into(),
        };
        let newer = r#"{"tier":"paid","colour":"red","overrides":{"m":{"limit":5,"jitter":2}}}"#;
        let Some(Entry::Tenant(record)) = decode_stored(Kind::Tenant, newer, &key, 7) else {
            panic!("a row with unknown fields is read");
        };
        assert_eq!(record.tier.as_deref(), Some("paid"));
        assert_eq!(record.overrides["m"].limit, Some(5));
        assert!(
            decode(Kind::Tenant, newer, &key, 7).is_err(),
            "input stays strict"
        );
        // Every field this build knows is kept, the home region too.
        let homed = r#"{"tier":"paid","home_region":"eu","colour":"red"}"#;
        let Some(Entry::Tenant(record)) = decode_stored(Kind::Tenant, homed, &key, 7) else {
            panic!("a row with unknown fields is read");
        };
        assert_eq!(record.home_region.as_deref(), Some("eu"));
        assert_eq!(decode_stored(Kind::Tenant, "not json", &key, 8), None);
        assert_eq!(decode_stored(Kind::Tenant, r#"{"tier":5}"#, &key, 9), None);
    }
}
