//! `spillway catalog ...` run as a process against real databases: a SQLite file in a
//! temporary directory and a real PostgreSQL (`spillway_testkit::postgres`). Every scenario
//! runs on both; writes are checked against the built-in policy (examples/spillway.yaml).

mod common;

use common::TempDir;
use serde_json::Value;
use sha2::{Digest, Sha256};
use spillway_testkit::postgres::PostgresServer;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A catalog database under test: its URL, and its raw stored bytes as text (to prove what
/// is, and is not, stored).
struct Db {
    url: String,
    dump: Box<dyn Fn() -> String>,
}

/// The binary under test. `SPILLWAY_TEST_BIN` overrides cargo's path, for checkouts that share
/// one target directory (where another checkout's build may replace `target/debug/spillway`).
fn bin() -> String {
    std::env::var("SPILLWAY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_spillway").into())
}

/// Runs `spillway catalog <args>` on `db`, with no catalog or policy from the environment.
fn catalog(db: &Db, args: &[&str]) -> Output {
    catalog_with_stdin(db, args, "")
}

fn catalog_with_stdin(db: &Db, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .arg("catalog")
        .args(args)
        .args(["--catalog", &db.url])
        .env_remove("SPILLWAY_CATALOG")
        .env_remove("SPILLWAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run spillway");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for spillway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit status and returns stdout.
#[track_caller]
fn expect(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn json(out: &Output) -> Value {
    let stdout = expect(out, 0);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn example_policy() -> String {
    format!(
        "{}/../../examples/spillway.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn migrated(db: &Db) {
    expect(&catalog(db, &["migrate"]), 0);
}

fn version(db: &Db) -> u64 {
    json(&catalog(db, &["version", "--json"]))["version"]
        .as_u64()
        .expect("a version")
}

fn migrate_is_idempotent(db: &Db) {
    let first = json(&catalog(db, &["migrate", "--json"]));
    assert_eq!(first["from"], 0);
    let latest = first["to"].as_u64().expect("a schema version");
    assert!(latest >= 1);
    let again = json(&catalog(db, &["migrate", "--json"]));
    assert_eq!(
        (again["from"].as_u64(), again["to"].as_u64()),
        (Some(latest), Some(latest))
    );
    let out = expect(&catalog(db, &["migrate"]), 0);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(version(db), 0);
}

fn put_get_patch_delete_round_trip(db: &Db) {
    migrated(db);
    let put = json(&catalog(
        db,
        &[
            "put",
            "tenant",
            "acme",
            "--tier",
            "paid",
            "--override",
            "paid-user-minute.rate=1200/min",
            "--override",
            "paid-user-minute.burst=200",
            "--json",
        ],
    ));
    assert_eq!(put["version"], 1);
    let got = json(&catalog(db, &["get", "tenant", "acme", "--json"]));
    assert_eq!(got["tenant"], "acme");
    assert_eq!(got["tier"], "paid");
    assert_eq!(got["overrides"]["paid-user-minute"]["rate"], "1200/min");
    assert_eq!(got["overrides"]["paid-user-minute"]["burst"], 200);
    let human = expect(&catalog(db, &["get", "tenant", "acme"]), 0);
    assert!(
        human.contains("tier: paid") && human.contains("rate=1200/min"),
        "{human}"
    );

    // A merge patch: one number changed, one added, the rest kept.
    let patched = json(&catalog(
        db,
        &[
            "patch",
            "tenant",
            "acme",
            "--override",
            "paid-user-minute.burst=300",
            "-d",
            r#"{"overrides":{"paid-tenant-minute":{"limit":20000}}}"#,
            "--json",
        ],
    ));
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["overrides"]["paid-user-minute"]["rate"], "1200/min");
    assert_eq!(patched["overrides"]["paid-user-minute"]["burst"], 300);
    assert_eq!(patched["overrides"]["paid-tenant-minute"]["limit"], 20000);
    // `null` removes.
    let patched = json(&catalog(
        db,
        &[
            "patch",
            "tenant",
            "acme",
            "-d",
            r#"{"overrides":{"paid-tenant-minute":null}}"#,
            "--json",
        ],
    ));
    assert!(
        patched["overrides"].get("paid-tenant-minute").is_none(),
        "{patched}"
    );

    // A user's overrides are checked against its tenant's tier: paid here...
    expect(
        &catalog(
            db,
            &[
                "put",
                "user",
                "acme",
                "u1",
                "--override",
                "paid-user-minute.rate=100/min",
            ],
        ),
        0,
    );
    // ...and the default (free) for a tenant the catalog does not hold.
    let out = catalog(
        db,
        &[
            "put",
            "user",
            "initech",
            "u1",
            "--override",
            "paid-user-minute.rate=100/min",
        ],
    );
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("overrides.paid-user-minute"),
        "{}",
        text(&out.stderr)
    );
    let users = json(&catalog(db, &["list", "users", "acme", "--json"]));
    assert_eq!(users["items"][0]["user"], "u1");

    // A body from a file.
    let dir = TempDir::new();
    let file = dir.write("globex.json", r#"{"tier":"enterprise"}"#);
    let data = format!("@{}", file.display());
    expect(
        &catalog(db, &["put", "tenant", "globex", "--data", &data]),
        0,
    );
    let list = json(&catalog(db, &["list", "tenants", "--limit", "1", "--json"]));
    assert_eq!(list["items"][0]["tenant"], "acme");
    assert_eq!(list["next"], "acme");
    let list = json(&catalog(
        db,
        &["list", "tenants", "--after", "acme", "--json"],
    ));
    assert_eq!(list["items"][0]["tenant"], "globex");
    assert!(list["next"].is_null());

    // Conditional writes: a stale version is a conflict and writes nothing.
    let before = version(db);
    let out = catalog(
        db,
        &[
            "put",
            "tenant",
            "globex",
            "--tier",
            "free",
            "--if-version",
            "1",
        ],
    );
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("version"),
        "{}",
        text(&out.stderr)
    );
    let out = catalog(db, &["delete", "tenant", "globex", "--if-version", "1"]);
    expect(&out, 1);
    assert_eq!(version(db), before);

    // acme still has user u1: refused, unless --cascade takes it along.
    let out = catalog(db, &["delete", "tenant", "acme"]);
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("1 user(s) and 0 API key(s)"),
        "{}",
        text(&out.stderr)
    );
    expect(
        &catalog(db, &["delete", "user", "acme", "u1", "--cascade"]),
        2,
    );
    let deleted = json(&catalog(
        db,
        &["delete", "tenant", "acme", "--cascade", "--json"],
    ));
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        (deleted["users"].as_u64(), deleted["api_keys"].as_u64()),
        (Some(1), Some(0))
    );
    expect(&catalog(db, &["get", "user", "acme", "u1"]), 1);
    let out = catalog(db, &["get", "tenant", "acme"]);
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("no tenant acme"),
        "{}",
        text(&out.stderr)
    );
    expect(&catalog(db, &["delete", "tenant", "acme"]), 1);
    // Checked against the built-in policy (no --config): said on success too; a read is not.
    let again = catalog(db, &["patch", "tenant", "acme", "--tier", "paid"]);
    assert!(
        text(&again.stderr).contains("checked against the built-in policy"),
        "{}",
        text(&again.stderr)
    );
    let read = catalog(db, &["get", "tenant", "acme"]);
    assert!(!text(&read.stderr).contains("built-in policy"));
    let policy = example_policy();
    let with_config = catalog(
        db,
        &[
            "patch", "tenant", "acme", "--tier", "paid", "--config", &policy,
        ],
    );
    assert!(!text(&with_config.stderr).contains("built-in policy"));
}

fn refused_writes_name_the_field_and_write_nothing(db: &Db) {
    migrated(db);
    let cases: [(&[&str], &str); 4] = [
        (&["put", "tenant", "t1", "--tier", "gold"], "tier"),
        (
            &[
                "put",
                "tenant",
                "t1",
                "--tier",
                "paid",
                "--override",
                "paid-user-minute.rate=0/min",
            ],
            "overrides.paid-user-minute.rate",
        ),
        (
            &[
                "put",
                "tenant",
                "t1",
                "--tier",
                "paid",
                "--override",
                "nope.limit=5",
            ],
            "overrides.nope",
        ),
        (
            &[
                "patch",
                "tenant",
                "t1",
                "-d",
                r#"{"tier":"paid","colour":"red"}"#,
            ],
            "colour",
        ),
    ];
    for (args, field) in cases {
        let out = catalog(db, args);
        expect(&out, 1);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(field) && stderr.contains("nothing was written"),
            "{args:?}: {stderr}"
        );
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let out = catalog(db, &with_json);
        expect(&out, 1);
        let problem: Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
        assert_eq!(problem["error"], "refused");
        assert_eq!(
            problem["errors"][0]["field"]
                .as_str()
                .map(|f| f.starts_with(field)),
            Some(true),
            "{problem}"
        );
    }
    assert_eq!(version(db), 0);
    expect(&catalog(db, &["get", "tenant", "t1"]), 1);
    // A malformed flag is bad usage, not a refusal.
    expect(
        &catalog(db, &["put", "tenant", "t1", "--override", "rate=5"]),
        2,
    );
}

fn add_key_prints_the_key_once_and_stores_only_its_digest(db: &Db) {
    migrated(db);
    expect(
        &catalog(db, &["put", "tenant", "acme", "--tier", "paid"]),
        0,
    );
    let added = catalog(db, &["add-key", "--tenant", "acme", "--user", "svc"]);
    let stdout = expect(&added, 0);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("api key (shown this once; only its digest is stored): "))
        .expect("the key is printed")
        .to_owned();
    assert!(key.len() >= 32, "{key}");
    assert_eq!(stdout.matches(&key).count(), 1, "{stdout}");
    let digest = hex_sha256(&key);
    assert!(stdout.contains(&digest), "{stdout}");
    let got = json(&catalog(db, &["get", "api-key", &digest, "--json"]));
    assert_eq!(
        (got["tenant"].as_str(), got["user"].as_str()),
        (Some("acme"), Some("svc"))
    );
    assert!(!got.to_string().contains(&key));

    // A key given on stdin is not echoed.
    let mine = "my-own-key-0123456789abcdef";
    let out = catalog_with_stdin(
        db,
        &["add-key", "--tenant", "acme", "--from-stdin", "--json"],
        &format!("{mine}\n"),
    );
    let added = json(&out);
    assert_eq!(added["digest"], hex_sha256(mine));
    assert!(added.get("key").is_none() && !text(&out.stdout).contains(mine));
    // The same key again is a conflict; a short one is refused.
    let out = catalog_with_stdin(db, &["add-key", "--tenant", "acme", "--from-stdin"], mine);
    expect(&out, 1);
    let out = catalog_with_stdin(
        db,
        &["add-key", "--tenant", "acme", "--from-stdin"],
        "short",
    );
    expect(&out, 1);
    assert!(text(&out.stderr).contains("key"), "{}", text(&out.stderr));

    let stored = (db.dump)();
    assert!(
        stored.contains(&digest),
        "the dump should show the digest: {stored:.400}"
    );
    assert!(
        !stored.contains(&key) && !stored.contains(mine),
        "a key is stored in clear"
    );
    let keys = json(&catalog(db, &["list", "api-keys", "--json"]));
    assert_eq!(keys["items"].as_array().map(Vec::len), Some(2));
}

fn import_from_policy_then_export(db: &Db) {
    migrated(db);
    let policy = example_policy();
    let out = expect(&catalog(db, &["import", "--from-policy", &policy]), 0);
    assert!(out.contains("imported 3 entries"), "{out}");
    let exported = expect(&catalog(db, &["export"]), 0);
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{exported}");
    assert_eq!(lines[0]["key"]["tenant"], "acme");
    assert_eq!(lines[0]["entry"]["body"]["tier"], "paid");
    assert_eq!(
        lines[0]["entry"]["body"]["overrides"]["paid-user-minute"]["rate"],
        "1200/min"
    );
    assert_eq!(lines[1]["key"]["tenant"], "globex");
    assert_eq!(lines[2]["entry"]["body"]["tier"], "free");

    // The export imports back unchanged (new versions, same entries).
    let dir = TempDir::new();
    let file = dir.write("export.jsonl", &exported);
    let file = file.display().to_string();
    let imported = json(&catalog(db, &["import", &file, "--json"]));
    assert_eq!(
        (imported["imported"].as_u64(), imported["version"].as_u64()),
        (Some(3), Some(6))
    );
    assert_eq!(expect(&catalog(db, &["export"]), 0), exported);

    // One bad line refuses the whole file, by line number, and writes nothing.
    let bad = format!(
        "{exported}{}\n",
        r#"{"key":{"kind":"user","tenant":"qa-sandbox","user":"u"},"entry":{"kind":"user","body":{"overrides":{"paid-user-minute":{"rate":"5/s"}}}}}"#
    );
    let bad = dir.write("bad.jsonl", &bad);
    let out = catalog(db, &["import", &bad.display().to_string()]);
    expect(&out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl:4") && stderr.contains("overrides.paid-user-minute"),
        "{stderr}"
    );
    assert_eq!(version(db), 6);
    let dry = json(&catalog(db, &["import", &file, "--dry-run", "--json"]));
    assert_eq!(dry["written"], 0);
    assert_eq!(version(db), 6);

    // A snapshot (framed like a node's) imports whole, and only whole: cut short, counted
    // wrong or carrying lines past its end, it is refused and nothing is written.
    let entries: Vec<&str> = exported.lines().collect();
    let framed = |body: &[&str], end: Option<usize>, after: &str| {
        let mut text = String::from("{\"format\":1,\"version\":9}\n");
        for line in body {
            text += line;
            text += "\n";
        }
        if let Some(count) = end {
            text += &format!("{{\"end\":{count}}}\n");
        }
        text + after
    };
    let whole = dir.write("whole.snapshot", &framed(&entries, Some(3), ""));
    let out = json(&catalog(
        db,
        &["import", &whole.display().to_string(), "--json"],
    ));
    assert_eq!(out["imported"], 3);
    assert_eq!(version(db), 9);
    for (name, text, told) in [
        (
            "cut.snapshot",
            framed(&entries[..1], None, ""),
            "without its end line",
        ),
        (
            "miscounted.snapshot",
            framed(&entries[..2], Some(3), ""),
            "counts 3 entries but 2",
        ),
        (
            "trailing.snapshot",
            framed(&entries[..2], Some(2), entries[2]),
            "after the snapshot's end",
        ),
    ] {
        let path = dir.write(name, &text);
        let out = catalog(db, &["import", &path.display().to_string()]);
        let stderr = text_of(&out, 2);
        assert!(stderr.contains(told), "{name}: {stderr}");
        assert_eq!(version(db), 9, "{name}: nothing written");
    }
}

/// What a command that exits with `code` says on stderr.
fn text_of(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    text(&out.stderr)
}

/// Runs one scenario on a fresh SQLite file.
fn on_sqlite(scenario: fn(&Db)) {
    let dir = TempDir::new();
    let root = dir.path().to_path_buf();
    let db = Db {
        url: format!("sqlite://{}/catalog.db", root.display()),
        dump: Box::new(move || {
            let mut all = String::new();
            for file in std::fs::read_dir(&root).expect("list the dir").flatten() {
                all.push_str(&text(&std::fs::read(file.path()).unwrap_or_default()));
            }
            all
        }),
    };
    scenario(&db);
}

#[test]
fn sqlite_migrate_is_idempotent() {
    on_sqlite(migrate_is_idempotent);
}

#[test]
fn sqlite_round_trip() {
    on_sqlite(put_get_patch_delete_round_trip);
}

#[test]
fn sqlite_refused_writes() {
    on_sqlite(refused_writes_name_the_field_and_write_nothing);
}

#[test]
fn sqlite_add_key() {
    on_sqlite(add_key_prints_the_key_once_and_stores_only_its_digest);
}

#[test]
fn sqlite_import_export() {
    on_sqlite(import_from_policy_then_export);
}

/// Runs `sql` on a SQLite catalog behind the CLI's back.
fn raw_sqlite(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        sqlx::query(sql)
            .execute(&pool)
            .await
            .expect("the statement");
        pool.close().await;
    });
}

/// A row that does not decode (written outside Spillway) makes `export` fail, printing
/// nothing: a backup script checking the exit status must not keep an incomplete backup.
#[test]
fn sqlite_an_export_with_an_unreadable_row_fails_whole() {
    on_sqlite(|db| {
        migrated(db);
        for tenant in ["acme", "globex"] {
            expect(
                &catalog(db, &["put", "tenant", tenant, "--tier", "free"]),
                0,
            );
        }
        raw_sqlite(
            &db.url,
            r#"UPDATE spillway_catalog_entries SET body = '{"tier":5}' WHERE id = 'acme'"#,
        );
        let out = catalog(db, &["export"]);
        let stderr = text_of(&out, 2);
        assert!(
            stderr.contains("1 stored rows could not be read"),
            "{stderr}"
        );
        assert!(stderr.contains("acme"), "the row is named: {stderr}");
        assert_eq!(text(&out.stdout), "", "nothing exported");
    });
}

/// A row a newer build wrote, with a field this build does not know: `get` shows what this
/// build knows and says on stderr what it set aside (the CLI had no logger, so it said
/// nothing); a patch of a known field keeps the other; a patch setting the other to null is
/// refused, since it could not remove it.
#[test]
fn sqlite_an_entry_a_newer_build_wrote_is_read_and_kept() {
    on_sqlite(|db| {
        migrated(db);
        expect(
            &catalog(db, &["put", "tenant", "acme", "--tier", "free"]),
            0,
        );
        raw_sqlite(
            &db.url,
            r#"UPDATE spillway_catalog_entries SET body = '{"tier":"free","colour":"red"}'
               WHERE id = 'acme'"#,
        );
        let out = catalog(db, &["get", "tenant", "acme", "--json"]);
        let got = json(&out);
        assert_eq!(got["tier"], "free");
        assert_eq!(got.get("colour"), None);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("fields this build does not know") && stderr.contains("colour"),
            "{stderr}"
        );
        expect(
            &catalog(db, &["patch", "tenant", "acme", "--tier", "paid"]),
            0,
        );
        let stored = (db.dump)();
        assert!(
            stored.contains(r#""colour":"red""#) && stored.contains(r#""tier":"paid""#),
            "{stored}"
        );
        let refused = catalog(db, &["patch", "tenant", "acme", "-d", r#"{"colour":null}"#]);
        expect(&refused, 1);
        let stderr = text(&refused.stderr);
        assert!(
            stderr.contains("`colour` is not a field this build knows"),
            "{stderr}"
        );
        assert!((db.dump)().contains(r#""colour":"red""#));
    });
}

/// Every scenario on one PostgreSQL server, its schema dropped between them.
/// A named test body run against one database.
type Scenario = (&'static str, fn(&Db));

#[test]
fn postgres_every_scenario() {
    let Some(pg) = PostgresServer::start_or_skip("postgres_every_scenario") else {
        return;
    };
    let pg = std::rc::Rc::new(pg);
    let scenarios: [Scenario; 5] = [
        ("migrate", migrate_is_idempotent),
        ("round trip", put_get_patch_delete_round_trip),
        ("refused", refused_writes_name_the_field_and_write_nothing),
        (
            "add-key",
            add_key_prints_the_key_once_and_stores_only_its_digest,
        ),
        ("import/export", import_from_policy_then_export),
    ];
    for (name, scenario) in scenarios {
        eprintln!("postgres: {name}");
        pg.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
        let dump = pg.clone();
        let db = Db {
            url: pg.url(),
            dump: Box::new(move || {
                dump.psql("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM spillway_catalog_entries t")
            }),
        };
        scenario(&db);
    }
}

#[test]
fn an_unreachable_database_is_exit_2_with_the_password_hidden() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let db = Db {
        url: format!("postgres://spill:s3cr3t-pw@127.0.0.1:{port}/catalog"),
        dump: Box::new(String::new),
    };
    let out = catalog(&db, &["get", "tenant", "acme"]);
    expect(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach the catalog database"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("postgres://spill:****@127.0.0.1:{port}/catalog")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");

    // A SQLite file that cannot be created, an unknown scheme, and no URL at all.
    let db = Db {
        url: "sqlite:///nonexistent-dir/deeper/catalog.db".into(),
        dump: Box::new(String::new),
    };
    let out = catalog(&db, &["version"]);
    expect(&out, 2);
    assert!(
        text(&out.stderr).contains("sqlite:///nonexistent-dir"),
        "{}",
        text(&out.stderr)
    );
    let db = Db {
        url: "mysql://root:pw@localhost/x".into(),
        dump: Box::new(String::new),
    };
    expect(&catalog(&db, &["version"]), 2);
    let out = Command::new(bin())
        .args(["catalog", "version"])
        .env_remove("SPILLWAY_CATALOG")
        .output()
        .expect("run spillway");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--catalog"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_catalog_url_and_policy_come_from_the_environment_too() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/env.db", dir.path().display());
    let policy = dir.write(
        "policy.yaml",
        "default_tier: basic\nlimits:\n  m:\n    algorithm: fixed_window\n    limit: 5\n    window: 1m\n    key: [tenant]\ntiers:\n  basic:\n    limits: [m]\n",
    );
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("catalog")
            .args(args)
            .env("SPILLWAY_CATALOG", &url)
            .env("SPILLWAY_CONFIG", &policy)
            .output()
            .expect("run spillway")
    };
    expect(&run(&["migrate"]), 0);
    // `paid` is the built-in policy's, not this one's.
    let out = run(&["put", "tenant", "a", "--tier", "paid"]);
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("defines basic"),
        "{}",
        text(&out.stderr)
    );
    expect(
        &run(&[
            "put",
            "tenant",
            "a",
            "--tier",
            "basic",
            "--override",
            "m.limit=9",
        ]),
        0,
    );
}

/// A policy that does not load, whichever flag names it (`--config`, `import --from-policy`),
/// is read and checked as `validate` reads it (cluster seeds that disagree on the login
/// refused too) and told in its words: status 2, before the database is opened.
#[test]
fn a_policy_that_does_not_load_is_told_as_validate_tells_it() {
    let dir = TempDir::new();
    let db = dir.path().join("never.db");
    let url = format!("sqlite://{}", db.display());
    let unknown_limit = dir.write(
        "unknown.yaml",
        "default_tier: basic\nlimits:\n  m: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}\ntiers:\n  basic: {limits: [nope]}\n",
    );
    let seeds_disagree = dir.write(
        "seeds.yaml",
        "default_tier: basic\nlimits:\n  m: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}\ntiers:\n  basic: {limits: [m]}\nstore:\n  type: redis_cluster\n  nodes: [\"redis://:s3cret-a@127.0.0.1:1\", \"redis://127.0.0.1:2\"]\n",
    );
    let missing = dir.path().join("missing.yaml");
    for file in [&unknown_limit, &seeds_disagree, &missing] {
        let validate = Command::new(bin())
            .arg("validate")
            .arg(file)
            .output()
            .expect("run spillway");
        assert_eq!(validate.status.code(), Some(1));
        let told = text(&validate.stderr);
        assert_eq!(told.lines().count(), 1, "{told}");
        assert!(told.starts_with(&format!("{}:", file.display())), "{told}");
        let file = file.to_str().expect("a UTF-8 path");
        for args in [
            ["--config", file, "migrate"],
            ["import", "--from-policy", file],
        ] {
            let out = Command::new(bin())
                .arg("catalog")
                .args(args)
                .args(["--catalog", &url])
                .env_remove("SPILLWAY_CONFIG")
                .output()
                .expect("run spillway");
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert_eq!(text(&out.stderr), format!("error: {told}"), "{args:?}");
            assert!(!text(&out.stderr).contains("s3cret"));
        }
    }
    assert!(!db.exists(), "the database is not opened");
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
