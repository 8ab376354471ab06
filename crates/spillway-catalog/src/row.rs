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
use serde_json::value::{to_raw_value, RawValue};
use spillway_core::catalog::record::{is_digest, OverrideRecord};
use spillway_core::catalog::{Entry, EntryKey, Kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

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
pub(crate) fn decode_stored(
    kind: Kind,
    body: &str,
    key: &EntryKey,
    version: i64,
    unreadable: &std::sync::atomic::AtomicU64,
) -> Option<Entry> {
    match decode_known(kind, body, key, version) {
        Ok(entry) => Some(entry),
        Err(err) => {
            unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = escaped(key);
            tracing::error!(%key, version, "catalog row skipped: {}", escaped(err));
            None
        }
    }
}

/// A stored row as the admin reads it (`get`, `list`): the fields this build knows, as
/// [`decode_stored`] reads them, but a row that does not decode is an error naming it. The
/// fields it does not know are kept by this build's writes ([`with_unknown_of`]).
pub(crate) fn decode_known(
    kind: Kind,
    body: &str,
    key: &EntryKey,
    version: i64,
) -> Result<Entry, Error> {
    let strict = match decode(kind, body, key, version) {
        Ok(entry) => return Ok(entry),
        Err(err) => err,
    };
    let Some((known, unknown)) = Unknown::split(kind, body) else {
        return Err(strict);
    };
    if unknown.is_empty() {
        return Err(strict);
    }
    let names = unknown.names();
    let entry = decode(kind, &known, key, version).map_err(|err| {
        Error::Invalid(format!(
            "{err} (fields this build does not know, set aside: {})",
            names.join(", ")
        ))
    })?;
    // Logged on the first such read, then at each power of two: a node loading a million
    // rows of a newer build says so in about twenty lines, not a million.
    static READS: AtomicU64 = AtomicU64::new(0);
    let reads = READS.fetch_add(1, Ordering::Relaxed) + 1;
    if reads.is_power_of_two() {
        tracing::warn!(
            key = %escaped(key),
            version,
            unknown = ?names,
            reads,
            "catalog rows have fields this build does not know (this one, and `reads` row \
             reads in all so far); they are ignored, and kept by this build's writes"
        );
    }
    Ok(entry)
}

/// `text` with its controls and invisible format characters escaped
/// ([`spillway_core::text::printable`]): a row written to the database behind the catalog's
/// back may hold any text in its ids and members, and tracing's text format writes `%` fields
/// and messages with their line breaks as they are.
fn escaped(text: impl std::fmt::Display) -> String {
    spillway_core::text::printable(&text.to_string()).into_owned()
}

/// `body` (a record this build encoded) with the members of `stored` (the row it replaces)
/// that this build does not know added back, so that writing an entry never drops a field
/// a newer build set: top-level members, and those of each override `body` still has (an
/// override the write removes goes with its members). They are copied as they were stored,
/// byte for byte, so no number loses precision on the way.
pub(crate) fn with_unknown_of(kind: Kind, body: String, stored: Option<&str>) -> String {
    let Some((_, unknown)) = stored.and_then(|stored| Unknown::split(kind, stored)) else {
        return body;
    };
    if unknown.is_empty() {
        return body;
    }
    let Ok(mut new) = serde_json::from_str::<Members>(&body) else {
        // This build encoded it: it is an object. Were it not, say so rather than drop them.
        tracing::error!(
            kind = kind.as_str(),
            "a written body is not an object: the fields a newer build set are not kept"
        );
        return body;
    };
    for (name, value) in unknown.top {
        new.entry(name).or_insert(value);
    }
    if let Some(raw) = new.get_mut("overrides") {
        if let Ok(mut overrides) = serde_json::from_str::<BTreeMap<String, Members>>(raw.get()) {
            for (limit, members) in unknown.overrides {
                if let Some(now) = overrides.get_mut(&limit) {
                    for (member, value) in members {
                        now.entry(member).or_insert(value);
                    }
                }
            }
            if let Ok(merged) = to_raw_value(&overrides) {
                *raw = merged;
            }
        }
    }
    serde_json::to_string(&new).unwrap_or(body)
}

/// A JSON object's members, each kept as the text it was written in.
type Members = BTreeMap<String, Box<RawValue>>;

/// The members of a stored body that this build's record types do not have.
#[derive(Debug, Default)]
struct Unknown {
    /// The body's own.
    top: Members,
    /// Each override's own, by limit.
    overrides: BTreeMap<String, Members>,
}

impl Unknown {
    /// Splits `body`, a stored body of `kind`, into the JSON of the members this build knows
    /// (to decode) and those it does not. `None` when it is not a JSON object.
    fn split(kind: Kind, body: &str) -> Option<(String, Self)> {
        let own = kind.fields();
        let mut members: Members = serde_json::from_str(body).ok()?;
        let mut unknown = Self {
            top: take_unknown(&mut members, own),
            overrides: BTreeMap::new(),
        };
        if own.contains(&"overrides") {
            if let Some(raw) = members.get_mut("overrides") {
                // Overrides that are not objects are left for the decoder to name.
                if let Ok(mut overrides) = serde_json::from_str::<Members>(raw.get()) {
                    for (limit, one) in overrides.iter_mut() {
                        let Ok(mut fields) = serde_json::from_str::<Members>(one.get()) else {
                            continue;
                        };
                        let set_aside = take_unknown(&mut fields, OverrideRecord::FIELDS);
                        if !set_aside.is_empty() {
                            *one = to_raw_value(&fields).ok()?;
                            unknown.overrides.insert(limit.clone(), set_aside);
                        }
                    }
                    *raw = to_raw_value(&overrides).ok()?;
                }
            }
        }
        Some((serde_json::to_string(&members).ok()?, unknown))
    }

    fn is_empty(&self) -> bool {
        self.top.is_empty() && self.overrides.is_empty()
    }

    /// Their paths, such as `colour` and `overrides.m.jitter`.
    fn names(&self) -> Vec<String> {
        let top = self.top.keys().map(escaped);
        let nested = self.overrides.iter().flat_map(|(limit, members)| {
            members
                .keys()
                .map(move |m| escaped(format!("overrides.{limit}.{m}")))
        });
        top.chain(nested).collect()
    }
}

/// Removes and returns the members of `members` not named in `own`.
fn take_unknown(members: &mut Members, own: &[&str]) -> Members {
    let (unknown, known) = std::mem::take(members)
        .into_iter()
        .partition(|(name, _)| !own.contains(&name.as_str()));
    *members = known;
    unknown
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
    use serde_json::Value;

    #[test]
    fn stored_rows_from_a_newer_build_are_read_for_what_is_known() {
        let key = EntryKey::Tenant {
            tenant: "acme".into(),
        };
        let skipped = std::sync::atomic::AtomicU64::new(0);
        let decode_stored =
            |kind, body, key, version| decode_stored(kind, body, key, version, &skipped);
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
        assert_eq!(
            skipped.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "counted"
        );
        // The admin's reads say why a row does not decode.
        let err = decode_known(Kind::Tenant, r#"{"tier":5,"colour":1}"#, &key, 9).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn logged_text_cannot_forge_a_line_or_reorder_one() {
        assert_eq!(escaped("tenant a\nb\u{202e}c"), "tenant a\\nb\\u{202e}c");
        assert_eq!(escaped("tenant acme"), "tenant acme");
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn writes_keep_the_fields_of_a_newer_build() {
        let stored = r#"{"tier":"a","colour":"red",
            "overrides":{"m":{"limit":5,"jitter":2},"n":{"jitter":3}}}"#;
        let kept = with_unknown_of(
            Kind::Tenant,
            r#"{"tier":"b","colour":"blue","overrides":{"m":{"limit":6}}}"#.into(),
            Some(stored),
        );
        // A member this build wrote is never replaced (it cannot be unknown to it anyway).
        assert_eq!(
            json(&kept),
            json(r#"{"tier":"b","colour":"blue","overrides":{"m":{"limit":6,"jitter":2}}}"#)
        );
        let kept = with_unknown_of(Kind::Tenant, r#"{"tier":"b"}"#.into(), Some(stored));
        assert_eq!(json(&kept), json(r#"{"tier":"b","colour":"red"}"#));
        // API keys have no overrides: a newer build's `overrides` is one more unknown member.
        let kept = with_unknown_of(
            Kind::ApiKey,
            r#"{"tenant":"b"}"#.into(),
            Some(r#"{"tenant":"a","overrides":{"x":1}}"#),
        );
        assert_eq!(json(&kept), json(r#"{"tenant":"b","overrides":{"x":1}}"#));
        // Numbers past what a float holds exactly are kept as they were written.
        let kept = with_unknown_of(
            Kind::Tenant,
            r#"{"tier":"b"}"#.into(),
            Some(r#"{"tier":"a","big":18446744073709551617,"fine":0.12345678901234567890123}"#),
        );
        assert!(kept.contains(r#""big":18446744073709551617"#), "{kept}");
        assert!(
            kept.contains(r#""fine":0.12345678901234567890123"#),
            "{kept}"
        );
        // Nothing unknown, nothing stored, or a stored body that is not JSON: as written.
        let body = r#"{"tier":"b"}"#;
        assert_eq!(
            with_unknown_of(Kind::Tenant, body.into(), Some(r#"{"tier":"a"}"#)),
            body
        );
        assert_eq!(with_unknown_of(Kind::Tenant, body.into(), None), body);
        assert_eq!(
            with_unknown_of(Kind::Tenant, body.into(), Some("not json")),
            body
        );
    }
}
