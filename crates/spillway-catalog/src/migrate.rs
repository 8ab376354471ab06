//! The schema's versioned migrations, embedded from `migrations/{sqlite,postgres}/` so a
//! binary carries exactly the schema it was built for, and the rule for which to apply.
//!
//! Each backend's `migrate` runs, in one transaction: create `spillway_schema_migrations` if
//! missing, read the newest version recorded there, refuse a database newer than
//! [`LATEST`] ([`Error::SchemaTooNew`]), then apply and record every migration after it in
//! order. Running it again finds nothing to do.

use crate::Error;

/// One step of the schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Its number, from 1, one more than the previous.
    pub version: u64,
    /// A short name, recorded beside the number.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: &'static str,
}

/// SQLite's migrations, in order.
pub(crate) const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sql: include_str!("../migrations/sqlite/0001_init.sql"),
}];

/// PostgreSQL's migrations, in order (the same numbers as SQLite's).
pub(crate) const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sql: include_str!("../migrations/postgres/0001_init.sql"),
}];

/// The newest schema this build knows.
pub const LATEST: u64 = 1;

/// The migrations to apply to a database whose newest recorded migration is `current`.
pub(crate) fn pending(
    migrations: &'static [Migration],
    current: u64,
) -> Result<&'static [Migration], Error> {
    if current > LATEST {
        return Err(Error::SchemaTooNew {
            found: current,
            known: LATEST,
        });
    }
    let done = migrations
        .iter()
        .take_while(|m| m.version <= current)
        .count();
    Ok(&migrations[done..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_number_their_migrations_alike() {
        for list in [SQLITE, POSTGRES] {
            let numbers: Vec<u64> = list.iter().map(|m| m.version).collect();
            let expected: Vec<u64> = (1..=LATEST).collect();
            assert_eq!(numbers, expected);
        }
        let names = |l: &[Migration]| l.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }

    #[test]
    fn pending_skips_what_is_applied_and_refuses_the_future() {
        assert_eq!(pending(SQLITE, 0).unwrap().len(), 1);
        assert!(pending(SQLITE, LATEST).unwrap().is_empty());
        let err = pending(SQLITE, LATEST + 1).unwrap_err();
        assert!(
            matches!(err, Error::SchemaTooNew { found, known } if found == LATEST + 1 && known == LATEST)
        );
    }
}
