//! The dashboard end to end: a real `spillway serve` (decision log, SQLite catalog, admin API on
//! its own listener) on free ports, a burst that gets denied, then the page in a real headless
//! Chromium (`e2e/ui.test.mjs`, playwright-core driving Debian's `chromium`), which asserts from
//! the rendered page what an operator would look for.
//!
//! `scripts/test.sh` installs Chromium and the e2e packages and sets
//! `SPILLWAY_REQUIRE_BROWSER=1`, so there a missing browser fails the test. Run alone without
//! them (`cargo test --test ui`), the browser part is skipped with a loud message; the HTTP
//! checks before it always run. `SPILLWAY_UI_SCREENSHOT=docs/ui.png` makes the browser test
//! write the README's screenshot.

mod common;

use common::{parse_listen_line, Server, PATIENCE};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const POLICY: &str = r#"
default_tier: free
limits:
  # A slow bucket, so "0 left" still holds when the browser looks (a window could roll over).
  tenant-hourly: {algorithm: token_bucket, rate: 5/h, burst: 5, key: [tenant]}
  tenant-trial: {algorithm: fixed_window, limit: 2, window: 1m, key: [tenant], shadow: true}
  user-hour: {algorithm: token_bucket, rate: 100/h, burst: 20, key: [tenant, user]}
  generate-minute: {algorithm: sliding_window, limit: 30, window: 1m, key: [tenant]}
tiers:
  free: {limits: [tenant-hourly, tenant-trial, user-hour]}
  pro: {limits: [tenant-hourly, user-hour]}
routes:
  - match: "POST /v1/generate"
    cost: 2
    failure_mode: closed
    limits: [generate-minute]
"#;

const TOKEN: &str = "e2e-dashboard-token-0123456789";
const TENANT: &str = "acme-burst";
const EVIL: &str = r#"<img src=x onerror="window.__pwned=1;document.title='pwned'">"#;
/// `TENANT` with a zero-width no-break space after it: as text it looks the same (and `trim`
/// would drop it).
const LOOKALIKE: &str = "acme-burst\u{feff}";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing(root: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no `node` on PATH".into());
    }
    if !root.join("e2e/node_modules/playwright-core").exists() {
        return Some("e2e/node_modules is missing (cd e2e && npm ci)".into());
    }
    None
}

/// Runs `command` to completion with its output captured (drained by threads while it runs,
/// so a chatty child never blocks on a full pipe), killing it and everything it started
/// (its own process group: node and the browser) after `limit`.
fn run_for(mut command: Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("node starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let finished = common::wait_until(limit, || child.try_wait().ok().flatten());
    if finished.is_none() {
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = child.kill();
    }
    let status = child.wait().expect("node's status");
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

async fn check(server: &Server, tenant: &str, user: &str) -> u16 {
    let body = serde_json::json!({ "tenant": tenant, "user": user }).to_string();
    server.post("/v1/check", &body).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_who_is_limited_and_why_in_a_real_browser() {
    let root = repo_root();
    let dir = common::TempDir::new();
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let log = format!("file:{}", dir.path().join("decisions.jsonl").display());
    let server = Server::with_policy(POLICY)
        .system_clock()
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .args(&[
            "--admin-listen",
            "127.0.0.1:0",
            "--catalog",
            &catalog,
            "--catalog-migrate",
            "--catalog-poll",
            "200ms",
            "--decision-log",
            &log,
            "--node-name",
            "e2e-node",
            // Every decision counted: the page's top-blocked table is checked for a small
            // burst's exact denials.
            "--top-k-sample",
            "1",
        ])
        .start();
    let admin = server
        .wait_for_log("admin API listening on ")
        .and_then(|line| parse_listen_line(&line))
        .unwrap_or_else(|| panic!("no admin listener; logs:\n{}", server.logs().join("\n")));
    let admin_url = |path: &str| format!("http://{admin}{path}");

    // The page lives with the admin API: on its listener, not on the main one.
    assert_eq!(server.get("/ui").await.status(), 404);
    let http = reqwest::Client::new();
    let page = http.get(admin_url("/ui")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let csp = common::header(&page, "content-security-policy").unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let api = http
        .get(admin_url("/ui/api/policy"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 401, "the endpoints need the token");
    let api = http
        .get(admin_url("/ui/api/policy"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 200);

    // The burst: five pass, the rest are denied; and a tenant whose name is markup, and one that
    // looks like the first.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let user = ["alice", "bob", "carol"][i % 3];
        statuses.push(check(&server, TENANT, user).await);
    }
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    for _ in 0..7 {
        check(&server, EVIL, "mallory").await;
        check(&server, LOOKALIKE, "mallory").await;
    }

    if let Some(why) = browser_missing(&root) {
        let required = std::env::var_os("SPILLWAY_REQUIRE_BROWSER").is_some();
        assert!(
            !required,
            "SPILLWAY_REQUIRE_BROWSER is set but the browser test cannot run: {why}"
        );
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED the dashboard's browser test: {why}.\n\
             scripts/test.sh installs what it needs and runs it.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }

    let mut node = Command::new("node");
    node.arg(root.join("e2e/ui.test.mjs"))
        .current_dir(root.join("e2e"))
        .env("SPILLWAY_UI_URL", admin_url("/ui"))
        .env("SPILLWAY_API_URL", server.url(""))
        .env("SPILLWAY_ADMIN_TOKEN", TOKEN)
        .env("SPILLWAY_TENANT", TENANT)
        .env("SPILLWAY_EVIL_TENANT", EVIL)
        .env("SPILLWAY_LOOKALIKE_TENANT", LOOKALIKE);
    if let Some(path) = std::env::var_os("SPILLWAY_UI_SCREENSHOT") {
        // Relative to the repository, as a person running the test would mean it.
        node.env("SPILLWAY_UI_SCREENSHOT", root.join(path));
    }
    let run = tokio::task::spawn_blocking(move || run_for(node, PATIENCE * 6))
        .await
        .expect("the runner thread");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser test failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server logs\n{}",
        run.status,
        server.logs().join("\n")
    );
    eprint!("{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // The page changed the catalog through the admin API: the database says so too.
    let tenant = http
        .get(admin_url(&format!("/v1/admin/tenants/{TENANT}")))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("admin read");
    let body: serde_json::Value = tenant.json().await.expect("json");
    assert_eq!(body["tier"], "pro", "{body}");
    assert_eq!(body["overrides"]["tenant-hourly"]["burst"], 100, "{body}");
}

/// The lookup on a real Redis: a peek of cost 0 through the same Lua scripts, which reports the
/// counters and writes nothing (the key count in Redis does not move, nor does the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_lookup_reads_counters_and_writes_nothing() {
    use spillway_testkit::redis::{command, RedisServer};
    let redis = RedisServer::start();
    let store = format!(
        "store: {{type: redis, url: \"{}\", prefix: ui, timeout: 5s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&format!("{POLICY}{store}"))
        .system_clock()
        .start();
    let keys = || {
        command(redis.port(), "DBSIZE")
            .and_then(|r| r.trim().trim_start_matches(':').parse::<u64>().ok())
            .expect("DBSIZE")
    };
    for _ in 0..3 {
        assert_eq!(check(&server, TENANT, "alice").await, 200);
    }
    let before = keys();
    let lookup = |tenant: &str| {
        let url = server.url(&format!("/ui/api/lookup?tenant={tenant}&user=alice"));
        let http = server.http.clone();
        async move {
            let answer = http.get(url).send().await.expect("lookup");
            assert_eq!(answer.status(), 200);
            answer.json::<serde_json::Value>().await.expect("json")
        }
    };
    for _ in 0..10 {
        let body = lookup(TENANT).await;
        assert_eq!(body["store_error"], serde_json::Value::Null, "{body}");
        let hourly = &body["limits"][0];
        assert_eq!(hourly["name"], "tenant-hourly");
        assert_eq!(hourly["usage"]["remaining"], 2, "{body}");
        assert_eq!(hourly["usage"]["next_allowed"], true);
    }
    for i in 0..10 {
        let body = lookup(&format!("nobody-{i}")).await;
        assert_eq!(body["limits"][0]["usage"]["remaining"], 5, "{body}");
    }
    assert_eq!(keys(), before, "a peek writes no key to Redis");
    // The budget is whole: two more pass, the next is denied.
    assert_eq!(check(&server, TENANT, "alice").await, 200);
    assert_eq!(check(&server, TENANT, "alice").await, 200);
    assert_eq!(check(&server, TENANT, "alice").await, 429);
    let body = lookup(TENANT).await;
    assert_eq!(body["limits"][0]["usage"]["remaining"], 0, "{body}");
    assert_eq!(body["limits"][0]["usage"]["next_allowed"], false);
}
