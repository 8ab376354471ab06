//! Shared harness for the integration tests: starts the real `spillway` binary on a free port,
//! talks to it, and kills it when the test is done (even when the test fails).
//!
//! Each server gets its own temporary directory holding its policy file, and runs on a manual
//! clock (unless a test opts out) so tests move time instead of sleeping.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod grpc;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Where every manual clock starts: 2027-01-15T08:00:00Z, a whole minute, so one-minute fixed
/// windows start exactly here.
pub const START_MS: u64 = 1_800_000_000_000;

/// How long to wait for anything asynchronous (start-up, reloads, exit) before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A scratch directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory unique to this process and call.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("spillway-server-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a server.
pub struct ServerBuilder {
    policy: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    manual_clock: bool,
}

impl ServerBuilder {
    /// Adds command-line arguments after `serve`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets an environment variable for the server process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Runs on the real clock instead of the manual one.
    pub fn system_clock(mut self) -> Self {
        self.manual_clock = false;
        self
    }

    /// Runs on the built-in policy instead of a file.
    pub fn builtin_policy(mut self) -> Self {
        self.policy = None;
        self
    }

    /// Starts the server and waits for its `listening on` line.
    pub fn start(self) -> Server {
        let dir = TempDir::new();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]);
        let config = self.policy.as_deref().map(|policy| {
            let path = dir.write("spillway.yaml", policy);
            cmd.arg("--config").arg(&path);
            path
        });
        if self.manual_clock {
            cmd.args(["--manual-clock", &START_MS.to_string()]);
        }
        cmd.args(&self.args);
        for (name, value) in &self.envs {
            cmd.env(name, value);
        }
        cmd.env_remove("RUST_LOG");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the spillway binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, tag) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "[stderr] "),
        ] {
            let logs = logs.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().expect("log lock").push(format!("{tag}{line}"));
                }
            });
        }
        let mut server = Server {
            child,
            addr: None,
            dir,
            config,
            logs,
            http: reqwest::Client::new(),
        };
        let addr = server
            .wait_for_log("listening on ")
            .and_then(|line| parse_listen_line(&line));
        match addr {
            Some(addr) => server.addr = Some(addr),
            None => panic!(
                "server did not report its address; logs:\n{}",
                server.logs().join("\n")
            ),
        }
        server
    }
}

/// Extracts the address from a `listening on <addr>` log line, text or JSON.
pub fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// A running `spillway serve`, killed on drop.
pub struct Server {
    child: Child,
    addr: Option<SocketAddr>,
    /// The server's scratch directory (its policy file lives here).
    pub dir: TempDir,
    /// The policy file, unless running on the built-in policy.
    pub config: Option<PathBuf>,
    logs: Arc<Mutex<Vec<String>>>,
    /// A client for talking to it.
    pub http: reqwest::Client,
}

impl Server {
    /// A server on `policy` (YAML text) with the manual clock.
    pub fn with_policy(policy: &str) -> ServerBuilder {
        ServerBuilder {
            policy: Some(policy.to_owned()),
            args: Vec::new(),
            envs: Vec::new(),
            manual_clock: true,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Everything it has logged so far (stderr lines tagged).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str) -> Option<String> {
        wait_until(PATIENCE, || {
            self.logs().into_iter().find(|line| line.contains(needle))
        })
    }

    /// The most memory the process has held resident so far (`VmHWM`), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("a VmHWM line")
            * 1024
    }

    /// Sends a signal (`TERM`, `HUP`, `INT`) through the `kill` utility.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.child.try_wait().ok().flatten())
    }

    /// POSTs a JSON body to `path`.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request reaches the server")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the server")
    }

    /// The `X-RateLimit-Limit` a peek for `user` reports (the tightest limit governs).
    pub async fn current_limit(&self, user: &str) -> Option<String> {
        let body = format!(r#"{{"user":"{user}"}}"#);
        let response = self.post("/v1/check?peek=true", &body).await;
        header(&response, "x-ratelimit-limit")
    }

    /// Waits until a peek for `user` reports `limit` (a reload has been applied); fails the
    /// test, with the server's logs, if that takes longer than [`PATIENCE`].
    pub async fn wait_for_limit(&self, user: &str, limit: u64) {
        let wanted = limit.to_string();
        let reached = wait_until_async(PATIENCE, || async {
            (self.current_limit(user).await.as_ref() == Some(&wanted)).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "the limit never became {limit}; logs:\n{}",
            self.logs().join("\n")
        );
    }

    /// Moves the manual clock forward.
    pub async fn advance_ms(&self, ms: u64) {
        let response = self
            .post("/debug/clock", &format!(r#"{{"advance_ms":{ms}}}"#))
            .await;
        assert_eq!(response.status(), 200, "moving the clock failed");
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics body")
    }

    /// Replaces the policy file in place (truncate and write).
    pub fn rewrite_policy(&self, text: &str) {
        let path = self.config.as_ref().expect("a policy file");
        std::fs::write(path, text).expect("rewrite policy");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `probe` every 20 ms until it yields something or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let step = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if waited >= timeout {
            return None;
        }
        thread::sleep(step);
        waited += step;
    }
}

/// The async twin of [`wait_until`], for probes that talk to the server. `timeout` counts
/// the waits between probes, not the probes' own time: on a loaded machine a probe may take
/// long, and a slow probe must not use up the patience meant for the server to change.
pub async fn wait_until_async<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if waited >= timeout {
            return None;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

/// The value of the sample `name{labels}` in Prometheus text, whatever the label order.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let present: Vec<&str> = if series_labels.is_empty() {
                Vec::new()
            } else {
                series_labels.split(',').collect()
            };
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let same = present.len() == wanted.len()
                && wanted.iter().all(|w| present.contains(&w.as_str()));
            if same {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// A header's value as text, or `None`.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One `/v1/check` answer as the chaos tests judge it: its status, the degraded mark,
/// `Retry-After`, how long it took, and the path it asked for.
#[derive(Debug)]
pub struct Sample {
    pub path: String,
    pub status: u16,
    pub degraded: bool,
    pub retry_after: Option<String>,
    /// `X-RateLimit-Remaining`, if the answer has it.
    pub remaining: Option<u64>,
    pub took: std::time::Duration,
}

impl Sample {
    /// Decided by the store: answered 200 and not marked degraded.
    pub fn decided(&self) -> bool {
        self.status == 200 && !self.degraded
    }
}

/// One decision for `user` on `POST path`, sent to the server at `base` and timed (wall
/// clock: what a client waits).
#[allow(clippy::disallowed_methods)]
pub async fn timed_check(http: &reqwest::Client, base: &str, path: &str, user: &str) -> Sample {
    let body = format!(r#"{{"user":"{user}","method":"POST","path":"{path}"}}"#);
    let started = std::time::Instant::now();
    let response = http
        .post(format!("{base}/v1/check"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers (it must not crash)");
    Sample {
        path: path.to_owned(),
        status: response.status().as_u16(),
        degraded: header(&response, "spillway-degraded").is_some(),
        retry_after: header(&response, "retry-after"),
        remaining: header(&response, "x-ratelimit-remaining").and_then(|r| r.parse().ok()),
        took: started.elapsed(),
    }
}

/// A fixed window length, written for a policy, whose current window (aligned on the Unix
/// epoch, as every node and Redis align it) has at least ten minutes left, with its length in
/// microseconds. Lengths of an hour and a few seconds end at unrelated moments, so one of the
/// first few always has room: no test waits for a window to roll over, and none rolls over
/// while a test runs (each takes well under a minute).
pub fn roomy_window() -> (String, u64) {
    #[allow(clippy::disallowed_methods)] // the wall clock is what the nodes' windows follow
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    (3_600..3_700)
        .find(|len| len - now % len >= 600)
        .map(|len| (format!("{len}s"), len * 1_000_000))
        .expect("an hour-long window with ten minutes left")
}
