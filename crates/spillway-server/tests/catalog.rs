//! The tenant catalog end to end: real `spillway serve` processes on a real SQLite file and a
//! real PostgreSQL, changed through the admin API.
//!
//! - the admin API refuses requests without the token, and is off without one;
//! - a write the policy refuses is answered 400 naming the field, and nothing is written;
//! - a tenant upgraded from free to paid gets paid limits on its next request on every node,
//!   and its counter carries over (same limit, new numbers);
//! - Postgres stopped under load: decisions go on, the catalog reads stale, and a change made
//!   after it is back arrives without a restart;
//! - a node started with the database down boots from its snapshot and says so; with no
//!   snapshot either it is not ready;
//! - an entry holding fields a newer build wrote is read by the admin API for what this build
//!   knows, and a patch keeps the fields it cannot see.

mod common;

use common::{wait_until_async, Server, TempDir};
use serde_json::{json, Value};
use spillway_testkit::postgres::PostgresServer;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

/// One tenant-keyed limit in both tiers, with different numbers: an upgrade keeps the counter.
const POLICY: &str = "default_tier: free
limits:
  tenant-minute: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}
  paid-burst: {algorithm: token_bucket, rate: 100/min, key: [tenant, user]}
tiers:
  free: {limits: [tenant-minute]}
  paid: {limits: [tenant-minute, paid-burst]}
";

fn node(url: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--catalog",
        url,
        "--catalog-migrate",
        "--catalog-poll",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Server::with_policy(POLICY)
        .args(&args)
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .start()
}

/// A SQLite catalog file's URL in `dir`.
fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("catalog.db").display())
}

async fn admin(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The tier and the `tenant-minute` remaining of one request by `tenant`.
async fn check(server: &Server, tenant: &str) -> (String, u64) {
    let body = json!({"tenant": tenant, "user": "u"}).to_string();
    let response = server.post("/v1/check", &body).await;
    let v: Value = response.json().await.expect("json verdict");
    let remaining = v["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "tenant-minute"))
        .and_then(|l| l["remaining"].as_u64())
        .unwrap_or_else(|| panic!("no tenant-minute in {v}"));
    (v["tier"].as_str().unwrap_or_default().to_owned(), remaining)
}

async fn version(server: &Server) -> Value {
    admin(server, reqwest::Method::GET, "/v1/admin/version", None)
        .await
        .1
}

#[tokio::test]
async fn the_admin_api_needs_its_token() {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    let server = node(&url, &[]);
    let client = reqwest::Client::new();
    let path = server.url("/v1/admin/version");
    let none = client.get(&path).send().await.expect("answers");
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    let wrong = client
        .get(&path)
        .bearer_auth("test-admin-token-0123456780")
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.status(), 401);
    let put = client
        .put(server.url("/v1/admin/tenants/acme"))
        .json(&json!({"tier": "paid"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(put.status(), 401);
    let (status, body) = admin(&server, reqwest::Method::GET, "/v1/admin/version", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["origin"], "database");
    // Without a token there is no admin API at all.
    let plain = Server::with_policy(POLICY).start();
    assert_eq!(plain.get("/v1/admin/version").await.status(), 404);
}

#[tokio::test]
async fn refused_writes_name_the_field_and_write_nothing() {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    let server = node(&url, &[]);
    let put = |body: Value| {
        admin(
            &server,
            reqwest::Method::PUT,
            "/v1/admin/tenants/acme",
            Some(body),
        )
    };
    let (status, problem) = put(json!({"tier": "gold"})).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "tier");
    let (status, problem) = put(json!({"overrides": {"tenant-minute": {"limit": 0}}})).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "overrides.tenant-minute.limit");
    let (status, problem) = put(json!({"overrides": {"nope": {"limit": 3}}})).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("overrides.nope"))
    );
    let (status, problem) = put(json!({"tier": "paid", "colour": "red"})).await;
    assert_eq!(status, 400, "{problem}");
    // A body with more after its entry (two joined, or junk) is refused, not half applied.
    for raw in [
        r#"{"tier":"paid"}{"tier":"free"}"#,
        r#"{"tier":"paid"} junk"#,
    ] {
        let answer = reqwest::Client::new()
            .put(server.url("/v1/admin/tenants/acme"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("answers");
        assert_eq!(answer.status(), 400, "{raw}");
    }
    // An API key the request path could never match is refused, not stored.
    for key in [
        "short".to_owned(),
        "k".repeat(513),
        " padded-key-0123456789 ".to_owned(),
        "key\twith-a-tab-0123".to_owned(),
    ] {
        let body = json!({"key": key, "tenant": "acme"});
        let (status, problem) = admin(
            &server,
            reqwest::Method::POST,
            "/v1/admin/api-keys",
            Some(body),
        )
        .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (400, Some("key")),
            "{key:?}: {problem}"
        );
    }
    let (status, _) = admin(
        &server,
        reqwest::Method::GET,
        "/v1/admin/tenants/acme",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(version(&server).await["version"], 0);
    // A good write answers the version, and the node has applied it by then.
    let (status, body) = put(json!({"tier": "paid"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["applied"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(check(&server, "acme").await.0, "paid");
    // A patch merges; a stale If-Match is refused.
    let (status, body) = admin(
        &server,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(json!({"overrides": {"tenant-minute": {"limit": 9}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "paid");
    let stale = reqwest::Client::new()
        .put(server.url("/v1/admin/tenants/acme"))
        .bearer_auth(TOKEN)
        .header("if-match", "\"1\"")
        .json(&json!({"tier": "free"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(stale.status(), 412);
    assert_eq!(check(&server, "acme").await, ("paid".into(), 7));
}

#[tokio::test]
async fn an_upgrade_reaches_every_node_and_keeps_the_counter() {
    let Some(pg) =
        PostgresServer::start_or_skip("an_upgrade_reaches_every_node_and_keeps_the_counter")
    else {
        return;
    };
    let url = pg.url();
    let nodes: Vec<Server> = (0..3).map(|_| node(&url, &[])).collect();
    // Two requests of acme on each node under free (each node has its own memory store).
    for n in &nodes {
        for expected in [4, 3] {
            assert_eq!(check(n, "acme").await, ("free".into(), expected));
        }
    }
    let (status, body) = admin(
        &nodes[0],
        reqwest::Method::PUT,
        "/v1/admin/tenants/acme",
        Some(json!({"tier": "paid", "overrides": {"tenant-minute": {"limit": 50}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let written = body["version"].as_u64().expect("a version");
    for n in &nodes {
        let applied = wait_until_async(Duration::from_secs(5), || async {
            (version(n).await["version"].as_u64() >= Some(written)).then_some(())
        })
        .await;
        assert!(applied.is_some(), "a node did not apply version {written}");
        // 2 used of free's 5 carry over: 50 - 2 - 1 remain after this request.
        assert_eq!(check(n, "acme").await, ("paid".into(), 47));
    }
    // A deletion propagates too.
    let (status, body) = admin(
        &nodes[1],
        reqwest::Method::DELETE,
        "/v1/admin/tenants/acme",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for n in &nodes {
        let back = wait_until_async(Duration::from_secs(5), || async {
            (check(n, "acme").await.0 == "free").then_some(())
        })
        .await;
        assert!(back.is_some(), "a deletion did not reach a node");
    }
}

#[tokio::test]
async fn decisions_go_on_while_postgres_is_down_and_changes_arrive_after() {
    let Some(mut pg) = PostgresServer::start_or_skip("decisions_go_on_while_postgres_is_down")
    else {
        return;
    };
    let url = pg.url();
    let server = node(&url, &[]);
    let other = node(&url, &[]);
    assert_eq!(version(&server).await["stale"], false);
    // A fast shutdown: every connection dropped at once. (The testkit's servers run without
    // fsync for speed, so a SIGKILL could lose the schema itself.)
    pg.stop();
    for _ in 0..20 {
        let response = server
            .post("/v1/check", r#"{"tenant":"acme","user":"u"}"#)
            .await;
        assert!(matches!(response.status().as_u16(), 200 | 429));
    }
    let stale = wait_until_async(Duration::from_secs(5), || async {
        (version(&server).await["stale"] == true).then_some(())
    })
    .await;
    assert!(
        stale.is_some(),
        "the catalog should read stale with the database down"
    );
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200, "a stale catalog still serves");
    // A write while it is down is refused as unavailable, with a retry hint.
    let (status, _) = admin(
        &server,
        reqwest::Method::PUT,
        "/v1/admin/tenants/acme",
        Some(json!({"tier": "paid"})),
    )
    .await;
    assert_eq!(status, 503);
    pg.restart();
    // A change written once the database is back reaches the other node without a restart.
    let written = wait_until_async(Duration::from_secs(10), || async {
        let (status, body) = admin(
            &server,
            reqwest::Method::PUT,
            "/v1/admin/tenants/acme",
            Some(json!({"tier": "paid"})),
        )
        .await;
        if status != 200 {
            eprintln!("write after restart: {status} {body}");
        }
        (status == 200).then_some(body)
    })
    .await;
    assert!(
        written.is_some(),
        "writes work again once the database is back"
    );
    let arrived = wait_until_async(Duration::from_secs(10), || async {
        (check(&other, "acme").await.0 == "paid").then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the change did not reach the other node");
    assert_eq!(version(&other).await["stale"], false);
}

#[tokio::test]
async fn a_node_started_with_the_database_down_boots_from_its_snapshot() {
    let Some(mut pg) = PostgresServer::start_or_skip("a_node_started_with_the_database_down")
    else {
        return;
    };
    let url = pg.url();
    let dir = TempDir::new();
    let snapshot = dir.path().join("catalog.snapshot");
    let snapshot = snapshot.to_str().expect("utf-8 path");
    let mut first = node(&url, &["--catalog-snapshot", snapshot]);
    let (status, _) = admin(
        &first,
        reqwest::Method::PUT,
        "/v1/admin/tenants/acme",
        Some(json!({"tier": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    pg.stop();

    let booted = node(
        &url,
        &[
            "--catalog-snapshot",
            snapshot,
            "--catalog-boot-timeout",
            "1s",
        ],
    );
    let status = version(&booted).await;
    assert_eq!(status["origin"], "snapshot", "{status}");
    assert_eq!(status["stale"], true);
    assert_eq!(check(&booted, "acme").await.0, "paid");
    assert!(booted.logs().iter().any(|l| l.contains("last snapshot")));
    assert_eq!(booted.get("/readyz").await.status(), 200);

    // No database and no snapshot: decisions on the default tier, and not ready.
    let empty = node(&url, &["--catalog-boot-timeout", "1s"]);
    assert_eq!(empty.get("/readyz").await.status(), 503);
    assert_eq!(check(&empty, "acme").await.0, "free");
}

/// During a rolling upgrade a newer build may store fields this one does not know. The admin
/// API reads such an entry, alone and in a list, for what it knows (both were a 400 before),
/// and a patch keeps the fields it cannot see (reading for what it knows and writing that
/// back would have dropped them).
#[tokio::test]
async fn an_entry_a_newer_build_wrote_is_read_and_patched_without_loss() {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    let server = node(&url, &[]);
    let (status, body) = admin(
        &server,
        reqwest::Method::PUT,
        "/v1/admin/tenants/acme",
        Some(json!({"tier": "free"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("the catalog file");
    let raw = "SELECT body FROM spillway_catalog_entries WHERE id = 'acme'";
    sqlx::query(
        r#"UPDATE spillway_catalog_entries SET body = '{"tier":"free","colour":"red"}'
           WHERE id = 'acme'"#,
    )
    .execute(&pool)
    .await
    .expect("written as a newer build would");
    let (status, body) = admin(
        &server,
        reqwest::Method::GET,
        "/v1/admin/tenants/acme",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "free");
    assert_eq!(
        body.get("colour"),
        None,
        "not shown: this build cannot say what it means"
    );
    let (status, body) = admin(&server, reqwest::Method::GET, "/v1/admin/tenants", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["tenant"], "acme");
    let (status, body) = admin(
        &server,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(json!({"tier": "paid"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stored: String = sqlx::query_scalar(raw)
        .fetch_one(&pool)
        .await
        .expect("the row");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(stored, json!({"tier": "paid", "colour": "red"}));
    // A null for it would remove nothing: refused, not answered as done.
    let (status, body) = admin(
        &server,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(json!({"colour": null})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "colour", "{body}");
    pool.close().await;
}

/// A tenant's users and API keys would outlive it, still acting for its id (and for a tenant
/// created later with it): its deletion is refused while it has them, unless asked to take
/// them with it.
#[tokio::test]
async fn a_tenant_is_deleted_only_with_its_users_and_keys() {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    let server = node(&url, &[]);
    use reqwest::Method;
    let server = &server;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let path = path.to_owned();
        async move { admin(server, method, &path, body).await }
    };
    for (path, body) in [
        ("/v1/admin/tenants/acme", json!({"tier": "paid"})),
        ("/v1/admin/tenants/initech", json!({"tier": "free"})),
        ("/v1/admin/tenants/acme/users/ann", json!({"tier": "paid"})),
    ] {
        let (status, answer) = call(Method::PUT, path, Some(body)).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let mut digests = Vec::new();
    for (key, tenant) in [
        ("acme-key-0123456789abcdef", "acme"),
        ("initech-key-0123456789abcdef", "initech"),
    ] {
        let body = json!({"key": key, "tenant": tenant});
        let (status, answer) = call(Method::POST, "/v1/admin/api-keys", Some(body)).await;
        assert_eq!(status, 201, "{answer}");
        digests.push(answer["digest"].as_str().expect("a digest").to_owned());
    }
    let (status, problem) = call(Method::DELETE, "/v1/admin/tenants/acme", None).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "urn:spillway:problem:tenant-holds");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("1 user(s) and 1 API key(s)") && detail.contains("cascade=true"),
        "{detail}"
    );
    let (status, problem) = call(Method::DELETE, "/v1/admin/tenants/acme?cascade=yes", None).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("cascade")));
    let (status, _) = call(Method::GET, "/v1/admin/tenants/acme", None).await;
    assert_eq!(status, 200, "a refused deletion deleted nothing");

    let (status, done) = call(Method::DELETE, "/v1/admin/tenants/acme?cascade=true", None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["users"].as_u64(), done["api_keys"].as_u64()),
        (Some(1), Some(1))
    );
    for path in [
        "/v1/admin/tenants/acme".to_owned(),
        "/v1/admin/tenants/acme/users/ann".to_owned(),
        format!("/v1/admin/api-keys/{}", digests[0]),
    ] {
        assert_eq!(call(Method::GET, &path, None).await.0, 404, "{path}");
    }
    // The other tenant's key stays.
    let path = format!("/v1/admin/api-keys/{}", digests[1]);
    assert_eq!(call(Method::GET, &path, None).await.0, 200);
}

/// A reload whose policy cannot take a catalog override in force (its limit given another
/// algorithm) is refused, naming the entry: taken, it would quietly lift the tenant's own
/// limit back to the tier's. A reload that leaves the override valid is taken.
#[tokio::test]
async fn a_reload_that_would_drop_a_catalog_override_is_refused() {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    let server = node(&url, &[]);
    let (status, body) = admin(
        &server,
        reqwest::Method::PUT,
        "/v1/admin/tenants/abuser",
        Some(json!({"overrides": {"tenant-minute": {"limit": 2}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(check(&server, "abuser").await, ("free".into(), 1));
    let reloads = |outcome: &'static str| {
        let server = &server;
        async move {
            let text = server.metrics().await;
            common::metric(
                &text,
                "spillway_config_reloads_total",
                &[("outcome", outcome)],
            )
            .unwrap_or(0.0)
        }
    };
    server.rewrite_policy(&POLICY.replace(
        "tenant-minute: {algorithm: fixed_window, limit: 5, window: 1m,",
        "tenant-minute: {algorithm: token_bucket, rate: 5/min,",
    ));
    let rejected = wait_until_async(Duration::from_secs(10), || async {
        (reloads("rejected").await == 1.0).then_some(())
    })
    .await;
    assert!(rejected.is_some(), "logs:\n{}", server.logs().join("\n"));
    let line = (server.wait_for_log("policy reload rejected")).expect("logged");
    assert!(
        line.contains("tenant abuser") && line.contains("overrides.tenant-minute"),
        "{line}"
    );
    assert_eq!(reloads("success").await, 0.0);
    // Still held to its own two.
    assert_eq!(check(&server, "abuser").await, ("free".into(), 0));
    let third = server
        .post("/v1/check", &json!({"tenant": "abuser"}).to_string())
        .await;
    assert_eq!(third.status(), 429);
    // New numbers the override still fits: taken.
    server.rewrite_policy(&POLICY.replace("limit: 5,", "limit: 6,"));
    let taken = wait_until_async(Duration::from_secs(10), || async {
        (reloads("success").await == 1.0).then_some(())
    })
    .await;
    assert!(taken.is_some(), "logs:\n{}", server.logs().join("\n"));
}

/// A database restored from a backup (or failed over to a replica behind it) and written
/// again reuses the versions a node applied: "the changes after mine" would miss what
/// replaced them and keep what the restore removed. The node sees that the change it applied
/// last is no longer the database's at that version, or (that row written again since) not
/// among the changes after it, and reads it whole again.
#[tokio::test]
async fn a_node_follows_a_database_that_went_back_in_time_and_on() {
    // Version 2 is `a` now; or no row is at version 2 any more (`a` written at 2, then again
    // at 3, before the node looked).
    back_in_time(false, "another change at this node's version").await;
    back_in_time(true, "the change this node applied last is gone").await;
}

async fn back_in_time(rewritten_unseen: bool, told: &str) {
    let dir = TempDir::new();
    let url = sqlite_url(&dir);
    // No polls: only the admin writes' nudges make the node look (a poll between the
    // restore and the writes after it would see the database behind, another path).
    let server = Server::with_policy(POLICY)
        .args(&[
            "--catalog",
            &url,
            "--catalog-migrate",
            "--catalog-poll",
            "1h",
        ])
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .start();
    let put = |tenant: &'static str| {
        let server = &server;
        async move {
            let path = format!("/v1/admin/tenants/{tenant}");
            let body = Some(json!({"tier": "paid"}));
            let (status, body) = admin(server, reqwest::Method::PUT, &path, body).await;
            assert_eq!(status, 200, "{body}");
            body["version"].as_u64().expect("a version")
        }
    };
    assert_eq!(put("keep").await, 1);
    assert_eq!(put("ghost").await, 2);
    assert_eq!(check(&server, "ghost").await.0, "paid");
    // Back to version 1, as a backup taken then would be.
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("the catalog file");
    let mut sql = vec![
        "DELETE FROM spillway_catalog_entries WHERE version > 1",
        "UPDATE spillway_catalog_meta SET version = 1 WHERE id = 1",
    ];
    if rewritten_unseen {
        // `a` written at 2 and again at 3 behind the node's back: its row holds 3.
        sql.extend([
            "INSERT INTO spillway_catalog_entries (kind, scope, id, body, version, deleted) \
             SELECT kind, scope, 'a', body, 3, 0 FROM spillway_catalog_entries WHERE id = 'keep'",
            "UPDATE spillway_catalog_meta SET version = 3 WHERE id = 1",
        ]);
    }
    for sql in sql {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;
    // Written on, through the node (which looks at once).
    if rewritten_unseen {
        assert_eq!(put("b").await, 4);
    } else {
        assert_eq!(put("a").await, 2);
        assert_eq!(put("b").await, 3);
    }
    let caught_up = wait_until_async(Duration::from_secs(10), || async {
        let tiers = (
            check(&server, "ghost").await.0,
            check(&server, "a").await.0,
            check(&server, "b").await.0,
        );
        (tiers == ("free".into(), "paid".into(), "paid".into())).then_some(())
    })
    .await;
    assert!(
        caught_up.is_some(),
        "{told}: logs:\n{}",
        server.logs().join("\n")
    );
    assert!(
        server.logs().iter().any(|l| l.contains(told)),
        "{told}: logs:\n{}",
        server.logs().join("\n")
    );
}
