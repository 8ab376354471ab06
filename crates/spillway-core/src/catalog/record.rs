//! The catalog's entries as they are stored and exchanged: what a database row, an admin API
//! body, a change in the feed and a line of the local snapshot hold. Plain data, checked
//! against a policy only when compiled (`super::compile`), so a row written under one policy
//! survives a reload that makes it invalid (it is skipped and counted, never lost).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A tenant's tier and its overrides of limit numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tier's name; `None` leaves the tenant on the policy's default tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Replacement numbers, by the name of the limit they replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, OverrideRecord>,
    /// The region whose store counts the tenant's `home`-scoped limits; `None` leaves it to a
    /// stable hash of the tenant over the policy's regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
}

impl TenantRecord {
    /// The stored body's member names, for readers that keep only what this build knows
    /// (a test checks it against what the type writes).
    pub const FIELDS: &'static [&'static str] = &["tier", "overrides", "home_region"];
}

/// One user of one tenant: an optional tier of their own and overrides that win over the
/// tenant's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The tier's name; `None` leaves the user on the tenant's tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Replacement numbers, by the name of the limit they replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, OverrideRecord>,
}

impl UserRecord {
    /// The stored body's member names (see [`TenantRecord::FIELDS`]).
    pub const FIELDS: &'static [&'static str] = &["tier", "overrides"];
}

/// What an API key stands for. The key itself is never stored: the catalog holds the
/// lowercase hex SHA-256 digest of it ([`EntryKey::ApiKey`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// The tenant the key belongs to.
    pub tenant: String,
    /// The user it acts as, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A tier the key's requests get, if not the tenant's (or user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl ApiKeyRecord {
    /// The stored body's member names (see [`TenantRecord::FIELDS`]).
    pub const FIELDS: &'static [&'static str] = &["tenant", "user", "tier"];
}

/// New numbers for one limit, laid over its definition: the same fields a policy's
/// `overrides:` entry takes, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRecord {
    /// Shadow mode on or off for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    /// A rate such as `1200/min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// A token bucket's or GCRA's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// A window's or sliding log's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// A window's length such as `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// A leaky bucket's capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

impl OverrideRecord {
    /// The stored body's member names (see [`TenantRecord::FIELDS`]).
    pub const FIELDS: &'static [&'static str] =
        &["shadow", "rate", "burst", "limit", "window", "capacity"];
}

/// The kinds of entry the catalog holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`TenantRecord`]s, by tenant id.
    Tenant,
    /// [`UserRecord`]s, by tenant and user id.
    User,
    /// [`ApiKeyRecord`]s, by digest.
    ApiKey,
}

impl Kind {
    /// The name used in URLs, tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::User => "user",
            Self::ApiKey => "api_key",
        }
    }

    /// The member names a stored body of this kind may hold (its record's `FIELDS`).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Tenant => TenantRecord::FIELDS,
            Self::User => UserRecord::FIELDS,
            Self::ApiKey => ApiKeyRecord::FIELDS,
        }
    }
}

/// Which entry: a tenant, a tenant's user, or an API key's digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryKey {
    /// A tenant, by id.
    Tenant {
        /// The tenant's id.
        tenant: String,
    },
    /// One user of one tenant.
    User {
        /// The tenant's id.
        tenant: String,
        /// The user's id within the tenant.
        user: String,
    },
    /// An API key, by the lowercase hex SHA-256 digest of the key.
    ApiKey {
        /// 64 lowercase hex digits.
        digest: String,
    },
}

impl EntryKey {
    /// The kind of entry this key names.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Tenant { .. } => Kind::Tenant,
            Self::User { .. } => Kind::User,
            Self::ApiKey { .. } => Kind::ApiKey,
        }
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tenant { tenant } => write!(f, "tenant {tenant}"),
            Self::User { tenant, user } => write!(f, "user {user} of tenant {tenant}"),
            Self::ApiKey { digest } => {
                // The first twelve characters are enough to tell keys apart in a log line
                // (a digest is ASCII; anything else a client sent is cut by characters).
                let shown: String = digest.chars().take(12).collect();
                write!(f, "api key {shown}…")
            }
        }
    }
}

/// An entry's content; its kind matches its key's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Entry {
    /// A tenant.
    Tenant(TenantRecord),
    /// A user.
    User(UserRecord),
    /// An API key.
    ApiKey(ApiKeyRecord),
}

impl Entry {
    /// The kind of entry this is.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Tenant(_) => Kind::Tenant,
            Self::User(_) => Kind::User,
            Self::ApiKey(_) => Kind::ApiKey,
        }
    }
}

/// One step of the catalog's history: at `version`, `key` was set to `entry`, or deleted
/// when `entry` is `None`. Versions increase by one per write, across every kind, and are
/// never reused, so a node that has applied version `n` needs exactly the changes after `n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The catalog version this change produced.
    pub version: u64,
    /// Which entry changed.
    pub key: EntryKey,
    /// Its new content, or `None` if it was deleted.
    pub entry: Option<Entry>,
}

/// Whether `text` is a well-formed API key digest: 64 lowercase hex digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod field_tests {
    use super::*;

    /// The member names `value` is written with.
    fn written(value: impl Serialize) -> Vec<String> {
        let serde_json::Value::Object(map) = serde_json::to_value(value).expect("serializes")
        else {
            panic!("a record is written as an object");
        };
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort();
        names
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        names.sort();
        names
    }

    /// A key names its entry exactly: a member it does not have (`user` on a tenant's key) is
    /// refused, not dropped, so an import line meant for a user cannot land on its tenant.
    #[test]
    fn a_key_with_a_member_of_another_kind_is_refused() {
        let read = |text: &str| serde_json::from_str::<EntryKey>(text);
        let tenant = read(r#"{"kind":"tenant","tenant":"acme"}"#).expect("a tenant's key");
        assert_eq!(
            tenant,
            EntryKey::Tenant {
                tenant: "acme".into()
            }
        );
        let err = read(r#"{"kind":"tenant","tenant":"acme","user":"bob"}"#).expect_err("refused");
        assert!(err.to_string().contains("unknown field `user`"), "{err}");
        assert!(read(r#"{"kind":"api_key","digest":"ab","tenant":"t"}"#).is_err());
    }

    /// Each record's `FIELDS` names exactly what a record with every field set is written
    /// with, so a field added to a type cannot be left out of the list (a reader keeping only
    /// known members would drop it).
    #[test]
    fn each_records_field_list_is_what_it_writes() {
        let all = OverrideRecord {
            shadow: Some(true),
            rate: Some("1/s".into()),
            burst: Some(1),
            limit: Some(1),
            window: Some("1m".into()),
            capacity: Some(1),
        };
        assert_eq!(written(&all), sorted(OverrideRecord::FIELDS));
        let overrides = BTreeMap::from([("m".to_owned(), all)]);
        let tenant = TenantRecord {
            tier: Some("paid".into()),
            overrides: overrides.clone(),
            home_region: Some("eu".into()),
        };
        assert_eq!(written(&tenant), sorted(TenantRecord::FIELDS));
        let user = UserRecord {
            tier: Some("paid".into()),
            overrides,
        };
        assert_eq!(written(&user), sorted(UserRecord::FIELDS));
        let key = ApiKeyRecord {
            tenant: "acme".into(),
            user: Some("ann".into()),
            tier: Some("paid".into()),
        };
        assert_eq!(written(&key), sorted(ApiKeyRecord::FIELDS));
    }
}
