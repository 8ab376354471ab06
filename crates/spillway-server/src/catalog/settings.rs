//! The `serve` flags for the catalog database and the admin API, and their checked form.

use super::sync::SyncSettings;
use crate::admin::AdminToken;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `spillway serve` for the catalog and the admin API.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// The tenant catalog's database: `sqlite:///var/lib/spillway/catalog.db` (embedded, one
    /// host) or `postgres://user:pass@host/db` (many nodes). Unset: tenants come from the
    /// policy's `tenants:` section.
    #[arg(long, env = "SPILLWAY_CATALOG", value_name = "URL")]
    pub catalog: Option<String>,

    /// Where this node keeps a snapshot of the catalog, to boot from when the database is down
    /// at start.
    #[arg(long, env = "SPILLWAY_CATALOG_SNAPSHOT", value_name = "FILE")]
    pub catalog_snapshot: Option<PathBuf>,

    /// Time between polls of the catalog database for changes (Postgres notifications wake
    /// nodes sooner; polling makes up for lost ones).
    #[arg(long, env = "SPILLWAY_CATALOG_POLL", value_name = "DURATION", default_value = "2s",
          value_parser = parse_duration)]
    pub catalog_poll: Duration,

    /// How long the first catalog load may take before the node boots from its snapshot.
    #[arg(long, env = "SPILLWAY_CATALOG_BOOT_TIMEOUT", value_name = "DURATION",
          default_value = "5s", value_parser = parse_duration)]
    pub catalog_boot_timeout: Duration,

    /// Create or upgrade the catalog's schema at start (else run `spillway catalog migrate`).
    #[arg(long, env = "SPILLWAY_CATALOG_MIGRATE")]
    pub catalog_migrate: bool,

    /// File holding the admin API's bearer token (the variable SPILLWAY_ADMIN_TOKEN may hold
    /// the token itself). The admin API is off when neither is set.
    #[arg(long, env = "SPILLWAY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin API on this address only (e.g. a private interface), instead of under
    /// /v1/admin on the main listener.
    #[arg(long, env = "SPILLWAY_ADMIN_LISTEN", value_name = "ADDR",
          value_parser = crate::cli::parse_listen)]
    pub admin_listen: Option<SocketAddr>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = spillway_core::rate::parse_duration(text).map(Duration::from_micros)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// The catalog database and how to follow it.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// The database URL.
    pub url: String,
    /// Migrate at start.
    pub migrate: bool,
    /// How to follow it.
    pub sync: SyncSettings,
}

/// The admin API: its token and where it listens.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token.
    pub token: AdminToken,
    /// Its own listener, or `None` for the main one.
    pub listen: Option<SocketAddr>,
}

impl CatalogArgs {
    /// The catalog's settings, if a database is configured.
    pub fn catalog(&self) -> Option<CatalogSettings> {
        let url = self.catalog.clone()?;
        Some(CatalogSettings {
            url,
            migrate: self.catalog_migrate,
            sync: SyncSettings {
                poll: self.catalog_poll,
                snapshot: self.catalog_snapshot.clone(),
                boot_timeout: self.catalog_boot_timeout,
                // Set by `serve` only when the migration at start could not run.
                migrate: false,
            },
        })
    }

    /// The admin API's settings, if a token is configured; an unreadable or short token is an
    /// error.
    pub fn admin(&self) -> Result<Option<AdminSettings>, String> {
        let text = match &self.admin_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --admin-token-file {}: {e}", path.display()))?,
            None => match std::env::var("SPILLWAY_ADMIN_TOKEN") {
                Ok(token) => token,
                Err(_) if self.admin_listen.is_some() => {
                    return Err("--admin-listen needs a token: --admin-token-file or \
                                SPILLWAY_ADMIN_TOKEN"
                        .into())
                }
                Err(_) => return Ok(None),
            },
        };
        let token = AdminToken::new(&text)?;
        Ok(Some(AdminSettings {
            token,
            listen: self.admin_listen,
        }))
    }
}
