//! Thread connections: a serving thread's own Redis connection and batcher, so that its
//! requests' calls are sent, read and answered without leaving the thread. (Not to be
//! confused with a *lane* of [`crate::batch`], which is what one call may cover: the whole
//! server, or one cluster slot.)
//!
//! The server serves requests on threads that each run a single-threaded runtime. Through
//! the store's shared [`Batcher`], a request would hand its call to a dispatcher on the main
//! runtime, whose connection's task writes and reads the socket, and the answer would wake the
//! serving thread from there: two or more wake-ups across threads per call (system calls,
//! context switches, cold caches). A thread that calls [`ThreadConns::attach`] (the server's
//! serving threads do, once, through [`spillway_core::store::Store::attach_thread`]) gets a
//! connection of its own instead, and a dispatcher, made on its runtime in the background.
//! Once that connection is up, the thread's requests go through it; until then they use the
//! shared path, as does every other thread (the main runtime, reports).
//!
//! A thread's batcher coalesces as the shared one does (see [`crate::batch`]), over the
//! requests of its own thread only, with the bounds of [`crate::batch`] for its own queue.
//!
//! Thread connections are made for a single server, directly or through Sentinel, and on a
//! cluster one to each master the store's view of the slots names ([`cluster`]): a check of
//! one slot goes to its master's, a check spanning slots and every report take the shared
//! path. The connection itself is our own ([`crate::own_conn`]), not the client's multiplexed
//! one, except for a single server's URL asking for RESP3 (a cluster whose seed URL asks for
//! RESP3 or TLS gets no thread connections).
//!
//! # After a failure: stepping aside
//! Once a check on this store fails as unavailable (on a thread's connection or the shared
//! path; a batcher refusing a request for a full queue does not count, see
//! [`BatchError::QueueFull`]), every thread connection of the store is marked down (this
//! thread's at once, the others when their task next runs) and its thread's requests take
//! the shared path until it is up again:
//! - on a single server, its task pings its connection, waiting longer between attempts (up
//!   to [`retry::RETRY_MAX`]), until it answers; a ping that finds the connection closed
//!   makes it again. (Nothing reconnects in the background: a connection left alone through
//!   an outage would fail its first call after Redis returns, and the breaker's one
//!   half-open probe could land on each stale one in turn.)
//! - on a cluster, only the connections to the master of the failed check's slot step aside
//!   (on every thread), each as on a single server, so a master that is gone keeps its slots'
//!   checks on the shared path until the store's view names its successor, when every
//!   connection of the thread is made again (see [`cluster`]), while the other masters' keep
//!   their checks. A master that refuses a check for a slot it does not serve (`MOVED`, `ASK`,
//!   `TRYAGAIN`: nothing ran) is no failure: the store resends the check on the shared path,
//!   which follows the redirect (counted in [`THREAD_CONN_RESENT`]).
//! - through Sentinel, its task drops the connection (calls already sent finish on it) and
//!   makes a new one to the master the store's own connection names by then, checked to act
//!   as master (`ROLE`), waiting between attempts as on a single server (a switch the store
//!   follows meanwhile ends the wait: the new master is tried at once); the store's
//!   connection is asked to look for a new master at once. The thread's connection is never
//!   made again to the same server by itself, and none is made while the store's own
//!   connection is lost (see [`crate::sentinel`]). A demoted master's `READONLY` is
//!   such a failure, and the `ROLE` check keeps the thread off it. The same happens as soon
//!   as the store follows a master switch, and no request is queued to a thread's connection
//!   after one: it is used only while the store's count of switches is what it was when the
//!   connection was made (requests queued just before finish on it). A switch seen while the
//!   connection was being made does not send it aside if it went to that switch's master
//!   already. A check its connection did not write because it was lost for good (the master
//!   closed it while idle, seen before writing: [`BatchError::NotSent`]) is not failed for
//!   that: the store sends it on the shared path by its deadline, where it waits for the
//!   sentinels' answer (the close counts the shared connection lost too; counted in
//!   [`THREAD_CONN_RESENT`]),
//!   and every thread connection steps aside as for a failure (a server's `timeout` closes
//!   them all alike). This lifecycle is [`sentinel`]'s; the waits
//!   between attempts, on either, are [`retry`]'s.
//!
//! The shared connection, on the other hand, comes back on its next use (a ping retries once
//! for that; see [`crate::store`]); through Sentinel, once the sentinels have named the master
//! again, calls waiting for that within their timeout (see [`crate::sentinel`]).
//!
//! # Lifetime
//! A thread connection's task (its connection being made, then its watch on the store's
//! failures) lives on its thread's runtime and ends with it, after the thread's server has
//! drained its connections. Its dispatcher runs as a second task beside it (so that the
//! dispatcher's wake-ups do not poll the watches too) and is aborted when the first ends.
//! It also ends as soon as its store is dropped: the store holds the sending half of a watch
//! channel every task listens to. Either way the task's end takes the connection off its
//! thread's list (one guard, `Listed`), dropping its batcher and with it the connection. So
//! no connection outlives its store. The exception is a connection that steps aside for good
//! while its store lives (a Sentinel master switch, a cluster master changing hands): its
//! dispatcher is left to answer what it holds, each call within the store's timeout, and
//! ends then, closing the connection.

use crate::batch::{BatchError, Batcher};
use crate::login::Refusal;
use crate::own_conn::{self, OwnConn};
use crate::runner::{Conn, Runner};
use crate::sentinel::SentinelConn;
use crate::topology::Topology;
use spillway_core::store::StoreError;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;

mod cluster;
mod retry;
mod sentinel;

/// Gauge of the thread connections that are up and usable, over every store of the process
/// (one marked down after a failure is off it until it is usable again). The metric's name
/// keeps the word operators know it by, "lanes".
pub const THREAD_CONNS: &str = "spillway_redis_thread_lanes";
/// Counter of failed attempts to make a thread connection, or to get an answer from one after
/// a failure.
pub const THREAD_CONN_FAILURES: &str = "spillway_redis_thread_lane_failures_total";
/// Counter of requests a serving thread's own connection did not send, lost for good before
/// their call went out (a Sentinel master's idle close) or not made again (a cluster master's,
/// where it was reported), or that a cluster master refused for a slot it does not serve, and
/// sent on the shared path instead.
pub const THREAD_CONN_RESENT: &str = "spillway_redis_thread_lane_resent_total";

/// Ids of stores, so a thread tells its thread connections of different stores apart.
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's own connections, one per store it attached to (almost always one), and on
    /// a cluster one per master of the store's view beside the store's mark of attachment.
    static OWN: RefCell<Vec<Own>> = const { RefCell::new(Vec::new()) };
}

/// On a single server or a Sentinel master, the `node` of a thread's one connection.
const SINGLE: usize = 0;
/// The `node` of a cluster store's entry that only marks the thread as attached (its
/// connections to the masters are entries of their own).
const ATTACHED: usize = usize::MAX;

/// One store's thread connection on this thread.
struct Own {
    store: u64,
    /// On a cluster, the master it goes to, by its index in the store's
    /// [`crate::topology::Topology`] (its failure domain); [`SINGLE`] elsewhere.
    node: usize,
    /// The runtime its task runs on: a thread connection of a runtime that has ended is dropped.
    runtime: tokio::runtime::Id,
    /// `None` while its connection is being made.
    batcher: Option<Arc<Batcher>>,
    /// Whether requests may take it: its connection is made and has not failed since it
    /// last answered.
    up: bool,
    /// On a Sentinel store, how many master switches the store had followed when this
    /// connection was made: it is used only while that is still the count, so it never writes
    /// to a master the store has left (0 on a single server). On a cluster, the generation of
    /// the store's view of the masters it was made for: a master's index that changed hands
    /// sends every connection of the thread aside, to be made again.
    generation: u64,
    /// The store's failure count (on a cluster, its master's own); closed (its sender dropped)
    /// once the store is gone.
    failures: watch::Receiver<u64>,
}

impl Own {
    /// The thread's entry for store `store`'s connection to `node`, not made yet.
    fn new(
        store: u64,
        node: usize,
        runtime: tokio::runtime::Id,
        generation: u64,
        failures: watch::Receiver<u64>,
    ) -> Self {
        Self {
            store,
            node,
            runtime,
            batcher: None,
            up: false,
            generation,
            failures,
        }
    }
}

/// How a thread connection connects.
enum Connect {
    /// To a single server, always the same.
    Server(Box<ServerConnect>),
    /// To whichever master the store's own connection follows now (it asks the sentinels).
    Sentinel(SentinelConn),
    /// To each master of a cluster, as the store's view of its slots names them.
    Cluster(Box<ClusterConnect>),
}

/// How a thread connects to the masters of a cluster.
struct ClusterConnect {
    /// The store's view: which master serves each slot, and where each master is.
    topology: Arc<Topology>,
    /// The first seed as our own connection reaches it (its login and settings, and how many
    /// calls may wait: see [`ThreadConns::cluster`]); each master's address goes in its place.
    seed: own_conn::Target,
    /// As [`ServerConnect`]'s.
    owner: String,
    login_hint: String,
    ping_limit: Duration,
}

/// How a thread connection connects to a single server.
struct ServerConnect {
    url: String,
    /// Where our own connection ([`crate::own_conn`]) goes; `None` where it does not speak
    /// what the URL asks (RESP3), and the client's connection is made from `url` instead.
    own: Option<own_conn::Target>,
    /// Whose Redis it is and the setting to check, should the server refuse the login (as the
    /// store's own connection words it; see [`crate::login::Refusal`]).
    owner: String,
    login_hint: String,
    settings: redis::aio::ConnectionManagerConfig,
    /// Bound on one ping of a thread connection after a failure.
    ping_limit: Duration,
}

/// A store's side of its thread connections; see the module docs.
pub(crate) struct ThreadConns {
    id: u64,
    /// `None`: this store makes no thread connections (a cluster reached over TLS or RESP3).
    connect: Option<Arc<Connect>>,
    /// Counts the store's checks that failed as unavailable, which sends every thread connection
    /// aside (on a cluster, only the failed master's: `per_node`); dropped with the store,
    /// which ends every thread connection.
    failures: watch::Sender<u64>,
    /// On a cluster, the count of failed checks per master (by its index in the store's view):
    /// a master's failure sends only the thread connections to it aside. Empty elsewhere.
    per_node: Box<[watch::Sender<u64>]>,
}

impl ThreadConns {
    /// Thread connections for a single server at `url`, each connecting with `settings`;
    /// `ping_limit` bounds a thread connection's ping after a failure.
    pub(crate) fn server(
        url: &str,
        config: &crate::config::RedisConfig,
        settings: redis::aio::ConnectionManagerConfig,
        ping_limit: Duration,
    ) -> Self {
        Self::make(Some(Arc::new(Connect::Server(Box::new(ServerConnect {
            url: url.to_owned(),
            own: own_conn::Target::of_url(url, ping_limit),
            owner: config.owner.clone(),
            login_hint: config.login_hint.clone(),
            settings,
            ping_limit,
        })))))
    }

    /// Thread connections to the master that `master`, the store's own connection, follows through
    /// Sentinel.
    pub(crate) fn sentinel(master: &SentinelConn) -> Self {
        Self::make(Some(Arc::new(Connect::Sentinel(master.clone()))))
    }

    /// Thread connections to each master of the cluster whose slots `topology` maps, logging
    /// in as the seed `url` says; none where our own connection does not speak what the URL
    /// asks (TLS, RESP3), or it does not parse.
    pub(crate) fn cluster(
        url: &str,
        config: &crate::config::RedisConfig,
        topology: Arc<Topology>,
        ping_limit: Duration,
    ) -> Self {
        let Some(seed) = own_conn::Target::of_url(url, ping_limit) else {
            return Self::none();
        };
        // A master's connection's batcher keeps up to `IN_FLIGHT` calls out per busy slot, not
        // per connection, so the connection holds as many calls waiting for a reply as that
        // allows over `QUEUE` slots' worth (each a few hundred bytes at most) before it counts
        // its master as not answering; a master that stops answering opens its breaker long
        // before.
        let most = crate::batch::IN_FLIGHT * crate::batch::QUEUE;
        let seed = seed.waiting_up_to(most as u64);
        let per_node = (0..spillway_core::store::MAX_DOMAINS)
            .map(|_| watch::channel(0).0)
            .collect();
        Self {
            per_node,
            ..Self::make(Some(Arc::new(Connect::Cluster(Box::new(ClusterConnect {
                topology,
                seed,
                owner: config.owner.clone(),
                login_hint: config.login_hint.clone(),
                ping_limit,
            })))))
        }
    }

    /// No thread connections: every call takes the shared path.
    pub(crate) fn none() -> Self {
        Self::make(None)
    }

    fn make(connect: Option<Arc<Connect>>) -> Self {
        Self {
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            connect,
            failures: watch::channel(0).0,
            per_node: Box::default(),
        }
    }

    /// Starts this thread's own connection, calling like `template` (its timeout, Functions or
    /// scripts, injected time) over a connection of its own, on the current runtime; nothing
    /// outside a single-threaded runtime (a task on a multi-threaded one may run on any of its
    /// workers, so it could not keep to this thread), for a store without thread connections, or if
    /// the thread has one already on this runtime.
    pub(crate) fn attach(&self, template: &Runner) {
        let Some(connect) = self.connect.clone() else {
            return;
        };
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return;
        }
        let runtime = handle.id();
        let fresh = OWN.with_borrow_mut(|list| {
            // Normally a thread connection leaves the list when its task ends (see `Listed`); one
            // whose runtime was dropped on another thread could not, and goes here.
            list.retain(|own| own.failures.has_changed().is_ok() && own.runtime == runtime);
            if list.iter().any(|own| own.store == self.id) {
                return false;
            }
            let node = match *connect {
                Connect::Cluster(_) => ATTACHED,
                _ => SINGLE,
            };
            list.push(Own::new(
                self.id,
                node,
                runtime,
                0,
                self.failures.subscribe(),
            ));
            true
        });
        if !fresh {
            return;
        }
        let listed = Listed {
            store: self.id,
            node: None,
            thread: std::thread::current().id(),
        };
        let (id, template) = (self.id, template.clone());
        let (failures, mut gone) = (self.failures.subscribe(), self.failures.subscribe());
        let per_node = self.per_node.iter().map(watch::Sender::subscribe).collect();
        tokio::spawn(async move {
            // Takes the thread connection off the list however the task ends.
            let _listed = listed;
            // Ends only once the store is gone (a changed count is not an end).
            let store_gone = async move { while gone.changed().await.is_ok() {} };
            tokio::select! {
                () = run(id, &connect, template, failures, per_node) => {}
                () = store_gone => {}
            }
        });
    }

    /// This thread's own connection for a check of `lane`, if it is up (and, on a Sentinel
    /// store, made for the master the store uses now; on a cluster, to the master serving
    /// the slot `lane` as the store's view has it now).
    ///
    /// [`ThreadConns::ready_here`] answers the same question for the failure guard just before the
    /// store's check asks this one, with nothing awaited between the two. On a single server
    /// the two answers agree; on a Sentinel store another thread may follow a master switch in
    /// between, and the check then takes the shared path while the guard polls it on the
    /// serving thread (harmless: the shared batcher's dispatcher runs on the main runtime). So
    /// may a cluster's slot map, refreshed on the main runtime, in either direction (neither
    /// path spawns anything). The same holds for a check its thread connection did not send
    /// ([`BatchError::NotSent`]), which goes on to the shared batcher.
    pub(crate) fn here(&self, route: Route) -> Option<Arc<Batcher>> {
        self.usable_here(route, |batcher| batcher.clone())
    }

    /// Whether this thread has the store's thread connection for a check of `lane` up: what
    /// [`ThreadConns::here`] will say when the check that follows, with no await between,
    /// asks it.
    pub(crate) fn ready_here(&self, lane: u16) -> bool {
        self.usable_here(self.route(lane), |_| ()).is_some()
    }

    /// `read` of this thread's own batcher for a check bound as `route` says, if its
    /// connection is up and made for `route`'s generation: the one test [`Self::here`] and
    /// [`Self::ready_here`] share, which clones nothing unless `read` does.
    fn usable_here<R>(&self, route: Route, read: impl FnOnce(&Arc<Batcher>) -> R) -> Option<R> {
        // A store without thread connections has no entry to look for.
        self.connect.as_ref()?;
        let Route { node, generation } = route;
        OWN.try_with(|list| {
            let list = list.borrow();
            let own = list.iter().find(|own| {
                own.store == self.id && own.node == node && own.up && own.generation == generation
            })?;
            own.batcher.as_ref().map(read)
        })
        .ok()
        .flatten()
    }

    /// Where a check of `lane` is bound as it starts ([`Route`]): which of this thread's
    /// connections may take it ([`Self::here`]), and whom a failure is told to
    /// ([`Self::failed`]). On Sentinel, the connection made for the master the store uses now;
    /// on a cluster, the one to the master of `lane`'s slot in the store's current view.
    pub(crate) fn route(&self, lane: u16) -> Route {
        match self.connect.as_deref() {
            Some(Connect::Cluster(cluster)) => {
                // The generation first: a view that changes after it was read sends the
                // check to a master that may no longer serve the slot, which refuses it
                // before running anything (the store then resends it).
                let generation = cluster.topology.generation();
                Route {
                    node: cluster.topology.domain_of_slot(lane),
                    generation,
                }
            }
            Some(Connect::Sentinel(master)) => Route {
                node: SINGLE,
                generation: master.generation(),
            },
            Some(Connect::Server(_)) | None => Route {
                node: SINGLE,
                generation: 0,
            },
        }
    }

    /// Tells the thread connections that a check bound as `route` says failed with `err`: if
    /// Redis was unavailable (which includes a demoted master's `READONLY`), this thread's own
    /// connection is marked down at once and every thread connection is sent aside (see the
    /// module docs); on a cluster, only the connections to the master the check was bound for,
    /// and none if the store's view of the masters has changed since (those connections are
    /// being made again anyway, and the index may have gone to another master). On a Sentinel
    /// store an unavailable Redis also asks the store's own connection to look for a new master
    /// (a timeout sends no thread connection aside; the call's own timer asks for that look,
    /// in `Runner::invoke`, whoever waits for it). A batcher refusing a
    /// request because its queue was full says nothing about the connection and sends no thread
    /// connection aside: under overload, thread connections stepping aside would pile every
    /// thread's requests onto the one shared queue, which would then refuse more.
    pub(crate) fn failed(&self, err: &BatchError, route: Route) {
        let Some(connect) = self.connect.as_deref() else {
            return;
        };
        if !matches!(err, BatchError::Store(StoreError::Unavailable(_))) {
            return;
        }
        if let Connect::Sentinel(master) = connect {
            // The store's connection asks the sentinels, as it does after its own failed
            // calls (every call of an attached thread is on the thread's connection, so the
            // store's own would never see it).
            master.nudge();
        }
        if let Connect::Cluster(cluster) = connect {
            if cluster.topology.generation() != route.generation {
                return;
            }
            set_up(self.id, route.node, false);
            if let Some(told) = self.per_node.get(route.node) {
                told.send_modify(|n| *n = n.wrapping_add(1));
            }
            return;
        }
        set_up(self.id, route.node, false);
        self.failures.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Where a check was bound when it started: on a cluster, the master of its slot (by its index
/// in the store's view) and the view's generation; on Sentinel, [`SINGLE`] and the count of
/// master switches; on a single server, [`SINGLE`] and 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    node: usize,
    generation: u64,
}

/// A thread connection's place on its thread's list, taken off when its task ends or is dropped
/// (its store gone, or its runtime shut down): the one clean-up of a thread connection. Dropping
/// the thread connection drops its batcher, whose dispatcher then ends once its last caller is
/// answered, and the connection with it.
struct Listed {
    store: u64,
    /// The one connection of a cluster's it lists (`None`: every one of the store's).
    node: Option<usize>,
    /// The thread whose list holds the thread connection: a runtime dropped on another thread drops
    /// the task there, whose own list is not this thread connection's.
    thread: ThreadId,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if std::thread::current().id() != self.thread {
            return;
        }
        let _ = OWN.try_with(|list| {
            if let Ok(mut list) = list.try_borrow_mut() {
                list.retain(|own| {
                    own.store != self.store || self.node.is_some_and(|node| own.node != node)
                });
            }
        });
    }
}

/// Runs `change` on this thread's own connection of store `id` to `node`; whether it is still
/// listed.
fn with_own(id: u64, node: usize, change: impl FnOnce(&mut Own)) -> bool {
    OWN.try_with(|list| {
        let mut list = list.borrow_mut();
        list.iter_mut()
            .find(|own| own.store == id && own.node == node)
            .map(change)
    })
    .ok()
    .flatten()
    .is_some()
}

/// Marks this thread's own connection of store `id` to `node` up or down; whether it has one.
fn set_up(id: u64, node: usize, up: bool) -> bool {
    with_own(id, node, |own| own.up = up && own.batcher.is_some())
}

/// Hands this thread's own connection of store `id` to `node` its batcher (made for the
/// generation `generation`: master switches on Sentinel, the view of the masters on a
/// cluster) and marks it up, or (`None`) takes its batcher away and marks it down; whether
/// the thread connection is still listed.
fn place(id: u64, node: usize, batcher: Option<Batcher>, generation: u64) -> bool {
    with_own(id, node, |own| {
        own.up = batcher.is_some();
        own.batcher = batcher.map(Arc::new);
        own.generation = generation;
    })
}

/// A thread connection's life on its thread; see [`run_server`],
/// [`sentinel::run_sentinel`] and [`cluster::run_cluster`] (which alone takes `per_node`, the
/// failures of each master).
async fn run(
    id: u64,
    connect: &Connect,
    template: Runner,
    failures: watch::Receiver<u64>,
    per_node: Vec<watch::Receiver<u64>>,
) {
    match connect {
        Connect::Server(server) => run_server(id, server, template, failures).await,
        Connect::Sentinel(master) => {
            sentinel::run_sentinel(id, master, template, failures).await;
        }
        Connect::Cluster(cluster) => cluster::run_cluster(id, cluster, template, per_node).await,
    }
}

/// A single server's thread connection: makes its connection, hands its batcher to the thread's
/// list, and runs its dispatcher beside it until the task is dropped (the store gone, or the
/// runtime ended). Beside it, after each failure the store reports, it takes the thread connection
/// down until its connection answers a ping (the server's address never changes, and the client
/// reconnects to it).
async fn run_server(
    id: u64,
    connect: &ServerConnect,
    template: Runner,
    failures: watch::Receiver<u64>,
) {
    let open = || {
        let refusal = Refusal::of(&connect.owner, &connect.login_hint);
        async move {
            match &connect.own {
                Some(target) => {
                    let address = crate::login::address(&connect.url);
                    open_own(target.clone(), refusal, "Redis server", &address).await
                }
                None => refusal
                    .connect_server(&connect.url, connect.settings.clone())
                    .await
                    .map(Conn::Server),
            }
        }
    };
    let conn = retry::connected(open, None).await;
    let pinged = Pinged {
        id,
        node: SINGLE,
        generation: 0,
        ping_limit: connect.ping_limit,
    };
    pinged
        .serve(conn, template, failures, std::future::pending())
        .await;
}

/// Our own connection to `target`, a refused login told as `refusal` says, naming the `role`
/// at `address`.
async fn open_own(
    target: own_conn::Target,
    refusal: Refusal<'_>,
    role: &str,
    address: &str,
) -> redis::RedisResult<Conn> {
    OwnConn::connect(target)
        .await
        .map(Conn::Own)
        .map_err(|err| refusal.explain(err, role, address))
}

/// A thread connection to one server (a single server, or one master of a cluster for as long
/// as the view that named it lasts, wherever that master is reported): which one it is on the
/// thread's list, and how long a ping may take.
struct Pinged {
    id: u64,
    node: usize,
    generation: u64,
    ping_limit: Duration,
}

impl Pinged {
    /// Once `conn` is made: hands its batcher (for `generation`) to the thread's list as the
    /// connection to `node`, and runs its dispatcher beside it until the task is dropped (its
    /// store gone, its runtime ended) or `retired` (the view that named a cluster master
    /// changed). After each failure the store reports, it takes the connection down until it
    /// answers a ping (the client, or our own connection, reconnects: to the same address, or
    /// for a cluster master, to where it was last reported).
    /// Retired, it takes its batcher off the list and leaves the calls already queued or sent
    /// to finish on it, as a Sentinel thread connection does after a switch.
    async fn serve(
        &self,
        conn: Conn,
        template: Runner,
        mut failures: watch::Receiver<u64>,
        retired: impl std::future::Future<Output = ()>,
    ) {
        let Self {
            id,
            node,
            generation,
            ping_limit,
        } = *self;
        let probe = conn.clone();
        let (batcher, dispatcher) = Batcher::new(template.with_conn(conn));
        if !place(id, node, Some(batcher), generation) {
            return;
        }
        failures.borrow_and_update();
        // The dispatcher is a task of its own, so that its wake-ups (a request queued, a reply
        // read) do not also poll the watch below; it ends with this task.
        let dispatcher = AbortOnDrop::new(tokio::spawn(dispatcher));
        let mut counted = Some(Up::new());
        let watched = async {
            // `changed` fails once the store is gone, which ends the thread connection anyway.
            while failures.changed().await.is_ok() {
                set_up(id, node, false);
                counted = None;
                retry::answers(&probe, ping_limit).await;
                if !set_up(id, node, true) {
                    return;
                }
                counted.get_or_insert_with(Up::new);
            }
        };
        let retiring = tokio::select! {
            () = watched => false,
            () = retired => true,
        };
        drop(counted);
        if retiring && place(id, node, None, generation) {
            // No new request reaches the batcher; its dispatcher runs on and ends once those
            // it holds are answered (each within the store's timeout).
            dispatcher.detach();
        }
    }
}

/// A task aborted when this handle is dropped: a thread connection's dispatcher, which must
/// end with the thread connection's own task (its store gone, or its runtime shut down).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(Some(task))
    }

    /// Waits for the task to end by itself.
    async fn finished(mut self) {
        if let Some(task) = self.0.take() {
            let _ = task.await;
        }
    }

    /// Lets the task run on to its own end.
    fn detach(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// A thread connection counted in [`THREAD_CONNS`] while it is up, however its task ends (its store
/// dropped, or its runtime shut down).
struct Up;

impl Up {
    fn new() -> Self {
        metrics::gauge!(THREAD_CONNS).increment(1.0);
        Self
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        metrics::gauge!(THREAD_CONNS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisConfig, Target};

    /// Only an unreachable Redis sends the thread connections aside; a batcher refusing a request
    /// because its queue was full says nothing about the connection. (No server needed: making the
    /// store's side of its thread connections connects nothing.)
    #[test]
    fn only_an_unreachable_redis_sends_the_thread_conns_aside() {
        let url = "redis://127.0.0.1:1";
        let config = RedisConfig::new(Target::Server(url.into()), "the test's URL");
        let list = ThreadConns::server(
            url,
            &config,
            redis::aio::ConnectionManagerConfig::new(),
            Duration::from_secs(1),
        );
        let sent_aside = || *list.failures.borrow();
        // Told by its kind, not its words: a full queue of a stalled lane is an unavailable
        // store to callers, and still sends no thread connection aside.
        list.failed(
            &BatchError::QueueFull(StoreError::Unavailable("any full queue".into())),
            list.route(0),
        );
        list.failed(
            &StoreError::Timeout(Duration::from_millis(100)).into(),
            list.route(0),
        );
        list.failed(
            &StoreError::Protocol("a script error".into()).into(),
            list.route(0),
        );
        assert_eq!(sent_aside(), 0, "nothing said the connection failed");
        list.failed(
            &StoreError::Unavailable("Connection refused (os error 111)".into()).into(),
            list.route(0),
        );
        assert_eq!(
            sent_aside(),
            1,
            "a refused connection sends every own aside"
        );
    }

    /// On a cluster a failure goes to the connections of the master the check was bound for,
    /// none else, and nowhere once the view of the masters changed after the check started.
    /// (No server needed: the store's side connects nothing.)
    #[test]
    fn a_cluster_failure_is_told_to_its_masters_conns_only_and_not_after_a_change() {
        let range = |start, end, id: &str, at: &str| (start, end, id.to_owned(), at.to_owned());
        let topology = Arc::new(Topology::new());
        topology.apply(&[
            range(0, 8191, "a", "127.0.0.1:1"),
            range(8192, 16383, "b", "127.0.0.1:2"),
        ]);
        let url = "redis://127.0.0.1:1";
        let config = RedisConfig::new(Target::Cluster(vec![url.into()]), "the test's URL");
        let conns = ThreadConns::cluster(url, &config, topology.clone(), Duration::from_secs(1));
        let told = |node: usize| *conns.per_node[node].borrow();
        let (a, b) = (topology.domain_of_slot(0), topology.domain_of_slot(9000));
        let refused = || BatchError::from(StoreError::Unavailable("refused".into()));

        conns.failed(&refused(), conns.route(0));
        conns.failed(
            &StoreError::Timeout(Duration::from_millis(100)).into(),
            conns.route(9000),
        );
        assert_eq!(
            (told(a), told(b)),
            (1, 0),
            "only a's connections step aside"
        );
        assert_eq!(*conns.failures.borrow(), 0, "not every connection");

        // Bound before b fails over to c (which takes b's index), failed after: the new
        // master's fresh connections stay.
        let before = conns.route(9000);
        topology.apply(&[
            range(0, 8191, "a", "127.0.0.1:1"),
            range(8192, 16383, "c", "127.0.0.1:3"),
        ]);
        assert_eq!(topology.domain_of_slot(9000), b, "the index is reused");
        conns.failed(&refused(), before);
        assert_eq!(told(b), 0);
        conns.failed(&refused(), conns.route(9000));
        assert_eq!(told(b), 1, "a check bound for c tells c's");
    }
}
