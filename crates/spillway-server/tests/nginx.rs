//! The shipped nginx configs (`deploy/nginx/spillway.conf`, and `spillway-principals.conf`
//! where Spillway identifies the caller), run for real: only their addresses
//! are changed, so the file cannot drift from what is tested. A small upstream on loopback
//! counts the requests that reach it, so the test can tell that a denied request never did.
//!
//! Needs an `nginx` binary with the auth_request module (Debian's `nginx` package has it;
//! `scripts/test.sh` installs it). The tests run whenever one is installed (in `/usr/sbin`,
//! `/usr/local/sbin`, or on `PATH`). Without one they are skipped with a loud note, except when
//! the run requires nginx: `SPILLWAY_REQUIRE_NGINX` set (`scripts/test.sh` sets it, as it does
//! `SPILLWAY_REQUIRE_POSTGRES` and `SPILLWAY_REQUIRE_BROWSER`) or `CI=true`; then a missing
//! nginx, or one without the module, is a failure.

mod common;

use common::{header, wait_until, Server, TempDir, PATIENCE};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const POLICY: &str = r#"
default_tier: free
limits:
  ip-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [ip]
global: [ip-minute]
tiers:
  free:
    limits: []
"#;

/// The environment variable that turns a missing nginx from a skip into a failure.
const REQUIRE_ENV: &str = "SPILLWAY_REQUIRE_NGINX";

/// Whether this run must run the nginx tests: [`REQUIRE_ENV`] set to anything but empty, or
/// `CI=true`.
fn nginx_required(require: Option<&str>, ci: Option<&str>) -> bool {
    require.is_some_and(|v| !v.is_empty()) || ci == Some("true")
}

/// Where nginx is looked for before `PATH`: Debian's is in `/usr/sbin`, often off a user's
/// `PATH`.
const SBIN: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// The first `nginx` in the directories `sbin`, then in those of `path` (a `PATH` value).
fn find_nginx_in(sbin: &[&str], path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let on_path = path.map(|p| std::env::split_paths(p).collect::<Vec<_>>());
    sbin.iter()
        .map(PathBuf::from)
        .chain(on_path.into_iter().flatten())
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// Why `nginx` cannot run these tests, if it cannot: the configs need `auth_request`.
fn unusable(nginx: &Path) -> Option<String> {
    let output = match Command::new(nginx).arg("-V").output() {
        Ok(output) => output,
        Err(err) => return Some(format!("{} -V failed: {err}", nginx.display())),
    };
    // `nginx -V` writes its build options to stderr.
    let options = String::from_utf8_lossy(&output.stderr);
    (!options.contains("http_auth_request_module")).then(|| {
        format!(
            "{} was built without the auth_request module",
            nginx.display()
        )
    })
}

/// nginx for test `test`: `None` after a loud note when it is not installed (or lacks the
/// auth_request module), unless the run requires it (see the module docs): then a failure.
fn nginx_or_skip(test: &str) -> Option<PathBuf> {
    let why = match find_nginx_in(&SBIN, std::env::var_os("PATH").as_deref()) {
        Some(nginx) => match unusable(&nginx) {
            None => return Some(nginx),
            Some(why) => why,
        },
        None => "nginx is not installed (scripts/test.sh installs it)".to_owned(),
    };
    let required = nginx_required(
        std::env::var(REQUIRE_ENV).ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    );
    assert!(
        !required,
        "{test}: nginx is required ({REQUIRE_ENV} or CI=true) but cannot run: {why}"
    );
    eprintln!("\n*** SKIPPED {test}: {why}; set {REQUIRE_ENV}=1 to make this a failure ***\n");
    None
}

#[test]
fn a_run_that_requires_nginx_says_so() {
    assert!(nginx_required(Some("1"), None));
    assert!(nginx_required(None, Some("true")));
    assert!(!nginx_required(Some(""), None));
    assert!(!nginx_required(None, Some("false")));
    assert!(!nginx_required(None, None));
}

#[test]
fn nginx_is_found_on_path_too_and_needs_auth_request() {
    let dir = TempDir::new();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::fs::write(bin.join("nginx"), "").expect("a stand-in nginx");
    let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).expect("a PATH");
    // With no nginx in the sbin directories, the one on PATH (whatever this machine has
    // installed in its real sbin).
    let empty_sbin = dir.path().join("sbin");
    std::fs::create_dir(&empty_sbin).expect("sbin dir");
    let empty_sbin = empty_sbin.to_str().expect("a UTF-8 temp path");
    let found = find_nginx_in(&[empty_sbin], Some(&path)).expect("found");
    assert_eq!(found, bin.join("nginx"));
    // An nginx in an sbin directory comes first.
    let sbin = dir.path().join("usr-sbin");
    std::fs::create_dir(&sbin).expect("sbin dir");
    std::fs::write(sbin.join("nginx"), "").expect("a stand-in nginx");
    let sbin = sbin.to_str().expect("a UTF-8 temp path");
    let first = find_nginx_in(&[empty_sbin, sbin], Some(&path)).expect("found");
    assert_eq!(first, Path::new(sbin).join("nginx"));
    // A binary whose `-V` does not list the module is refused, saying why.
    let why = unusable(Path::new("/bin/true")).expect("no auth_request module");
    assert!(why.contains("auth_request"), "{why}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The shipped config, `deploy/nginx/spillway.conf`.
fn shipped_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/spillway.conf");
    std::fs::read_to_string(path).expect("read deploy/nginx/spillway.conf")
}

/// An upstream on loopback that answers every request and counts them.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "from the app\n"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: only the master can take its worker processes down with it.
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-s", "TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped || wait_until(PATIENCE, || self.0.try_wait().ok().flatten()).is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs nginx on a shipped config, its `spillway` upstream pointed at `spillway` and its `app`
/// upstream at `upstream`; returns it with its port and scratch directory.
fn start_pointed(
    nginx: &Path,
    config: &str,
    spillway: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> (Nginx, u16, TempDir) {
    let site = config
        .replace("server 127.0.0.1:8080;", &format!("server {spillway};"))
        .replace("server 127.0.0.1:8000;", &format!("server {upstream};"));
    start_nginx(nginx, &site)
}

/// Runs nginx on `site` (a server block listening on `listen 80;`, moved to a free port);
/// returns it with its port and scratch directory.
fn start_nginx(nginx: &Path, site: &str) -> (Nginx, u16, TempDir) {
    let front = free_port();
    let dir = TempDir::new();
    let site = site.replace("listen 80;", &format!("listen 127.0.0.1:{front};"));
    let tmp = dir.path().display();
    let conf = format!(
        "worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  \
         proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  \
         uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n{site}\n}}\n"
    );
    let conf_path = dir.write("nginx.conf", &conf);
    let child = Command::new(nginx)
        .args([
            "-e",
            &format!("{tmp}/error.log"),
            "-p",
            &tmp.to_string(),
            "-c",
        ])
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx(child);
    let up = wait_until(PATIENCE, || {
        std::net::TcpStream::connect(("127.0.0.1", front)).ok()
    });
    assert!(
        up.is_some(),
        "nginx did not start: {}",
        std::fs::read_to_string(format!("{tmp}/error.log")).unwrap_or_default()
    );
    (nginx, front, dir)
}

#[tokio::test]
async fn the_shipped_nginx_config_turns_denials_into_429_and_shields_the_upstream() {
    let Some(nginx) = nginx_or_skip("the_shipped_nginx_config") else {
        return;
    };
    let spillway = Server::with_policy(POLICY)
        .args(&["--deny-status", "403", "--invalid-status", "401"])
        .start();
    let (upstream, hits) = counting_upstream().await;
    let site = shipped_config();
    let (_nginx, front, _dir) = start_pointed(&nginx, &site, spillway.addr(), upstream);

    let url = format!("http://127.0.0.1:{front}/some/page");
    for remaining in ["1", "0"] {
        let response = spillway.http.get(&url).send().await.expect("sent");
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(
            header(&response, "x-ratelimit-reset").as_deref(),
            Some("60")
        );
        assert_eq!(
            header(&response, "ratelimit").map(|v| v.contains("\"ip-minute\"")),
            Some(true)
        );
        assert_eq!(response.text().await.expect("body"), "from the app\n");
    }
    let denied = spillway.http.get(&url).send().await.expect("sent");
    assert_eq!(denied.status(), 429);
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("60"));
    assert_eq!(header(&denied, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(
        header(&denied, "content-type").as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(
        header(&denied, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&denied, "ratelimit-policy").as_deref(),
        Some("\"ip-minute\";q=2;w=60")
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the denied request reached the upstream"
    );

    // Headers Spillway cannot read give the client a 400, never an unlimited pass.
    let unreadable = spillway
        .http
        .get(&url)
        .header("X-Descriptor-Region", "eu")
        .header("X-Descriptor-Region", "us")
        .send()
        .await
        .expect("sent");
    assert_eq!(unreadable.status(), 400);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "it reached the upstream");
}

/// Ten units a minute per client address; deleting an item costs all ten.
const DELETE_POLICY: &str = r#"
default_tier: free
limits:
  ip-minute: {algorithm: fixed_window, limit: 10, window: 1m, key: [ip]}
global: [ip-minute]
tiers:
  free: {limits: []}
routes:
  - {match: "DELETE /v1/items/*", cost: 10}
"#;

/// Through the shipped config, a request a backend serves as `DELETE /v1/items/<id>` pays
/// for that route however the client spells it: a `POST` with a method override (nginx
/// passes the client's headers to the subrequest), or a path nginx's `$request_uri` keeps
/// as sent that a strict backend reads as an item (`x%2F..`).
#[tokio::test]
async fn the_shipped_nginx_config_charges_a_delete_spelled_otherwise() {
    let Some(nginx) = nginx_or_skip("a_delete_spelled_otherwise") else {
        return;
    };
    let site = shipped_config();
    let spellings: [&[u8]; 2] = [
        b"POST /v1/items/7 HTTP/1.1\r\nHost: x\r\nX-HTTP-Method-Override: DELETE\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
        b"DELETE /v1/items/x%2F.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for spelling in spellings {
        // A node of its own for each, so each starts with the address's ten units.
        let spillway = Server::with_policy(DELETE_POLICY)
            .args(&["--deny-status", "403", "--invalid-status", "401"])
            .start();
        let (upstream, hits) = counting_upstream().await;
        let (_nginx, front, _dir) = start_pointed(&nginx, &site, spillway.addr(), upstream);
        let first = raw_exchange(front, spelling).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let second = raw_exchange(front, spelling).await;
        assert!(second.starts_with("HTTP/1.1 429"), "{second}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the second reached the upstream"
        );
    }
}

/// A policy that identifies callers by their JWT (HS256 from the test fixtures).
fn principals_policy() -> String {
    let jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/principal/jwks.json");
    format!(
        "default_tier: free
limits:
  tenant-minute: {{algorithm: fixed_window, limit: 2, window: 1m, key: [tenant]}}
tiers:
  free: {{limits: [tenant-minute]}}
principals:
  jwt:
    jwks_file: {}
    algorithms: [HS256]
    claims: {{tenant: org}}
",
        jwks.display()
    )
}

/// An HS256 token for tenant `org`, signed with the fixture secret, valid around the test
/// clock.
fn token(org: &str) -> String {
    signed(org, None)
}

/// `token`, or one signed with `secret` instead of the fixture's.
fn signed(org: &str, other: Option<&[u8]>) -> String {
    use base64::Engine as _;
    let secret = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/principal/hs1.secret"),
    )
    .expect("secret");
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret.trim())
        .expect("base64url");
    let secret = other.map_or(secret, <[u8]>::to_vec);
    let now = common::START_MS / 1000;
    let claims = serde_json::json!({"org": org, "exp": now + 3600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("sign")
}

#[tokio::test]
async fn the_principals_nginx_config_counts_by_the_verified_tenant() {
    let Some(nginx) = nginx_or_skip("the_principals_nginx_config") else {
        return;
    };
    let spillway = Server::with_policy(&principals_policy())
        .args(&["--deny-status", "403"])
        .start();
    let (upstream, hits) = counting_upstream().await;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/spillway-principals.conf");
    let site = std::fs::read_to_string(path).expect("read deploy/nginx/spillway-principals.conf");
    let (_nginx, front, _dir) = start_pointed(&nginx, &site, spillway.addr(), upstream);
    let url = format!("http://127.0.0.1:{front}/some/page");
    let send = |token: Option<String>, tenant: &'static str| {
        let mut request = spillway.http.get(&url).header("x-tenant-id", tenant);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("sent") }
    };
    // Tenant A's token, while the client claims to be B: counted as A.
    let a = token("tenant-a");
    for remaining in ["1", "0"] {
        let response = send(Some(a.clone()), "tenant-b").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    let denied = send(Some(a.clone()), "tenant-b").await;
    assert_eq!(denied.status(), 429);
    // B's own budget is whole.
    assert_eq!(
        send(Some(token("tenant-b")), "tenant-b").await.status(),
        200
    );
    // No token, or a forged one: 401 naming the reason, and the upstream never sees it.
    let missing = send(None, "tenant-b").await;
    assert_eq!(missing.status(), 401);
    let body: serde_json::Value = missing.json().await.expect("problem");
    assert_eq!(body["reason"], "missing");
    let forged = send(Some(signed("tenant-a", Some(&[7; 48]))), "tenant-b").await;
    assert_eq!(forged.status(), 401);
    let body: serde_json::Value = forged.json().await.expect("problem");
    assert_eq!(body["reason"], "bad_signature");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "only allowed requests reach the app"
    );
}

/// A generation API that states its cost afterwards: each response carries the tokens it
/// "generated" in `X-Tokens-Used` (the test's client picks them with `X-Test-Tokens`; `none`
/// leaves the header out), after `X-Test-Delay-Ms` milliseconds if given.
async fn generating_upstream() -> std::net::SocketAddr {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let tokens = text("x-test-tokens").unwrap_or("0").to_owned();
        let delay = text("x-test-delay-ms").and_then(|d| d.parse().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if tokens == "none" {
            return "generated\n".into_response();
        }
        ([("x-tokens-used", tokens)], "generated\n").into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// 1,000 generated tokens an hour per tenant, charged after the response.
const METERED: &str = r#"
default_tier: free
limits:
  generation-tokens:
    algorithm: token_bucket
    rate: 1000/h
    burst: 1000
    key: [tenant]
    charge: after
routes:
  - match: "POST /v1/generate"
    limits: [generation-tokens]
tiers:
  free:
    limits: []
"#;

/// Spillway on `policy`, the generating app, and nginx on `deploy/nginx/metered.conf` as
/// `edit` leaves it, in front of both: Spillway, nginx, the URL of nginx's `/v1/generate`, and
/// nginx's scratch directory (nginx stops when its guard is dropped).
async fn metered_front(
    nginx: &Path,
    policy: &str,
    edit: impl FnOnce(String) -> String,
) -> (Server, Nginx, String, TempDir) {
    let spillway = Server::with_policy(policy)
        .args(&["--deny-status", "403", "--invalid-status", "401"])
        .start();
    let upstream = generating_upstream().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/metered.conf");
    let shipped = std::fs::read_to_string(path).expect("read deploy/nginx/metered.conf");
    let (nginx, front, dir) = start_pointed(nginx, &edit(shipped), spillway.addr(), upstream);
    let url = format!("http://127.0.0.1:{front}/v1/generate");
    (spillway, nginx, url, dir)
}

/// The standing of acme's generation budget, straight from Spillway.
async fn acme_remaining(spillway: &Server) -> Option<u64> {
    let r = spillway
        .post(
            "/v1/check?peek",
            r#"{"tenant":"acme","method":"POST","path":"/v1/generate"}"#,
        )
        .await;
    let body: serde_json::Value = r.json().await.expect("json");
    body["limits"][0]["remaining"].as_u64()
}

/// `deploy/nginx/metered.conf` again: a client that hangs up before the answer is charged
/// what the answer states (nginx waits for it), and an answer that states no cost is charged
/// the config's unstated cost (here set to 250), never 0.
#[tokio::test]
async fn the_metered_nginx_config_charges_what_a_client_hung_up_on() {
    let Some(nginx) = nginx_or_skip("the_metered_nginx_config_hung_up") else {
        return;
    };
    let (spillway, _nginx, url, _dir) = metered_front(&nginx, METERED, |shipped| {
        let site = shipped.replace("    default 4096;\n", "    default 250;\n");
        assert_ne!(
            site, shipped,
            "the unstated cost is set where the test expects it"
        );
        site
    })
    .await;
    let settled = |want: u64| {
        let spillway = &spillway;
        async move {
            let seen = common::wait_until_async(PATIENCE, || async {
                (acme_remaining(spillway).await == Some(want)).then_some(())
            })
            .await;
            seen.is_some()
        }
    };
    // The client gives up after 100 ms; the app answers 300 tokens at 600 ms.
    let hung_up = (spillway.http.post(&url))
        .header("X-Tenant-Id", "acme")
        .header("X-Test-Tokens", "300")
        .header("X-Test-Delay-Ms", "600")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client hung up: {hung_up:?}");
    assert!(settled(700).await, "the 300 tokens were never charged");
    // An answer that states no cost.
    let unstated = (spillway.http.post(&url))
        .header("X-Tenant-Id", "acme")
        .header("X-Test-Tokens", "none")
        .send()
        .await
        .expect("sent");
    assert_eq!(unstated.status(), 200);
    assert_eq!(
        header(&unstated, "spillway-reported-cost").as_deref(),
        Some("250")
    );
    assert!(settled(450).await, "the unstated cost was never charged");
    // Refused here before reaching the app: charged nothing.
    let refused = (spillway.http.get(&url))
        .header("X-Tenant-Id", "acme")
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 405);
    assert_eq!(
        header(&refused, "spillway-reported-cost").as_deref(),
        Some("0")
    );
}

/// `deploy/nginx/metered.conf` charges the user its check saw: nginx passes the client's own
/// `X-User-Id` to the check, so a report without it charged no per-user counter (nor a user's
/// tier's) while the check admitted against one.
#[tokio::test]
async fn the_metered_nginx_config_charges_the_user_its_check_saw() {
    let Some(nginx) = nginx_or_skip("the_metered_nginx_config_user") else {
        return;
    };
    let per_user = METERED.replace("key: [tenant]", "key: [tenant, user]");
    let (spillway, _nginx, url, _dir) = metered_front(&nginx, &per_user, |shipped| shipped).await;
    let generate = |user: &'static str, tokens: &'static str| {
        (spillway.http.post(&url))
            .header("X-Tenant-Id", "acme")
            .header("X-User-Id", user)
            .header("X-Test-Tokens", tokens)
            .send()
    };
    let spillway = &spillway;
    let remaining = |user: &'static str| async move {
        let body =
            format!(r#"{{"tenant":"acme","user":"{user}","method":"POST","path":"/v1/generate"}}"#);
        let r = spillway.post("/v1/check?peek", &body).await;
        let body: serde_json::Value = r.json().await.expect("json");
        body["limits"][0]["remaining"].as_u64()
    };
    assert_eq!(generate("bob", "900").await.expect("sent").status(), 200);
    let landed = common::wait_until_async(PATIENCE, || async {
        (remaining("bob").await == Some(100)).then_some(())
    })
    .await;
    assert!(
        landed.is_some(),
        "bob's 900 tokens were never charged to bob"
    );
    assert_eq!(remaining("carol").await, Some(1000), "nor to anyone else");
    // A user that could not be written into the report's JSON as it is: refused.
    let quoted = (spillway.http.post(&url))
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "bob\",\"cost\":0,\"x\":\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(quoted.status(), 400);
}

/// `deploy/nginx/metered.conf`, run for real: admitted while the budget has room, the
/// real cost reported after each response (`post_action`), and a request after an overdraw
/// refused with a 429 and the debt's `Retry-After`.
#[tokio::test]
async fn the_metered_nginx_config_reports_costs_after_the_response() {
    let Some(nginx) = nginx_or_skip("the_metered_nginx_config") else {
        return;
    };
    let (spillway, _nginx, url, _dir) = metered_front(&nginx, METERED, |shipped| shipped).await;
    let generate = |tokens: &'static str| {
        spillway
            .http
            .post(&url)
            .header("X-Tenant-Id", "acme")
            .header("X-Test-Tokens", tokens)
            .send()
    };
    let remaining = || acme_remaining(&spillway);
    let first = generate("900").await.expect("sent");
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "spillway-reported-cost").as_deref(),
        Some("900")
    );
    // post_action runs after the response: wait for the report to land.
    let landed = common::wait_until_async(PATIENCE, || async {
        (remaining().await == Some(100)).then_some(())
    })
    .await;
    assert!(landed.is_some(), "the 900 tokens were never reported");

    assert_eq!(generate("400").await.expect("sent").status(), 200);
    let debt = common::wait_until_async(PATIENCE, || async {
        let r = spillway
            .post(
                "/v1/check?peek",
                r#"{"tenant":"acme","method":"POST","path":"/v1/generate"}"#,
            )
            .await;
        (r.status() == 429).then_some(())
    })
    .await;
    assert!(debt.is_some(), "the overdraw was never reported");
    let denied = generate("1").await.expect("sent");
    assert_eq!(denied.status(), 429);
    // 300 tokens owed and one to free, at 3.6 s each.
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("1084"));
    // Another method does not slip past the debt: only POST reaches the app.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let other = spillway
            .http
            .request(method, &url)
            .header("X-Tenant-Id", "acme")
            .header("X-Test-Tokens", "1")
            .send()
            .await
            .expect("sent");
        assert_eq!(other.status(), 405);
    }
    // Nor does a POST naming another method, which would be checked under that method's
    // routes too while the report charges POST /v1/generate.
    let overrides = [
        ("X-HTTP-Method-Override", "GET"),
        ("X-HTTP-Method", "GET"),
        ("X-Method-Override", "GET"),
    ];
    for (name, value) in overrides {
        let named = (spillway.http.post(&url))
            .header("X-Tenant-Id", "acme")
            .header(name, value)
            .send()
            .await
            .expect("sent");
        assert_eq!(named.status(), 400, "{name}");
    }
    for query in [
        "_method=GET",
        "x=1&.method=GET",
        "%5Fmethod=GET",
        "+_method=GET",
    ] {
        let named = (spillway.http.post(format!("{url}?{query}")))
            .header("X-Tenant-Id", "acme")
            .send()
            .await
            .expect("sent");
        assert_eq!(named.status(), 400, "{query}");
    }
    // Naming POST itself names nothing else: it goes on to the (indebted) budget, and an
    // argument that merely ends in `method` is no override.
    let post = (spillway.http.post(&url))
        .header("X-Tenant-Id", "acme")
        .header("X-HTTP-Method-Override", "POST")
        .send()
        .await
        .expect("sent");
    assert_eq!(post.status(), 429);
    let payment = (spillway.http.post(format!("{url}?payment_method=card")))
        .header("X-Tenant-Id", "acme")
        .send()
        .await
        .expect("sent");
    assert_eq!(payment.status(), 429);

    // A tenant that would need escaping in the report's JSON is refused up front.
    let odd = spillway
        .http
        .post(&url)
        .header("X-Tenant-Id", "acme\",\"tenant\":\"other")
        .send()
        .await
        .expect("sent");
    assert_eq!(odd.status(), 400);
}

/// Sends `request` as it is to nginx on `port` and returns the whole answer. Asynchronous, so
/// that the test's own upstream (on the same runtime) can answer if nginx passes it on.
async fn raw_exchange(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to nginx");
    stream.write_all(request).await.expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("nginx answers and closes in time")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The shipped config's fail-open option (its commented `error_page 500 = @no_limiter;`
/// turned on) lets requests through while Spillway cannot be reached, and never on an answer
/// Spillway gave, however a client provokes one: more headers than Spillway's parser takes
/// (its 431) or a header byte nginx passes and the parser refuses (its 400) both get the
/// client a 400, not the app.
#[tokio::test]
async fn the_fail_open_option_opens_only_while_spillway_is_silent() {
    let Some(nginx) = nginx_or_skip("the_fail_open_option") else {
        return;
    };
    let spillway = Server::with_policy(POLICY)
        .args(&["--deny-status", "403", "--invalid-status", "401"])
        .start();
    let (upstream, hits) = counting_upstream().await;
    let commented = "# error_page 500 = @no_limiter;";
    let shipped = shipped_config();
    assert!(
        shipped.contains(commented),
        "the option is gone from the config"
    );
    let site = shipped.replace(commented, "error_page 500 = @no_limiter;");
    let (_nginx, front, _dir) = start_pointed(&nginx, &site, spillway.addr(), upstream);
    let url = format!("http://127.0.0.1:{front}/some/page");
    for _ in 0..2 {
        let response = spillway.http.get(&url).send().await.expect("sent");
        assert_eq!(response.status(), 200);
    }
    let denied = spillway.http.get(&url).send().await.expect("sent");
    assert_eq!(denied.status(), 429);

    let mut crowded = spillway.http.get(&url);
    for i in 0..120 {
        crowded = crowded.header(format!("x-junk-{i}"), "1");
    }
    let crowded = crowded.send().await.expect("sent");
    assert_eq!(crowded.status(), 400, "more headers than Spillway reads");
    let answer = raw_exchange(
        front,
        b"GET /some/page HTTP/1.1\r\nHost: x\r\nX-Junk: a\x01b\r\nConnection: close\r\n\r\n",
    )
    .await;
    // nginx's own page: the app (hyper too) would refuse the byte as well, but bodiless.
    assert!(
        answer.starts_with("HTTP/1.1 400 ") && answer.contains("<h1>400 Bad Request</h1>"),
        "a byte Spillway's parser refuses: {answer}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "a refused request got through"
    );

    // Nothing answers now: requests pass to the app.
    drop(spillway);
    let response = reqwest::get(&url).await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "from the app\n");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}
