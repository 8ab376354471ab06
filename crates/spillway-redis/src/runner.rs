//! [`Runner`]: script calls on one connection (the store's shared one, or a serving thread's
//! own; see [`crate::thread_conn`]), bounded and timed.
//!
//! It holds what a call needs (the connection, which form of the Lua code to call, the time
//! bound and, in tests, the injected clock) and is cheap to clone (a connection handle and a
//! few `Arc`s), so a task spawned to finish a request on its own (see [`crate::multi_slot`])
//! can own one.

use crate::config::setup_limit;
use crate::error::{classify, record, record_script, CountNoScript, SCRIPT_ERRORS};
use crate::functions::{self, Func, Functions};
use crate::module::{self, Module};
use crate::own_conn::OwnConn;
use crate::script::{self, CallArgs, Encoded, Reply, Undo};
use crate::sentinel::{Nudger, SentinelConn};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;

/// A failed call: the engine's error, and whether its requests may go again ([`Again`]).
/// Any error of a call nobody sends again is already counted (`spillway_store_errors_total`
/// and [`SCRIPT_ERRORS`]); one whose requests may go again is counted only once nobody sends
/// them again ([`Failed::settled`], or [`crate::batch::Unsent`]'s conversion): a refusal
/// answered by a retry is counted as a retry, not an error.
pub(crate) struct Failed {
    pub(crate) err: StoreError,
    pub(crate) again: Again,
}

/// Whether a failed call's requests may go again, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Again {
    /// No: the error is the requests' answer (and counted already).
    No,
    /// Each alone: Redis refused the call because its slot is moving (`TRYAGAIN`, or an
    /// `ASK`/`MOVED` redirect the client did not follow); see [`crate::batch`].
    Alone,
    /// Through another connection: a cluster master a serving thread talks to directly
    /// refused the call for a slot it does not serve (now), so nothing of it ran; see
    /// [`crate::thread_conn`].
    Elsewhere,
    /// Through another connection, this one stepping aside: a serving thread's own
    /// connection wrote none of the call ([`crate::own_conn::was_not_sent`]) because it is
    /// lost for good (a master the sentinels named) or could not be made again (a cluster
    /// master's).
    Unreached,
}

impl Failed {
    /// A call's error `err`, counted now unless its requests may go again (`again`).
    pub(crate) fn new(err: StoreError, again: Again) -> Self {
        let err = if again == Again::No {
            Self::count(err)
        } else {
            err
        };
        Self { err, again }
    }

    /// The error of a script call that will not go again, counted: one whose requests might
    /// have gone again now, any other error was counted where it happened.
    pub(crate) fn settled(self) -> StoreError {
        if self.again == Again::No {
            self.err
        } else {
            Self::count(self.err)
        }
    }

    /// Counts `err`, a script call's error, as a store and a script error.
    pub(crate) fn count(err: StoreError) -> StoreError {
        record_script(record(err))
    }
}

/// Whether `err` is Redis refusing a call because its slot is migrating, judged on the
/// client's typed error kind only (never on free text: a script's own error message could
/// contain anything, and may come after the script ran).
fn resharding(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::TryAgain | ServerErrorKind::Ask | ServerErrorKind::Moved
        )
    )
}

/// The one reply of a call that carried one request, or a counted protocol error if the
/// call answered none.
pub(crate) fn only_reply(replies: Result<Vec<Reply>, StoreError>) -> Result<Reply, StoreError> {
    replies?
        .pop()
        .ok_or_else(|| record(StoreError::Protocol("the check returned no request".into())))
}

/// A connection a [`Runner`] calls on, whichever deployment it talks to: the store's shared
/// connection, or a serving thread's own (`Own`, to a single server or to the master a
/// Sentinel store names; `Server` where our own connection does not speak what the URL asks,
/// see [`crate::own_conn::Target::of`]).
#[derive(Clone)]
pub(crate) enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
    Own(OwnConn),
}

/// Script calls on one connection; see the module docs.
#[derive(Clone)]
pub(crate) struct Runner {
    pub(crate) conn: Conn,
    /// Whether to call the Functions library or the plain scripts.
    pub(crate) functions: Arc<Functions>,
    /// Whether checks go to the native module instead (see [`crate::module`]).
    pub(crate) module: Arc<Module>,
    check_script: Arc<redis::Script>,
    refund_script: Arc<redis::Script>,
    /// How long one call may take before it fails with `StoreError::Timeout`.
    pub(crate) timeout: Duration,
    /// Whether the store's callers bound each request by `timeout` themselves, so that a
    /// request's wait in [`crate::batch`] needs no timer of its own (see
    /// [`crate::RedisConfig::timed_by_caller`]).
    pub(crate) timed_by_caller: bool,
    /// Whether the connection goes straight to one master of a cluster (a serving thread's
    /// own, see [`crate::thread_conn`]): a redirect or `TRYAGAIN` sends the call's requests
    /// to the store's cluster connection, which follows them ([`Again::Elsewhere`]), and the
    /// module is never probed for on it (one node says nothing of the others).
    cluster_node: bool,
    /// On a Sentinel store, a handle on the store's own connection to the master, asked to
    /// look for a new master when a call gets no answer in time (a master gone silent);
    /// `None` elsewhere. Kept by a serving thread's runner too ([`Runner::with_conn`]); weak,
    /// so that no runner keeps the store's connection alive.
    nudger: Option<Nudger>,
    /// When set, scripts evaluate at this clock's time instead of Redis `TIME` (tests only).
    injected: Option<Arc<dyn Clock>>,
    /// The store's clock: it paces looking for the module again (see [`Module::probe_due`]).
    clock: Arc<dyn Clock>,
    /// The store's room for slot calls of requests across slots (see [`crate::multi_slot`]),
    /// shared by every runner of one store and by no other store.
    pub(crate) cross_slot_room: Arc<tokio::sync::Semaphore>,
}

impl Runner {
    /// A runner on `conn` whose calls are bounded by `timeout`, pacing its probes for the
    /// module on `clock`; with `injected`, scripts evaluate at that clock's time (tests only).
    pub(crate) fn new(
        conn: Conn,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        injected: Option<Arc<dyn Clock>>,
    ) -> Self {
        let nudger = match &conn {
            Conn::Sentinel(master) => Some(master.nudger()),
            _ => None,
        };
        Self {
            conn,
            functions: Arc::default(),
            module: Arc::default(),
            check_script: Arc::new(redis::Script::new(script::CHECK_SCRIPT)),
            refund_script: Arc::new(redis::Script::new(script::REFUND_SCRIPT)),
            timeout,
            timed_by_caller: false,
            cluster_node: false,
            nudger,
            injected,
            clock,
            cross_slot_room: Arc::new(tokio::sync::Semaphore::new(crate::multi_slot::IN_FLIGHT)),
        }
    }

    /// A runner calling as this one does (the same form of the Lua code, time bound and
    /// injected clock) over `conn` instead: a serving thread's own connection (see
    /// [`crate::thread_conn`]). Takes `self`, so the thread's runner keeps no handle of the
    /// shared connection (but a weak one to nudge a Sentinel store's, `nudger`).
    pub(crate) fn with_conn(self, conn: Conn) -> Self {
        Self { conn, ..self }
    }

    /// This runner on a serving thread's own connection to one master of a cluster (see
    /// `cluster_node`).
    pub(crate) fn on_cluster_node(self) -> Self {
        Self {
            cluster_node: true,
            ..self
        }
    }

    /// Runs `work` on this runner's connection within `limit`, timing it. Its error is the
    /// caller's to count (the store's ping counts one outcome of up to two calls).
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.timed(limit, work)
            .await
            .map_err(|err| err.map_or(StoreError::Timeout(limit), |err| classify(err, limit)))
    }

    /// Runs `work` on this runner's connection within `limit`, timing it into
    /// `spillway_store_roundtrip_seconds`: the client's error, or `None` past `limit`.
    /// Counts nothing: its two callers count their own way.
    async fn timed<T, F, Fut>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<T, Option<redis::RedisError>>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        #[allow(clippy::disallowed_methods)] // a latency timer, not a source of limit time
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(limit, work(self.conn.clone())).await;
        metrics::histogram!("spillway_store_roundtrip_seconds")
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Some(err)),
            Err(_) => {
                self.conn.no_answer();
                Err(None)
            }
        }
    }

    /// Probes for the native module, then loads the Functions library (refunds, and the
    /// checks if the module goes), or settles on plain scripts if the server refuses
    /// Functions. Other failures are left for the first call to meet (and recover).
    pub(crate) async fn prepare(&self) {
        self.probe().await;
        if let Ok(Err(err)) = self.setup(&functions::load_cmd()).await {
            if functions::is_unsupported(&err) {
                self.functions.disable(&err);
            } else {
                tracing::debug!(error = %err, "loading the Functions library failed; the first call retries");
            }
        }
    }

    /// Asks the server for the native module ([`module::probe_cmd`]) and takes it if it is of
    /// this version.
    async fn probe(&self) {
        let reply = self.setup(&module::probe_cmd()).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the module probe was not answered in time",
            )))
        });
        self.module.answered(reply, self.clock.now());
    }

    /// Probes for the module again in a task of its own on this runner's connection, holding
    /// `probing` until it has its answer; checks switch from the next one on if it found the
    /// module (see [`crate::module`]). The task holds a clone of this runner, so the
    /// connection can stay open for up to the probe's bound ([`Runner::setup`]) after the
    /// store is dropped.
    fn probe_aside(&self, probing: module::Probing) {
        let runner = self.clone();
        tokio::spawn(async move {
            runner.probe().await;
            drop(probing);
        });
    }

    /// One command of [`Runner::prepare`] or a later probe, its error reply as an error; `Err`
    /// past the store's timeout, but never under 1 s (it runs while the store starts, or in a
    /// task no request waits for).
    async fn setup(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<redis::RedisResult<redis::Value>, tokio::time::error::Elapsed> {
        let mut conn = self.conn.clone();
        let limit = setup_limit(self.timeout);
        tokio::time::timeout(limit, async move { functions::lift(conn.query(cmd).await) }).await
    }

    /// Calls the library's function `func` (or, without Functions, `script`; or the native
    /// module's check, for a check while the module is there: `module`) over `keys` and
    /// `args` within `limit`: the one way a script is called, and so where its errors are
    /// counted (as a store error and a script error), except an error whose requests may go
    /// again ([`Again`]), counted once nobody sends them again (see [`Failed`]). A check while the
    /// module is not in use has it probed for once the call has its answer, when that is due
    /// ([`Module::probe_due`]), except on a cluster (its shared connection or one node's).
    async fn invoke(
        &self,
        limit: Duration,
        func: Func,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
        module: bool,
    ) -> Result<redis::Value, Failed> {
        let called = self.timed(limit, |mut conn| async move {
            if module && self.module.enabled() {
                match functions::lift(conn.module_check(keys, args).await) {
                    Err(err) if module::is_missing(&err) => {
                        self.module.disable(&err, self.clock.now());
                    }
                    other => return other,
                }
            }
            if self.functions.enabled() {
                match functions::lift(conn.fcall(func, keys, args).await) {
                    Err(err) if functions::is_missing(&err) => {
                        metrics::counter!(SCRIPT_ERRORS, "kind" => "noscript").increment(1);
                        functions::lift(conn.query(&functions::load_cmd()).await)?;
                        return functions::lift(conn.fcall(func, keys, args).await);
                    }
                    Err(err) if functions::is_unsupported(&err) => self.functions.disable(&err),
                    other => return other,
                }
            }
            let mut inv = script.prepare_invoke();
            for key in keys {
                inv.key(*key);
            }
            for arg in args {
                inv.arg(*arg);
            }
            match conn {
                Conn::Server(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                Conn::Cluster(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                Conn::Sentinel(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                Conn::Own(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
            }
        });
        let called = called.await;
        // Taken once the call is answered, so that neither the probe's round trip nor its
        // answer is the call's, a call given up uses no slot, and a failed call sends no probe
        // to a server that may be down. Not on a cluster: the probe names no key, so it would
        // reach any one node, and a cluster where only some nodes have the module would switch
        // back and forth.
        if module
            && called.is_ok()
            && !matches!(self.conn, Conn::Cluster(_))
            && !self.cluster_node
            && !self.module.enabled()
        {
            if let Some(probing) = self.module.probe_due(self.clock.now()) {
                self.probe_aside(probing);
            }
        }
        called.map_err(|err| {
            if err.is_none() {
                // No answer in time may be a master gone silent. Asked here, once per call,
                // and not only by the store when a caller meets the timeout: a caller that
                // bounds its own wait (`timed_by_caller`) gives up first and never tells it.
                if let Some(nudger) = &self.nudger {
                    nudger.nudge();
                }
            }
            let again = match &err {
                Some(err) if resharding(err) && self.cluster_node => Again::Elsewhere,
                Some(err) if resharding(err) => Again::Alone,
                Some(err) if crate::own_conn::was_not_sent(err) => Again::Unreached,
                _ => Again::No,
            };
            let err = err.map_or(StoreError::Timeout(limit), |err| classify(err, limit));
            Failed::new(err, again)
        })
    }

    /// One check call within `limit` carrying the requests in `args` (whose keys must share a
    /// cluster slot): one [`Reply`] per request.
    pub(crate) async fn run_call(
        &self,
        limit: Duration,
        args: &CallArgs<'_>,
    ) -> Result<Vec<Reply>, StoreError> {
        self.run_call_typed(limit, args)
            .await
            .map_err(Failed::settled)
    }

    /// [`Runner::run_call`], also saying whether the call's requests may go again (if so, its
    /// error is not counted yet: see [`Failed`]).
    pub(crate) async fn run_call_typed(
        &self,
        limit: Duration,
        args: &CallArgs<'_>,
    ) -> Result<Vec<Reply>, Failed> {
        let now = CallArgs::now_arg(self.injected.as_ref().map(|c| c.now()));
        let value = self
            .invoke(
                limit,
                Func::Check,
                &self.check_script,
                &args.keys,
                &[now.as_bytes(), &args.packed],
                true,
            )
            .await?;
        script::parse_reply(value, &args.shapes).map_err(|err| Failed::new(err, Again::No))
    }

    /// One check call within `limit` for one request over `(key, check)` pairs sharing a slot.
    pub(crate) async fn run_script<'k>(
        &self,
        limit: Duration,
        checks: impl IntoIterator<Item = (&'k str, Encoded)>,
        mode: CheckMode,
        undo: bool,
    ) -> Result<Reply, StoreError> {
        let mut args = CallArgs::default();
        args.push(checks, mode, undo);
        only_reply(self.run_call(limit, &args).await)
    }

    /// Restores one key charged by a request that was then denied (or abandoned); `false` if
    /// the key was written since (the charge stays) or the call failed.
    pub(crate) async fn refund(&self, limit: Duration, key: &str, undo: &Undo) -> bool {
        let Undo {
            written,
            before,
            ttl,
        } = undo;
        if written == before {
            return true;
        }
        let restored = self
            .invoke(
                limit,
                Func::Refund,
                &self.refund_script,
                &[key],
                &[written, before, ttl.as_bytes()],
                false,
            )
            .await
            .map_err(Failed::settled);
        matches!(restored, Ok(redis::Value::Int(1)))
    }
}

impl Conn {
    /// A call or ping on this connection got no answer in time: our own connection to a
    /// cluster master may close (see [`OwnConn::no_answer`]); the client's connections keep
    /// their own counsel.
    pub(crate) fn no_answer(&self) {
        if let Conn::Own(own) = self {
            own.no_answer();
        }
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Server(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
            Conn::Sentinel(c) => cmd.query_async(c).await,
            Conn::Own(c) => cmd.query_async(c).await,
        }
    }

    /// The native module's check over `keys` and `args`: on a thread's own connection written
    /// straight into its buffer ([`module::write_check`]), elsewhere as the client's command.
    async fn module_check(
        &mut self,
        keys: &[&str],
        args: &[&[u8]],
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Own(c) => c.call(|out| module::write_check(out, keys, args)).await,
            other => other.query(&module::check_cmd(keys, args)).await,
        }
    }

    /// `FCALL func` over `keys` and `args`: on a thread's own connection written straight into
    /// its buffer ([`functions::write_fcall`]), elsewhere as the client's command.
    async fn fcall(
        &mut self,
        func: Func,
        keys: &[&str],
        args: &[&[u8]],
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Own(c) => {
                c.call(|out| functions::write_fcall(out, func, keys, args))
                    .await
            }
            other => other.query(&functions::fcall_cmd(func, keys, args)).await,
        }
    }
}

#[cfg(test)]
mod tests;
