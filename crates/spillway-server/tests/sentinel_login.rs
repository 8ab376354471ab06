//! A `redis_sentinel` store behind passwords, through the real binary: the logins come from
//! the environment or from files, decisions work with the right ones, and a refused login
//! stops the start with exit status 2 (a setting that makes no sense, like a bad flag) and a
//! message naming the side that refused it (a sentinel or the master) and never the
//! password. (The failover with passwords on runs in `chaos.rs`.)

// Waiting for a process to exit is wall-clock time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Server, TempDir};
use spillway_testkit::sentinel::{Passwords, SentinelGroup, MASTER_NAME};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DATA_PASSWORD: &str = "data-pw-Qm31";
const SENTINEL_PASSWORD: &str = "sentinel-pw-Vb77";
const WRONG: &str = "wrong-pw-Ld05";

fn policy(group: &SentinelGroup) -> String {
    let sentinels: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    format!(
        r#"
default_tier: free
limits:
  three:
    algorithm: fixed_window
    limit: 3
    window: 1h
    key: [user]
tiers:
  free:
    limits: [three]
store: {{type: redis_sentinel, sentinels: [{}], master: {MASTER_NAME}, timeout: 200ms}}
"#,
        sentinels.join(", ")
    )
}

/// Runs `spillway serve` on `policy` with `envs` and expects it to refuse to start with exit
/// status 2, the status of settings that make no sense; returns what it wrote to stderr.
fn refused_start(policy: &str, envs: &[(&str, &str)]) -> String {
    let dir = TempDir::new();
    let path = dir.write("spillway.yaml", policy);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Every login setting, so none inherited from the caller's environment changes the
    // outcome.
    for var in [
        spillway_server::store::sentinel_login::MASTER_PASSWORD_ENV,
        spillway_server::store::sentinel_login::SENTINEL_PASSWORD_ENV,
        "SPILLWAY_MASTER_PASSWORD_FILE",
        "SPILLWAY_SENTINEL_PASSWORD_FILE",
        "SPILLWAY_MASTER_USERNAME",
        "SPILLWAY_SENTINEL_USERNAME",
    ] {
        cmd.env_remove(var);
    }
    for (name, value) in envs {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("start the spillway binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(
                status.code(),
                Some(2),
                "a refused login is a settings error"
            );
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server neither started nor gave up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("stderr");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_refused_login_stops_the_start_and_says_which_side() {
    let group = SentinelGroup::start_with(Passwords {
        data: Some(DATA_PASSWORD.into()),
        sentinels: Some(SENTINEL_PASSWORD.into()),
    });
    let policy = policy(&group);
    let dir = TempDir::new();
    let wrong_file = dir.write("wrong", &format!("{WRONG}\n"));
    let wrong_file = wrong_file.display().to_string();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("SPILLWAY_MASTER_PASSWORD", DATA_PASSWORD)], "sentinel"),
        (
            &[
                ("SPILLWAY_MASTER_PASSWORD", DATA_PASSWORD),
                ("SPILLWAY_SENTINEL_PASSWORD", WRONG),
            ],
            "sentinel",
        ),
        (
            &[
                ("SPILLWAY_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
                ("SPILLWAY_MASTER_PASSWORD_FILE", wrong_file.as_str()),
            ],
            "master",
        ),
    ];
    for (envs, side) in cases {
        let stderr = refused_start(&policy, envs);
        assert!(
            stderr.contains(&format!("the {side} at 127.0.0.1:"))
                && stderr.contains("refused the login"),
            "{envs:?}: {stderr}"
        );
        for secret in [DATA_PASSWORD, SENTINEL_PASSWORD, WRONG] {
            assert!(
                !stderr.contains(secret),
                "{envs:?} shows a password: {stderr}"
            );
        }
    }
}

#[test]
fn logins_are_refused_with_a_store_that_is_not_sentinel() {
    let stderr = refused_start(
        "default_tier: free\ntiers:\n  free: {}\nstore: {type: memory}\n",
        &[("SPILLWAY_MASTER_PASSWORD", DATA_PASSWORD)],
    );
    assert!(
        stderr.contains("apply to a `redis_sentinel` store only")
            && !stderr.contains(DATA_PASSWORD),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_right_logins_decide() {
    let group = SentinelGroup::start_with(Passwords {
        data: Some(DATA_PASSWORD.into()),
        sentinels: Some(SENTINEL_PASSWORD.into()),
    });
    let dir = TempDir::new();
    let file = dir.write("master-password", &format!("{DATA_PASSWORD}\n"));
    let server = Server::with_policy(&policy(&group))
        // The hour's window on the manual clock, not Redis's, which could roll it over
        // between the third check and the fourth.
        .args(&[
            "--master-password-file",
            &file.display().to_string(),
            "--manual-clock-in-store",
        ])
        .env("SPILLWAY_SENTINEL_PASSWORD", SENTINEL_PASSWORD)
        .start();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = server
            .http
            .post(server.url("/v1/check"))
            .header("content-type", "application/json")
            .body(r#"{"user":"alice"}"#)
            .send()
            .await
            .expect("answers");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let logs = server.logs().join("\n");
    for secret in [DATA_PASSWORD, SENTINEL_PASSWORD] {
        assert!(!logs.contains(secret), "the logs show a password: {logs}");
    }
}
