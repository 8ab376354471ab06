//! The SQLite backend: the embedded default, one file that one node or several nodes on one
//! host share.
//!
//! The file is opened in WAL mode (readers never block the writer, and a load reads one
//! consistent snapshot), created if missing, with a busy timeout so that two processes
//! writing to one file wait for each other instead of failing with `SQLITE_BUSY`. Every
//! write transaction starts with `BEGIN IMMEDIATE`, which takes the file's write lock up
//! front (and waits for it under the busy timeout): a deferred transaction that reads first
//! and writes later could instead find its snapshot stale and fail at once.
//!
//! Versions are allocated as on PostgreSQL (`UPDATE spillway_catalog_meta SET version =
//! version + 1 RETURNING version` inside the write transaction). SQLite serializes writers
//! anyway, so here it is simply one scheme for both backends; see `postgres.rs` for why it
//! matters there. SQLite has no notifications: nodes poll [`CatalogDb::changes_since`].

use crate::db::{CatalogDb, Migrated, Notifications};
use crate::{migrate, row, Error};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use spillway_core::catalog::{Change, Entry, EntryKey, Kind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Executor, Sqlite, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// How long a writer waits for another process's write lock before giving up as
/// [`Error::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows per statement in [`CatalogDb::put_many`]: 5 parameters each, well under SQLite's
/// 32,766-parameter limit.
const BULK_ROWS: usize = 1_000;

const UPSERT_TAIL: &str = " ON CONFLICT (kind, scope, id) DO UPDATE SET \
     body = excluded.body, version = excluded.version, deleted = 0";

/// A catalog in a SQLite file.
pub struct SqliteCatalog {
    pool: SqlitePool,
    /// Rows `load` and `changes_since` skipped because they did not decode.
    unreadable: std::sync::atomic::AtomicU64,
}

/// Whether opening `url` (whose file sqlx reads as `path`) would create a file: not for an
/// in-memory database (`sqlite::memory:`, which sqlx names `file:sqlx-in-memory-N`, or
/// `mode=memory`), nor one opened read-only or immutable, which must exist already.
fn names_a_file_to_create(url: &str, path: &std::path::Path) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let special = query
        .split('&')
        .any(|p| p == "mode=memory" || p == "mode=ro" || p.starts_with("immutable"));
    !(url.contains(":memory:") || special || path.to_string_lossy().starts_with("file:"))
}

/// Creates the database file at `path`, empty and readable by this user only, if there is
/// none (an existing one keeps its mode): it holds every API key's digest, and keys chosen by
/// hand can be guessed offline from one. SQLite gives its journal files the database file's
/// mode.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path.exists() {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        // Another process made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteCatalog {
    /// Opens (creating if missing) the database a `sqlite:` URL names:
    /// `sqlite:///absolute/path.db`, `sqlite://relative.db` or `sqlite::memory:`. Fails if
    /// the file cannot be opened or created.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Invalid(format!("catalog URL `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        if names_a_file_to_create(url, options.get_filename()) {
            create_private(options.get_filename()).map_err(|e| {
                Error::Invalid(format!("catalog URL `{url}`: cannot create its file: {e}"))
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| Error::db(&format!("opening {url}"), e))?;
        Ok(Self {
            pool,
            unreadable: Default::default(),
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, Error> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db("starting a write", e))
    }
}

/// Takes the next `count` versions; returns the last of them.
async fn allocate(tx: &mut Transaction<'static, Sqlite>, count: u64) -> Result<u64, Error> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE spillway_catalog_meta SET version = version + ?1 WHERE id = 1 RETURNING version",
    )
    .bind(row::to_db(count)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| Error::db("allocating a version", e))?;
    row::from_db(last)
}

/// The live version of one entry and its stored body, inside a write transaction.
async fn current(
    tx: &mut Transaction<'static, Sqlite>,
    key: &EntryKey,
) -> Result<Option<(u64, String)>, Error> {
    let (kind, scope, id) = row::columns(key);
    let found: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, body FROM spillway_catalog_entries \
         WHERE kind = ?1 AND scope = ?2 AND id = ?3 AND deleted = 0",
    )
    .bind(kind)
    .bind(scope)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| Error::db("reading an entry", e))?;
    found
        .map(|(version, body)| Ok((row::from_db(version)?, body)))
        .transpose()
}

async fn commit(tx: Transaction<'static, Sqlite>) -> Result<(), Error> {
    tx.commit().await.map_err(|e| Error::db("committing", e))
}

#[async_trait]
impl CatalogDb for SqliteCatalog {
    fn unreadable(&self) -> u64 {
        self.unreadable.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<Migrated, Error> {
        let mut tx = self.begin_write().await?;
        (&mut *tx)
            .execute(sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS spillway_schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
            )",
            ))
            .await
            .map_err(|e| Error::db("creating spillway_schema_migrations", e))?;
        let from: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM spillway_schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db("reading spillway_schema_migrations", e))?;
        let from = row::from_db(from)?;
        let mut to = from;
        for m in migrate::pending(migrate::SQLITE, from)? {
            let doing = format!("applying migration {} ({})", m.version, m.name);
            (&mut *tx)
                .execute(sqlx::raw_sql(m.sql))
                .await
                .map_err(|e| Error::db(&doing, e))?;
            sqlx::query("INSERT INTO spillway_schema_migrations (version, name) VALUES (?1, ?2)")
                .bind(row::to_db(m.version)?)
                .bind(m.name)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(&doing, e))?;
            to = m.version;
        }
        commit(tx).await?;
        Ok(Migrated { from, to })
    }

    async fn version(&self) -> Result<u64, Error> {
        let v: i64 = sqlx::query_scalar("SELECT version FROM spillway_catalog_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("reading the catalog version", e))?;
        row::from_db(v)
    }

    async fn load(&self) -> Result<(u64, Vec<(EntryKey, Entry)>), Error> {
        // A read transaction in WAL mode sees one snapshot from its first read to its end.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::db("starting a load", e))?;
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM spillway_catalog_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db("reading the catalog version", e))?;
        let mut entries = Vec::new();
        for kind in [Kind::Tenant, Kind::User, Kind::ApiKey] {
            let mut rows = sqlx::query_as::<_, (String, String, String, i64)>(
                "SELECT scope, id, body, version FROM spillway_catalog_entries \
                 WHERE kind = ?1 AND deleted = 0",
            )
            .bind(kind.as_str())
            .fetch(&mut *tx);
            while let Some((scope, id, body, v)) = rows
                .try_next()
                .await
                .map_err(|e| Error::db("loading the catalog", e))?
            {
                let key = row::key_of(kind, scope, id);
                if let Some(entry) = row::decode_stored(kind, &body, &key, v, &self.unreadable) {
                    entries.push((key, entry));
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| Error::db("ending a load", e))?;
        Ok((row::from_db(version)?, entries))
    }

    async fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query_as::<_, (String, String, String, Option<String>, i64)>(
            "SELECT kind, scope, id, body, version FROM spillway_catalog_entries \
             WHERE version > ?1 ORDER BY version LIMIT ?2",
        )
        .bind(row::to_db(version)?)
        .bind(row::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("reading changes", e))?;
        let mut changes = Vec::with_capacity(rows.len());
        for (kind, scope, id, body, v) in rows {
            let kind = row::kind_of(&kind)?;
            let key = row::key_of(kind, scope, id);
            // A row that does not decode is skipped (and logged): the changes after it still
            // arrive.
            let entry = match body {
                Some(body) => match row::decode_stored(kind, &body, &key, v, &self.unreadable) {
                    Some(entry) => Some(entry),
                    None => continue,
                },
                None => None,
            };
            changes.push(Change {
                version: row::from_db(v)?,
                key,
                entry,
            });
        }
        Ok(changes)
    }

    async fn get(&self, key: &EntryKey) -> Result<Option<(Entry, u64)>, Error> {
        row::check_key(key)?;
        let (kind, scope, id) = row::columns(key);
        let found = sqlx::query_as::<_, (String, i64)>(
            "SELECT body, version FROM spillway_catalog_entries \
             WHERE kind = ?1 AND scope = ?2 AND id = ?3 AND deleted = 0",
        )
        .bind(kind)
        .bind(scope)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("reading an entry", e))?;
        match found {
            None => Ok(None),
            Some((body, v)) => Ok(Some((
                row::decode_known(key.kind(), &body, key, v)?,
                row::from_db(v)?,
            ))),
        }
    }

    async fn put(
        &self,
        key: EntryKey,
        entry: Entry,
        if_version: Option<u64>,
    ) -> Result<u64, Error> {
        let body = row::encode(&key, &entry)?;
        let mut tx = self.begin_write().await?;
        let version = allocate(&mut tx, 1).await?;
        let now = current(&mut tx, &key).await?;
        row::check_condition(if_version, now.as_ref().map(|(version, _)| *version))?;
        // Fields a newer build set, which this one cannot see, stay.
        let body = row::with_unknown_of(key.kind(), body, now.as_ref().map(|(_, b)| b.as_str()));
        let (kind, scope, id) = row::columns(&key);
        sqlx::query(&format!(
            "INSERT INTO spillway_catalog_entries (kind, scope, id, body, version, deleted) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0){UPSERT_TAIL}"
        ))
        .bind(kind)
        .bind(scope)
        .bind(id)
        .bind(body)
        .bind(row::to_db(version)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("writing an entry", e))?;
        commit(tx).await?;
        Ok(version)
    }

    async fn delete(&self, key: &EntryKey, if_version: Option<u64>) -> Result<Option<u64>, Error> {
        row::check_key(key)?;
        let mut tx = self.begin_write().await?;
        let version = allocate(&mut tx, 1).await?;
        let now = current(&mut tx, key).await?.map(|(version, _)| version);
        row::check_condition(if_version, now)?;
        if now.is_none() {
            return Ok(None); // nothing to delete: the transaction (and its version) is dropped
        }
        let (kind, scope, id) = row::columns(key);
        sqlx::query(
            "UPDATE spillway_catalog_entries SET body = NULL, deleted = 1, version = ?4 \
             WHERE kind = ?1 AND scope = ?2 AND id = ?3",
        )
        .bind(kind)
        .bind(scope)
        .bind(id)
        .bind(row::to_db(version)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("deleting an entry", e))?;
        commit(tx).await?;
        Ok(Some(version))
    }

    async fn list(
        &self,
        kind: Kind,
        tenant: Option<&str>,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, Entry, u64)>, Error> {
        let (after_scope, after_id) = row::list_start(kind, after)?;
        let tenant = tenant.filter(|_| kind == Kind::User);
        let sql = format!(
            "SELECT scope, id, body, version FROM spillway_catalog_entries \
             WHERE kind = ?1 AND deleted = 0 AND (kind, scope, id) > (?1, ?2, ?3) {} \
             ORDER BY kind, scope, id LIMIT ?4",
            if tenant.is_some() {
                "AND scope = ?5"
            } else {
                ""
            }
        );
        let mut query = sqlx::query_as::<_, (String, String, String, i64)>(&sql)
            .bind(kind.as_str())
            .bind(after_scope)
            .bind(after_id)
            .bind(row::limit(limit));
        if let Some(tenant) = tenant {
            query = query.bind(tenant);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("listing entries", e))?;
        rows.into_iter()
            .map(|(scope, id, body, v)| {
                let key = row::key_of(kind, scope, id);
                let entry = row::decode_known(kind, &body, &key, v)?;
                Ok((key, entry, row::from_db(v)?))
            })
            .collect()
    }

    async fn put_many(&self, entries: Vec<(EntryKey, Entry)>) -> Result<u64, Error> {
        let entries = row::dedup_last(entries);
        let bodies = entries
            .iter()
            .map(|(k, e)| row::encode(k, e))
            .collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return self.version().await;
        }
        let mut tx = self.begin_write().await?;
        let last = allocate(&mut tx, entries.len() as u64).await?;
        let first = last + 1 - entries.len() as u64;
        let mut sql = String::new();
        let mut sql_rows = 0;
        for (chunk_no, chunk) in entries.chunks(BULK_ROWS).enumerate() {
            if chunk.len() != sql_rows {
                sql = bulk_insert_sql(chunk.len());
                sql_rows = chunk.len();
            }
            let mut query = sqlx::query(&sql);
            for (i, (key, _)) in chunk.iter().enumerate() {
                let n = chunk_no * BULK_ROWS + i;
                let (kind, scope, id) = row::columns(key);
                query = query
                    .bind(kind)
                    .bind(scope)
                    .bind(id)
                    .bind(bodies[n].as_str())
                    .bind(row::to_db(first + n as u64)?);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("importing entries", e))?;
        }
        commit(tx).await?;
        Ok(last)
    }

    fn notifications(&self) -> Option<Notifications> {
        None
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// `INSERT ... VALUES (?,?,?,?,?,0), ... ON CONFLICT ...` for `rows` rows.
fn bulk_insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(100 + rows * 18 + UPSERT_TAIL.len());
    sql.push_str(
        "INSERT INTO spillway_catalog_entries (kind, scope, id, body, version, deleted) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,0)");
    }
    sql.push_str(UPSERT_TAIL);
    sql
}
