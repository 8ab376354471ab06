//! The PostgreSQL backend, for many nodes sharing one catalog.
//!
//! **Why versions come from a locked row.** A node follows the catalog by asking for changes
//! `WHERE version > applied`. With a plain sequence, two concurrent writers can take 10 and
//! 11 and commit 11 first; a node that reads then sees 11, records it as applied, and skips
//! 10 forever when it commits a moment later. So every write transaction allocates its
//! version with `UPDATE spillway_catalog_meta SET version = version + 1 RETURNING version`:
//! the row lock that takes is held until commit, so the next writer gets its number only
//! after this one's is committed (or rolled back and reused). Versions therefore commit, and
//! become visible, strictly in order, with no gaps. The cost is that writes to the catalog
//! are serialized, which a catalog written by admins and billing systems can afford.
//!
//! Each write also runs `pg_notify('spillway_catalog', '<version>')` in its transaction, so
//! listeners hear of it when (and only if) it commits; see `notify.rs`.
//!
//! Connections are made lazily: [`PgCatalog::open`] only checks the URL, so a node can start
//! while the database is down and every call fails as [`Error::Unavailable`] until it is up.

use crate::db::{CatalogDb, Migrated, Notifications};
use crate::{migrate, notify, row, Error};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use spillway_core::catalog::{Change, Entry, EntryKey, Kind};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// The channel writes announce their version on.
pub const CHANNEL: &str = "spillway_catalog";

/// How long a call waits for a connection before failing as [`Error::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per statement in [`CatalogDb::put_many`] (sent as arrays, one parameter per column).
const BULK_ROWS: usize = 20_000;

/// The advisory lock that keeps two nodes from migrating at once ("SPILLWAY" in ASCII).
const MIGRATION_LOCK: i64 = 0x5350_494c_4c57_4159;

const UPSERT_TAIL: &str = " ON CONFLICT (kind, scope, id) DO UPDATE SET \
     body = EXCLUDED.body, version = EXCLUDED.version, deleted = FALSE";

/// A catalog in a PostgreSQL database.
pub struct PgCatalog {
    pool: PgPool,
    /// Rows `load` and `changes_since` skipped because they did not decode.
    unreadable: std::sync::atomic::AtomicU64,
}

impl PgCatalog {
    /// Prepares a pool for a `postgres://` or `postgresql://` URL without connecting (see
    /// the module docs). Fails only if the URL is malformed.
    pub fn open(url: &str) -> Result<Self, Error> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Invalid(format!("catalog URL `{}`: {e}", crate::redacted(url))))?
            .application_name("spillway-catalog");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            unreadable: Default::default(),
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        self.pool
            .begin()
            .await
            .map_err(|e| Error::db("starting a transaction", e))
    }
}

/// Takes the next `count` versions (locking the meta row until commit, see the module docs);
/// returns the last of them.
async fn allocate(tx: &mut Transaction<'static, Postgres>, count: u64) -> Result<u64, Error> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE spillway_catalog_meta SET version = version + $1 WHERE id = 1 RETURNING version",
    )
    .bind(row::to_db(count)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| Error::db("allocating a version", e))?;
    row::from_db(last)
}

/// Announces `version` to listeners when the transaction commits.
async fn announce(tx: &mut Transaction<'static, Postgres>, version: u64) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(version.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db("announcing a version", e))?;
    Ok(())
}

/// The live version of one entry and its stored body, inside a write transaction (which
/// holds the meta row, so no other writer can change it before commit).
async fn current(
    tx: &mut Transaction<'static, Postgres>,
    key: &EntryKey,
) -> Result<Option<(u64, String)>, Error> {
    let (kind, scope, id) = row::columns(key);
    let found: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, body::text FROM spillway_catalog_entries \
         WHERE kind = $1 AND scope = $2 AND id = $3 AND NOT deleted",
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

async fn commit(tx: Transaction<'static, Postgres>) -> Result<(), Error> {
    tx.commit().await.map_err(|e| Error::db("committing", e))
}

/// The catalog version, through any executor.
pub(crate) async fn read_version<'e, E>(executor: E) -> Result<u64, Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let v: i64 = sqlx::query_scalar("SELECT version FROM spillway_catalog_meta WHERE id = 1")
        .fetch_one(executor)
        .await
        .map_err(|e| Error::db("reading the catalog version", e))?;
    row::from_db(v)
}

#[async_trait]
impl CatalogDb for PgCatalog {
    fn unreadable(&self) -> u64 {
        self.unreadable.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<Migrated, Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db("locking for migration", e))?;
        (&mut *tx)
            .execute(sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS spillway_schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
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
        for m in migrate::pending(migrate::POSTGRES, from)? {
            let doing = format!("applying migration {} ({})", m.version, m.name);
            (&mut *tx)
                .execute(sqlx::raw_sql(m.sql))
                .await
                .map_err(|e| Error::db(&doing, e))?;
            sqlx::query("INSERT INTO spillway_schema_migrations (version, name) VALUES ($1, $2)")
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
        read_version(&self.pool).await
    }

    async fn load(&self) -> Result<(u64, Vec<(EntryKey, Entry)>), Error> {
        // One snapshot for the version and every row.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| Error::db("starting a load", e))?;
        let version = read_version(&mut *tx).await?;
        let mut entries = Vec::new();
        for kind in [Kind::Tenant, Kind::User, Kind::ApiKey] {
            let mut rows = sqlx::query_as::<_, (String, String, String, i64)>(
                "SELECT scope, id, body::text, version FROM spillway_catalog_entries \
                 WHERE kind = $1 AND NOT deleted",
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
        Ok((version, entries))
    }

    async fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query_as::<_, (String, String, String, Option<String>, i64)>(
            "SELECT kind, scope, id, body::text, version FROM spillway_catalog_entries \
             WHERE version > $1 ORDER BY version LIMIT $2",
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
            "SELECT body::text, version FROM spillway_catalog_entries \
             WHERE kind = $1 AND scope = $2 AND id = $3 AND NOT deleted",
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
        let mut tx = self.begin().await?;
        let version = allocate(&mut tx, 1).await?;
        let now = current(&mut tx, &key).await?;
        row::check_condition(if_version, now.as_ref().map(|(version, _)| *version))?;
        // Fields a newer build set, which this one cannot see, stay.
        let body = row::with_unknown_of(key.kind(), body, now.as_ref().map(|(_, b)| b.as_str()));
        let (kind, scope, id) = row::columns(&key);
        sqlx::query(&format!(
            "INSERT INTO spillway_catalog_entries (kind, scope, id, body, version, deleted) \
             VALUES ($1, $2, $3, $4::jsonb, $5, FALSE){UPSERT_TAIL}"
        ))
        .bind(kind)
        .bind(scope)
        .bind(id)
        .bind(body)
        .bind(row::to_db(version)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("writing an entry", e))?;
        announce(&mut tx, version).await?;
        commit(tx).await?;
        Ok(version)
    }

    async fn delete(&self, key: &EntryKey, if_version: Option<u64>) -> Result<Option<u64>, Error> {
        row::check_key(key)?;
        let mut tx = self.begin().await?;
        let version = allocate(&mut tx, 1).await?;
        let now = current(&mut tx, key).await?.map(|(version, _)| version);
        row::check_condition(if_version, now)?;
        if now.is_none() {
            return Ok(None); // nothing to delete: the transaction (and its version) is dropped
        }
        let (kind, scope, id) = row::columns(key);
        sqlx::query(
            "UPDATE spillway_catalog_entries SET body = NULL, deleted = TRUE, version = $4 \
             WHERE kind = $1 AND scope = $2 AND id = $3",
        )
        .bind(kind)
        .bind(scope)
        .bind(id)
        .bind(row::to_db(version)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("deleting an entry", e))?;
        announce(&mut tx, version).await?;
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
            "SELECT scope, id, body::text, version FROM spillway_catalog_entries \
             WHERE kind = $1 AND NOT deleted AND (kind, scope, id) > ($1, $2, $3) {} \
             ORDER BY kind, scope, id LIMIT $4",
            if tenant.is_some() {
                "AND scope = $5"
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
        let mut tx = self.begin().await?;
        let last = allocate(&mut tx, entries.len() as u64).await?;
        let first = last + 1 - entries.len() as u64;
        let sql = format!(
            "INSERT INTO spillway_catalog_entries (kind, scope, id, body, version, deleted) \
             SELECT k, s, i, b::jsonb, v, FALSE \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) AS t(k, s, i, b, v)\
             {UPSERT_TAIL}"
        );
        for (chunk_no, chunk) in entries.chunks(BULK_ROWS).enumerate() {
            let start = chunk_no * BULK_ROWS;
            let mut kinds = Vec::with_capacity(chunk.len());
            let mut scopes = Vec::with_capacity(chunk.len());
            let mut ids = Vec::with_capacity(chunk.len());
            let mut versions = Vec::with_capacity(chunk.len());
            for (i, (key, _)) in chunk.iter().enumerate() {
                let (kind, scope, id) = row::columns(key);
                kinds.push(kind);
                scopes.push(scope);
                ids.push(id);
                versions.push(row::to_db(first + (start + i) as u64)?);
            }
            sqlx::query(&sql)
                .bind(kinds)
                .bind(scopes)
                .bind(ids)
                .bind(&bodies[start..start + chunk.len()])
                .bind(versions)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("importing entries", e))?;
        }
        announce(&mut tx, last).await?;
        commit(tx).await?;
        Ok(last)
    }

    fn notifications(&self) -> Option<Notifications> {
        Some(notify::spawn(self.pool.clone()))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
