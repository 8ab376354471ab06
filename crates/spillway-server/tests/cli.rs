//! The command line: `validate` exit codes and messages, `check` against a live server,
//! `--help` and `--version`, JSON logs, and start-up failures.

mod common;

use common::{parse_listen_line, Server, TempDir};
use std::path::Path;
use std::process::{Command, Output};

const GOOD: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [user]
  ip-minute:
    algorithm: token_bucket
    rate: 10/s
    burst: 20
    key: [ip]
global: [ip-minute]
tiers:
  free:
    limits: [user-minute]
  pro:
    limits: []
routes:
  - match: "GET /health"
    cost: 2
"#;

fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .expect("run spillway")
}

/// `spillway` with `args`, which must exit within `limit`: a start that ought to fail but
/// serves instead fails the test rather than hanging it.
fn spillway_within(args: &[&str], limit: std::time::Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run spillway");
    let pid = child.id().to_string();
    let (send, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match answer.recv_timeout(limit) {
        Ok(out) => out.expect("spillway's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("spillway {args:?} still ran after {limit:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_a_good_policy_and_summarises_it() {
    let dir = TempDir::new();
    let file = dir.write("good.yaml", GOOD);
    let out = spillway(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "ok: {} is valid (2 limits, 2 tiers, 1 routes)",
            file.display()
        )
    );
}

#[test]
fn validate_accepts_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/spillway.yaml");
    let out = spillway(&["validate", &example.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));
}

#[test]
fn validate_rejects_a_bad_policy_with_located_problems() {
    let dir = TempDir::new();
    let bad = GOOD
        .replace("limit: 1\n", "limit: none\n")
        .replace("rate: 10/s", "rate: fast");
    let file = dir.write("bad.yaml", &bad);
    let out = spillway(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with(&format!("{}:", file.display())),
            "{stderr}"
        );
    }
    assert!(stderr.contains("limits.user-minute"), "{stderr}");

    // Read as `serve` reads it, and so worded alike.
    let out = spillway(&["validate", "/nonexistent/spillway.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/spillway.yaml: cannot read the policy file: "),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_prints_the_verdict_and_exits_by_outcome() {
    let server = Server::with_policy(GOOD).start();
    let url = server.url("");
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--server",
            &url,
            "--user",
            "u",
            "--ip",
            "192.0.2.1",
        ];
        args.extend_from_slice(extra);
        spillway(&args)
    };
    let peek = ask(&["--peek"]);
    assert_eq!(peek.status.code(), Some(0), "{}", text(&peek.stderr));
    let allowed = ask(&[]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
    let stdout = text(&allowed.stdout);
    assert!(stdout.starts_with("200 OK: allowed"), "{stdout}");
    assert!(stdout.contains("x-ratelimit-remaining: 0"), "{stdout}");
    assert!(stdout.contains("\"allowed\": true"), "{stdout}");

    let denied = ask(&["--descriptor", "unused=1"]);
    assert_eq!(denied.status.code(), Some(1));
    let stdout = text(&denied.stdout);
    assert!(
        stdout.starts_with("429 Too Many Requests: denied"),
        "{stdout}"
    );
    assert!(stdout.contains("retry-after: 60"), "{stdout}");

    let unreachable = spillway(&["check", "--server", "http://127.0.0.1:1"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(text(&unreachable.stderr).contains("cannot reach"));
}

#[test]
fn help_and_version_describe_the_binary() {
    let version = spillway(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("spillway {}", env!("CARGO_PKG_VERSION"))
    );
    let help = text(&spillway(&["serve", "--help"]).stdout);
    for wanted in [
        "--config",
        "--listen",
        "SPILLWAY_DENY_STATUS",
        "--trusted-proxies",
    ] {
        assert!(help.contains(wanted), "missing {wanted}:\n{help}");
    }
    assert!(!help.contains("manual-clock"), "{help}");
    let top = text(&spillway(&["--help"]).stdout);
    for wanted in ["serve", "validate", "check"] {
        assert!(top.contains(wanted), "missing {wanted}:\n{top}");
    }
}

#[test]
fn json_logs_still_announce_the_address() {
    let server = Server::with_policy(GOOD)
        .args(&["--log-format", "json"])
        .start();
    let line = server.wait_for_log("listening on").expect("logged");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["level"], "INFO");
    assert_eq!(parse_listen_line(&line), Some(server.addr()));
}

#[test]
fn an_invalid_policy_stops_start_up_with_status_2_like_any_bad_setting() {
    let dir = TempDir::new();
    let file = dir.write("bad.yaml", "default_tier: [");
    let out = spillway(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        &file.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&file.display().to_string()));
    // A mistyped store URL, a TLS one (this build has no TLS), a region the policy does not
    // name and a decision log on the Redis of a store that has none are settings too.
    for args in [
        &["--store-url", "redis:/:s3cret@127.0.0.1:1"][..],
        &["--store-url", "rediss://u:s3cret@127.0.0.1:1"][..],
        &["--store-url", "redis://:s3cret@127.0.0.1:99999"][..],
        &["--store-url", "redis://127.0.0.1:1/abc"][..],
        &["--region", "mars"][..],
        &["--decision-log", "redis"][..],
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(args);
        let out = spillway(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(args[0]) && !stderr.contains("s3cret"),
            "{stderr}"
        );
    }
}

/// A catalog database that answers but holds no catalog (never migrated, or a mistyped path
/// that made a new empty SQLite file) stops start-up as a setting: served, every tenant
/// would have fallen to the default tier, logged only as "unreachable".
#[test]
fn a_catalog_database_without_a_schema_stops_start_up_with_status_2() {
    let dir = TempDir::new();
    let policy = dir.write(
        "spillway.yaml",
        "default_tier: free\nlimits:\n  m: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}\ntiers:\n  free: {limits: [m]}\n",
    );
    let url = format!("sqlite://{}", dir.path().join("typo.db").display());
    let out = spillway_within(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &policy.display().to_string(),
            "--catalog",
            &url,
        ],
        std::time::Duration::from_secs(20),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("spillway catalog migrate"), "{stderr}");
}

#[test]
fn a_redis_refusing_the_login_stops_start_up_with_status_2() {
    let redis = spillway_testkit::redis::RedisServer::start_with(&["--requirepass", "right-pw"]);
    let url = format!("redis://:wrong-pw@127.0.0.1:{}", redis.port());
    let out = spillway(&["serve", "--listen", "127.0.0.1:0", "--store-url", &url]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Told as the refusal it is, naming the server and the setting (not as a failed
    // connection to the store's URL), and never the password.
    assert!(
        !stderr.contains("wrong-pw")
            && !stderr.contains("cannot connect")
            && stderr.contains("; check the username/password in the store's URL"),
        "{stderr}"
    );
    let refused = format!(
        "the Redis server at 127.0.0.1:{} refused the login",
        redis.port()
    );
    assert!(stderr.contains(&refused), "{stderr}");
    // No password for a server that wants one: the client logs in only when given one, so
    // the refusal comes at the first command, and still stops the start.
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let args = ["serve", "--listen", "127.0.0.1:0", "--store-url", &url];
    let out = spillway_within(&args, std::time::Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "none given: {stderr}");
    assert!(stderr.contains(&refused), "none given: {stderr}");
    // An unreachable store is a start that failed, and may work if tried again: 1.
    let port = spillway_testkit::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = spillway(&["serve", "--listen", "127.0.0.1:0", "--store-url", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// A Redis Cluster behind a password, given a wrong one or none: the cluster client folds the
/// nodes' refusal into a connection error of its own, yet the start stops with status 2 naming
/// the node that refused and never a password; the right one decides.
#[tokio::test]
async fn a_redis_cluster_refusing_the_login_stops_start_up_with_status_2() {
    const RIGHT: &str = "cluster-pw-Hk42";
    const WRONG: &str = "wrong-pw-Zt19";
    let cluster = spillway_testkit::redis::RedisCluster::with_password(RIGHT);
    let store_url = |login: &str| {
        let seeds = cluster.urls_with_login(login);
        format!("cluster+{}", seeds.join(","))
    };
    let start = |url: &str| {
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store-timeout",
            "1s",
            "--store-url",
            url,
        ];
        spillway_within(&args, std::time::Duration::from_secs(60))
    };
    let check_refused = |out: &Output, case: &str, node: Option<u16>| {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        let named = match node {
            Some(port) => format!("the cluster node at 127.0.0.1:{port} refused the login"),
            None => "refused the login".to_owned(),
        };
        assert!(
            stderr.contains("the cluster node at 127.0.0.1:") && stderr.contains(&named),
            "{case}: {stderr}"
        );
        for shown in [&stdout, &stderr] {
            assert!(
                !shown.contains(WRONG) && !shown.contains(RIGHT),
                "{case} shows a password: {shown}"
            );
        }
    };
    for (login, case) in [
        (format!(":{WRONG}@"), "a wrong password"),
        (String::new(), "none"),
    ] {
        check_refused(&start(&store_url(&login)), case, None);
    }
    // One request per user an hour (no window edge to cross), and time enough for a loaded
    // machine: the second request is denied by the cluster, not by a failure mode.
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|port| format!("\"redis://:{RIGHT}@127.0.0.1:{port}\""))
        .collect();
    let policy = format!(
        "default_tier: free\nlimits:\n  once: {{algorithm: token_bucket, rate: 1/h, burst: 1, \
         key: [user]}}\ntiers:\n  free:\n    limits: [once]\n\
         store: {{type: redis_cluster, nodes: [{}], timeout: 5s}}\n",
        seeds.join(", ")
    );
    let server = Server::with_policy(&policy).start();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = server.post("/v1/check", r#"{"user":"alice"}"#).await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 429]);
    let logs = server.logs().join("\n");
    assert!(!logs.contains(RIGHT), "the logs show the password: {logs}");
    drop(server);
    // Last, as it may upset the cluster for a while: a frozen first seed answers nothing, so
    // the client's last word is its timeout, not the other seeds' refusal; the refusal is
    // still found, and a seed that answers is named.
    let ports = cluster.ports();
    cluster.node(0).freeze();
    let out = start(&store_url(&format!(":{WRONG}@")));
    cluster.node(0).resume();
    check_refused(
        &out,
        "a wrong password, the first seed frozen",
        Some(ports[1]),
    );
}

/// In a regions deployment the node's own store comes from `store.regions.<own>`, and a
/// refused login there asks to check that setting, not `--store-url` or `store.url`. Real
/// redis-server.
#[test]
fn a_regions_own_store_refusing_the_login_names_its_region_setting() {
    let redis = spillway_testkit::redis::RedisServer::start_with(&["--requirepass", "right-pw"]);
    let policy = format!(
        "default_tier: t
limits:
  soft: {{algorithm: fixed_window, limit: 10, window: 1m, key: [tenant], scope: aggregate}}
tiers:
  t: {{limits: [soft]}}
store:
  type: redis
  regions:
    us: {{url: \"redis://:wrong-pw@127.0.0.1:{}\"}}
    eu: {{url: \"redis://127.0.0.1:1\"}}
",
        redis.port()
    );
    let dir = TempDir::new();
    let file = dir.write("regions.yaml", &policy).display().to_string();
    let out = spillway_within(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &file,
            "--region",
            "us",
        ],
        std::time::Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the Redis server at 127.0.0.1:{} refused the login",
            redis.port()
        )) && stderr.contains(
            "check the username/password in the store's URL (the policy's store.regions.us)"
        ) && !stderr.contains("--store-url")
            && !stderr.contains("wrong-pw"),
        "{stderr}"
    );
}

/// A policy whose store's seeds disagree on the login (`store.nodes`).
fn own_seeds_disagree() -> String {
    format!(
        "{GOOD}store:\n  type: redis_cluster\n  nodes: [\"redis://:s3cret-a@127.0.0.1:1\", \
         \"redis://127.0.0.1:2\"]\n"
    )
}

/// A policy whose region `eu`'s seeds disagree on the login, region `us`'s agree.
const REGION_SEEDS_DISAGREE: &str = "default_tier: t
limits:
  soft: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant], scope: aggregate}
tiers:
  t: {limits: [soft]}
store:
  type: redis_cluster
  regions:
    us: {nodes: [\"redis://:pw@127.0.0.1:1\", \"redis://:pw@127.0.0.1:2\"]}
    eu: {nodes: [\"redis://:s3cret-a@127.0.0.1:3\", \"redis://:s3cret-b@127.0.0.1:4\"]}
";

/// `line:column:` of the first `"redis://...@127.0.0.1:{port}"` in `text` (both 1-based),
/// where a policy problem about that seed is told.
fn seed_position(text: &str, port: u16) -> String {
    let at = text
        .find(&format!("127.0.0.1:{port}\""))
        .and_then(|end| text[..end].rfind('"'))
        .expect("the seed");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |nl| nl + 1) + 1;
    format!("{line}:{column}:")
}

/// Seed nodes of one cluster with different passwords (or one with none): the cluster
/// client would refuse them with an error that reads like a failed connection (status 1);
/// it is a setting, so status 2 with a message saying the seeds disagree, before anything
/// connects, whichever flag or file names them (the policy's at the seed's line and column,
/// the store's own or a region's), and never a password.
#[test]
fn cluster_seeds_that_disagree_on_the_login_exit_2() {
    let seeds = "redis://:s3cret-a@127.0.0.1:1,redis://:s3cret-b@127.0.0.1:2";
    let dir = TempDir::new();
    let own = own_seeds_disagree();
    let file = dir.write("cluster.yaml", &own).display().to_string();
    let regions = dir
        .write("regions.yaml", REGION_SEEDS_DISAGREE)
        .display()
        .to_string();
    let own_told = format!("{file}:{} store.nodes[1]: ", seed_position(&own, 2));
    let region_told = format!(
        "{regions}:{} store.regions.eu.nodes[1]: ",
        seed_position(REGION_SEEDS_DISAGREE, 4)
    );
    for (args, told, seeds_named) in [
        (
            vec!["--store-url".to_owned(), format!("cluster+{seeds}")],
            "--store-url",
            "127.0.0.1:1 and 127.0.0.1:2",
        ),
        (
            vec!["--decision-log".to_owned(), format!("cluster+{seeds}")],
            "--decision-log",
            "127.0.0.1:1 and 127.0.0.1:2",
        ),
        (
            vec!["--config".to_owned(), file.clone()],
            own_told.as_str(),
            "127.0.0.1:1 and 127.0.0.1:2",
        ),
        // A far region connects only on first use; its seeds are a setting all the same.
        (
            vec![
                "--config".to_owned(),
                regions.clone(),
                "--region".to_owned(),
                "us".to_owned(),
            ],
            region_told.as_str(),
            "127.0.0.1:3 and 127.0.0.1:4",
        ),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(args.iter().map(String::as_str));
        let out = spillway_within(&all, std::time::Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the cluster's seed nodes disagree on the login: {seeds_named} give different \
                 passwords"
            )) && stderr.contains(told)
                && !stderr.contains("s3cret")
                && !stderr.contains("cannot connect"),
            "{args:?}: {stderr}"
        );
    }
}

/// `--store-url` stands in for the policy's `store.nodes`: seeds there that disagree do not
/// keep the node from starting on the store the flag names.
#[test]
fn seeds_replaced_by_store_url_are_not_checked() {
    let server = Server::with_policy(&own_seeds_disagree())
        .args(&["--store-url", "memory"])
        .start();
    drop(server);
}

/// `spillway decisions --config` reads the policy's store as `serve` does, and refuses its
/// seeds that disagree on the login, or a file it cannot read, the same way, before
/// connecting (status 2).
#[test]
fn decisions_refuses_the_policys_seeds_that_disagree_on_the_login() {
    let dir = TempDir::new();
    let own = own_seeds_disagree();
    let file = dir.write("cluster.yaml", &own).display().to_string();
    let out = spillway_within(
        &["decisions", "--decision-log", "redis", "--config", &file],
        std::time::Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{file}:{} store.nodes[1]: the cluster's seed nodes disagree on the login: \
             127.0.0.1:1 and 127.0.0.1:2 give different passwords",
            seed_position(&own, 2)
        )) && !stderr.contains("s3cret"),
        "{stderr}"
    );

    // A file it cannot read is worded as `serve` and `validate` word it.
    let out = spillway(&[
        "decisions",
        "--decision-log",
        "redis",
        "--config",
        "/nonexistent/spillway.yaml",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/spillway.yaml: cannot read the policy file: "),
        "{stderr}"
    );
}

/// `validate` refuses a policy whose cluster seeds disagree on the login as `serve` does,
/// in its own format (`file:line:col: field.path: message`, status 1), at the differing
/// seed (the store's own or a region's), and never a password.
#[test]
fn validate_refuses_cluster_seeds_that_disagree_on_the_login() {
    let dir = TempDir::new();
    for (name, policy, field, port, seeds) in [
        (
            "own.yaml",
            own_seeds_disagree(),
            "store.nodes[1]",
            2,
            "127.0.0.1:1 and 127.0.0.1:2",
        ),
        (
            "regions.yaml",
            REGION_SEEDS_DISAGREE.to_owned(),
            "store.regions.eu.nodes[1]",
            4,
            "127.0.0.1:3 and 127.0.0.1:4",
        ),
    ] {
        let file = dir.write(name, &policy).display().to_string();
        let out = spillway(&["validate", &file]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let line = format!(
            "{file}:{} {field}: the cluster's seed nodes disagree on the login: {seeds} give \
             different passwords",
            seed_position(&policy, port)
        );
        assert!(
            stderr.starts_with(&line) && !stderr.contains("s3cret"),
            "{name}: {stderr}"
        );
        assert!(text(&out.stdout).is_empty(), "{name}");
    }
}

/// A file that is no decision log read as a log with nothing in it; its lines that are no
/// record are now counted aloud.
#[test]
fn decisions_say_how_many_lines_were_not_records() {
    let dir = TempDir::new();
    let file = dir.write("not-a-log.jsonl", "garbage\n{\"x\":1}\n\n");
    let out = spillway(&["decisions", "--file", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 lines of") && stderr.contains("not decision records"),
        "{stderr}"
    );
}

#[test]
fn nonsense_flags_exit_2() {
    let out = spillway(&["serve", "--deny-status", "200"]);
    assert_eq!(out.status.code(), Some(2));
    let out = spillway(&["serve", "--log-filter", "[[["]);
    assert_eq!(out.status.code(), Some(2));
    for flag in ["--http-threads", "--grpc-threads"] {
        for threads in ["0", "1025", "two"] {
            let out = spillway(&["serve", flag, threads]);
            assert_eq!(out.status.code(), Some(2), "{flag} {threads}");
            let stderr = text(&out.stderr);
            assert!(stderr.contains(flag), "{stderr}");
        }
    }
    // An address with a host name, or no port, is said to need IP:PORT.
    for flag in ["--listen", "--grpc-listen", "--admin-listen"] {
        for bad in ["localhost:8080", "127.0.0.1", "[::1]:99999"] {
            let out = spillway(&["serve", flag, bad]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {stderr}");
            assert!(stderr.contains("is not IP:PORT"), "{stderr}");
        }
    }
    // A catalog's settings without a catalog were ignored without a word.
    for args in [
        &["--catalog-snapshot", "/tmp/x.snapshot"][..],
        &["--catalog-migrate"][..],
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(args);
        let out = spillway_within(&all, std::time::Duration::from_secs(20));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(args[0]) && stderr.contains("needs --catalog"),
            "{stderr}"
        );
    }
}

#[test]
fn a_top_k_sample_that_is_not_a_power_of_two_is_refused_with_the_reason() {
    for bad in ["0", "6", "2048", "1/8", "1.5"] {
        let out = spillway(&["serve", "--top-k-sample", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--top-k-sample") && stderr.contains("power of two from 1 to 1024"),
            "{bad}: {stderr}"
        );
    }
}

#[test]
fn a_mistyped_decision_log_url_is_refused_without_showing_its_password() {
    // A missing `/` (or a wrong scheme) makes the value no URL at all; the refusal must still
    // keep the password out of the terminal and the service's logs.
    for (args, value) in [
        (&["serve"][..], "redis:/:s3cret@127.0.0.1:6379"),
        (&["serve"][..], "redis//admin:s3cret@127.0.0.1:6379"),
        (
            &["serve"][..],
            "cluster+redis://:s3cret@a:1,http://:s3cret@b:2",
        ),
        (&["decisions"][..], "redis:/:s3cret@127.0.0.1:6379"),
    ] {
        let mut all = args.to_vec();
        all.extend(["--decision-log", value]);
        let out = spillway(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{value}: {stderr}");
        assert!(stderr.contains("--decision-log"), "{stderr}");
        assert!(stderr.contains("****"), "{stderr}");
    }
    // The same through the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SPILLWAY_DECISION_LOG", "redis:/:s3cret@127.0.0.1:6379")
        .output()
        .expect("run spillway");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

const ENVOY_GOOD: &str = "domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
";

#[test]
fn validate_checks_envoy_configs_alone_or_beside_a_policy() {
    let dir = TempDir::new();
    let envoy = dir.write("edge.yaml", ENVOY_GOOD);
    let out = spillway(&["validate", "--envoy-config", &envoy.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "ok: the Envoy config is valid (1 file: {}; 1 domain `edge`, 1 limit)",
            envoy.display()
        )
    );

    // Both parts are checked in one run, and every problem is reported.
    let policy = dir.write("good.yaml", GOOD);
    let bad = dir.write(
        "bad-envoy.yaml",
        &ENVOY_GOOD.replace("requests_per_unit: 10", "requests_per_unit: 0"),
    );
    let out = spillway(&[
        "validate",
        &policy.display().to_string(),
        "--envoy-config",
        &bad.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with("ok: "), "the policy was fine");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:4:", bad.display()))
            && stderr.contains("descriptors[0].rate_limit.requests_per_unit"),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_to_check_nothing() {
    let out = spillway(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "clap reports the missing FILE");
    let empty = TempDir::new();
    let out = spillway(&[
        "validate",
        "--envoy-config",
        &empty.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Envoy config files found"),
        "{}",
        text(&out.stderr)
    );
}
