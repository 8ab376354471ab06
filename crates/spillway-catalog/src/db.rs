//! The one interface every catalog backend offers: [`CatalogDb`].
//!
//! The catalog is a versioned key-value map. Every write (put, delete, each entry of a bulk
//! import) gets the next catalog version, across every kind, starting at 1; versions become
//! visible strictly in order, so a reader that has applied version `n` can ask for everything
//! after `n` and never miss a change. A deleted entry stays as a tombstone with its own
//! version, so the deletion reaches every reader too.

use crate::Error;
use async_trait::async_trait;
use spillway_core::catalog::{Change, Entry, EntryKey, Kind};

/// Versions announced by the database as writes commit (see [`CatalogDb::notifications`]).
pub type Notifications = tokio::sync::mpsc::Receiver<u64>;

/// What [`CatalogDb::migrate`] did: the schema version before and after (equal when there was
/// nothing to do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The newest migration recorded before (0 for a fresh database).
    pub from: u64,
    /// The newest migration recorded now.
    pub to: u64,
}

/// A catalog stored in a database. Object safe: callers hold an `Arc<dyn CatalogDb>` chosen
/// at start-up by [`crate::open`].
#[async_trait]
pub trait CatalogDb: Send + Sync {
    /// The backend's name for logs and metrics: `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// How many times [`CatalogDb::load`] and [`CatalogDb::changes_since`] have skipped (and
    /// logged) a stored row since this handle was opened because it did not decode (written
    /// outside Spillway, or by a build whose types this one cannot read); a row read twice
    /// counts twice. An export, one load on a fresh handle, checks it.
    fn unreadable(&self) -> u64;

    /// Creates or upgrades the schema to the newest this build knows, in one transaction.
    /// Idempotent. Refuses ([`Error::SchemaTooNew`]) a database migrated by a newer Spillway.
    async fn migrate(&self) -> Result<Migrated, Error>;

    /// The catalog's current version: that of the latest committed write, 0 if none.
    async fn version(&self) -> Result<u64, Error>;

    /// Every live entry and the version they are consistent with, read in one snapshot, so
    /// a reader can load and then follow [`CatalogDb::changes_since`] that version.
    async fn load(&self) -> Result<(u64, Vec<(EntryKey, Entry)>), Error>;

    /// Up to `limit` changes after `version`, in version order, deletions included (with
    /// `entry: None`). An entry written several times appears once, at its latest version.
    /// Page by asking again after the last version returned.
    async fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, Error>;

    /// An entry and its version (that of its last write), `None` if absent or deleted.
    async fn get(&self, key: &EntryKey) -> Result<Option<(Entry, u64)>, Error>;

    /// Writes an entry and returns the new catalog version (also the entry's version).
    ///
    /// `if_version` makes it conditional: `Some(0)` means the entry must not exist (a create),
    /// `Some(n)` that its version must be `n` (an update of what the caller read); otherwise
    /// [`Error::Conflict`] with its current version. An entry of another kind than its key's,
    /// or a malformed key, is [`Error::Invalid`].
    async fn put(&self, key: EntryKey, entry: Entry, if_version: Option<u64>)
        -> Result<u64, Error>;

    /// Deletes an entry (leaving a tombstone) and returns the new catalog version, or `None`
    /// if it did not exist (then nothing is written). `if_version`: as for
    /// [`CatalogDb::put`]; `Some(n)` with `n > 0` on an absent entry is a conflict.
    async fn delete(&self, key: &EntryKey, if_version: Option<u64>) -> Result<Option<u64>, Error>;

    /// Up to `limit` live entries of `kind` in key order, starting after `after`, each with
    /// its version. `tenant` narrows users to one tenant's (it is ignored for other kinds).
    async fn list(
        &self,
        kind: Kind,
        tenant: Option<&str>,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Entry, u64)>, Error>;

    /// Writes many entries in one transaction (an import): each gets its own version, in the
    /// order given (the last of several writes to one key wins). Returns the new catalog
    /// version. Every key and entry is checked before anything is written.
    async fn put_many(&self, entries: Vec<(EntryKey, Entry)>) -> Result<u64, Error>;

    /// A channel of versions announced as writes commit, from any process writing to the
    /// same database, or `None` where the backend has no notifications (SQLite: poll
    /// [`CatalogDb::changes_since`]). After every (re)connection the current version is sent
    /// as well, so announcements missed while disconnected are made up for at once.
    /// Notifications only wake readers early; a reader must still poll now and then. Must be
    /// called within a Tokio runtime; the listening task ends when the receiver is dropped.
    fn notifications(&self) -> Option<Notifications>;

    /// Closes the connections (for a graceful shutdown); later calls fail as unavailable.
    async fn close(&self);
}
