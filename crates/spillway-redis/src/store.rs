//! [`RedisStore`]: the [`Store`] backed by a Redis server, a master found through Sentinel, or
//! a Redis Cluster.
//!
//! One multiplexed connection (a `ConnectionManager` for a server, the one
//! [`crate::sentinel::SentinelConn`] keeps to the current master, the cluster client's async
//! connection for a cluster) is shared by every request: concurrent checks are pipelined on
//! it, and a dropped connection is re-established by the client on the next call (through
//! Sentinel, by the store's task, only where the sentinels point). A serving thread that
//! attached ([`Store::attach_thread`]) sends its checks on a connection of its own instead,
//! once that is up ([`crate::thread_conn`]): to the server, the master Sentinel names, or on a
//! cluster the master of the check's slot (checks of one slot). Each call
//! is bounded by the configured timeout and timed into `spillway_store_roundtrip_seconds`.
//!
//! A request's checks are evaluated by one call of the check function when their keys share
//! a hash slot (always, on a single server); see [`crate::multi_slot`] for requests that span
//! slots. Concurrent requests share calls: all of them on a single server, those of one slot
//! on a cluster (see [`crate::batch`]). On a cluster the store also keeps its own view of
//! which master serves each slot ([`crate::topology`]) and tells the server a request's
//! masters ([`Store::domains`]), which keeps a circuit breaker per master.

use crate::batch::{BatchError, Batcher, Unsent};
use crate::config::{setup_limit, RedisConfig, Target};
use crate::error::{classify, record, ConnectError};
use crate::keys::{self, KeyLayout};
use crate::local_cache::LocalCache;
use crate::login::{self, Refusal};
use crate::multi_slot::{slots, Slots};
use crate::runner::{Conn, Runner};
use crate::script::{Encoded, Reply};
use crate::thread_conn::{Route, ThreadConns, THREAD_CONN_RESENT};
use crate::topology::Topology;
use async_trait::async_trait;
use spillway_core::algorithm::Decision;
use spillway_core::request::CheckMode;
use spillway_core::store::{Charged, Check, Domains, ReportId, Store, StoreError};
use spillway_core::time::{Clock, Micros, SystemClock};
use std::sync::Arc;
use std::time::Duration;

/// A store keeping limit state in Redis; see the crate docs.
pub struct RedisStore {
    runner: Runner,
    /// Coalesces concurrent requests into shared calls (per slot on a cluster).
    batcher: Batcher,
    /// The serving threads' own connections and batchers (to a single server, directly or
    /// through Sentinel, or to each master of a cluster).
    thread_conns: ThreadConns,
    layout: KeyLayout,
    /// The node's clock, for the local cache and the pace of looking for the native module
    /// again (Redis keeps the limits' own time).
    clock: Arc<dyn Clock>,
    cache: Option<LocalCache>,
    /// On a cluster, which master serves each slot (the failure domains).
    topology: Option<Arc<Topology>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.is_cluster())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the deployment in `config`, on the system clock. Fails if the prefix is
    /// invalid, a server refuses the login ([`ConnectError::LoginRefused`], told as
    /// `config.owner`'s asking to check `config.login_hint`) or no connection can be made
    /// within the timeout; later outages are survived. A cluster's seeds are expected to agree
    /// on the login: that is checked where the URLs are read ([`crate::config::seeds_agree`]),
    /// once.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        Self::connect_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`RedisStore::connect`] with `clock` for the local cache and the pace of looking for
    /// the native module again, from the start's own probe on. Taken here, before the store's
    /// batcher starts with its copy of the runner, so there is one batcher and it never
    /// sees another clock.
    pub async fn connect_with_clock(
        config: &RedisConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConnectError> {
        Self::open(config, clock, None).await
    }

    /// TEST ONLY: [`RedisStore::connect_with_clock`] whose scripts also evaluate at `clock`'s
    /// time instead of Redis `TIME`, so test vectors can use exact times. Production stores
    /// never call this.
    pub async fn connect_with_injected_time(
        config: &RedisConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConnectError> {
        Self::open(config, clock.clone(), Some(clock)).await
    }

    /// Connects (see [`RedisStore::connect`]) with the store's clock, and the scripts' time
    /// if `injected`.
    async fn open(
        config: &RedisConfig,
        clock: Arc<dyn Clock>,
        injected: Option<Arc<dyn Clock>>,
    ) -> Result<Self, ConnectError> {
        let layout =
            KeyLayout::new(&config.prefix).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let timeout = config.timeout;
        let connect_limit = timeout.max(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let refusal = Refusal::of(&config.owner, &config.login_hint);
        let server_settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(setup_limit(timeout)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connecting = async {
            let conn = match &config.target {
                Target::Server(url) => {
                    let settings = server_settings.clone();
                    let conn = refusal.connect_server(url, settings).await?;
                    Conn::Server(conn)
                }
                Target::Cluster(nodes) => {
                    // Each call is cut at `timeout` by the store itself; the client waits
                    // longer, so a request spanning slots still hears a late answer and can
                    // refund what it charged (see `crate::multi_slot`).
                    //
                    // The client's waits between retries (of `TRYAGAIN` while a slot migrates,
                    // `CLUSTERDOWN`, a reconnect) start at 1.28 s by default, past any time
                    // budget: they are kept short so that a retry, and the batcher's own
                    // retry of requests that only shared a refused call (see
                    // `crate::batch`), fit within the timeout.
                    let wait = u64::try_from(timeout.as_millis() / 8).unwrap_or(u64::MAX);
                    let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .connection_timeout(setup_limit(timeout))
                        .response_timeout(timeout.max(crate::multi_slot::SETTLE))
                        .retries(3)
                        .min_retry_wait(1)
                        .max_retry_wait(wait.clamp(2, 100))
                        .build()?;
                    // A seed refusing its login is a setting to fix, told (naming the seed)
                    // before the start's own limit cuts (see `Refusal::connect_cluster`).
                    let deadline =
                        started + connect_limit.saturating_sub(Duration::from_millis(200));
                    Conn::Cluster(
                        refusal
                            .connect_cluster(&client, nodes, deadline, config.ask_seeds)
                            .await?,
                    )
                }
                Target::Sentinel {
                    sentinels,
                    master,
                    auth,
                } => Conn::Sentinel(
                    crate::sentinel::SentinelConn::connect(sentinels, master, auth, timeout)
                        .await?,
                ),
            };
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = match tokio::time::timeout(connect_limit, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if login::refused(&e) => {
                return Err(ConnectError::LoginRefused(e.to_string()))
            }
            Ok(Err(e)) => return Err(classify(e, timeout).into()),
            Err(_) => return Err(StoreError::Timeout(connect_limit).into()),
        };
        let topology = match &conn {
            Conn::Cluster(cluster) => {
                let topology = Arc::new(Topology::new());
                let mut asking = cluster.clone();
                crate::topology::refresh(&topology, &mut asking, timeout).await;
                crate::topology::keep_fresh(Arc::downgrade(&topology), asking, timeout);
                Some(topology)
            }
            _ => None,
        };
        let mut runner = Runner::new(conn, timeout, clock.clone(), injected);
        runner.timed_by_caller = config.timed_by_caller;
        runner.prepare().await;
        let batcher = Batcher::start(runner.clone());
        let thread_conns = match (&config.target, &runner.conn) {
            (Target::Server(url), _) => {
                ThreadConns::server(url, config, server_settings, setup_limit(timeout))
            }
            (_, Conn::Sentinel(master)) => ThreadConns::sentinel(master),
            (Target::Cluster(seeds), _) => match (seeds.first(), &topology) {
                (Some(seed), Some(topology)) => {
                    ThreadConns::cluster(seed, config, topology.clone(), setup_limit(timeout))
                }
                _ => ThreadConns::none(),
            },
            _ => ThreadConns::none(),
        };
        Ok(Self {
            runner,
            batcher,
            thread_conns,
            layout,
            clock,
            cache: (config.local_cache_keys > 0).then(|| LocalCache::new(config.local_cache_keys)),
            topology,
        })
    }

    /// The Redis key a state key is stored under.
    pub fn redis_key(&self, key: &spillway_core::key::StateKey) -> String {
        self.layout.key(key)
    }

    /// The `host:port` of the master in use, for a store that found it through Sentinel.
    pub fn sentinel_master(&self) -> Option<String> {
        match &self.runner.conn {
            Conn::Sentinel(c) => Some(c.master_addr()),
            _ => None,
        }
    }

    /// Sends on the shared path a check that this thread's connection did not send, having
    /// lost it for good before the call went out (an idle close of a master the sentinels
    /// named) or failed to make it again (a cluster master's: nothing listening where the
    /// master was reported, or another node there), or that a cluster master refused for a
    /// slot it does not serve: nothing of it ran, so it goes by the deadline it had (or, on a
    /// store `timed_by_caller`, until its caller drops it). A connection that could not carry
    /// it steps aside (on every thread) as for any failure, until it answers a ping; a
    /// refusal leaves it serving. On a cluster the slot map is asked for again now either way.
    async fn resend(
        &self,
        lane: u16,
        route: Route,
        unsent: Unsent,
        mode: CheckMode,
    ) -> Result<Reply, BatchError> {
        let Unsent {
            keys,
            checks,
            deadline,
            err,
            unreached,
        } = unsent;
        if let Some(topology) = &self.topology {
            topology.refresh_soon();
        }
        if unreached {
            self.thread_conns.failed(&BatchError::Store(err), route);
        }
        metrics::counter!(THREAD_CONN_RESENT).increment(1);
        self.batcher
            .check_until(lane, keys, checks, mode, deadline)
            .await
    }

    /// Whether this store talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.runner.conn, Conn::Cluster(_))
    }

    fn now(&self) -> Micros {
        self.clock.now()
    }

    /// One PING on the shared connection within `limit`. Its error is not counted: the ping
    /// may be sent again ([`Store::ping`]), which counts the outcome.
    async fn ping_within(&self, limit: Duration) -> Result<(), StoreError> {
        let pong: String = self
            .runner
            .call_within(limit, |mut conn| async move {
                let pong = conn.query(&redis::cmd("PING")).await?;
                Ok(redis::from_redis_value::<String>(pong)?)
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!("PING answered {pong:?}")))
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = checks.iter().map(|c| self.layout.key(c.key)).collect();
        let sent_at = self.now();
        let slots = if self.is_cluster() {
            slots(checks)
        } else {
            Slots::One(0)
        };
        let decisions = match slots {
            Slots::One(lane) => {
                let encoded = checks.iter().map(Encoded::new).collect();
                // Where the check is bound as it starts: which connection may take it, and
                // whom a failure is told to.
                let route = self.thread_conns.route(lane);
                // This thread's own connection when it has one up, else the shared batcher. Chosen
                // before the first await, as `served_on_this_thread` was just before: nothing
                // may await between the two, or the guard's choice of where to poll this
                // call could be wrong for the path it takes. (A check sent on from the
                // thread's batcher to the shared one below is still polled on the thread:
                // harmless, the shared dispatcher runs on the main runtime and this call
                // spawns nothing.)
                // `told`: whether the connections of `route` heard of this check already.
                let (reply, told) = match self.thread_conns.here(route) {
                    Some(own) => match own.check(lane, keys, encoded, mode).await {
                        // Boxed: a rare wait, which must not size every check's future. Its
                        // outcome is not told to `route`'s connections: `resend` told them
                        // what sent it elsewhere, and elsewhere is where it went.
                        Err(BatchError::NotSent(unsent)) => (
                            Box::pin(self.resend(lane, route, *unsent, mode)).await,
                            true,
                        ),
                        other => (other, false),
                    },
                    None => (self.batcher.check(lane, keys, encoded, mode).await, false),
                };
                reply
                    .inspect_err(|err| {
                        if !told {
                            self.thread_conns.failed(err, route);
                        }
                    })
                    .map_err(StoreError::from)?
                    .decisions
            }
            Slots::Many(groups) => {
                crate::multi_slot::check(&self.runner, keys, groups, checks, mode).await?
            }
        };
        // A peek (the dashboard's lookup, `/v1/check?peek`) must not change later decisions,
        // so only a consuming check feeds the over-limit cache.
        if let (Some(cache), CheckMode::Consume) = (&self.cache, mode) {
            cache.remember(checks, &decisions, sent_at);
        }
        Ok(decisions)
    }

    async fn charge(
        &self,
        checks: &[Check<'_>],
        report: Option<ReportId>,
    ) -> Result<Charged, StoreError> {
        if checks.is_empty() {
            return Ok(Charged {
                recorded: false,
                decisions: Vec::new(),
            });
        }
        let keys: Vec<String> = checks.iter().map(|c| self.layout.key(c.key)).collect();
        // One call per cluster slot (one for a single server), each atomic and each with its
        // own marker in its slot: a retry after a partial failure records only the slots
        // that had not recorded it.
        let groups = if self.is_cluster() {
            slots(checks)
        } else {
            Slots::One(0)
        }
        .groups(keys.len());
        // Each slot's part goes through the batcher as a job of its own (sharing a call with
        // other requests of its slot), concurrently (one round trip), each awaited by its own
        // task so that it finishes even if the caller stops waiting.
        let calls: Vec<_> = groups
            .iter()
            .map(|&(lane, ref group)| {
                let marker = report.map(|id| keys::report_marker(&keys[group[0]], &id));
                let slot_keys = group.iter().map(|&i| keys[i].clone()).collect();
                let encoded = group
                    .iter()
                    .map(|&i| Encoded::charged(&checks[i]))
                    .collect();
                let batcher = self.batcher.clone();
                tokio::spawn(async move {
                    let charged = batcher.charge(lane, marker, slot_keys, encoded).await;
                    charged.map_err(StoreError::from)
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(calls.len());
        for call in calls {
            replies.push(call.await.unwrap_or_else(|e| {
                Err(StoreError::Protocol(format!(
                    "a slot's charge did not finish: {e}"
                )))
            }));
        }
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        let mut recorded = false;
        for ((_, group), reply) in groups.iter().zip(replies) {
            let reply = reply?;
            recorded |= reply.admitted;
            for (&i, d) in group.iter().zip(reply.decisions) {
                decisions[i] = Some(d);
            }
        }
        let decisions = decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Protocol("a charge went unanswered".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Charged {
            recorded,
            decisions,
        })
    }

    /// The local over-limit cache's answer, if it has one; [`Store::check`] itself always asks
    /// Redis (and a consuming check feeds the cache), so a caller that wants the shortcut asks
    /// here first.
    fn local_answer(&self, checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        self.cache.as_ref()?.deny(checks, self.now())
    }

    /// Starts this serving thread's own connection and batcher (to a single server, directly
    /// or through Sentinel, or one to each master of a cluster; see [`crate::thread_conn`]).
    fn attach_thread(&self) {
        self.thread_conns.attach(&self.runner);
    }

    /// Whether this thread's own connection that `checks` would take is up: on a single
    /// server (directly or through Sentinel) the one connection, whatever the checks; on a
    /// cluster, the one to the master of their slot, for checks of one slot (checks spanning
    /// slots take the shared path). The check that follows decides again in
    /// `ThreadConns::here` with nothing awaited between, so both say the same on a single
    /// server; on Sentinel or a cluster the store's view may change between the two (another
    /// thread follows a switch; the slot map's refresh), which is harmless either way: neither
    /// path spawns anything (see `ThreadConns::here`).
    fn served_on_this_thread(&self, checks: &[Check<'_>]) -> bool {
        if !self.is_cluster() {
            return self.thread_conns.ready_here(0);
        }
        crate::multi_slot::one_slot(checks).is_some_and(|lane| self.thread_conns.ready_here(lane))
    }

    /// One domain on a single server; on a cluster, the masters serving the checks' slots.
    fn domains(&self, checks: &[Check<'_>]) -> Domains {
        match &self.topology {
            None => Domains::WHOLE,
            Some(t) => checks.iter().fold(Domains::default(), |set, c| {
                set.with(t.domain_of_slot(keys::state_slot(c.key)))
            }),
        }
    }

    fn domain_generation(&self) -> u64 {
        self.topology.as_ref().map_or(0, |t| t.generation())
    }

    fn domain_name(&self, index: usize) -> Option<String> {
        self.topology.as_ref()?.name(index)
    }

    /// Pings on the shared connection. After an outage that connection has kept its last
    /// failed attempt and only tries again when a call meets it, so a ping that fails as
    /// unavailable is sent once more within what is left of the timeout: readiness is not
    /// stale for one probe after every outage. Only the outcome is counted in
    /// `spillway_store_errors_total`, not a first attempt the second one made good.
    async fn ping(&self) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let first = self.ping_within(self.runner.timeout).await;
        let left = self.runner.timeout.saturating_sub(started.elapsed());
        let last = match first {
            Err(StoreError::Unavailable(_)) if !left.is_zero() => self.ping_within(left).await,
            other => other,
        };
        // Counted once, as it ended: a first attempt that met the stale connection is not
        // an error when the second one answers.
        last.map_err(record)
    }

    fn key_count(&self) -> u64 {
        // Counting keys would need a scan of the whole keyspace; Redis reports it itself.
        0
    }

    fn evictions(&self) -> u64 {
        0
    }

    fn sweep(&self) -> u64 {
        // Every key carries a PX expiry; Redis drops them itself. The local cache is swept
        // here because the server calls this once a second.
        self.cache.as_ref().map_or(0, |c| c.sweep(self.now()))
    }
}
