//! Times the catalog at the issue's target size: bulk-imports N tenants (no overrides; a
//! million by default) into SQLite and into a real PostgreSQL from the testkit, then times
//! `load()` on each, and the local snapshot file's save and load.
//!
//! ```sh
//! cargo run --release -p spillway-catalog --example catalog_load            # 1,000,000 tenants
//! cargo run -p spillway-catalog --example catalog_load -- 100000            # fewer, debug build
//! ```
//!
//! PostgreSQL is skipped (with a note) when it is not installed.

// A benchmark reads the wall clock by design.
#![allow(clippy::disallowed_methods)]

use spillway_catalog::{snapshot, CatalogDb};
use spillway_core::catalog::{Entry, EntryKey, TenantRecord};
use spillway_testkit::postgres::PostgresServer;
use std::sync::Arc;
use std::time::Instant;

fn tenants(n: usize) -> Vec<(EntryKey, Entry)> {
    let tiers = ["free", "paid", "enterprise"];
    (0..n)
        .map(|i| {
            (
                EntryKey::Tenant {
                    tenant: format!("tenant-{i:08}"),
                },
                Entry::Tenant(TenantRecord {
                    tier: Some(tiers[i % tiers.len()].to_string()),
                    ..Default::default()
                }),
            )
        })
        .collect()
}

async fn measure(name: &str, db: Arc<dyn CatalogDb>, n: usize) {
    db.migrate().await.expect("migrate");
    let entries = tenants(n);
    let started = Instant::now();
    let version = db.put_many(entries).await.expect("import");
    let import = started.elapsed();
    // Twice: the first read may still find the data outside the database's cache.
    let mut loads = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let (v, loaded) = db.load().await.expect("load");
        loads.push(started.elapsed());
        assert_eq!((v, loaded.len()), (version, n));
    }
    println!(
        "{name:>8}: import {n} tenants {:>7.2} s | load {:>6.2} s, again {:>6.2} s",
        import.as_secs_f64(),
        loads[0].as_secs_f64(),
        loads[1].as_secs_f64()
    );
    db.close().await;
}

#[tokio::main]
async fn main() {
    let n: usize = match std::env::args().nth(1) {
        None => 1_000_000,
        Some(arg) => arg.replace([',', '_'], "").parse().unwrap_or_else(|_| {
            eprintln!("usage: catalog_load [TENANTS]  (got `{arg}`)");
            std::process::exit(2)
        }),
    };
    let dir = tempfile::tempdir().expect("temp dir");

    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let db = spillway_catalog::open(&url).await.expect("open sqlite");
    measure("sqlite", db, n).await;

    match PostgresServer::start_or_skip("catalog_load") {
        Some(server) => {
            let db = spillway_catalog::open(&server.url())
                .await
                .expect("open postgres");
            measure("postgres", db, n).await;
        }
        None => println!("postgres: skipped (not installed)"),
    }

    let entries = tenants(n);
    let path = dir.path().join("catalog.snapshot");
    let started = Instant::now();
    snapshot::save(&path, n as u64, entries.iter().map(|(k, e)| (k, e))).expect("save");
    let save = started.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let (_, loaded) = snapshot::load(&path).expect("load");
    let load = started.elapsed();
    assert_eq!(loaded.len(), n);
    println!(
        "snapshot: save {:>6.2} s | load {:>6.2} s | {:.1} MB",
        save.as_secs_f64(),
        load.as_secs_f64(),
        size as f64 / 1e6
    );
}
