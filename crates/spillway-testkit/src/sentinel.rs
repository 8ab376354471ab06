//! A Redis Sentinel deployment for tests: a master, one replica and three `redis-sentinel`
//! processes watching it under the name [`MASTER_NAME`], all on free loopback ports.
//!
//! The sentinels are tuned to fail over fast: the master counts as down after
//! [`DOWN_AFTER_MS`] without an answer, two sentinels must agree, and a failover attempt
//! times out after three seconds. [`SentinelGroup::start`] returns only once the replica
//! is in sync and every sentinel knows the replica and the two other sentinels, so a
//! failover can start as soon as the master goes.
//!
//! One group runs at a time in a test process (a group holds a process-wide lock while it
//! lives): several at once on a 2-core machine starve the sentinels and servers past those
//! short timeouts, and a sentinel failing over a second time (to a replica without the
//! data) looks, to a test of exact counts across a failover, like a store that lost them.
//!
//! [`SentinelGroup::start_with`] runs the group with [`Passwords`], as production deployments
//! do: `requirepass` on the data nodes (with `masterauth` for replication and `sentinel
//! auth-pass` for the sentinels), and the sentinels' own `requirepass` (with `sentinel
//! sentinel-pass` so they still talk to each other).

// Deadlines here bound process start-up and failover, not limit time.
#![allow(clippy::disallowed_methods)]

use crate::redis::{command_as, free_port, RedisServer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "spillway-test";

/// How long the master may stay silent before a sentinel calls it down. Above a second on
/// purpose: a sentinel pings every `min(down-after, 1 s)`, and right after a failover it starts
/// over with the new master, whose first ping answer then came a hair past a shorter
/// down-after: all three called the new master down at once and failed over again, to the old
/// master restarted empty, losing every count (seen in the logs of a failing test).
pub const DOWN_AFTER_MS: u64 = 1500;

/// The IPv6 loopback address a group started by [`SentinelGroup::start_on_ipv6`] runs on.
const IPV6: &str = "::1";

/// How long the group may take to come up, or to fail over, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// The passwords a group runs with (each without spaces); `None` leaves that side open.
#[derive(Debug, Clone, Default)]
pub struct Passwords {
    /// The data nodes' `requirepass` (the master's and the replica's).
    pub data: Option<String>,
    /// The sentinels' own `requirepass`.
    pub sentinels: Option<String>,
}

/// One `redis-sentinel` process, killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sentinel {
    /// Starts a sentinel watching the master at `master_host` (`127.0.0.1`, or `::1`, which
    /// the sentinel then also listens on) on `master_port`; `None` if its port was taken.
    fn start(master_host: &str, master_port: u16, passwords: &Passwords) -> Option<Self> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("spillway-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        // Sentinel rewrites its configuration file as it learns, so each has its own.
        let conf = dir.join("sentinel.conf");
        let bind = if master_host == IPV6 {
            "127.0.0.1 ::1"
        } else {
            "127.0.0.1"
        };
        let text = format!(
            "port {port}\nbind {bind}\ndaemonize no\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} {master_host} {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} 3000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display()
        );
        let mut text = text;
        if let Some(data) = &passwords.data {
            text.push_str(&format!("sentinel auth-pass {MASTER_NAME} {data}\n"));
        }
        if let Some(own) = &passwords.sentinels {
            text.push_str(&format!(
                "requirepass {own}\nsentinel sentinel-pass {own}\n"
            ));
        }
        std::fs::write(&conf, text).ok()?;
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .or_else(|_| {
                // Without Debian's redis-sentinel, the server binary runs in sentinel mode.
                Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .ok()?;
        let mut sentinel = Self { child, port, dir };
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = sentinel.child.try_wait() {
                return None; // exited: most likely the port was taken
            }
            if command_as(port, passwords.sentinels.as_deref(), "PING")
                .is_some_and(|r| r.starts_with("+PONG"))
            {
                return Some(sentinel);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = sentinel.child.kill();
        None
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, a replica and three sentinels; see the module docs. Everything is killed on drop.
pub struct SentinelGroup {
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    /// Sentinels started apart from the group ([`SentinelGroup::start_stale_sentinel`]).
    apart: Vec<Sentinel>,
    passwords: Passwords,
    /// The address the sentinels know the data nodes by: `127.0.0.1`, or `::1`.
    host: &'static str,
    /// Held while the group lives, released after its processes are killed (fields drop in
    /// order): one group at a time (see the module docs).
    _alone: MutexGuard<'static, ()>,
}

/// The lock each group holds while it lives.
static ONE_GROUP: Mutex<()> = Mutex::new(());

/// The value after `field` in a reply that lists fields and values as bulk strings.
fn field(reply: &str, field: &str) -> Option<String> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let at = lines.iter().position(|l| *l == field)?;
    lines.get(at + 2).map(|v| (*v).to_owned())
}

impl SentinelGroup {
    /// Starts the group and waits until it could fail over (see the module docs).
    pub fn start() -> Self {
        Self::start_with(Passwords::default())
    }

    /// Starts the group with `passwords` (see the module docs) and waits until it could fail
    /// over.
    pub fn start_with(passwords: Passwords) -> Self {
        Self::start_with_args(passwords, &[])
    }

    /// As [`SentinelGroup::start_with`], with `data_args` added to both data nodes' command
    /// lines (e.g. `--loadmodule <path>`).
    pub fn start_with_args(passwords: Passwords, data_args: &[&str]) -> Self {
        Self::start_at("127.0.0.1", passwords, data_args)
    }

    /// As [`SentinelGroup::start`], on the IPv6 loopback address: the sentinels watch the
    /// master at `::1`, the replica replicates from there, and so the sentinels name both by
    /// that address (each process also listens on `127.0.0.1`, so the helpers here reach it).
    pub fn start_on_ipv6() -> Self {
        Self::start_at(IPV6, Passwords::default(), &["--bind", "127.0.0.1", IPV6])
    }

    /// Whether this machine can listen on the IPv6 loopback address, which
    /// [`SentinelGroup::start_on_ipv6`] needs (a container may run without IPv6).
    pub fn ipv6_available() -> bool {
        std::net::TcpListener::bind((IPV6, 0)).is_ok()
    }

    /// Starts the group with the data nodes known by `host`; see the module docs.
    fn start_at(host: &'static str, passwords: Passwords, data_args: &[&str]) -> Self {
        // A test that panicked with its group has released it all the same.
        let alone = ONE_GROUP.lock().unwrap_or_else(|held| held.into_inner());
        let auth_args: Vec<String> = match &passwords.data {
            Some(p) => vec![
                "--requirepass".into(),
                p.clone(),
                "--masterauth".into(),
                p.clone(),
            ],
            None => vec![],
        };
        // Both data nodes' arguments: the password's, then the caller's.
        let mut node_args: Vec<&str> = auth_args.iter().map(String::as_str).collect();
        node_args.extend(data_args);
        let master = RedisServer::start_with(&node_args);
        let master_port = master.port().to_string();
        let mut replica_args = vec!["--replicaof", host, &master_port];
        replica_args.extend(&node_args);
        let replica = RedisServer::start_with(&replica_args);
        let mut sentinels = Vec::new();
        for _ in 0..30 {
            if sentinels.len() == 3 {
                break;
            }
            if let Some(s) = Sentinel::start(host, master.port(), &passwords) {
                sentinels.push(s);
            }
        }
        assert_eq!(
            sentinels.len(),
            3,
            "could not start three redis-sentinel processes"
        );
        let group = Self {
            servers: vec![master, replica],
            sentinels,
            apart: Vec::new(),
            passwords,
            host,
            _alone: alone,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let synced = group
                .data_command(group.servers[1].port(), "INFO replication")
                .is_some_and(|r| r.contains("master_link_status:up"));
            let ready = group.sentinels.iter().all(|s| {
                let master =
                    group.sentinel_command(s.port, &format!("SENTINEL MASTER {MASTER_NAME}"));
                master.is_some_and(|r| {
                    field(&r, "num-slaves").as_deref() == Some("1")
                        && field(&r, "num-other-sentinels").as_deref() == Some("2")
                })
            });
            if synced && ready {
                return group;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels never saw the replica and each other"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One command on a data node, logged in if the group has a data password.
    fn data_command(&self, port: u16, cmd: &str) -> Option<String> {
        command_as(port, self.passwords.data.as_deref(), cmd)
    }

    /// One command on a sentinel, logged in if the sentinels have a password.
    fn sentinel_command(&self, port: u16, cmd: &str) -> Option<String> {
        command_as(port, self.passwords.sentinels.as_deref(), cmd)
    }

    /// `redis://127.0.0.1:<port>` of each sentinel (`redis://[::1]:<port>` on IPv6).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://{}", self.address(s.port)))
            .collect()
    }

    /// The port of the server the sentinels call master now (asking the first that answers).
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = self.sentinel_command(
                s.port,
                &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {MASTER_NAME}"),
            )?;
            reply.split("\r\n").nth(4)?.parse().ok()
        })
    }

    /// `host:port` of the group's process on `port` as a URL names it (and, for a data node,
    /// as a store reports its master): `127.0.0.1:<port>`, or `[::1]:<port>` on IPv6.
    pub fn address(&self, port: u16) -> String {
        if self.host == IPV6 {
            format!("[{IPV6}]:{port}")
        } else {
            format!("{}:{port}", self.host)
        }
    }

    /// The port the first master was started on.
    pub fn first_master_port(&self) -> u16 {
        self.servers[0].port()
    }

    /// The port of the replica (the master after a failover).
    pub fn replica_port(&self) -> u16 {
        self.servers[1].port()
    }

    /// Waits until the replica has everything the first master has written so far (its
    /// replication offset reached the master's); panics after the deadline. `WAIT` cannot
    /// tell this from a test's own connection: it counts only that connection's writes, and
    /// one that wrote nothing is answered at once.
    pub fn wait_for_replica(&self) {
        let offset = |port: u16, name: &str| {
            let info = self.data_command(port, "INFO replication")?;
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let deadline = Instant::now() + DEADLINE;
        let written = offset(self.first_master_port(), "master_repl_offset:")
            .expect("the master tells its replication offset");
        loop {
            let held = offset(self.replica_port(), "slave_repl_offset:").unwrap_or(0);
            if held >= written {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica stayed at offset {held}, the master wrote up to {written}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the first master, as a crash would.
    pub fn kill_master(&mut self) {
        self.servers[0].kill();
    }

    /// Starts the first master again on its port after [`SentinelGroup::kill_master`], with no
    /// data and as a master, as a crashed server restarted by its supervisor comes back before
    /// the sentinels make it a replica of the new master.
    pub fn restart_first_master(&mut self) {
        self.servers[0].restart();
    }

    /// As [`SentinelGroup::restart_first_master`], with the commands the sentinels reconfigure
    /// a server with (`REPLICAOF`, `SLAVEOF`) and announce themselves by (`PUBLISH`) renamed
    /// away, for this start and any later one: the restarted server stays a master with no
    /// data for as long as the group lives, and no sentinel hears of another through it.
    pub fn restart_first_master_unmanaged(&mut self) {
        self.servers[0].restart_with(&[
            "--rename-command",
            "REPLICAOF",
            "replicaof-off-for-test",
            "--rename-command",
            "SLAVEOF",
            "slaveof-off-for-test",
            "--rename-command",
            "PUBLISH",
            "publish-off-for-test",
        ]);
    }

    /// Makes the sentinels fail over now, the master alive (`SENTINEL FAILOVER`): the replica
    /// is promoted, and the first master is made its replica soon after. Returns once every
    /// sentinel names the replica and it acts as master
    /// ([`SentinelGroup::wait_for_failover`]), maybe before the first master is demoted.
    pub fn force_failover(&self) {
        let port = self.sentinels[0].port;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reply = self
                .sentinel_command(port, &format!("SENTINEL FAILOVER {MASTER_NAME}"))
                .unwrap_or_default();
            if reply.starts_with("+OK") {
                break;
            }
            // The sentinel may not yet count the replica fit to promote (`-NOGOODSLAVE`: its
            // last INFO from it too old on a loaded machine): ask again shortly.
            assert!(
                Instant::now() < deadline && reply.starts_with("-NOGOODSLAVE"),
                "SENTINEL FAILOVER: {reply}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.wait_for_failover();
    }

    /// Starts a fourth sentinel, apart from the group, watching the first master's address
    /// under the same name with no failover behind it (configuration epoch 0); its port. Only
    /// once the group has failed over and that server was restarted by
    /// [`SentinelGroup::restart_first_master_unmanaged`] (call that first) does it stay a
    /// sentinel that missed the failover, naming the old address as one cut off with a
    /// minority would: through any other server it would hear the group's newer
    /// configuration within seconds.
    pub fn start_stale_sentinel(&mut self) -> u16 {
        let master = self.first_master_port();
        let sentinel = (0..30)
            .find_map(|_| Sentinel::start(self.host, master, &self.passwords))
            .expect("could not start a redis-sentinel process");
        let port = sentinel.port;
        self.apart.push(sentinel);
        port
    }

    /// The port of each sentinel.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// Waits until the failover is over: every sentinel names the replica as master with no
    /// failover in progress (while one is, a sentinel already names the replica, yet may still
    /// abort and keep the old master), and the replica acts as master; panics after the
    /// deadline.
    pub fn wait_for_failover(&self) {
        let deadline = Instant::now() + DEADLINE;
        let replica = self.replica_port().to_string();
        loop {
            let settled = self.sentinels.iter().all(|s| {
                self.sentinel_command(s.port, &format!("SENTINEL MASTER {MASTER_NAME}"))
                    .is_some_and(|r| {
                        field(&r, "port").as_deref() == Some(replica.as_str())
                            && field(&r, "flags").is_some_and(|f| !f.contains("failover"))
                    })
            });
            let promoted = settled
                && self
                    .data_command(self.replica_port(), "ROLE")
                    .is_some_and(|r| r.contains("master"));
            if promoted {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels never failed over");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
