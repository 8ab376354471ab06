//! A Redis Cluster of real `redis-server` processes: three masters (optionally behind a
//! password), or any number of masters each with its replicas, joined with `redis-cli
//! --cluster create` and torn down on drop.

// Deadlines here bound cluster start-up, not limit time, so the wall clock is fine.
#![allow(clippy::disallowed_methods)]

use super::{command_as, free_port, RedisServer, START_DEADLINE};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cluster node timeout of [`RedisCluster::start`]: long enough that a frozen master
/// (the breaker and chaos tests) is never failed over by the cluster itself.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// The cluster node timeout of [`RedisCluster::with_replicas`]: short, so that a failover
/// takes a few seconds, yet twice what a loaded two-core machine may stall a healthy node
/// for, so that no healthy master is failed over by mistake.
pub const REPLICATED_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// One line of `CLUSTER NODES`, as far as the tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    /// The node ID.
    pub id: String,
    /// The client port.
    pub port: u16,
    /// The flags (`myself`, `master`, `slave`, `fail?`, `fail`, ...).
    pub flags: Vec<String>,
    /// The ID of the master it replicates (`None` for a master).
    pub master: Option<String>,
    /// The slot ranges it serves, first and last slot.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// Reads one line of `CLUSTER NODES`; `None` if it has not the expected shape.
    pub fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?;
        let master = fields.get(3)?;
        let slots = fields
            .iter()
            .skip(8)
            .filter_map(|range| {
                // `[slot->-id]` entries (a slot importing or migrating) are not served.
                let mut ends = range.splitn(2, '-').map(str::parse::<u16>);
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
                    (Some(Ok(a)), None) => Some((a, a)),
                    _ => None,
                }
            })
            .collect();
        Some(Self {
            id: (*fields.first()?).to_owned(),
            port: port.parse().ok()?,
            flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
            master: (*master != "-").then(|| (*master).to_owned()),
            slots,
        })
    }

    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    /// Whether it carries `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// `redis-cli -p <port> <args>`'s output, logged in with `password` if one is given, if it ran
/// and the server answered within 5 s.
fn cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    // Bounded by coreutils' `timeout`: a frozen (SIGSTOPped) node accepts the connection
    // and never answers, and a caller's poll cannot interrupt a child it waits on.
    let out = Command::new("timeout")
        .args(["5", "redis-cli", "-p", &port.to_string()])
        .args(login_args(password))
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.trim().is_empty() && !text.starts_with("Could not connect"))
        .then_some(text)
}

/// `redis-cli`'s arguments to log in with `password` (none without one).
fn login_args(password: Option<&str>) -> Vec<&str> {
    password.map_or_else(Vec::new, |p| vec!["-a", p, "--no-auth-warning"])
}

/// A Redis Cluster torn down on drop: three masters and no replicas ([`RedisCluster::start`]),
/// three masters behind a password ([`RedisCluster::with_password`]), or any number of
/// masters each with its replicas ([`RedisCluster::with_replicas`]).
///
/// Nodes are numbered masters first, in order of creation: master `m` is node `m`, and
/// replica `r` of master `m` is node `masters + m * replicas + r`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    /// Every node's `requirepass` (and `masterauth`), if the cluster has one.
    password: Option<String>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        Self::build(3, 0, NODE_TIMEOUT, None)
    }

    /// As [`RedisCluster::start`], with every node requiring `password` (`requirepass`, and
    /// `masterauth` for the nodes among themselves), as a production cluster would. It must
    /// hold no spaces.
    pub fn with_password(password: &str) -> Self {
        Self::build(3, 0, NODE_TIMEOUT, Some(password))
    }

    /// As [`RedisCluster::start`], with every node loading the spillway Redis module (see
    /// [`super::module_path`]).
    pub fn with_module() -> Self {
        let path = super::module_path();
        Self::build_with(3, 0, NODE_TIMEOUT, None, &["--loadmodule", &path])
    }

    /// Starts `masters` masters (at least three, so that a majority outlives one) with
    /// `replicas` replicas each and [`REPLICATED_NODE_TIMEOUT`], so that a master killed or
    /// frozen is replaced by its replica within a few seconds. Returns once every slot is
    /// served, every replica is attached and in sync, and every node agrees on who replicates
    /// whom.
    pub fn with_replicas(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 3, "a failover needs a majority of masters alive");
        Self::build(masters, replicas, REPLICATED_NODE_TIMEOUT, None)
    }

    fn build(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
        password: Option<&str>,
    ) -> Self {
        Self::build_with(masters, replicas, node_timeout, password, &[])
    }

    fn build_with(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
        password: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let timeout = node_timeout.as_millis().to_string();
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &timeout,
                ];
                if let Some(password) = password {
                    args.extend(["--requirepass", password, "--masterauth", password]);
                }
                if replicas > 0 {
                    args.extend([
                        // A replica takes over however long its link was down: the test
                        // decides when a master fails, not the replica's idea of its data.
                        "--cluster-replica-validity-factor",
                        "0",
                        // The first sync starts at once, not after the default 5 s wait.
                        "--repl-diskless-sync-delay",
                        "0",
                    ]);
                }
                args.extend(extra);
                RedisServer::start_on(&args, true, &mut free_port)
            })
            .collect();
        let addrs: Vec<String> = nodes[..masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(login_args(password))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self {
            nodes,
            masters,
            replicas,
            node_timeout,
            password: password.map(str::to_owned),
        };
        let ids: Vec<String> = (0..masters)
            .map(|m| {
                cluster
                    .cli(cluster.nodes[m].port(), &["CLUSTER", "MYID"])
                    .map(|id| id.trim().to_owned())
                    .expect("a master names its ID")
            })
            .collect();
        // Each replica meets its master, then, once it has heard of the master's ID through
        // the cluster bus, replicates it.
        for (m, (master, id)) in cluster.nodes[..masters].iter().zip(&ids).enumerate() {
            let port = master.port().to_string();
            let bus = master
                .bus
                .expect("a cluster node has a bus port")
                .to_string();
            for r in 0..replicas {
                let replica = cluster.nodes[masters + m * replicas + r].port();
                let met = cluster.cli(replica, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
                assert!(
                    met.is_some_and(|r| r.starts_with("OK")),
                    "CLUSTER MEET failed"
                );
                cluster.poll("a replica to attach to its master", || {
                    cluster
                        .cli(replica, &["CLUSTER", "REPLICATE", id])
                        .is_some_and(|r| r.starts_with("OK"))
                });
            }
        }
        cluster.poll("the cluster to be ready", || cluster.ready(&ids));
        cluster
    }

    /// Starts one more master, serving no slot yet, and has it meet the cluster; returns once
    /// every master knows it. Its port is the last of [`RedisCluster::ports`]. Only for a
    /// cluster without replicas (nodes are numbered masters first).
    pub fn add_master(&mut self) -> u16 {
        assert_eq!(self.replicas, 0, "masters are numbered before replicas");
        let timeout = self.node_timeout.as_millis().to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            &timeout,
        ];
        if let Some(password) = self.password.as_deref() {
            args.extend(["--requirepass", password, "--masterauth", password]);
        }
        let node = RedisServer::start_on(&args, true, &mut free_port);
        let port = node.port();
        let first = &self.nodes[0];
        let (first_port, bus) = (
            first.port().to_string(),
            first
                .bus
                .expect("a cluster node has a bus port")
                .to_string(),
        );
        let met = self.cli(port, &["CLUSTER", "MEET", "127.0.0.1", &first_port, &bus]);
        assert!(
            met.is_some_and(|r| r.starts_with("OK")),
            "CLUSTER MEET failed"
        );
        self.nodes.push(node);
        self.masters += 1;
        // Each way: the new master learns the others from the first by gossip, and a slot
        // moved to it next (`CLUSTER SETSLOT ... IMPORTING <source>`) needs it to know the
        // source already.
        // (By node ID: a node still in handshake is listed at its port under another ID.)
        let ports = self.ports();
        let ids: Vec<String> = (ports.iter())
            .map(|&p| self.node_id(p).expect("CLUSTER MYID"))
            .collect();
        self.poll("every master and the new one to know each other", || {
            ports.iter().all(|&p| {
                self.cli(p, &["CLUSTER", "NODES"]).is_some_and(|nodes| {
                    let known = |id: &String| nodes.lines().any(|l| l.starts_with(id.as_str()));
                    ids.iter().all(known)
                })
            })
        });
        port
    }

    /// Restarts master `m` on other ports under the same node ID, with its slots (see
    /// [`RedisServer::restart_elsewhere`]); returns its new port once every master knows it
    /// there and the cluster is ready again. [`RedisCluster::ports`] gives the new port from
    /// then on.
    pub fn move_master(&mut self, m: usize) -> u16 {
        assert!(m < self.masters, "no such master");
        let port = self.nodes[m].restart_elsewhere();
        self.await_moved(port)
    }

    /// As [`RedisCluster::move_master`], with the old process left stopped at its old ports
    /// ([`RedisServer::move_leaving_silent`]): a connection to it stays open and unanswered.
    pub fn move_master_leaving_silent(&mut self, m: usize) -> u16 {
        assert!(m < self.masters, "no such master");
        let port = self.nodes[m].move_leaving_silent();
        self.await_moved(port)
    }

    /// Waits until every master knows a moved master at `port` and the cluster is ready again.
    fn await_moved(&self, port: u16) -> u16 {
        let needle = format!(":{port}@");
        self.poll("every master to know the moved one at its new port", || {
            self.ports().iter().all(|&p| {
                self.cli(p, &["CLUSTER", "NODES"])
                    .is_some_and(|nodes| nodes.contains(&needle))
            })
        });
        let ids: Vec<String> = (0..self.masters)
            .map(|m| {
                self.node_id(self.nodes[m].port())
                    .expect("a master names its ID")
            })
            .collect();
        self.poll("the cluster to be ready again", || self.ready(&ids));
        port
    }

    /// `redis-cli` on the node on `port`, logged in if the cluster has a password.
    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(port, self.password.as_deref(), args)
    }

    /// Calls `done` every 50 ms until it holds, or panics naming `what` after
    /// `START_DEADLINE`.
    fn poll(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + START_DEADLINE;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node says `cluster_state:ok` with every slot served and every node known; every
    /// master has its replicas in sync; every node sees each replica under its own master.
    fn ready(&self, ids: &[String]) -> bool {
        let all = self.nodes.len();
        let info_ok = self.nodes.iter().all(|n| {
            self.cli(n.port(), &["CLUSTER", "INFO"]).is_some_and(|r| {
                r.contains("cluster_state:ok")
                    && r.contains("cluster_slots_ok:16384")
                    && r.contains(&format!("cluster_known_nodes:{all}"))
            })
        });
        if !info_ok || self.replicas == 0 {
            return info_ok;
        }
        let synced = (0..self.masters).all(|m| {
            self.cli(self.nodes[m].port(), &["INFO", "replication"])
                .is_some_and(|r| {
                    r.contains(&format!("connected_slaves:{}", self.replicas))
                        && r.lines()
                            .filter(|l| l.starts_with("slave"))
                            .all(|l| l.contains("state=online"))
                })
        });
        let agreed = self.nodes.iter().all(|n| {
            let Some(view) = self.view_from(n.port()) else {
                return false;
            };
            (0..self.masters).all(|m| {
                (0..self.replicas).all(|r| {
                    let port = self.nodes[self.masters + m * self.replicas + r].port();
                    view.iter()
                        .any(|l| l.port == port && l.master.as_deref() == Some(&*ids[m]))
                })
            })
        });
        synced && agreed
    }

    /// `CLUSTER NODES` as the node on `port` sees it.
    fn view_from(&self, port: u16) -> Option<Vec<NodeLine>> {
        let text = self.cli(port, &["CLUSTER", "NODES"])?;
        Some(text.lines().filter_map(NodeLine::parse).collect())
    }

    /// `CLUSTER NODES` as the first node still running sees it.
    pub fn view(&self) -> Option<Vec<NodeLine>> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| self.view_from(n.port()))
    }

    /// The seed node URLs: the masters as started.
    pub fn urls(&self) -> Vec<String> {
        self.nodes[..self.masters]
            .iter()
            .map(RedisServer::url)
            .collect()
    }

    /// The masters' URLs logging in as `login` says (`":password@"`, `"user:password@"`, or
    /// `""` for none), in order: for a cluster started [`Self::with_password`], given the
    /// right login, a wrong one or none.
    pub fn urls_with_login(&self, login: &str) -> Vec<String> {
        let ports = self.ports().into_iter();
        ports
            .map(|port| format!("redis://{login}127.0.0.1:{port}"))
            .collect()
    }

    /// The ports of the masters as started, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes[..self.masters]
            .iter()
            .map(RedisServer::port)
            .collect()
    }

    /// Master `i` as started, to freeze or resume.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Master `i` as started, to kill.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Replica `r` of master `m` (as started).
    pub fn replica(&self, m: usize, r: usize) -> &RedisServer {
        assert!(m < self.masters && r < self.replicas, "no such replica");
        &self.nodes[self.masters + m * self.replicas + r]
    }

    /// The node timeout the cluster runs with: how long a master may be silent before the
    /// others count it as failing.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// `CONFIG SET name value` on every node still running (for example
    /// `cluster-require-full-coverage no`, so that the masters keep serving their own slots
    /// while another master's slots have none).
    pub fn config_set(&self, name: &str, value: &str) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let done = self.cli(node.port(), &["CONFIG", "SET", name, value]);
            assert!(
                done.is_some_and(|r| r.starts_with("OK")),
                "CONFIG SET {name} {value} on {}",
                node.port()
            );
        }
    }

    /// The node ID of the node on `port`, if it answers.
    pub fn node_id(&self, port: u16) -> Option<String> {
        self.cli(port, &["CLUSTER", "MYID"])
            .map(|id| id.trim().to_owned())
    }

    /// Starts moving hash slot `slot` from its master to another (`CLUSTER SETSLOT ...
    /// IMPORTING` on the target, then `MIGRATING` on the source) and leaves it half-moved,
    /// so the source answers `ASK`/`TRYAGAIN` for keys it no longer holds. Returns the
    /// source's and the target's ports.
    pub fn start_migrating(&self, slot: u16) -> (u16, u16) {
        self.start_migrating_to(slot, self.other_master(slot))
    }

    /// The port of the first master (in the order of [`RedisCluster::ports`]) that does not
    /// serve hash slot `slot`.
    pub fn other_master(&self, slot: u16) -> u16 {
        let owner = self.owner(slot).expect("the slot's master");
        self.ports()
            .into_iter()
            .find(|&p| p != owner)
            .expect("another master")
    }

    /// [`RedisCluster::start_migrating`] to the master on port `target`.
    pub fn start_migrating_to(&self, slot: u16, target: u16) -> (u16, u16) {
        let source = self.owner(slot).expect("the slot's master");
        assert_ne!(source, target, "the slot is on {target} already");
        let id = |port| self.node_id(port).expect("CLUSTER MYID");
        let (source_id, target_id) = (id(source), id(target));
        let set_slot = |port, state: &str, node: &str| {
            let command = format!("CLUSTER SETSLOT {slot} {state} {node}");
            let answer = command_as(port, self.password.as_deref(), &command).unwrap_or_default();
            assert!(answer.starts_with("+OK"), "{state}: {answer}");
        };
        set_slot(target, "IMPORTING", &source_id);
        set_slot(source, "MIGRATING", &target_id);
        (source, target)
    }

    /// Moves hash slot `slot` from its master to the master on port `target`, keys and all (as
    /// [`RedisCluster::start_migrating_to`], then `MIGRATE` of every key in it and `CLUSTER
    /// SETSLOT ... NODE` on every master), so the source answers `MOVED` for it from then on.
    /// Returns the source's port.
    pub fn move_slot(&self, slot: u16, target: u16) -> u16 {
        let (source, target) = self.start_migrating_to(slot, target);
        let password = self.password.as_deref();
        let keys = command_as(
            source,
            password,
            &format!("CLUSTER GETKEYSINSLOT {slot} 1000"),
        )
        .expect("CLUSTER GETKEYSINSLOT");
        // The reply's lines: `*N`, then `$len` and the key for each key.
        for key in keys
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
        {
            let auth = password.map_or_else(String::new, |p| format!(" AUTH {p}"));
            let command = format!("MIGRATE 127.0.0.1 {target} {key} 0 5000{auth}");
            let answer = command_as(source, password, &command).unwrap_or_default();
            assert!(answer.starts_with('+'), "{command}: {answer}");
        }
        let target_id = self.node_id(target).expect("CLUSTER MYID");
        for port in [target, source].into_iter().chain(
            self.ports()
                .into_iter()
                .filter(|p| ![source, target].contains(p)),
        ) {
            let command = format!("CLUSTER SETSLOT {slot} NODE {target_id}");
            let answer = command_as(port, password, &command).unwrap_or_default();
            assert!(answer.starts_with("+OK"), "{command} on {port}: {answer}");
        }
        source
    }

    /// The port of the master serving hash slot `slot`, as `CLUSTER NODES` on the first node
    /// still running tells it.
    pub fn owner(&self, slot: u16) -> Option<u16> {
        self.view()?
            .into_iter()
            .find(|l| l.has("master") && !l.has("fail") && l.serves(slot))
            .map(|l| l.port)
    }
}
