//! The decision log through the real binary: three `spillway serve` nodes sharing one real
//! `redis-server` write to one stream, read back by `spillway decisions`; a file sink read back
//! the same way; and bad settings refused at start.

mod common;

use common::{metric, wait_until, Server, TempDir, PATIENCE};
use serde_json::Value;
use spillway_testkit::redis::{command, RedisServer};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One request per tenant and user a minute: the second is denied.
const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [tenant, user]
tiers:
  free:
    limits: [user-minute]
routes:
  - match: "POST /v1/generate"
"#;

fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .env_remove("SPILLWAY_DECISION_LOG")
        .output()
        .expect("run spillway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `--since` that reaches past the manual clock's records from any real date.
const WHENEVER: &str = "3650d";

/// `spillway decisions ARGS --json`, once it prints `n` records (or the patience runs out).
/// The servers stamp records by their manual clock (2027-01-15), while `--since` counts back
/// from the wall clock: a ten-year window keeps every record in, whatever today's date.
fn decisions(args: &[&str], n: usize) -> Vec<Value> {
    decisions_since(args, WHENEVER, n)
}

/// [`decisions`] with `--since since`.
fn decisions_since(args: &[&str], since: &str, n: usize) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--since", since, "--json"]);
    let mut last = String::new();
    let found = wait_until(PATIENCE, || {
        let out = spillway(&all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        last = text(&out.stdout);
        let records: Vec<Value> = last
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect();
        (records.len() >= n).then_some(records)
    });
    found.unwrap_or_else(|| panic!("expected {n} records from {args:?}; got:\n{last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_stream_read_back_by_tenant_and_denial() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            Server::with_policy(POLICY)
                .args(&[
                    "--store-url",
                    &redis.url(),
                    // A loaded test machine must not turn a store call into a degraded one.
                    "--store-timeout",
                    "2s",
                    // The minute's window on the manual clock, not Redis's: one rolling over
                    // between a user's two checks would allow the second.
                    "--manual-clock-in-store",
                    "--decision-log",
                    "redis",
                    "--decision-log-sample-allowed",
                    "0",
                    "--node-name",
                    &format!("node-{i}"),
                ])
                .start()
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        for tenant in ["acme", "globex"] {
            let body = format!(
                r#"{{"tenant":"{tenant}","user":"u{i}","method":"POST","path":"/v1/generate"}}"#
            );
            assert_eq!(node.post("/v1/check", &body).await.status(), 200);
            assert_eq!(node.post("/v1/check", &body).await.status(), 429);
        }
    }

    let url = redis.url();
    let acme = decisions(
        &["decisions", "--redis", &url, "--tenant", "acme", "--denied"],
        3,
    );
    assert_eq!(acme.len(), 3, "{acme:?}");
    let mut nodes_seen: Vec<&str> = acme.iter().filter_map(|r| r["node"].as_str()).collect();
    nodes_seen.sort_unstable();
    assert_eq!(nodes_seen, ["node-0", "node-1", "node-2"]);
    for record in &acme {
        assert_eq!(record["tenant"], "acme");
        assert_eq!(record["outcome"], "denied");
        assert_eq!(record["limit"]["name"], "user-minute");
        assert_eq!(record["route"], "POST /v1/generate");
    }
    // Six denials in all, and the allowed decisions were not sampled.
    let all = decisions(&["decisions", "--redis", &url], 6);
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|r| r["outcome"] == "denied"));
    let one = decisions(
        &[
            "decisions",
            "--redis",
            &url,
            "--tenant",
            "globex",
            "--user",
            "u1",
        ],
        1,
    );
    assert_eq!((one.len(), &one[0]["node"]), (1, &Value::from("node-1")));

    // The table a support engineer reads.
    let out = spillway(&[
        "decisions",
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--since",
        WHENEVER,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    for column in [
        "TIME",
        "NODE",
        "TENANT",
        "USER",
        "ROUTE",
        "OUTCOME",
        "LIMIT",
        "REMAINING",
        "RETRY",
    ] {
        assert!(head.contains(column), "{table}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows
        .iter()
        .all(|r| r.contains("acme") && r.contains("denied") && r.contains("0/1")));
    assert!(
        rows.iter()
            .all(|r| r.contains("2027-01-15T08:00:00.000Z") && r.contains("user-minute")),
        "{table}"
    );
}

#[tokio::test]
async fn a_file_sink_is_written_counted_and_read_back() {
    let dir = TempDir::new();
    let path = dir.path().join("logs/decisions.jsonl");
    let sink = format!("file:{}", path.display());
    let node = Server::with_policy(POLICY)
        .args(&[
            "--decision-log",
            &sink,
            "--decision-log-sample-allowed",
            "1",
            "--node-name",
            "file-node",
        ])
        .start();
    let body = r#"{"tenant":"acme","user":"alice","ip":"203.0.113.7"}"#;
    assert_eq!(node.post("/v1/check", body).await.status(), 200);
    assert_eq!(node.post("/v1/check", body).await.status(), 429);
    let path_arg = path.display().to_string();
    let records = decisions(&["decisions", "--file", &path_arg, "--tenant", "acme"], 2);
    let outcomes: Vec<&str> = records
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["allowed", "denied"]);
    assert_eq!(records[0]["sample_rate"], 1.0);
    assert_eq!(records[1]["node"], "file-node");
    let denied = decisions(&["decisions", "--file", &path_arg, "--denied"], 1);
    assert_eq!(denied.len(), 1);

    let metrics = node.metrics().await;
    assert_eq!(
        metric(&metrics, "spillway_decision_log_written_total", &[]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "spillway_decision_log_dropped_total",
            &[("reason", "queue_full")]
        ),
        Some(0.0)
    );
}

#[test]
fn bad_decision_log_settings_are_refused_at_start() {
    for (args, needle) in [
        (
            &["--decision-log", "kafka://x"][..],
            "not a decision-log sink",
        ),
        (
            &[
                "--decision-log",
                "stdout",
                "--decision-log-sample-allowed",
                "2",
            ],
            "between 0 and 1",
        ),
        (
            &["--decision-log", "stdout", "--decision-log-ip", "hash"],
            "needs a secret key",
        ),
        (&["--decision-log", "redis"], "store is in memory"),
        (
            &["--decision-log", "stdout", "--decision-log-max-size", "5"],
            "at least 1KiB",
        ),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let out = spillway(&all);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = spillway(&["decisions", "--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--file PATH or --redis URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_records_not_decisions_and_the_stream_comes_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = Server::with_policy(POLICY)
        .args(&["--decision-log", &url, "--decision-log-sample-allowed", "1"])
        .start();
    let ask = |user: &str| format!(r#"{{"tenant":"acme","user":"{user}"}}"#);
    assert_eq!(node.post("/v1/check", &ask("before")).await.status(), 200);
    decisions(&["decisions", "--redis", &url, "--user", "before"], 1);

    redis.kill();
    for i in 0..20 {
        #[allow(clippy::disallowed_methods)] // latency of the answer, not policy time
        let started = std::time::Instant::now();
        assert_eq!(
            node.post("/v1/check", &ask(&format!("down{i}")))
                .await
                .status(),
            200
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "a decision waited"
        );
    }
    let errors = common::wait_until_async(PATIENCE, || async {
        let m = node.metrics().await;
        let errors = metric(&m, "spillway_decision_log_sink_errors_total", &[])?;
        let lost = metric(
            &m,
            "spillway_decision_log_dropped_total",
            &[("reason", "sink_error")],
        )?;
        (errors >= 1.0 && lost >= 1.0).then_some(errors)
    })
    .await;
    assert!(errors.is_some(), "the failure is counted");

    // Back up (empty): the writer retries after its backoff and writes again.
    redis.restart();
    let back = common::wait_until_async(PATIENCE, || async {
        let status = node.post("/v1/check", &ask("after")).await.status();
        assert!(status == 200 || status == 429, "{status}");
        let out = spillway(&[
            "decisions",
            "--redis",
            &url,
            "--user",
            "after",
            "--since",
            WHENEVER,
            "--json",
        ]);
        (out.status.code() == Some(0) && !out.stdout.is_empty()).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "records reach the stream again after the outage"
    );
}

/// `XLEN key` on the server at `port`.
fn xlen(port: u16, key: &str) -> u64 {
    let reply = command(port, &format!("XLEN {key}")).unwrap_or_default();
    reply
        .strip_prefix(':')
        .and_then(|n| n.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("XLEN {key}: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_trimmed_to_about_its_maxlen() {
    // `MAXLEN ~ N` trims whole macro nodes only, never below N: with nodes of at most 10
    // entries the stream holds N to N + 9 entries once more than N were written.
    const NODE: u64 = 10;
    const MAXLEN: u64 = 50;
    const WRITES: u64 = 400;
    let redis = RedisServer::start_with(&["--stream-node-max-entries", &NODE.to_string()]);
    let url = redis.url();
    let node = Server::with_policy(POLICY)
        .args(&[
            "--decision-log",
            &url,
            "--decision-log-sample-allowed",
            "1",
            "--decision-log-stream",
            "trimmed",
            "--decision-log-stream-maxlen",
            &MAXLEN.to_string(),
        ])
        .start();
    let mut most = 0;
    for i in 0..WRITES {
        let body = format!(r#"{{"tenant":"acme","user":"u{i}"}}"#);
        assert_eq!(node.post("/v1/check", &body).await.status(), 200);
        if i % 50 == 49 {
            most = most.max(xlen(redis.port(), "trimmed"));
        }
    }
    let written = common::wait_until_async(PATIENCE, || async {
        let m = node.metrics().await;
        let n = metric(&m, "spillway_decision_log_written_total", &[])?;
        (n >= WRITES as f64).then_some(n)
    })
    .await;
    assert_eq!(written, Some(WRITES as f64), "every record was written");
    let len = xlen(redis.port(), "trimmed");
    assert!(
        (MAXLEN..MAXLEN + NODE).contains(&len),
        "XLEN {len} after {WRITES} records with MAXLEN ~ {MAXLEN}"
    );
    assert!(most < MAXLEN + NODE, "the stream reached {most} entries");
    // The newest records are the ones kept.
    let stream = ["decisions", "--redis", &url, "--stream", "trimmed"];
    let newest = format!("u{}", WRITES - 1);
    let mut args = stream.to_vec();
    args.extend(["--user", &newest]);
    assert_eq!(decisions(&args, 1).len(), 1);
    let mut args = stream.to_vec();
    args.extend(["--user", "u0", "--since", WHENEVER, "--json"]);
    let out = spillway(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the oldest record was trimmed");
}

/// `--since` counts back from the wall clock, so these servers run on a manual clock set to
/// two hours ago: one record is stamped then, the clock is moved on 110 minutes, and one more
/// is stamped ten minutes ago. `--since 30m` shows only the second, from a stream and from a
/// file alike, and `--since 3h` both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_leaves_out_older_records_in_a_stream_and_in_a_file() {
    #[allow(clippy::disallowed_methods)] // the reader's --since is wall-clock time
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let two_hours_ago = (now - Duration::from_secs(2 * 3600))
        .as_millis()
        .to_string();
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let file = dir.path().join("since.jsonl").display().to_string();
    let redis_url = redis.url();
    let sinks = [
        (
            redis_url.clone(),
            ["decisions", "--redis", redis_url.as_str()],
        ),
        (
            format!("file:{file}"),
            ["decisions", "--file", file.as_str()],
        ),
    ];
    for (sink, source) in sinks {
        let node = Server::with_policy(POLICY)
            .system_clock()
            .args(&[
                "--manual-clock",
                &two_hours_ago,
                "--decision-log",
                &sink,
                "--decision-log-sample-allowed",
                "1",
            ])
            .start();
        let ask = |user: &str| format!(r#"{{"tenant":"acme","user":"{user}"}}"#);
        assert_eq!(node.post("/v1/check", &ask("early")).await.status(), 200);
        node.advance_ms(110 * 60 * 1000).await;
        assert_eq!(node.post("/v1/check", &ask("recent")).await.status(), 200);

        let both = decisions_since(&source, "3h", 2);
        let users: Vec<&str> = both.iter().filter_map(|r| r["user"].as_str()).collect();
        assert_eq!(users, ["early", "recent"], "{sink}");
        let recent = decisions_since(&source, "30m", 1);
        let users: Vec<&str> = recent.iter().filter_map(|r| r["user"].as_str()).collect();
        assert_eq!(
            users,
            ["recent"],
            "{sink}: the record from two hours ago is cut"
        );
        let mut args = source.to_vec();
        args.extend(["--since", "30m"]);
        let table = text(&spillway(&args).stdout);
        assert!(
            table.contains("recent") && !table.contains("early"),
            "{sink}:\n{table}"
        );
    }
}

#[tokio::test]
async fn the_stdout_sink_prints_one_json_line_per_record() {
    let node = Server::with_policy(POLICY)
        .args(&[
            "--decision-log",
            "stdout",
            "--decision-log-sample-allowed",
            "0",
            "--node-name",
            "stdout-node",
        ])
        .start();
    let body = r#"{"tenant":"acme","user":"alice","method":"POST","path":"/v1/generate"}"#;
    assert_eq!(node.post("/v1/check", body).await.status(), 200);
    assert_eq!(node.post("/v1/check", body).await.status(), 429);
    // The harness keeps stdout lines as they are and tags stderr's.
    let records = || -> Vec<Value> {
        node.logs()
            .iter()
            .filter(|l| !l.starts_with("[stderr] "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("outcome").is_some())
            .collect()
    };
    let found = wait_until(PATIENCE, || {
        let r = records();
        (!r.is_empty()).then_some(r)
    });
    let found = found.unwrap_or_else(|| panic!("no record on stdout:\n{:?}", node.logs()));
    // Allowed decisions are not sampled: the denial is the one record.
    assert_eq!(found.len(), 1, "{found:?}");
    let record = &found[0];
    assert_eq!(record["node"], "stdout-node");
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["user"], "alice");
    assert_eq!(record["route"], "POST /v1/generate");
    assert_eq!(record["limit"]["name"], "user-minute");
    assert_eq!(record["time"], "2027-01-15T08:00:00.000Z");
}
