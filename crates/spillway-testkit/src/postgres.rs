//! Real PostgreSQL servers for tests, from Debian's `postgresql` package.
//!
//! Each [`PostgresServer`] is its own cluster: `initdb` into a temporary directory, `postgres`
//! on a free loopback port (its unix socket in the same directory), a database named
//! `spillway` created in it, and everything stopped and removed on drop. Durability is off
//! (`fsync`, `synchronous_commit`, `full_page_writes`): the tests exercise the protocol and
//! the SQL, not the disk. The data survives [`PostgresServer::stop`], [`PostgresServer::kill`]
//! and [`PostgresServer::restart`], so a test can take the database away and bring it back.
//!
//! Binaries: `$SPILLWAY_PG_BINDIR` if set, else the newest `/usr/lib/postgresql/*/bin` (where
//! Debian puts them, off `PATH`), else the directory of an `initdb` found on `PATH`.
//!
//! Root: `initdb` and `postgres` refuse to run as root, and tests (and CI) here run as root.
//! When the test process is root, both are started as the unprivileged `nobody` user (its
//! uid and gid read from `/etc/passwd`, 65534 if absent) through `CommandExt::uid`/`gid`, and
//! the temporary directory is handed to that user; nothing needs `su`, `runuser` or a
//! dedicated account. Clients (`pg_isready`, `psql`) connect over TCP as the `postgres`
//! superuser with `trust` authentication, so they run as whoever runs the test.
//!
//! Skipping: [`PostgresServer::start_or_skip`] returns `None`, saying so loudly on stderr, only
//! when no binaries are found *and* `SPILLWAY_REQUIRE_POSTGRES` is unset; `scripts/test.sh`
//! (and so CI) sets it and installs the package, so there a missing PostgreSQL fails the tests.

// Deadlines here bound process start-up, not limit time, so the wall clock is fine.
#![allow(clippy::disallowed_methods)]

use crate::redis::free_port;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to come up (or go down) on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The environment variable that turns a missing PostgreSQL from a skip into a failure.
pub const REQUIRE_ENV: &str = "SPILLWAY_REQUIRE_POSTGRES";

/// The database every server creates for its test.
pub const DATABASE: &str = "spillway";

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`, if PostgreSQL is
/// installed (see the module docs for where it looks).
pub fn bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("SPILLWAY_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return has_tools(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("initdb"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_tools(d))
}

/// The uid and gid to run the server as: `nobody`'s when this process is root (PostgreSQL
/// refuses root), none otherwise.
fn server_user() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let ids = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "nobody" {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    });
    Some(ids.unwrap_or((65534, 65534)))
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "spillway-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir for postgres");
    dir
}

/// One PostgreSQL cluster with a `spillway` database, stopped and removed on drop.
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PostgresServer {
    /// Initialises and starts a server on a free port. Panics (with `initdb`'s or the
    /// server's output) if it cannot, or if PostgreSQL is not installed.
    pub fn start() -> Self {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH); run scripts/test.sh, which installs Debian's `postgresql`")
        });
        let user = server_user();
        let dir = temp_dir();
        let mut server = Self {
            bin,
            dir,
            port: 0,
            user,
            child: None,
        };
        server.initdb();
        for _ in 0..10 {
            server.port = free_port();
            if server.spawn() {
                server.psql_on("postgres", &format!("CREATE DATABASE {DATABASE}"));
                return server;
            }
        }
        panic!(
            "could not start postgres on a free port; its log:\n{}",
            server.log_tail()
        );
    }

    /// Starts a server, or returns `None` after a loud note on stderr when PostgreSQL is not
    /// installed and `SPILLWAY_REQUIRE_POSTGRES` is unset (see the module docs). `test` names
    /// the caller in that note.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if bin_dir().is_some() {
            return Some(Self::start());
        }
        if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty()) {
            panic!("{test}: PostgreSQL is required ({REQUIRE_ENV} is set) but not installed: no initdb under /usr/lib/postgresql/*/bin or on PATH");
        }
        eprintln!(
            "\n*** SKIPPED {test}: PostgreSQL is not installed (apt-get install postgresql, or run scripts/test.sh); set {REQUIRE_ENV}=1 to make this a failure ***\n"
        );
        None
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_server_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
    }

    fn initdb(&self) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
                .expect("hand the temp dir to the postgres user");
        }
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C", "--no-instructions"])
            .current_dir(&self.dir);
        self.as_server_user(&mut cmd);
        let out = cmd.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("open the postgres log");
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(self.dir.join("postgres.log"), Some(uid), Some(gid));
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=32MB"])
            .args(["-c", "max_connections=100"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.as_server_user(&mut cmd);
        let Ok(child) = cmd.spawn() else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: the port was taken, or the old one still shuts down
            }
            if self.is_ready() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        false
    }

    fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/spillway`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Whether the server process is running (not stopped or killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs SQL on the `spillway` database with `psql` and returns its unaligned, tuples-only
    /// output. Panics if it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_on(DATABASE, sql)
    }

    fn psql_on(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Terminates (`pg_terminate_backend`) every other connection to the `spillway`
    /// database, as a failover or an administrator would; returns how many.
    pub fn terminate_backends(&self) -> usize {
        self.terminate_where("true")
    }

    /// Terminates only the connections waiting in `LISTEN` (notification listeners); returns
    /// how many.
    pub fn terminate_listeners(&self) -> usize {
        self.terminate_where("query ILIKE 'LISTEN%'")
    }

    fn terminate_where(&self, condition: &str) -> usize {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid() AND ({condition})"
        );
        self.psql(&sql).parse().unwrap_or(0)
    }

    /// Stops the server cleanly (a fast shutdown: clients are disconnected), keeping its data
    /// and port for [`PostgresServer::restart`].
    pub fn stop(&mut self) {
        self.signal_and_wait("-INT");
    }

    /// Kills the server with `SIGKILL`, as a crash would; the data stays (and is recovered
    /// from the WAL on restart).
    pub fn kill(&mut self) {
        self.signal_and_wait("-KILL");
    }

    fn signal_and_wait(&mut self, which: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([which, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data (stopping it first if it
    /// is running). Retries until the old processes are gone; panics after a minute.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_DEADLINE;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "postgres did not restart on port {}; its log:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // An immediate shutdown: nothing needs to be kept.
        self.signal_and_wait("-QUIT");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
