//! What the catalog's integration tests share: a fresh, migrated catalog on a real backend
//! (a SQLite file in a temporary directory, or a PostgreSQL server of its own from the
//! testkit), and small builders for entries.

#![allow(dead_code)] // each test file uses its own part

use spillway_catalog::CatalogDb;
use spillway_core::catalog::{ApiKeyRecord, Entry, EntryKey, TenantRecord, UserRecord};
use spillway_testkit::postgres::PostgresServer;
use std::sync::Arc;

/// A migrated catalog and what backs it (kept alive, and dropped after the catalog).
pub struct Fixture {
    pub db: Arc<dyn CatalogDb>,
    pub url: String,
    pub backing: Backing,
}

pub enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer),
}

impl Fixture {
    /// A catalog in a new SQLite file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let db = spillway_catalog::open(&url).await.expect("open sqlite");
        db.migrate().await.expect("migrate");
        Self {
            db,
            url,
            backing: Backing::Sqlite(dir),
        }
    }

    /// A catalog on a PostgreSQL server of its own, or `None` when the test is to be
    /// skipped (see `spillway_testkit::postgres`).
    pub async fn postgres(test: &str) -> Option<Self> {
        let server = PostgresServer::start_or_skip(test)?;
        let url = server.url();
        let db = spillway_catalog::open(&url).await.expect("open postgres");
        db.migrate().await.expect("migrate");
        Some(Self {
            db,
            url,
            backing: Backing::Postgres(server),
        })
    }

    /// Another, independent connection pool on the same database (as another process has).
    pub async fn second_client(&self) -> Arc<dyn CatalogDb> {
        spillway_catalog::open(&self.url).await.expect("reopen")
    }

    /// Runs SQL behind the catalog's back (to fake a newer schema, say).
    pub async fn exec(&self, sql: &str) {
        match &self.backing {
            Backing::Sqlite(_) => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(sql).execute(&pool).await.expect("exec");
                pool.close().await;
            }
            Backing::Postgres(server) => {
                server.psql(sql);
            }
        }
    }

    /// The stored body of the live row whose id is `id` (the tests' own, plain ids), as JSON,
    /// read behind the catalog's back.
    pub async fn body_of(&self, id: &str) -> serde_json::Value {
        let body: String = match &self.backing {
            Backing::Sqlite(_) => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.expect("connect");
                let body = sqlx::query_scalar(
                    "SELECT body FROM spillway_catalog_entries WHERE id = ?1 AND deleted = 0",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("a live row");
                pool.close().await;
                body
            }
            Backing::Postgres(server) => server.psql(&format!(
                "SELECT body::text FROM spillway_catalog_entries WHERE id = '{id}' AND NOT deleted"
            )),
        };
        serde_json::from_str(&body).expect("a JSON body")
    }

    pub fn server(&mut self) -> Option<&mut PostgresServer> {
        match &mut self.backing {
            Backing::Postgres(server) => Some(server),
            Backing::Sqlite(_) => None,
        }
    }
}

pub fn tenant(id: &str) -> EntryKey {
    EntryKey::Tenant { tenant: id.into() }
}

pub fn user(tenant: &str, user: &str) -> EntryKey {
    EntryKey::User {
        tenant: tenant.into(),
        user: user.into(),
    }
}

pub fn api_key(n: u8) -> EntryKey {
    EntryKey::ApiKey {
        digest: format!("{n:02x}").repeat(32),
    }
}

pub fn on_tier(tier: &str) -> Entry {
    Entry::Tenant(TenantRecord {
        tier: Some(tier.into()),
        ..Default::default()
    })
}

pub fn a_user(tier: &str) -> Entry {
    Entry::User(UserRecord {
        tier: Some(tier.into()),
        ..Default::default()
    })
}

pub fn key_of(tenant: &str) -> Entry {
    Entry::ApiKey(ApiKeyRecord {
        tenant: tenant.into(),
        user: None,
        tier: None,
    })
}
