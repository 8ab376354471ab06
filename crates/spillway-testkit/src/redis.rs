//! Real Redis processes for tests: one server ([`RedisServer`]) here, a cluster of them
//! ([`RedisCluster`]) in `cluster`.
//!
//! Ports: the OS hands out a free port for `127.0.0.1:0`, the listener is closed and Redis is
//! started on it; if another process takes the port in between, Redis fails to start and a
//! new port is tried (with a new cluster bus port too, for a cluster node). No port is handed
//! out twice in one process, so a port a test's server died on stays dead (or that server's,
//! restarted). Persistence is off
//! (`--save "" --appendonly no`) and each server runs in its own temporary directory, removed
//! on drop along with the process.

// Deadlines here bound process start-up, not limit time, so the wall clock is fine.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

mod cluster;

pub use cluster::{NodeLine, RedisCluster, NODE_TIMEOUT, REPLICATED_NODE_TIMEOUT};

/// How long a server or cluster may take to come up on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The spillway Redis module (`libspillway_redis_module.so`, crate `spillway-redis-module`)
/// of the profile the running test was built with, for `--loadmodule`. A test built by cargo
/// lives in `target/<profile>/deps/`; the module is looked for there and one level up (the
/// newest copy wins, so an edited module is never tested stale). It is not built here: a
/// `cargo build` inside a running `cargo test` would wait on the same build directory.
pub fn module_path() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let deps = exe.parent().expect("the test's directory").to_path_buf();
        let profile_dir = deps
            .parent()
            .expect("the profile's directory")
            .to_path_buf();
        let name = "libspillway_redis_module.so";
        [deps.join(name), profile_dir.join(name)]
            .into_iter()
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {} or {}: build it first with \
                     `cargo build -p spillway-redis-module` (same profile as the test)",
                    deps.display(),
                    profile_dir.display()
                )
            })
    })
    .clone()
}

/// A free loopback port (free when this returns; see the module docs for the race), never one
/// this process was handed before: a test that kills a server and watches its port must not
/// meet another test's server there.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("the OS has a free loopback port");
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "spillway-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Sends one inline command and returns its whole reply as text, if the server answers.
pub fn command(port: u16, cmd: &str) -> Option<String> {
    command_as(port, None, cmd)
}

/// How many calls of `command_name` (lowercase, e.g. `fcall`, `spillway.check`) the server
/// has served, from `INFO commandstats`; 0 when it has served none or does not answer.
pub fn calls(port: u16, command_name: &str) -> u64 {
    let stats = command(port, "INFO commandstats").unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command_name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// As [`command`], after `AUTH <password>` when a password is given (it must hold no
/// spaces); `None` if the server refuses the password.
pub fn command_as(port: u16, password: Option<&str>, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    if let Some(password) = password {
        s.write_all(format!("AUTH {password}\r\n").as_bytes())
            .ok()?;
        let n = s.read(&mut buf).ok()?;
        if !buf[..n].starts_with(b"+OK") {
            return None;
        }
    }
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    // A long reply (`CLIENT LIST`, `INFO`) can arrive in several reads: read until it is whole.
    let mut reply = Vec::new();
    while reply_end(&reply, 0).is_none() {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&reply).into_owned())
}

/// Where the RESP value starting at `at` in `bytes` ends, or `None` while it is incomplete.
fn reply_end(bytes: &[u8], at: usize) -> Option<usize> {
    let line_end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")? + 2;
    let number = || -> Option<i64> {
        std::str::from_utf8(&bytes[at + 1..line_end - 2])
            .ok()?
            .parse()
            .ok()
    };
    match bytes[at] {
        b'$' => match usize::try_from(number()?) {
            Ok(len) => (bytes.len() >= line_end + len + 2).then_some(line_end + len + 2),
            Err(_) => Some(line_end), // `$-1`: no value
        },
        b'*' => {
            let mut end = line_end;
            for _ in 0..number()?.max(0) {
                end = reply_end(bytes, end)?;
            }
            Some(end)
        }
        _ => Some(line_end),
    }
}

/// One `redis-server` process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Earlier processes of this server left running, stopped (see
    /// [`RedisServer::move_leaving_silent`]), with their directories; killed with it.
    silent: Vec<(Child, PathBuf)>,
    port: u16,
    /// The cluster bus port of a cluster node (`--cluster-port`), picked with the client port
    /// on each start attempt.
    bus: Option<u16>,
    dir: PathBuf,
    extra: Vec<String>,
    /// The `--requirepass` among `extra`, for the start-up `PING`.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, on a free port.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(extra, false, &mut free_port)
    }

    /// Starts a server with extra arguments on ports drawn from `pick`: the client port, and,
    /// for a cluster node (`bus`), the cluster bus port. Both are drawn again on every attempt,
    /// since either may be taken by another process between the draw and Redis binding it.
    fn start_on(extra: &[&str], bus: bool, pick: &mut dyn FnMut() -> u16) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let password = extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra.get(i + 1).cloned());
        for _ in 0..10 {
            let port = pick();
            let bus = bus.then(|| loop {
                let bus = pick();
                if bus != port {
                    break bus;
                }
            });
            let mut server = Self {
                child: None,
                silent: Vec::new(),
                port,
                bus,
                dir: temp_dir("redis"),
                extra: extra.clone(),
                password: password.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port (is redis-server installed?)");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .args(
                self.bus
                    .iter()
                    .flat_map(|bus| ["--cluster-port".to_owned(), bus.to_string()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(child) = cmd.spawn() else { return false };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + START_DEADLINE;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: most likely the port was taken
            }
            if command_as(self.port, self.password.as_deref(), "PING")
                .is_some_and(|r| r.starts_with("+PONG"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process (as a crash would), keeping the port for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (`SIGSTOP`): connections stay open but nothing is answered, the
    /// way a hung or partitioned server looks to its clients. [`RedisServer::resume`] undoes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen process (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([which, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {which} failed");
        }
    }

    /// Kills the process and starts it again from the same directory on other ports (the
    /// client port, and a cluster node's bus port): a cluster node keeps its node ID and its
    /// slots (its `nodes.conf`), as a restarted pod given a new address would, and loses its
    /// data (nothing is persisted). Returns the new client port.
    pub fn restart_elsewhere(&mut self) -> u16 {
        self.kill();
        for _ in 0..10 {
            let port = free_port();
            self.port = port;
            self.bus = self.bus.map(|_| loop {
                let bus = free_port();
                if bus != port {
                    break bus;
                }
            });
            if self.spawn() {
                return port;
            }
        }
        panic!("could not start redis-server again on other free ports");
    }

    /// As [`RedisServer::restart_elsewhere`], but the process at the old ports is stopped
    /// (`SIGSTOP`) rather than killed, and stays so until this server is dropped: its
    /// address accepts connections and bytes and never answers, as a host gone without a
    /// reset does. The new process starts from a copy of its directory (a cluster node's
    /// `nodes.conf`: the same node ID and slots).
    pub fn move_leaving_silent(&mut self) -> u16 {
        self.freeze();
        let child = self.child.take().expect("a running process to leave");
        self.silent.push((child, self.dir.clone()));
        let copy = temp_dir("redis");
        for entry in std::fs::read_dir(&self.dir).expect("the server's directory") {
            let entry = entry.expect("a directory entry");
            std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy a file");
        }
        self.dir = copy;
        self.restart_elsewhere()
    }

    /// Starts the server again on the same port (empty, since nothing is persisted).
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// As [`RedisServer::restart`], with `extra` added to its arguments from now on.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self.kill();
        let deadline = std::time::Instant::now() + START_DEADLINE;
        while !self.spawn() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis did not restart on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        for (mut child, dir) in self.silent.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster node whose first bus port is taken when Redis binds it starts on the next
    /// attempt with ports drawn anew (a bus port drawn once, before the attempts, would fail
    /// them all).
    #[test]
    fn a_taken_bus_port_is_drawn_again() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let taken_port = taken.local_addr().expect("its address").port();
        let mut draws = 0;
        // The first attempt's client port is free and its bus port is the taken one.
        let mut pick = || {
            draws += 1;
            if draws == 2 {
                taken_port
            } else {
                free_port()
            }
        };
        let node = RedisServer::start_on(&["--cluster-enabled", "yes"], true, &mut pick);
        assert!(draws >= 4, "started on the first attempt: {draws} draws");
        assert!(node.bus.is_some_and(|bus| bus != taken_port));
        assert!(command(node.port(), "PING").is_some_and(|r| r.starts_with("+PONG")));
    }
}

#[cfg(test)]
mod port_tests {
    use super::free_port;
    use std::collections::HashSet;

    #[test]
    fn no_port_is_handed_out_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}

#[cfg(test)]
mod reply_tests {
    use super::reply_end;

    #[test]
    fn a_reply_is_whole_only_once_every_byte_of_it_is_read() {
        let whole: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
        ];
        for reply in whole {
            assert_eq!(reply_end(reply, 0), Some(reply.len()), "{reply:?}");
            for cut in 0..reply.len() {
                assert_eq!(reply_end(&reply[..cut], 0), None, "{reply:?} cut at {cut}");
            }
        }
    }
}
