//! A Redis master found through Sentinel by name, and followed across failovers.
//!
//! [`SentinelConn`] asks the sentinels, all at once, for the address of the master they know
//! by name (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and the configuration epoch of that answer
//! (`SENTINEL MASTER`), takes the newest answer once a majority answered (see [`ask_all`]),
//! connects there and checks that the server really acts as master (`ROLE`): a sentinel
//! that has not yet heard of a failover can name a server that was demoted, or one restarted
//! empty at the old address. Store calls go to that master over one multiplexed connection, except
//! those of serving threads with a connection of their own to it ([`crate::thread_conn`]),
//! each made for the master this one names ([`SentinelConn::open_current`]) and dropped
//! once this one switches ([`SentinelConn::generation`]).
//!
//! A background task keeps the address true. It asks again
//! - at once when a sentinel announces a failover (`+switch-master`, subscribed to on one
//!   sentinel at a time);
//! - when a call fails in a way a failover explains: the connection refused or dropped, no
//!   answer in time, or the server saying it is a replica now (`READONLY`) or has lost its
//!   master (`MASTERDOWN`); at most every [`NUDGE_GAP`];
//! - and every [`POLL`] regardless, in case an announcement was missed (pinging the master's
//!   connection first, so that one closed while idle is made again before a call meets it).
//!
//! When the answer names another server that acts as master, the task connects to it and
//! swaps the connection: calls already sent finish (or fail) on the old one, later calls go
//! to the new one. Each switch increments `spillway_redis_master_changes_total` and logs the
//! old and the new address. Until the switch, calls fail as they would against any dead
//! server, and the server's failure handling (time budget, breaker, failure mode) decides
//! what those requests get.
//!
//! # A lost connection is made again only where the sentinels point
//! The connection to the master never reconnects by itself. Once a call finds it lost (the
//! socket closed or reset, or a reply that cannot be read), the task asks the sentinels at once:
//! if they still name the same address and the server there acts as master, the connection is
//! made again there (a new [`SentinelConn::generation`], logged, not counted as a switch); if
//! they name another, that is a switch. Meanwhile calls wait for that, each for at most the
//! store's timeout, and no thread connection is made ([`SentinelConn::open_current`] refuses).
//! If no sentinel answers, nothing is connected and the calls fail. A client that simply
//! reconnected to the last address could meet a master restarted there with no data (or with
//! an old snapshot), or another server given the address, after the sentinels had promoted the
//! replica: counts would start again from nothing, and the limits admit too much until the next
//! lookup.
//!
//! Thread connections keep the same rule: theirs are made once ([`Target::made_once`]) and,
//! once lost, count the connection of the same generation here lost too (they share its flag;
//! one lost after a switch marks nothing current), so the next thread connection waits for the
//! sentinels' answer. A check such a connection did not write because it was lost (an idle
//! close found before writing) goes through this connection instead (see
//! [`crate::thread_conn`]).
//!
//! # Passwords
//! Sentinels and data nodes each may require a login ([`SentinelAuth`]): the sentinels' is
//! used for every question and for the subscription, the master's for the connection to
//! whichever server the sentinels name (it is reapplied on every reconnect and after every
//! switch). A refused login at start fails [`SentinelConn::connect`] with an error that says
//! which side refused (a sentinel or the master) and where, never the password; after start,
//! a new master that refuses the login is logged as a warning and the old address stays.

use crate::config::{mask_url, setup_limit, Credentials, SentinelAuth};
use crate::login::{self, Refusal};
use crate::own_conn::{OwnConn, Target};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, IntoConnectionInfo, RedisError, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Counter of master switches this node followed.
pub const MASTER_CHANGES: &str = "spillway_redis_master_changes_total";

/// How often the task asks the sentinels even when nothing happened.
pub const POLL: Duration = Duration::from_secs(1);

/// The least time between two lookups prompted by failed calls.
pub const NUDGE_GAP: Duration = Duration::from_millis(100);

/// The master's connection and where it goes.
#[derive(Clone)]
struct Current {
    addr: String,
    /// The configuration epoch of the answer that named `addr` (see [`Named`]).
    epoch: Option<u64>,
    conn: MultiplexedConnection,
    /// Set by the first call that finds `conn` lost; the task then makes a new connection
    /// (see "A lost connection is made again only where the sentinels point" in the module
    /// docs). One flag per connection, so a late failure on a replaced one marks nothing.
    lost: Arc<AtomicBool>,
}

impl Current {
    fn new(named: Named, conn: MultiplexedConnection) -> Self {
        Self {
            addr: named.addr,
            epoch: named.epoch,
            conn,
            lost: Arc::default(),
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

struct Inner {
    sentinels: Vec<redis::Client>,
    master: String,
    /// The login on the master (and on whichever server replaces it).
    master_login: Credentials,
    timeout: Duration,
    current: parking_lot::RwLock<Current>,
    /// How many switches this connection followed: a serving thread's own connection to the
    /// master (see [`crate::thread_conn`]) is used only while this is what it was when that
    /// connection was made. Written under `current`'s write lock.
    generation: AtomicU64,
    /// Told the generation after each switch, so those connections step aside at once.
    switched: watch::Sender<u64>,
    /// Woken by calls that failed in a way a failover explains.
    nudge: Notify,
    /// Whether switches are counted and logged as warnings (the store's connection), or only
    /// logged at debug level (a helper connection following the same master).
    reported: bool,
    /// Who uses the connection, as a refusal names it (empty for the store's own).
    owner: &'static str,
}

/// [`SentinelConn::nudger`]: asks the sentinels again soon, while the connection lives.
#[derive(Clone)]
pub(crate) struct Nudger(Weak<Inner>);

impl Nudger {
    /// [`SentinelConn::nudge`], if the connection is still there.
    pub(crate) fn nudge(&self) {
        if let Some(inner) = self.0.upgrade() {
            inner.nudge.notify_one();
        }
    }
}

/// The connection to the master the sentinels name; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
}

/// Whether `err` is what a client of a failed or demoted master sees.
fn failover_sign(err: &RedisError) -> bool {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
    {
        return true;
    }
    matches!(err.code(), Some("READONLY" | "MASTERDOWN"))
}

impl SentinelConn {
    /// Finds the master named `master` through `sentinels` (redis:// URLs) and connects to it;
    /// `timeout` bounds each call on the master. Fails if no sentinel answers, or the server
    /// their newest answer names does not act as master.
    pub async fn connect(
        sentinels: &[String],
        master: &str,
        auth: &SentinelAuth,
        timeout: Duration,
    ) -> RedisResult<Self> {
        Self::open(sentinels, master, auth, timeout, true, "").await
    }

    /// As [`SentinelConn::connect`], for a second connection of the same process (such as the
    /// shared top-k board) following the same master: its switches are logged at debug level
    /// and not counted, so the store's connection alone reports each failover. A refused
    /// login names `owner` (such as `top-k board`) as the connection's user.
    pub async fn connect_quiet(
        sentinels: &[String],
        master: &str,
        auth: &SentinelAuth,
        timeout: Duration,
        owner: &'static str,
    ) -> RedisResult<Self> {
        Self::open(sentinels, master, auth, timeout, false, owner).await
    }

    async fn open(
        sentinels: &[String],
        master: &str,
        auth: &SentinelAuth,
        timeout: Duration,
        reported: bool,
        owner: &'static str,
    ) -> RedisResult<Self> {
        let sentinels = sentinels
            .iter()
            .map(|url| {
                let info = url.as_str().into_connection_info().map_err(|err| {
                    RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "bad sentinel URL",
                        format!("{}: {err}", mask_url(url)),
                    ))
                })?;
                redis::Client::open(auth.sentinels.apply(info))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        let (named, conn) = locate(&sentinels, master, &auth.master, timeout, owner).await?;
        let inner = Arc::new(Inner {
            sentinels,
            master: master.to_owned(),
            master_login: auth.master.clone(),
            timeout,
            current: parking_lot::RwLock::new(Current::new(named, conn)),
            generation: AtomicU64::new(0),
            switched: watch::channel(0).0,
            nudge: Notify::new(),
            reported,
            owner,
        });
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The `host:port` of the master in use.
    pub fn master_addr(&self) -> String {
        self.inner.current.read().addr.clone()
    }

    /// How many master switches this connection has followed.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Changes with every switch this connection follows (see [`SentinelConn::generation`]).
    pub(crate) fn switches(&self) -> watch::Receiver<u64> {
        self.inner.switched.subscribe()
    }

    /// Asks the sentinels again soon (a call elsewhere failed in a way a failover explains).
    pub(crate) fn nudge(&self) {
        self.inner.nudge.notify_one();
    }

    /// A handle that can [`nudge`](Self::nudge) this connection without keeping it (or its
    /// task) alive: for what may outlive the store, such as a serving thread's runner.
    pub(crate) fn nudger(&self) -> Nudger {
        Nudger(Arc::downgrade(&self.inner))
    }

    /// A new connection of its own to the master this one uses now (a thread connection's
    /// own, see [`crate::own_conn`]), checked to act as master (`ROLE`), logging in as this
    /// one does, and the [`SentinelConn::generation`] it was made for. Refused while this
    /// one's connection is lost and the sentinels have not named the master again.
    pub(crate) async fn open_current(&self) -> RedisResult<(u64, OwnConn)> {
        let (generation, addr, lost) = {
            let current = self.inner.current.read();
            if current.is_lost() {
                return Err(awaiting_sentinels(&current.addr));
            }
            (
                self.inner.generation.load(Ordering::Acquire),
                current.addr.clone(),
                current.lost.clone(),
            )
        };
        let inner = &self.inner;
        let limit = setup_limit(inner.timeout);
        let opening = async {
            let info = inner
                .master_login
                .apply(format!("redis://{addr}").into_connection_info()?);
            let target = Target::of(&info, limit)
                .ok_or_else(|| {
                    RedisError::from((
                        redis::ErrorKind::Client,
                        "a thread connection does not speak the master's protocol",
                    ))
                })?
                .made_once(lost.clone());
            let mut conn = OwnConn::connect(target).await?;
            acts_as_master(&mut conn, &addr).await?;
            // Lost (or replaced) while this one was being made: where it went is unconfirmed.
            if lost.load(Ordering::Acquire) || self.generation() != generation {
                return Err(awaiting_sentinels(&addr));
            }
            Ok((generation, conn))
        };
        // Logging in is bounded by the connection; the `ROLE` question by this.
        let opened = match tokio::time::timeout(2 * limit, opening).await {
            Ok(opened) => opened,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the master did not answer in time",
            ))),
        };
        opened.map_err(|err| {
            Refusal::of(inner.owner, login::MASTER_LOGIN).explain(err, "master", &addr)
        })
    }
}

/// What one sentinel says of the master: its address, and the configuration epoch that
/// address came with. Every failover raises the epoch, so the highest one is the newest;
/// `None` when the sentinel would not tell it (an ACL allowing only
/// `GET-MASTER-ADDR-BY-NAME`), which ranks below every known epoch.
#[derive(Debug, Clone, PartialEq)]
struct Named {
    addr: String,
    epoch: Option<u64>,
}

/// Asks one sentinel where the master named `master` is.
async fn ask(
    sentinel: &redis::Client,
    master: &str,
    limit: Duration,
    owner: &str,
) -> RedisResult<Named> {
    let addr = login::shown(sentinel.get_connection_info().addr());
    ask_unexplained(sentinel, master, limit)
        .await
        .map_err(|err| Refusal::of(owner, login::SENTINELS_LOGIN).explain(err, "sentinel", &addr))
}

async fn ask_unexplained(
    sentinel: &redis::Client,
    master: &str,
    limit: Duration,
) -> RedisResult<Named> {
    let asking = async {
        let mut conn = sentinel.get_multiplexed_async_connection().await?;
        // One pipeline: a sentinel reads both commands at once and answers them from the same
        // configuration. Should a failover land between the two, the epoch, asked first, is
        // the older one, which only ranks the answer lower. The address comes from
        // GET-MASTER-ADDR-BY-NAME, which names the promoted replica as soon as the failover
        // leader has raised the epoch (when `SENTINEL MASTER` still gives the old address).
        let replies: Vec<Value> = redis::pipe()
            .ignore_errors()
            .cmd("SENTINEL")
            .arg("MASTER")
            .arg(master)
            .cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(&mut conn)
            .await?;
        let mut replies = replies.into_iter();
        let (Some(state), Some(addr)) = (replies.next(), replies.next()) else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the sentinel answered with too few replies",
            )));
        };
        let addr: Option<(String, u16)> = redis::from_redis_value(addr.extract_error()?)?;
        let Some((host, port)) = addr else {
            return Err(RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                UNKNOWN_MASTER,
                master.to_owned(),
            )));
        };
        let state: Option<std::collections::HashMap<String, String>> = state
            .extract_error()
            .ok()
            .and_then(|state| redis::from_redis_value(state).ok());
        Ok(Named {
            addr: login::authority(&host, port),
            epoch: state.and_then(|s| s.get("config-epoch").and_then(|e| e.parse().ok())),
        })
    };
    match tokio::time::timeout(limit, asking).await {
        Ok(answer) => answer,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the sentinel did not answer in time",
        ))),
    }
}

/// What a sentinel that does not monitor the master by that name answers, as an error's text
/// (its kind, the client's `MasterNameNotFoundBySentinel`, is what [`telling`] reads).
const UNKNOWN_MASTER: &str = "sentinel does not know the master";

/// How long a lookup that has an answer waits for more, up to a majority of the sentinels.
pub const GRACE: Duration = Duration::from_millis(250);

/// What the sentinels said in one lookup ([`ask_all`]).
#[derive(Debug, Clone, PartialEq)]
struct Lookup {
    /// The answer with the highest epoch, the first configured among equals.
    newest: Named,
    /// Whether a majority of the sentinels answered and all gave that same answer.
    agreed: bool,
}

/// Asks every sentinel at once where the master is, and takes the newest answer: the one with
/// the highest configuration epoch ([`newest`]). A sentinel that missed a failover (cut off
/// with a minority, or restarted from an old configuration) still names the old address under
/// an older epoch, and a server restarted empty there would pass `ROLE`: taking the first
/// answer could start every count again from nothing.
///
/// Waits until a majority of the sentinels answered, but once it has one answer, for at most
/// [`GRACE`] more (or until the others failed): a lookup must stay quick while most sentinels
/// are down. A lookup can still hear only sentinels that have not caught up (see
/// [`Inner::refresh`], which never follows one back to an older epoch). When none answers, the
/// error is the most telling of theirs ([`telling`]).
async fn ask_all(
    sentinels: &[redis::Client],
    master: &str,
    limit: Duration,
    owner: &str,
) -> RedisResult<Lookup> {
    gather(sentinels.len(), master, |at| {
        ask(&sentinels[at], master, limit, owner)
    })
    .await
}

/// [`ask_all`]'s waiting and choosing, over `count` sentinels whose answers `ask_one` gives
/// (by their place in the configuration), so that it can be tried without sentinels.
async fn gather<F, Fut>(count: usize, master: &str, ask_one: F) -> RedisResult<Lookup>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = RedisResult<Named>>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let majority = count / 2 + 1;
    let ask_one = &ask_one;
    let mut asking: FuturesUnordered<_> = (0..count)
        .map(|at| async move { (at, ask_one(at).await) })
        .collect();
    let mut answers: Vec<(usize, Named)> = Vec::with_capacity(count);
    let mut reported: Option<RedisError> = None;
    let mut until: Option<tokio::time::Instant> = None;
    while answers.len() < majority {
        let next = match until {
            None => asking.next().await,
            Some(until) => match tokio::time::timeout_at(until, asking.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((at, answer)) = next else { break };
        match answer {
            Ok(named) => {
                answers.push((at, named));
                until.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            Err(err) => {
                if reported
                    .as_ref()
                    .is_none_or(|held| telling(&err) > telling(held))
                {
                    reported = Some(err);
                }
            }
        }
    }
    let agreed = answers.len() >= majority && answers.windows(2).all(|w| w[0].1 == w[1].1);
    match newest(answers, master) {
        Some(newest) => Ok(Lookup { newest, agreed }),
        None => Err(reported.unwrap_or_else(|| {
            RedisError::from((redis::ErrorKind::Client, "no sentinels configured"))
        })),
    }
}

/// How much a sentinel's error says, to report the most telling when none answered: a refused
/// login (a setting to fix, not an outage to wait out), then a sentinel that does not know the
/// master (a name to fix), then the rest (among equals, the first to come).
fn telling(err: &RedisError) -> u8 {
    if login::refused(err) {
        2
    } else if err.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel {
        1
    } else {
        0
    }
}

/// The answer with the highest epoch, the first configured (lowest `at`) among equals; logs
/// at debug level when the answers disagree.
fn newest(mut answers: Vec<(usize, Named)>, master: &str) -> Option<Named> {
    answers.sort_by(|(a_at, a), (b_at, b)| b.epoch.cmp(&a.epoch).then(a_at.cmp(b_at)));
    let (_, best) = answers.first()?.clone();
    if answers.iter().any(|(_, named)| named.addr != best.addr) {
        tracing::debug!(
            master = %master,
            taken = %best.addr,
            epoch = ?best.epoch,
            answers = ?answers,
            "the sentinels disagree on the master; taking the newest configuration"
        );
    }
    Some(best)
}

/// Whether a lookup's answer may replace the master in use, at `addr` from a configuration of
/// `epoch` ([`may_follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// The same server, or a configuration at least as new.
    Yes,
    /// Another server under an older epoch, which a majority agreed on: followed only if the
    /// master in use is lost or no longer acts as master. A majority that has not yet heard of
    /// a failover (right after one) looks the same as a deployment rebuilt with its epochs
    /// started again, and the server in use tells them apart.
    UnlessCurrentServes,
    /// Another server under an older epoch, without a majority agreeing: sentinels that have
    /// not caught up.
    No,
}

fn may_follow(addr: &str, epoch: Option<u64>, lookup: &Lookup) -> Follow {
    if lookup.newest.addr == addr || lookup.newest.epoch >= epoch {
        Follow::Yes
    } else if lookup.agreed {
        Follow::UnlessCurrentServes
    } else {
        Follow::No
    }
}

/// What a call gets while the connection to the master at `addr` is lost and the sentinels
/// have not named the master again: a dropped connection, which the store counts as Redis
/// unavailable.
fn awaiting_sentinels(addr: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!(
            "the connection to the master at {addr} was lost; waiting for the sentinels to name \
             the master again"
        ),
    ))
}

/// Connects to `addr` with `login` and checks that it acts as master.
async fn open_master(
    addr: &str,
    login: &Credentials,
    timeout: Duration,
    owner: &str,
) -> RedisResult<MultiplexedConnection> {
    open_master_unexplained(addr, login, timeout)
        .await
        .map_err(|err| Refusal::of(owner, login::MASTER_LOGIN).explain(err, "master", addr))
}

async fn open_master_unexplained(
    addr: &str,
    login: &Credentials,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let info = format!("redis://{addr}").into_connection_info()?;
    let client = redis::Client::open(login.apply(info))?;
    // A plain multiplexed connection, not a `ConnectionManager`: it must not reconnect by
    // itself (see the module docs). Making it and the `ROLE` question get at least a second;
    // the calls after them, the store's timeout.
    let limit = setup_limit(timeout);
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    acts_as_master(&mut conn, addr).await?;
    conn.set_response_timeout(timeout);
    Ok(conn)
}

/// Whether the server at `addr` on `conn` acts as master (`ROLE`); an error if not.
async fn acts_as_master<C>(conn: &mut C, addr: &str) -> RedisResult<()>
where
    C: ConnectionLike + Send,
{
    let role: Vec<Value> = redis::cmd("ROLE").query_async(conn).await?;
    match role.first() {
        Some(Value::BulkString(r)) if r == b"master" => Ok(()),
        _ => Err(RedisError::from((
            redis::ErrorKind::Client,
            "the server the sentinels name is not a master (yet)",
            addr.to_owned(),
        ))),
    }
}

/// The master's address and a connection to it, where the newest answer of the sentinels
/// points ([`ask_all`]), checked to act as master.
async fn locate(
    sentinels: &[redis::Client],
    master: &str,
    login: &Credentials,
    timeout: Duration,
    owner: &str,
) -> RedisResult<(Named, MultiplexedConnection)> {
    let limit = setup_limit(timeout);
    let named = ask_all(sentinels, master, limit, owner).await?.newest;
    let conn = open_master(&named.addr, login, timeout, owner).await?;
    Ok((named, conn))
}

impl Inner {
    /// The connection calls go on now and its flag, unless it is lost.
    fn usable_now(&self) -> Option<(MultiplexedConnection, Arc<AtomicBool>)> {
        let current = self.current.read();
        (!current.is_lost()).then(|| (current.conn.clone(), current.lost.clone()))
    }

    /// Pings the master's connection, so that one the server closed while no call used it
    /// (its `timeout` setting, a proxy's idle cut) is found lost, and made again, before a
    /// call finds it so and fails.
    async fn ping_idle(&self) {
        let Some((mut conn, lost)) = self.usable_now() else {
            return;
        };
        let pinged: RedisResult<()> = redis::cmd("PING").query_async(&mut conn).await;
        if pinged.is_err_and(|err| err.is_unrecoverable_error()) {
            lost.store(true, Ordering::Release);
        }
    }

    /// Whether the server in use, at `addr`, still acts as master (`ROLE`, within the store's
    /// timeout).
    async fn current_serves(&self, addr: &str) -> bool {
        let Some((mut conn, _)) = self.usable_now() else {
            return false;
        };
        acts_as_master(&mut conn, addr).await.is_ok()
    }

    /// Asks the sentinels where the master is and switches to it if it moved, or connects to
    /// it again if it stayed and the connection was lost; whether it made a connection.
    async fn refresh(&self) -> bool {
        let limit = setup_limit(self.timeout);
        let lookup = match ask_all(&self.sentinels, &self.master, limit, self.owner).await {
            Ok(lookup) => lookup,
            Err(err) => {
                tracing::debug!(master = %self.master, error = %err, "no sentinel answered");
                return false;
            }
        };
        let (old, epoch, lost) = {
            let current = self.current.read();
            (current.addr.clone(), current.epoch, current.is_lost())
        };
        let stay = match may_follow(&old, epoch, &lookup) {
            Follow::Yes => false,
            Follow::No => true,
            Follow::UnlessCurrentServes => !lost && self.current_serves(&old).await,
        };
        if stay {
            tracing::debug!(
                master = %self.master,
                current = %old,
                epoch = ?epoch,
                named = ?lookup.newest,
                "the sentinels that answered name an older master; staying"
            );
            return false;
        }
        let mut named = lookup.newest;
        let addr = named.addr.clone();
        // The same server keeps the newest epoch heard for it, unless a majority says otherwise.
        if addr == old && !lookup.agreed {
            named.epoch = named.epoch.max(epoch);
        }
        // Only this task replaces `current`, so it still goes to `old`.
        if addr == old && !lost {
            self.current.write().epoch = named.epoch;
            return false;
        }
        match open_master(&addr, &self.master_login, self.timeout, self.owner).await {
            Ok(conn) => {
                let generation = {
                    let mut current = self.current.write();
                    *current = Current::new(named, conn);
                    self.generation.fetch_add(1, Ordering::AcqRel) + 1
                };
                self.switched.send_replace(generation);
                if addr == old {
                    tracing::info!(
                        master = %self.master,
                        addr = %addr,
                        "connected again to the Redis master, which the sentinels still name"
                    );
                } else if self.reported {
                    metrics::counter!(MASTER_CHANGES).increment(1);
                    tracing::warn!(
                        master = %self.master,
                        old = %old,
                        new = %addr,
                        "Redis master changed (Sentinel); store calls now go to the new master"
                    );
                } else {
                    tracing::debug!(master = %self.master, old = %old, new = %addr, "followed the master");
                }
                true
            }
            Err(err) if login::refused(&err) => {
                tracing::warn!(
                    master = %self.master,
                    addr = %addr,
                    error = %err,
                    "the master the sentinels name refused the login; not connecting to it"
                );
                false
            }
            Err(err) => {
                tracing::debug!(
                    master = %self.master,
                    addr = %addr,
                    error = %err,
                    "the master the sentinels name does not act as one (yet)"
                );
                false
            }
        }
    }
}

/// Subscribes to `+switch-master` on the first sentinel that accepts.
async fn subscribe(inner: &Inner) -> Option<redis::aio::PubSubStream> {
    for sentinel in &inner.sentinels {
        let subscribing = async {
            let mut pubsub = sentinel.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(pubsub.into_on_message())
        };
        let limit = setup_limit(inner.timeout);
        if let Ok(Ok(stream)) = tokio::time::timeout(limit, subscribing).await {
            return Some(stream);
        }
    }
    None
}

/// The background task of the module docs; ends once the connection is dropped.
async fn watch(inner: Weak<Inner>) {
    use futures_util::StreamExt;
    let mut announcements = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if announcements.is_none() {
            announcements = subscribe(&strong).await;
        }
        let switched = async {
            match announcements.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = switched => match message {
                // "<name> <old ip> <old port> <new ip> <new port>"
                Some(m) => {
                    let payload: String = m.get_payload().unwrap_or_default();
                    if payload.split(' ').next() == Some(strong.master.as_str()) {
                        strong.refresh().await;
                    }
                }
                // The sentinel went away: subscribe to another one next time round.
                None => announcements = None,
            },
            () = strong.nudge.notified() => {
                // Calls wait on a connection made; after anything else, the nudges that
                // follow are answered no more often than this.
                if !strong.refresh().await {
                    tokio::time::sleep(NUDGE_GAP).await;
                }
            }
            () = tokio::time::sleep(POLL) => {
                strong.ping_idle().await;
                strong.refresh().await;
            }
        }
    }
}

impl SentinelConn {
    /// The connection calls go on now; while it is lost, waits (at most the store's timeout)
    /// for the task to make one where the sentinels point.
    async fn usable(&self) -> RedisResult<(MultiplexedConnection, Arc<AtomicBool>)> {
        if let Some(usable) = self.inner.usable_now() {
            return Ok(usable);
        }
        // Told of every connection made from here on; one made before is seen below.
        let mut made = self.inner.switched.subscribe();
        let waiting = async {
            loop {
                if let Some(usable) = self.inner.usable_now() {
                    return Some(usable);
                }
                self.inner.nudge.notify_one();
                made.changed().await.ok()?;
            }
        };
        match tokio::time::timeout(self.inner.timeout, waiting).await {
            Ok(Some(usable)) => Ok(usable),
            _ => Err(awaiting_sentinels(&self.master_addr())),
        }
    }

    /// After a call on the connection whose flag is `lost` failed with `err`: marks it lost if
    /// that is what `err` says, and asks the sentinels soon if either that or a failover
    /// could explain it.
    fn failed(&self, err: &RedisError, lost: &AtomicBool) {
        let gone = err.is_unrecoverable_error();
        if gone {
            lost.store(true, Ordering::Release);
        }
        if gone || failover_sign(err) {
            self.inner.nudge.notify_one();
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut conn, lost) = self.usable().await?;
            let reply = conn.req_packed_command(cmd).await;
            if let Err(err) = &reply {
                self.failed(err, &lost);
                return reply;
            }
            let demoted =
                |err: &redis::ServerError| matches!(err.code(), "READONLY" | "MASTERDOWN");
            if matches!(&reply, Ok(Value::ServerError(err)) if demoted(err)) {
                self.inner.nudge.notify_one();
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut conn, lost) = self.usable().await?;
            let reply = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(err) = &reply {
                self.failed(err, &lost);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::{gather, may_follow, newest, telling, Follow, Lookup, Named};
    use redis::RedisError;

    fn named(addr: &str, epoch: Option<u64>) -> Named {
        Named {
            addr: addr.into(),
            epoch,
        }
    }

    #[test]
    fn the_highest_epoch_wins_wherever_it_was_configured() {
        let answers = vec![
            (0, named("10.0.0.1:6379", Some(3))),
            (2, named("10.0.0.2:6379", Some(4))),
            (1, named("10.0.0.1:6379", Some(3))),
        ];
        assert_eq!(newest(answers, "m").unwrap().addr, "10.0.0.2:6379");
    }

    #[test]
    fn among_equal_epochs_the_first_configured_wins_whatever_answered_first() {
        let answers = vec![
            (2, named("10.0.0.3:6379", Some(7))),
            (1, named("10.0.0.2:6379", Some(7))),
        ];
        assert_eq!(newest(answers, "m").unwrap().addr, "10.0.0.2:6379");
    }

    #[test]
    fn an_untold_epoch_ranks_below_every_told_one() {
        let answers = vec![
            (0, named("10.0.0.1:6379", None)),
            (1, named("10.0.0.2:6379", Some(0))),
        ];
        assert_eq!(newest(answers, "m").unwrap().addr, "10.0.0.2:6379");
        let untold = vec![(1, named("10.0.0.2:6379", None))];
        assert_eq!(newest(untold, "m").unwrap().epoch, None);
    }

    #[test]
    fn no_answer_is_no_master() {
        assert_eq!(newest(Vec::new(), "m"), None);
    }

    #[test]
    fn a_lookup_never_goes_back_to_an_older_epoch_unless_the_server_in_use_stopped_serving() {
        let lookup = |addr: &str, epoch: Option<u64>, agreed: bool| Lookup {
            newest: named(addr, epoch),
            agreed,
        };
        let (on, epoch) = ("10.0.0.2:6379", Some(5));
        // Stale sentinels naming the old master: stay.
        let stale = lookup("10.0.0.1:6379", Some(4), false);
        assert_eq!(may_follow(on, epoch, &stale), Follow::No);
        let untold = lookup("10.0.0.1:6379", None, false);
        assert_eq!(may_follow(on, epoch, &untold), Follow::No);
        // A newer or equal configuration, or the same server: follow (or stay on it).
        let newer = lookup("10.0.0.3:6379", Some(6), false);
        assert_eq!(may_follow(on, epoch, &newer), Follow::Yes);
        let equal = lookup("10.0.0.3:6379", Some(5), false);
        assert_eq!(may_follow(on, epoch, &equal), Follow::Yes);
        assert_eq!(
            may_follow(on, epoch, &lookup(on, Some(1), false)),
            Follow::Yes
        );
        // A majority on an older epoch: a rebuilt deployment, or a majority not yet told of
        // the failover; only the server in use can say which.
        let agreed = lookup("10.0.0.9:6379", Some(0), true);
        assert_eq!(may_follow(on, epoch, &agreed), Follow::UnlessCurrentServes);
        // Sentinels that never tell epochs: every answer is as new as any.
        let untold = lookup("10.0.0.3:6379", None, false);
        assert_eq!(may_follow(on, None, &untold), Follow::Yes);
    }

    /// A sentinel of [`gather`]'s tests: names a master (address, epoch) or fails, after so
    /// many ms; or never answers.
    #[derive(Clone)]
    enum Says {
        Named(&'static str, Option<u64>, u64),
        Fails(fn() -> RedisError, u64),
        Silent,
    }

    fn timed_out() -> RedisError {
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the sentinel did not answer in time",
        ))
    }

    fn unreachable() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    fn refused() -> RedisError {
        RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "WRONGPASS invalid username-password pair",
        ))
    }

    /// [`gather`] over sentinels saying `says`, on the paused clock: the lookup, and how many
    /// ms it took.
    async fn lookup_of(says: &[Says]) -> (redis::RedisResult<Lookup>, u64) {
        let start = tokio::time::Instant::now();
        let lookup = gather(says.len(), "m", |at| {
            let said = says[at].clone();
            async move {
                let (outcome, after) = match said {
                    Says::Named(addr, epoch, after) => (Ok(named(addr, epoch)), after),
                    Says::Fails(err, after) => (Err(err()), after),
                    Says::Silent => (Err(timed_out()), 3_600_000),
                };
                tokio::time::sleep(std::time::Duration::from_millis(after)).await;
                outcome
            }
        })
        .await;
        let ms = u64::try_from(start.elapsed().as_millis()).expect("a short lookup");
        (lookup, ms)
    }

    /// A lookup ends as soon as a majority answered; the newest answer among those wins, even
    /// the last to arrive; `agreed` only when all of them named the same server and epoch.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_ends_with_a_majority_and_takes_its_newest_answer() {
        let (lookup, ms) = lookup_of(&[
            Says::Named("10.0.0.1:6379", Some(3), 10),
            Says::Silent,
            Says::Named("10.0.0.2:6379", Some(4), 40),
        ])
        .await;
        let lookup = lookup.expect("answered");
        assert_eq!(ms, 40, "the second answer makes a majority of three");
        assert_eq!(lookup.newest, named("10.0.0.2:6379", Some(4)));
        assert!(!lookup.agreed, "they disagreed");
        let (lookup, ms) = lookup_of(&[
            Says::Named("10.0.0.2:6379", Some(4), 5),
            Says::Named("10.0.0.2:6379", Some(4), 30),
            Says::Named("10.0.0.1:6379", Some(3), 60),
        ])
        .await;
        assert_eq!(ms, 30, "the third is not waited for");
        assert!(lookup.expect("answered").agreed, "a majority agreed");
    }

    /// With one answer and no majority yet, a lookup waits at most `GRACE` more; an answer
    /// arriving within it counts (here it outranks the first); once every other sentinel has
    /// failed, it ends at once.
    #[tokio::test(start_paused = true)]
    async fn one_answer_waits_for_a_majority_only_for_the_grace() {
        let grace = u64::try_from(super::GRACE.as_millis()).expect("a short grace");
        let silent = [
            Says::Named("10.0.0.1:6379", Some(3), 10),
            Says::Silent,
            Says::Silent,
        ];
        let (lookup, ms) = lookup_of(&silent).await;
        assert_eq!(ms, 10 + grace, "waited the grace after the first answer");
        let lookup = lookup.expect("answered");
        assert_eq!(lookup.newest, named("10.0.0.1:6379", Some(3)));
        assert!(!lookup.agreed, "one answer of three is no majority");

        let five = [
            Says::Named("10.0.0.1:6379", Some(3), 10),
            Says::Named("10.0.0.2:6379", Some(5), 10 + grace - 1),
            Says::Silent,
            Says::Silent,
            Says::Silent,
        ];
        let (lookup, ms) = lookup_of(&five).await;
        assert_eq!(ms, 10 + grace, "two of five is no majority");
        assert_eq!(lookup.expect("answered").newest.epoch, Some(5));

        let failing = [
            Says::Fails(timed_out, 5),
            Says::Named("10.0.0.1:6379", Some(3), 10),
            Says::Fails(timed_out, 50),
        ];
        let (lookup, ms) = lookup_of(&failing).await;
        assert_eq!(ms, 50, "nothing left to wait for");
        assert!(lookup.is_ok());
    }

    /// When no sentinel names the master, the lookup fails once every sentinel failed, with
    /// the most telling error (here neither the first nor the last to come), or among equals
    /// the first.
    #[tokio::test(start_paused = true)]
    async fn no_answer_fails_with_the_most_telling_error() {
        let (lookup, ms) = lookup_of(&[
            Says::Fails(timed_out, 5),
            Says::Fails(refused, 20),
            Says::Fails(timed_out, 30),
        ])
        .await;
        let err = lookup.expect_err("nobody named the master");
        assert_eq!(ms, 30);
        assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
        // Among errors that say as much, the first to come.
        let (lookup, _) = lookup_of(&[
            Says::Fails(unreachable, 30),
            Says::Fails(timed_out, 5),
            Says::Fails(unreachable, 20),
        ])
        .await;
        let err = lookup.expect_err("nobody named the master");
        assert!(err.is_timeout(), "{err}");
        let (lookup, _) = lookup_of(&[]).await;
        assert!(lookup.is_err(), "no sentinels configured");
    }

    /// A master's address makes a URL whatever the sentinel names: a host name, an IPv4
    /// address or an IPv6 one (which a sentinel gives bare).
    #[test]
    fn a_masters_address_makes_a_url() {
        use redis::IntoConnectionInfo;
        for (host, authority) in [
            ("10.0.0.5", "10.0.0.5:6379"),
            ("redis-0.redis.svc", "redis-0.redis.svc:6379"),
            ("fd00::5", "[fd00::5]:6379"),
            ("::1", "[::1]:6379"),
        ] {
            assert_eq!(crate::login::authority(host, 6379), authority);
            let info = format!("redis://{authority}")
                .into_connection_info()
                .expect("a URL");
            assert_eq!(
                info.addr(),
                &redis::ConnectionAddr::Tcp(host.to_owned(), 6379),
                "{host}"
            );
        }
    }

    #[test]
    fn an_unknown_master_is_reported_over_a_timeout() {
        let unknown = RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            super::UNKNOWN_MASTER,
            "m".to_owned(),
        ));
        let timeout = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the sentinel did not answer in time",
        ));
        assert!(telling(&unknown) > telling(&timeout));
    }
}
