//! The tenant catalog's storage: what the catalog holds at rest, in a database shared by the
//! nodes and in a snapshot file on each node's disk.
//!
//! Layout:
//! - [`db`]: the [`CatalogDb`] trait every backend implements (versioned entries, change
//!   feed, conditional writes, bulk import, notifications).
//! - [`sqlite`] and [`postgres`]: the two backends, chosen by URL with [`open`]; `notify`
//!   is PostgreSQL's `LISTEN` task.
//! - `migrate` and `migrations/`: the versioned schema, embedded in the binary.
//! - `row`: how keys and entries map onto rows, shared by both backends.
//! - [`snapshot`]: the local file a node boots from when the database is down.
//! - [`tenant`]: deleting a tenant with its users and API keys (or refusing to while it has
//!   them), for the admin API and the CLI alike.
//! - [`error`]: errors sorted by what the caller should do.
//!
//! The entries themselves (`TenantRecord`, `EntryKey`, `Change`...) are
//! `spillway_core::catalog`'s; this crate stores them and knows nothing of policies.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod db;
pub mod error;
mod migrate;
mod notify;
pub mod postgres;
mod row;
pub mod snapshot;
pub mod sqlite;
pub mod tenant;

pub use db::{CatalogDb, Migrated, Notifications};
pub use error::Error;
pub use migrate::LATEST as SCHEMA_VERSION;
pub use row::{check_key, MAX_ID_LEN};

use std::sync::Arc;

/// Opens the catalog a URL names, choosing the backend by its scheme:
///
/// - `sqlite:///absolute/path.db`, `sqlite://relative/path.db` (created if missing, WAL,
///   busy timeout; see [`sqlite`]), `sqlite::memory:` for a throwaway catalog;
/// - `postgres://user:password@host:port/database` or `postgresql://...` (connects lazily; see
///   [`postgres`]).
///
/// Does not migrate: call [`CatalogDb::migrate`] where the deployment allows it.
pub async fn open(url: &str) -> Result<Arc<dyn CatalogDb>, Error> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sqlite") => Ok(Arc::new(sqlite::SqliteCatalog::open(url).await?)),
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::PgCatalog::open(url)?)),
        other => Err(Error::Invalid(format!(
            "catalog URL `{}` has {}; expected sqlite:///absolute/path.db, sqlite://relative.db, postgres://... or postgresql://...",
            redacted(url),
            match other {
                Some(s) => format!("an unknown scheme `{s}`"),
                None => "no scheme".to_string(),
            }
        ))),
    }
}

/// The URL with any password replaced by `****` (in the user-info part and in a
/// `password=` query parameter), for logs and error messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return mask_query(url);
    };
    // The user information ends at the last `@`: a password may itself hold `@`, `/`, `?`
    // or `#`, so nothing before that `@` is read as a path or a query.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:****@{}", mask_query(host)),
            None => format!("{userinfo}@{}", mask_query(host)),
        },
        None => mask_query(rest),
    };
    format!("{scheme}://{rest}")
}

/// `text` with the value of any `password=` query parameter replaced by `****`.
fn mask_query(text: &str) -> String {
    let Some((head, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=****"),
            _ => p.to_string(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("postgres://spill:pa/ss?x#y@db/x"),
            "postgres://spill:****@db/x"
        );
        assert_eq!(
            redacted("postgres://spill:s3cr3t@db.internal:5432/catalog"),
            "postgres://spill:****@db.internal:5432/catalog"
        );
        assert_eq!(
            redacted("postgresql://spill:p@ss:w@rd@db/x?sslmode=require"),
            "postgresql://spill:****@db/x?sslmode=require"
        );
        assert_eq!(
            redacted("postgres://db/x?user=a&password=hunter2"),
            "postgres://db/x?user=a&password=****"
        );
        assert_eq!(redacted("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            redacted("sqlite:///var/lib/spillway/catalog.db"),
            "sqlite:///var/lib/spillway/catalog.db"
        );
    }

    #[tokio::test]
    async fn unknown_schemes_name_the_accepted_ones() {
        let err = open("mysql://root:pw@localhost/x")
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("unknown scheme `mysql`"), "{text}");
        assert!(
            text.contains("sqlite://") && text.contains("postgres://"),
            "{text}"
        );
        assert!(!text.contains("pw@"), "{text}");
        let err = open("catalog.db").await.err().expect("refused");
        assert!(err.to_string().contains("no scheme"), "{err}");
    }
}
