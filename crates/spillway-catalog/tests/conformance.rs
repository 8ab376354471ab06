//! The conformance suite: the same test functions run against SQLite (a file in a temporary
//! directory) and PostgreSQL (a real server from the testkit). A backend passes when it
//! behaves as `CatalogDb`'s documentation says, identically to the other.
//!
//! PostgreSQL tests skip (loudly) only when PostgreSQL is not installed and
//! `SPILLWAY_REQUIRE_POSTGRES` is unset; `scripts/test.sh` sets it.

mod common;

use common::*;
use spillway_catalog::tenant::{belongings, delete_belonging, delete_tenant, TenantDeletion};
use spillway_catalog::{Error, Migrated};
use spillway_core::catalog::{Change, Entry, EntryKey, Kind, OverrideRecord, TenantRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs each listed test function once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut f = super::Fixture::sqlite().await;
                    super::$name(&mut f).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(mut f) = super::Fixture::postgres(concat!("postgres::", stringify!($name))).await else {
                        return;
                    };
                    super::$name(&mut f).await;
                }
            )*
        }
    };
}

conformance!(
    migrate_twice_is_a_no_op,
    a_newer_schema_is_refused,
    put_get_delete,
    versions_go_up_by_one_across_kinds,
    changes_come_in_order_with_deletions,
    changes_page_by_limit,
    if_version_guards_writes,
    list_pages_in_key_order,
    list_users_of_one_tenant,
    put_many_imports_in_one_go,
    load_is_consistent_with_its_version,
    kind_mismatch_and_bad_keys_are_refused,
    concurrent_writers_get_every_version_once,
    two_clients_share_one_catalog,
    fields_of_a_newer_build_are_read_around_and_kept,
    a_tenant_with_users_or_keys_goes_only_with_them,
);

async fn migrate_twice_is_a_no_op(f: &mut Fixture) {
    // The fixture migrated once already.
    assert_eq!(f.db.migrate().await.unwrap(), Migrated { from: 1, to: 1 });
    assert_eq!(f.db.migrate().await.unwrap(), Migrated { from: 1, to: 1 });
    assert_eq!(f.db.version().await.unwrap(), 0);
    assert_eq!(f.db.load().await.unwrap(), (0, vec![]));
    assert_eq!(f.db.changes_since(0, 10).await.unwrap(), vec![]);
}

async fn a_newer_schema_is_refused(f: &mut Fixture) {
    f.exec("INSERT INTO spillway_schema_migrations (version, name) VALUES (99, 'from the future')")
        .await;
    match f.db.migrate().await {
        Err(
            e @ Error::SchemaTooNew {
                found: 99,
                known: 1,
            },
        ) => {
            assert!(e.to_string().contains("upgrade Spillway"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

async fn put_get_delete(f: &mut Fixture) {
    let db = &f.db;
    assert_eq!(db.get(&tenant("acme")).await.unwrap(), None);
    assert_eq!(
        db.put(tenant("acme"), on_tier("free"), None).await.unwrap(),
        1
    );
    assert_eq!(
        db.get(&tenant("acme")).await.unwrap(),
        Some((on_tier("free"), 1))
    );
    let with_override = Entry::Tenant(TenantRecord {
        tier: Some("paid".into()),
        overrides: BTreeMap::from([(
            "per-user".to_string(),
            OverrideRecord {
                rate: Some("1200/min".into()),
                burst: Some(40),
                ..Default::default()
            },
        )]),
        // Stored in the entry's body: the field round-trips through both databases.
        home_region: Some("eu-west".into()),
    });
    assert_eq!(
        db.put(tenant("acme"), with_override.clone(), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.get(&tenant("acme")).await.unwrap(),
        Some((with_override, 2))
    );
    assert_eq!(db.delete(&tenant("acme"), None).await.unwrap(), Some(3));
    assert_eq!(db.get(&tenant("acme")).await.unwrap(), None);
    // Deleting what is not there writes nothing.
    assert_eq!(db.delete(&tenant("acme"), None).await.unwrap(), None);
    assert_eq!(db.delete(&tenant("nobody"), None).await.unwrap(), None);
    assert_eq!(db.version().await.unwrap(), 3);
    // A deleted entry can come back.
    assert_eq!(
        db.put(tenant("acme"), on_tier("free"), None).await.unwrap(),
        4
    );
    assert_eq!(
        db.get(&tenant("acme")).await.unwrap(),
        Some((on_tier("free"), 4))
    );
}

async fn versions_go_up_by_one_across_kinds(f: &mut Fixture) {
    let db = &f.db;
    let mut versions = vec![
        db.put(tenant("acme"), on_tier("free"), None).await.unwrap(),
        db.put(user("acme", "bob"), a_user("paid"), None)
            .await
            .unwrap(),
        db.put(api_key(1), key_of("acme"), None).await.unwrap(),
    ];
    versions.push(
        db.delete(&user("acme", "bob"), None)
            .await
            .unwrap()
            .unwrap(),
    );
    versions.push(db.put(tenant("beta"), on_tier("free"), None).await.unwrap());
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert_eq!(db.version().await.unwrap(), 5);
}

async fn changes_come_in_order_with_deletions(f: &mut Fixture) {
    let db = &f.db;
    db.put(tenant("a"), on_tier("free"), None).await.unwrap(); // 1, overwritten by 4
    db.put(user("a", "u"), a_user("free"), None).await.unwrap(); // 2, deleted at 5
    db.put(api_key(7), key_of("a"), None).await.unwrap(); // 3
    db.put(tenant("a"), on_tier("paid"), None).await.unwrap(); // 4
    db.delete(&user("a", "u"), None).await.unwrap(); // 5
    let all = db.changes_since(0, 100).await.unwrap();
    assert_eq!(
        all,
        vec![
            Change {
                version: 3,
                key: api_key(7),
                entry: Some(key_of("a"))
            },
            Change {
                version: 4,
                key: tenant("a"),
                entry: Some(on_tier("paid"))
            },
            Change {
                version: 5,
                key: user("a", "u"),
                entry: None
            },
        ]
    );
    assert_eq!(db.changes_since(4, 100).await.unwrap(), all[2..].to_vec());
    assert_eq!(db.changes_since(5, 100).await.unwrap(), vec![]);
}

async fn changes_page_by_limit(f: &mut Fixture) {
    let db = &f.db;
    for i in 0..23 {
        db.put(tenant(&format!("t{i:02}")), on_tier("free"), None)
            .await
            .unwrap();
    }
    for i in (0..23).step_by(5) {
        db.delete(&tenant(&format!("t{i:02}")), None).await.unwrap();
    }
    let all = db.changes_since(0, 1000).await.unwrap();
    assert_eq!(all.len(), 23);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = db.changes_since(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = last.version;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(all.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(all.iter().filter(|c| c.entry.is_none()).count(), 5);
    assert_eq!(all.last().unwrap().version, db.version().await.unwrap());
}

/// The current version a refused write reports.
fn conflict<T: std::fmt::Debug>(result: Result<T, Error>) -> Option<u64> {
    match result {
        Err(Error::Conflict { current }) => current,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn if_version_guards_writes(f: &mut Fixture) {
    let db = &f.db;
    let k = tenant("acme");
    assert_eq!(
        db.put(k.clone(), on_tier("free"), Some(0)).await.unwrap(),
        1
    );
    assert_eq!(
        conflict(db.put(k.clone(), on_tier("paid"), Some(0)).await),
        Some(1)
    );
    assert_eq!(
        db.put(k.clone(), on_tier("paid"), Some(1)).await.unwrap(),
        2
    );
    assert_eq!(
        conflict(db.put(k.clone(), on_tier("gold"), Some(1)).await),
        Some(2)
    );
    assert_eq!(
        conflict(db.put(tenant("ghost"), on_tier("gold"), Some(5)).await),
        None
    );
    assert_eq!(conflict(db.delete(&k, Some(1)).await), Some(2));
    assert_eq!(conflict(db.delete(&k, Some(0)).await), Some(2));
    assert_eq!(conflict(db.delete(&tenant("ghost"), Some(3)).await), None);
    assert_eq!(db.delete(&tenant("ghost"), Some(0)).await.unwrap(), None);
    // Refused writes took no version.
    assert_eq!(db.version().await.unwrap(), 2);
    assert_eq!(db.delete(&k, Some(2)).await.unwrap(), Some(3));
    // A deleted entry counts as absent for a create.
    assert_eq!(
        conflict(db.put(k.clone(), on_tier("x"), Some(2)).await),
        None
    );
    assert_eq!(
        db.put(k.clone(), on_tier("free"), Some(0)).await.unwrap(),
        4
    );
    assert_eq!(db.get(&k).await.unwrap(), Some((on_tier("free"), 4)));
}

async fn list_pages_in_key_order(f: &mut Fixture) {
    let db = &f.db;
    // Inserted out of order; byte order puts "B" before "a" and "a10" before "a2".
    let ids = ["a2", "B", "a10", "c", "a", "zz", "m", "a1", "é", "Z"];
    for id in ids {
        db.put(tenant(id), on_tier("free"), None).await.unwrap();
    }
    db.put(user("a", "u"), a_user("free"), None).await.unwrap();
    db.put(api_key(1), key_of("a"), None).await.unwrap();
    db.delete(&tenant("m"), None).await.unwrap();
    let mut expected: Vec<&str> = ids.iter().copied().filter(|id| *id != "m").collect();
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<EntryKey> = None;
    loop {
        let page = db
            .list(Kind::Tenant, None, after.as_ref(), 4)
            .await
            .unwrap();
        assert!(page.len() <= 4);
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, entry, version) in page {
            assert_eq!(entry, on_tier("free"));
            assert!(version >= 1);
            let EntryKey::Tenant { tenant } = key else {
                panic!("listed a non-tenant")
            };
            seen.push(tenant);
        }
    }
    assert_eq!(seen, expected);
    let keys = db.list(Kind::ApiKey, None, None, 10).await.unwrap();
    assert_eq!(keys, vec![(api_key(1), key_of("a"), 12)]);
    match db.list(Kind::User, None, Some(&tenant("a")), 10).await {
        Err(Error::Invalid(msg)) => assert!(
            msg.contains("cannot list user entries after tenant a"),
            "{msg}"
        ),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

async fn list_users_of_one_tenant(f: &mut Fixture) {
    let db = &f.db;
    for (t, u) in [
        ("b", "x"),
        ("a", "z"),
        ("a", "y"),
        ("c", "a"),
        ("a", "x"),
        ("b", "a"),
    ] {
        db.put(user(t, u), a_user("free"), None).await.unwrap();
    }
    let keys =
        |page: Vec<(EntryKey, Entry, u64)>| page.into_iter().map(|(k, _, _)| k).collect::<Vec<_>>();
    let all = keys(db.list(Kind::User, None, None, 100).await.unwrap());
    assert_eq!(
        all,
        vec![
            user("a", "x"),
            user("a", "y"),
            user("a", "z"),
            user("b", "a"),
            user("b", "x"),
            user("c", "a")
        ]
    );
    let of_a = keys(db.list(Kind::User, Some("a"), None, 2).await.unwrap());
    assert_eq!(of_a, vec![user("a", "x"), user("a", "y")]);
    let rest = keys(
        db.list(Kind::User, Some("a"), Some(&user("a", "y")), 2)
            .await
            .unwrap(),
    );
    assert_eq!(rest, vec![user("a", "z")]);
    let of_b = keys(db.list(Kind::User, Some("b"), None, 10).await.unwrap());
    assert_eq!(of_b, vec![user("b", "a"), user("b", "x")]);
    assert!(db
        .list(Kind::User, Some("nope"), None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn put_many_imports_in_one_go(f: &mut Fixture) {
    let db = &f.db;
    db.put(tenant("t00001"), on_tier("old"), None)
        .await
        .unwrap(); // 1, replaced by the import
    let mut batch: Vec<(EntryKey, Entry)> = (0..2500)
        .map(|i| (tenant(&format!("t{i:05}")), on_tier("free")))
        .collect();
    batch.push((user("t00000", "bob"), a_user("paid")));
    batch.push((api_key(9), key_of("t00000")));
    batch.push((tenant("t00002"), on_tier("gold"))); // a second write to one key: the last wins
    let version = db.put_many(batch).await.unwrap();
    assert_eq!(version, 1 + 2502);
    assert_eq!(db.version().await.unwrap(), version);
    assert_eq!(
        db.get(&tenant("t00001")).await.unwrap().map(|(e, _)| e),
        Some(on_tier("free"))
    );
    assert_eq!(
        db.get(&tenant("t00002")).await.unwrap().map(|(e, _)| e),
        Some(on_tier("gold"))
    );
    let changes = db.changes_since(1, 10_000).await.unwrap();
    assert_eq!(changes.len(), 2502);
    let versions: Vec<u64> = changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, (2..=version).collect::<Vec<_>>());
    let (v, entries) = db.load().await.unwrap();
    assert_eq!((v, entries.len()), (version, 2502));
    // An empty import writes nothing.
    assert_eq!(db.put_many(vec![]).await.unwrap(), version);
}

async fn load_is_consistent_with_its_version(f: &mut Fixture) {
    let db = &f.db;
    db.put(tenant("a"), on_tier("free"), None).await.unwrap();
    db.put(tenant("b"), on_tier("paid"), None).await.unwrap();
    db.put(user("a", "u"), a_user("gold"), None).await.unwrap();
    db.put(api_key(3), key_of("b"), None).await.unwrap();
    db.delete(&tenant("b"), None).await.unwrap();
    let (version, mut entries) = db.load().await.unwrap();
    entries.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(version, 5);
    assert_eq!(
        entries,
        vec![
            (tenant("a"), on_tier("free")),
            (user("a", "u"), a_user("gold")),
            (api_key(3), key_of("b")),
        ]
    );
    // Loading while writers run: every load's entries are exactly the writes up to its
    // version (tenant tN written at version N here, all fresh keys).
    let base = db.version().await.unwrap();
    let writer = {
        let db = Arc::clone(&f.db);
        tokio::spawn(async move {
            for i in 0..60 {
                db.put(tenant(&format!("w{i}")), on_tier("free"), None)
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..10 {
        let (v, entries) = db.load().await.unwrap();
        let written = entries
            .iter()
            .filter(|(k, _)| matches!(k, EntryKey::Tenant { tenant } if tenant.starts_with('w')))
            .count() as u64;
        assert_eq!(
            written,
            v - base,
            "a load at version {v} saw {written} new tenants"
        );
    }
    writer.await.unwrap();
}

async fn kind_mismatch_and_bad_keys_are_refused(f: &mut Fixture) {
    let db = &f.db;
    match db.put(tenant("acme"), a_user("free"), None).await {
        Err(Error::Invalid(msg)) => {
            assert!(
                msg.contains("tenant acme cannot hold a user entry"),
                "{msg}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let bad_digest = EntryKey::ApiKey {
        digest: "not-a-digest".into(),
    };
    assert!(matches!(
        db.put(bad_digest.clone(), key_of("a"), None).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(db.get(&bad_digest).await, Err(Error::Invalid(_))));
    assert!(matches!(
        db.put(tenant(""), on_tier("free"), None).await,
        Err(Error::Invalid(_))
    ));
    // One bad entry refuses the whole import.
    let batch = vec![
        (tenant("fine"), on_tier("free")),
        (tenant("wrong"), key_of("x")),
    ];
    assert!(matches!(db.put_many(batch).await, Err(Error::Invalid(_))));
    assert_eq!(db.version().await.unwrap(), 0);
    assert_eq!(db.get(&tenant("fine")).await.unwrap(), None);
}

async fn concurrent_writers_get_every_version_once(f: &mut Fixture) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 25;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = Arc::clone(&f.db);
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..EACH {
                    let v = match i % 3 {
                        0 => {
                            db.put(tenant(&format!("w{w}-{i}")), on_tier("free"), None)
                                .await
                        }
                        1 => {
                            db.put(user(&format!("w{w}"), &i.to_string()), a_user("x"), None)
                                .await
                        }
                        _ => {
                            db.put(tenant(&format!("w{w}-{i}")), on_tier("paid"), Some(0))
                                .await
                        }
                    };
                    versions.push(v.unwrap());
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let versions = t.await.unwrap();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort();
    assert_eq!(all, (1..=WRITERS * EACH).collect::<Vec<_>>());
    let changes = f.db.changes_since(0, 10_000).await.unwrap();
    let seen: Vec<u64> = changes.iter().map(|c| c.version).collect();
    assert_eq!(seen, all);
}

/// Two independent clients (separate pools; for SQLite, two handles on one file, as two
/// processes would have) writing at once still produce one gapless history.
async fn two_clients_share_one_catalog(f: &mut Fixture) {
    let other = f.second_client().await;
    let clients = [Arc::clone(&f.db), other];
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let db = Arc::clone(&clients[w % 2]);
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..20 {
                    versions.push(
                        db.put(tenant(&format!("c{w}-{i}")), on_tier("free"), None)
                            .await
                            .unwrap(),
                    );
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=160).collect::<Vec<_>>());
    assert_eq!(clients[1].version().await.unwrap(), 160);
    assert_eq!(clients[1].changes_since(0, 1000).await.unwrap().len(), 160);
    clients[1].close().await;
}

/// A row a newer build wrote, with fields this one does not know (during a rolling
/// upgrade), is read for what this build knows by `get`, `list` and `load`, and a write of
/// this build keeps those fields: the newer build's nodes still find them. An override the
/// write removes goes with its own unknown fields; a deletion removes everything.
async fn fields_of_a_newer_build_are_read_around_and_kept(f: &mut Fixture) {
    let db = Arc::clone(&f.db);
    db.put(tenant("acme"), on_tier("free"), None).await.unwrap();
    f.exec(
        r#"UPDATE spillway_catalog_entries SET body = '{"tier":"free","colour":"red",
           "overrides":{"m":{"limit":5,"jitter":2},"n":{"limit":1,"jitter":3}}}'
           WHERE id = 'acme'"#,
    )
    .await;
    let read = |limits: &[(&str, u64)], tier: &str| {
        Entry::Tenant(TenantRecord {
            tier: Some(tier.into()),
            overrides: limits
                .iter()
                .map(|(name, limit)| {
                    let record = OverrideRecord {
                        limit: Some(*limit),
                        ..Default::default()
                    };
                    (name.to_string(), record)
                })
                .collect(),
            ..Default::default()
        })
    };
    let known = read(&[("m", 5), ("n", 1)], "free");
    assert_eq!(
        db.get(&tenant("acme")).await.unwrap(),
        Some((known.clone(), 1))
    );
    let listed = db.list(Kind::Tenant, None, None, 10).await.unwrap();
    assert_eq!(listed, vec![(tenant("acme"), known.clone(), 1)]);
    assert_eq!(db.load().await.unwrap(), (1, vec![(tenant("acme"), known)]));
    // This build changes the tier and one override, and drops the other.
    let written = read(&[("m", 7)], "paid");
    let version = db
        .put(tenant("acme"), written.clone(), Some(1))
        .await
        .unwrap();
    assert_eq!(
        f.body_of("acme").await,
        serde_json::json!({
            "tier": "paid",
            "colour": "red",
            "overrides": {"m": {"limit": 7, "jitter": 2}},
        })
    );
    assert_eq!(
        db.get(&tenant("acme")).await.unwrap(),
        Some((written, version))
    );
    // A row of this build's own fields is written as it is.
    db.put(tenant("plain"), on_tier("free"), None)
        .await
        .unwrap();
    db.put(tenant("plain"), on_tier("paid"), None)
        .await
        .unwrap();
    assert_eq!(
        f.body_of("plain").await,
        serde_json::json!({"tier": "paid"})
    );
    // After a deletion, a new entry at the key starts afresh.
    db.delete(&tenant("acme"), None).await.unwrap();
    db.put(tenant("acme"), on_tier("free"), None).await.unwrap();
    assert_eq!(f.body_of("acme").await, serde_json::json!({"tier": "free"}));
}

/// A SQLite catalog holds every API key's digest: a database file it creates, and the journal
/// SQLite keeps beside it, are readable by their owner only, whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("catalog.db");
    let db = spillway_catalog::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("open sqlite");
    db.migrate().await.expect("migrate");
    db.put(tenant("acme"), on_tier("free"), None)
        .await
        .expect("put");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(files.contains(&path), "{files:?}");
    for file in &files {
        let mode = std::fs::metadata(file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

/// An in-memory SQLite catalog leaves no file behind (sqlx names it `file:sqlx-in-memory-N`,
/// which is no path to create).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_catalog_creates_no_file() {
    let stray = || {
        std::fs::read_dir(".")
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("file:"))
            .count()
    };
    let before = stray();
    let db = spillway_catalog::open("sqlite::memory:")
        .await
        .expect("open in memory");
    db.migrate().await.expect("migrate");
    assert_eq!(stray(), before, "a file was made for an in-memory database");
}

async fn a_tenant_with_users_or_keys_goes_only_with_them(f: &mut Fixture) {
    let db = &*f.db;
    db.put(tenant("acme"), on_tier("paid"), None).await.unwrap();
    db.put(tenant("initech"), on_tier("free"), None)
        .await
        .unwrap();
    db.put(user("acme", "ann"), a_user("paid"), None)
        .await
        .unwrap();
    db.put(user("initech", "ann"), a_user("free"), None)
        .await
        .unwrap();
    for n in 1..=3 {
        db.put(api_key(n), key_of("acme"), None).await.unwrap();
    }
    db.put(api_key(9), key_of("initech"), None).await.unwrap();
    let before = db.version().await.unwrap();
    // Refused while it has them, and nothing is written.
    let held = delete_tenant(db, "acme", None, false).await.unwrap();
    assert_eq!(
        held,
        TenantDeletion::Holds {
            users: 1,
            api_keys: 3
        }
    );
    assert_eq!(db.version().await.unwrap(), before);
    // A version condition is checked before anything that belongs to it is touched.
    match delete_tenant(db, "acme", Some(2), true).await {
        Err(Error::Conflict { current: Some(1) }) => {}
        other => panic!("expected a conflict at version 1, got {other:?}"),
    }
    assert_eq!(db.version().await.unwrap(), before);
    // With cascade: its keys, then its users, then it; the other tenant keeps its own.
    let (_, at) = db.get(&tenant("acme")).await.unwrap().expect("acme");
    let done = delete_tenant(db, "acme", Some(at), true).await.unwrap();
    assert_eq!(
        done,
        TenantDeletion::Deleted {
            version: before + 5,
            users: 1,
            api_keys: 3
        }
    );
    for gone in [tenant("acme"), user("acme", "ann"), api_key(1), api_key(3)] {
        assert_eq!(db.get(&gone).await.unwrap(), None, "{gone}");
    }
    for kept in [tenant("initech"), user("initech", "ann"), api_key(9)] {
        assert!(db.get(&kept).await.unwrap().is_some(), "{kept}");
    }
    // The keys went first.
    let changes = db.changes_since(before, 10).await.unwrap();
    let order: Vec<EntryKey> = changes.into_iter().map(|c| c.key).collect();
    assert_eq!(
        order,
        [
            api_key(1),
            api_key(2),
            api_key(3),
            user("acme", "ann"),
            tenant("acme")
        ]
    );
    // Gone is gone; a tenant with nothing else goes without cascade.
    let gone = |cascade| delete_tenant(db, "acme", None, cascade);
    assert_eq!(gone(true).await.unwrap(), TenantDeletion::NotFound);
    assert_eq!(gone(false).await.unwrap(), TenantDeletion::NotFound);
    // What a tenant left behind (a key written for it after it went) is cleared by cascade
    // alone.
    db.put(api_key(4), key_of("acme"), None).await.unwrap();
    assert_eq!(gone(false).await.unwrap(), TenantDeletion::NotFound);
    let cleared = gone(true).await.unwrap();
    let one_key = matches!(
        cleared,
        TenantDeletion::Deleted {
            users: 0,
            api_keys: 1,
            ..
        }
    );
    assert!(one_key, "{cleared:?}");
    assert_eq!(db.get(&api_key(4)).await.unwrap(), None);
    // A key moved to another tenant after it was listed is kept; one changed but still the
    // tenant's goes at its new version.
    let found = belongings(db, "initech").await.unwrap();
    let (key, version) = found.api_keys[0].clone();
    db.put(key.clone(), key_of("globex"), None).await.unwrap();
    delete_belonging(db, "initech", &key, version)
        .await
        .unwrap();
    assert!(db.get(&key).await.unwrap().is_some(), "moved away: kept");
    let (user_key, version) = found.users[0].clone();
    db.put(user_key.clone(), a_user("paid"), None)
        .await
        .unwrap();
    delete_belonging(db, "initech", &user_key, version)
        .await
        .unwrap();
    assert_eq!(
        db.get(&user_key).await.unwrap(),
        None,
        "changed, still its: deleted"
    );
    db.put(tenant("lone"), on_tier("free"), None).await.unwrap();
    let lone = delete_tenant(db, "lone", None, false).await.unwrap();
    assert!(
        matches!(
            lone,
            TenantDeletion::Deleted {
                users: 0,
                api_keys: 0,
                ..
            }
        ),
        "{lone:?}"
    );
}
