//! What can go wrong talking to the catalog's database, sorted by what the caller should do
//! about it: keep serving the last snapshot and retry ([`Error::Unavailable`]), tell the writer
//! that someone else got there first ([`Error::Conflict`]), refuse the request
//! ([`Error::Invalid`]), or stop and upgrade ([`Error::SchemaTooNew`]).

/// An error from a catalog backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or dropped the connection (I/O, pool timeout, the
    /// server shutting down, SQLite busy past its timeout). Transient: readers keep their last
    /// snapshot and retry; a write may or may not have happened only if this came from its
    /// commit.
    #[error("catalog database unavailable: {0}")]
    Unavailable(String),
    /// An `if_version` condition failed. `current` is the entry's version now, `None` if it
    /// does not exist (or was deleted).
    #[error("{}", conflict_message(*.current))]
    Conflict {
        /// The entry's current version, `None` if it does not exist.
        current: Option<u64>,
    },
    /// The request or a stored row is malformed: a key that is empty or not a digest, an
    /// entry whose kind does not match its key's, a body that does not decode, a bad URL.
    #[error("invalid catalog request: {0}")]
    Invalid(String),
    /// The database's schema was migrated by a newer Spillway than this one.
    #[error("the catalog database's schema is at version {found}, newer than the {known} this build of Spillway knows; upgrade Spillway (or point it at another database)")]
    SchemaTooNew {
        /// The newest migration recorded in the database.
        found: u64,
        /// The newest migration this build carries.
        known: u64,
    },
    /// Anything else the database said (a constraint, a missing table: has `migrate` run?).
    #[error("catalog database error: {0}")]
    Other(String),
}

fn conflict_message(current: Option<u64>) -> String {
    match current {
        Some(v) => format!("version conflict: the entry is now at version {v}"),
        None => "version conflict: the entry does not exist".to_string(),
    }
}

impl Error {
    /// Whether retrying later can help (the database is unreachable, not wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Wraps a driver error with what was being done, sorted into the variants above.
    pub(crate) fn db(doing: &str, err: sqlx::Error) -> Self {
        let message = format!("{doing}: {err}");
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(message),
            sqlx::Error::Database(db) if is_transient_code(db.code().as_deref()) => {
                Self::Unavailable(message)
            }
            sqlx::Error::Configuration(_) => Self::Invalid(message),
            _ => Self::Other(message),
        }
    }
}

/// SQLSTATE classes and codes (Postgres) and result codes (SQLite) that mean "not now"
/// rather than "wrong".
fn is_transient_code(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || matches!(code, "57P01" | "57P02" | "57P03") // admin/crash shutdown, cannot connect now
        || matches!(code, "40001" | "40P01") // serialization failure, deadlock: retry
        || matches!(code, "5" | "6" | "261" | "262" | "517" | "773") // SQLITE_BUSY, SQLITE_LOCKED and their extended codes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_says_what_it_found() {
        let e = Error::Conflict { current: Some(7) };
        assert_eq!(
            e.to_string(),
            "version conflict: the entry is now at version 7"
        );
        let e = Error::Conflict { current: None };
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn io_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(Error::db("reading", sqlx::Error::Io(io)).is_unavailable());
        assert!(Error::db("reading", sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!Error::db("reading", sqlx::Error::RowNotFound).is_unavailable());
    }
}
