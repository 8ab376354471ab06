//! Coalescing concurrent requests bound for one Redis server, or one cluster slot, into one
//! call.
//!
//! Every call costs Redis a fixed part (reading the command, starting the function, `TIME`,
//! writing the reply, the system calls around them) on top of its limits' work; at one limit
//! per request that fixed part is most of the cost. So requests are not sent one call each: a
//! [`Batcher`] queues them, and a dispatcher task sends whatever has queued for the same
//! *lane* as one call of the check function, which decides the requests one after another
//! inside that one atomic call, each all-or-nothing on its own and each seeing what the ones
//! before it wrote (see `lua/check.lua`). The result is the same as separate calls arriving
//! back to back. Reports (charges after the fact) queue the same way, one job per slot of the
//! report, and may share a call with checks.
//!
//! A batcher serves one connection: the store's shared one, or a serving thread's own to a
//! single server (directly or through Sentinel) or to one master of a cluster (see
//! [`crate::thread_conn`]), so each thread coalesces its own requests and the bounds below
//! hold per batcher. (A thread's batcher to one cluster master keeps no bound per slot: its
//! lanes are all that master's.)
//!
//! A lane is what one call may cover: the whole server on a single server (directly or through
//! Sentinel), one hash slot on a cluster (a call may touch keys of one slot only). Requests
//! whose keys span slots never come here; they go through [`crate::multi_slot`]. On a cluster
//! only requests of the same slot share a call: those of one tenant when the tenant is the
//! first dimension of every key (see [`crate::keys`]), and above all one hot key, which is
//! where a node's CPU goes when one tenant floods.
//!
//! Nothing waits to fill a batch: a request that finds a call slot of its lane free goes at
//! once, alone. Up to [`IN_FLIGHT`] calls per lane are outstanding at a time; requests that
//! arrive meanwhile queue in their lane, and the lane's next free slot takes them all (at most
//! [`MAX_REQUESTS`] requests and [`MAX_CHECKS`] limits per call). So batches grow only when a
//! lane is busy, which is when they help. `spillway_redis_batch_requests` records each call's
//! size (about 10 under `bench/redis.sh`; see docs/BENCHMARKS.md).
//!
//! # Bounds, and a hung node
//! Beyond what its free call slots take at once, a cluster slot's lane whose calls have not
//! finished for a quarter of the store timeout (a stalled lane, not a busy one) keeps at most
//! [`LANE_QUEUE`] requests waiting, and all lanes together at most [`QUEUE`] (plus, for a
//! moment, what free call slots are about to take). A single server's one lane is bounded by
//! [`QUEUE`] alone. A request that finds its lane (or all lanes) full is refused at once
//! (counted in [`BATCH_REFUSED`]): as `StoreError::Overloaded` while its lane's node still
//! answers (this node sends more than the store answers in time), as `Unavailable` once the
//! lane has stalled (a hung node: the store failing, for the breakers to count), but only
//! after its lane has sent
//! what its free call slots take and the requests whose callers already gave up are dropped
//! from the front of the queues; a request its lane's free call slots can take is never
//! refused. Requests whose keys span slots do not come here: they have their own bound
//! (`crate::multi_slot::IN_FLIGHT`). So when one cluster master hangs, only its own slots' lanes fill: their callers time out at the store's timeout (or are refused at once), while
//! lanes of slots on healthy masters keep sending at their normal latency. The dispatcher
//! never stops reading new requests to wait for a lane (the queue used to be shared, and one
//! hung master could fill it for everyone).
//!
//! # Resharding
//! While a slot migrates, a call over several keys of that slot, some already moved, is
//! refused with `TRYAGAIN` (nothing is applied). Requests that merely shared such a call
//! should not fail for it: a call refused that way (or with a redirect the client could not
//! follow, as concurrent redirects to one node can be; judged on the client's typed error
//! kind, never on text) is sent again once, each request alone in its own call, while its
//! own caller still has time, one retry at a time over the store (counted in
//! [`BATCH_RETRIED`]; the refusal itself is no store error, only a retry that fails is). If an earlier attempt of the call by the client ran on Redis and only
//! its reply was lost, the retry charges its requests a second time: extra denials, never an
//! extra admission. A request that itself holds keys on both sides keeps the refusal, which
//! is its own answer.
//!
//! A request whose caller gave up before its batch was sent is dropped from the batch and
//! never charged. Each caller still waits at most the store's timeout, queueing included: by
//! a timer of its own per request, or, for a check where every caller bounds its own wait
//! (the server's failure guard; [`crate::RedisConfig::timed_by_caller`]), by the caller's.
//! A request alone in an idle lane takes a queue and a batch vector from small pools, so at
//! low load a request allocates here only its answer channel and what the call needs.

use crate::error::record;
use crate::runner::{only_reply, Again, Conn, Failed, Runner};
use crate::script::{CallArgs, Encoded, Reply};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rustc_hash::FxBuildHasher;
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Calls outstanding at once per lane. A call takes what queued since the dispatcher last
/// ran, so fewer calls out do not make calls bigger: 1, 2 and 4 gave the same requests per
/// call under `bench/redis.sh` (docs/BENCHMARKS.md, session 20). More than one lets a lane
/// send what queued while a reply is on its way.
pub const IN_FLIGHT: usize = 4;
/// Most requests in one call.
pub const MAX_REQUESTS: usize = 64;
/// Most limits in one call (a batch stops growing once it has this many).
pub const MAX_CHECKS: usize = 256;
/// Most requests waiting in one cluster slot's lane beyond what its free call slots take at
/// once; past it the lane's new requests are refused at once. (A single server's one lane is
/// bounded by [`QUEUE`] alone.)
pub const LANE_QUEUE: usize = 4 * IN_FLIGHT * MAX_REQUESTS;
/// Most requests waiting in all lanes of one batcher together beyond what free call slots take
/// at once (per serving thread too, for a thread's own batcher). A waiting request holds a [`Job`] (about 100 bytes) plus its key names and
/// encoded checks on the heap: a few hundred bytes for a one-limit request, so a full queue
/// is a few MB.
pub const QUEUE: usize = 16_384;
/// Requests in the channel in front of the dispatcher (senders wait for room, within their
/// timeout), and the most it takes from the channel before sending.
const CHANNEL: usize = 4096;

/// Histogram of requests per call sent by a batcher: how much coalescing happens under the
/// load at hand (1 everywhere means Redis pays each call's fixed cost per request).
pub const BATCH_REQUESTS: &str = "spillway_redis_batch_requests";
/// Buckets for [`BATCH_REQUESTS`]: powers of two up to [`MAX_REQUESTS`].
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Counter of requests refused at once because their lane (or every lane) was full.
pub const BATCH_REFUSED: &str = "spillway_redis_batch_refused_total";
/// Counter of requests sent again alone after the call they shared was refused during
/// resharding (`TRYAGAIN`, or a redirect the client could not follow).
pub const BATCH_RETRIED: &str = "spillway_redis_batch_retried_total";

/// Why a request of a stalled cluster slot's full lane is refused at once.
const SLOT_QUEUE_FULL: &str =
    "the queue for this key's slot is full (its node is slow or unreachable)";
/// Why a request is refused at once when every lane together is full.
const STORE_QUEUE_FULL: &str = "the queue for the store is full";

/// Why a request sent through a [`Batcher`] failed: the batcher itself refusing it because
/// its queue was full, which says nothing about the connection (a thread's own connection
/// must not step aside for it; see [`crate::thread_conn`]), the call's own error, or a call
/// not sent at all, which hands the request back to go through another connection. Whichever,
/// the caller can take a counted [`StoreError`] (for a full queue, `Overloaded` while its
/// lane's node still answers, `Unavailable` once it has stalled).
#[derive(Debug)]
pub(crate) enum BatchError {
    /// Refused at once: its lane (or every lane) was full.
    QueueFull(StoreError),
    /// The call failed, timed out, or was never answered.
    Store(StoreError),
    /// The call was not sent: its connection, a serving thread's own, is lost for good or
    /// could not be made again (a cluster master's; see [`crate::own_conn`]); or it was sent
    /// to a cluster master that refused it for a slot it does not serve (a redirect or
    /// `TRYAGAIN`, see [`crate::thread_conn`]). Nothing of the request ran; here it is back.
    NotSent(Box<Unsent>),
}

/// A check whose call was not sent (see [`BatchError::NotSent`]): its keys and checks, to go
/// again through another connection by the same deadline ([`Batcher::check_until`]), and the
/// error that kept it, not counted yet.
#[derive(Debug)]
pub(crate) struct Unsent {
    pub(crate) keys: Vec<String>,
    pub(crate) checks: Vec<Encoded>,
    pub(crate) deadline: Instant,
    pub(crate) err: StoreError,
    /// Whether the connection could not carry it at all ([`Again::Unreached`]), rather than
    /// a cluster master refusing it for a slot it does not serve.
    pub(crate) unreached: bool,
}

impl From<StoreError> for BatchError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl From<BatchError> for StoreError {
    /// The error a caller answers with; a request not sent that goes nowhere else is counted
    /// now (see [`crate::runner::Failed`]).
    fn from(err: BatchError) -> Self {
        match err {
            BatchError::QueueFull(err) | BatchError::Store(err) => err,
            BatchError::NotSent(unsent) => Failed::count(unsent.err),
        }
    }
}

/// How often, at most, a full store sweeps every lane for callers that gave up.
const SWEEP_EVERY: Duration = Duration::from_millis(5);

/// Pooled queues and batch vectors kept for reuse (each at most this many).
const SPARES: usize = 16;

/// What a queued request asks of its slot.
enum Kind {
    /// A check, consuming or only looking.
    Check(CheckMode),
    /// A charge after the fact, with its report marker key when the report has an id.
    Charge(Option<String>),
}

/// One queued request.
struct Job {
    /// Its lane: the hash slot of its keys on a cluster, 0 on a single server.
    lane: u16,
    keys: Vec<String>,
    checks: Vec<Encoded>,
    kind: Kind,
    /// When its caller gives up: the store's timeout after it queued, or for a check resent
    /// from a thread's connection ([`Unsent`]), the deadline it had there.
    deadline: Instant,
    answer: oneshot::Sender<Result<Reply, BatchError>>,
}

impl Job {
    /// How many keys [`Self::push_to`] gives a call: its limits' and its report marker.
    fn key_count(&self) -> usize {
        self.keys.len() + usize::from(matches!(self.kind, Kind::Charge(Some(_))))
    }

    /// Appends this request to a call's arguments.
    fn push_to<'a>(&'a self, args: &mut CallArgs<'a>) {
        let pairs = self
            .keys
            .iter()
            .map(String::as_str)
            .zip(self.checks.iter().copied());
        match &self.kind {
            Kind::Check(mode) => args.push(pairs, *mode, false),
            Kind::Charge(marker) => args.push_charge(marker.as_deref(), pairs),
        }
    }
}

/// The queue in front of one connection (the store's shared one, or a serving thread's own);
/// see the module docs.
#[derive(Clone)]
pub(crate) struct Batcher {
    jobs: mpsc::Sender<Job>,
    runner: Runner,
}

impl Batcher {
    /// A batcher sending through `runner`; its dispatcher runs on the current tokio runtime.
    pub(crate) fn start(runner: Runner) -> Self {
        let (batcher, dispatcher) = Self::new(runner);
        tokio::spawn(dispatcher);
        batcher
    }

    /// A batcher sending through `runner`, and its dispatcher for the caller to drive (a
    /// thread's own connection drives it beside its own end; see [`crate::thread_conn`]). The
    /// dispatcher ends once every clone of the batcher is gone.
    pub(crate) fn new(runner: Runner) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (jobs, queue) = mpsc::channel(CHANNEL);
        let batcher = Self {
            jobs,
            runner: runner.clone(),
        };
        (batcher, dispatch(runner, queue))
    }

    /// Decides one request (keys and checks in the same order, every key in `lane`) within
    /// the store's timeout (bounded by the caller where the store is `timed_by_caller`).
    pub(crate) async fn check(
        &self,
        lane: u16,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        mode: CheckMode,
    ) -> Result<Reply, BatchError> {
        self.submit(lane, keys, checks, Kind::Check(mode), None)
            .await
    }

    /// [`Batcher::check`] by `deadline` (a request that waited elsewhere first, see
    /// [`Unsent`]) instead of the store's timeout from now.
    pub(crate) async fn check_until(
        &self,
        lane: u16,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        mode: CheckMode,
        deadline: Instant,
    ) -> Result<Reply, BatchError> {
        self.submit(lane, keys, checks, Kind::Check(mode), Some(deadline))
            .await
    }

    /// Charges one slot's part of a report (every key in `lane`, the marker too) within the
    /// store's timeout, always by a timer of its own: its caller waits in a task that
    /// outlives the report's own caller (see `RedisStore::charge`), so nothing else would
    /// drop it, and a charge sent after the report was told lost could be charged twice.
    pub(crate) async fn charge(
        &self,
        lane: u16,
        marker: Option<String>,
        keys: Vec<String>,
        checks: Vec<Encoded>,
    ) -> Result<Reply, BatchError> {
        self.submit(lane, keys, checks, Kind::Charge(marker), None)
            .await
    }

    /// Queues one request, waiting for its answer until `deadline` (the store's timeout from
    /// now, if `None`), or, for a check on a store `timed_by_caller`, until its caller drops
    /// the wait (by then, in the server, the same deadline). The callers above stay one-line
    /// wrappers, which the compiler folds
    /// into this future: one computing the deadline itself cost a check over Redis about
    /// 135 instructions more, as a future of its own (callgrind, `bench/http_cg.sh`).
    async fn submit(
        &self,
        lane: u16,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<Reply, BatchError> {
        let limit = self.runner.timeout;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + limit);
        let own_timer = !self.runner.timed_by_caller || matches!(kind, Kind::Charge(_));
        let (answer, reply) = oneshot::channel();
        let job = Job {
            lane,
            keys,
            checks,
            kind,
            deadline,
            answer,
        };
        let waiting = async {
            if let Err(mpsc::error::SendError(job)) = self.jobs.send(job).await {
                // The dispatcher is gone (its runtime shut down): call directly.
                let mut args = CallArgs::default();
                job.push_to(&mut args);
                return Ok(only_reply(self.runner.run_call(limit, &args).await)?);
            }
            reply.await.unwrap_or_else(|_| {
                Err(record(StoreError::Protocol(
                    "the batch carrying the request was dropped".into(),
                ))
                .into())
            })
        };
        if !own_timer {
            // The caller drops this at the timeout: the request is then skipped, or its reply
            // goes nowhere, as for any caller that gave up.
            return waiting.await;
        }
        tokio::time::timeout_at(deadline, waiting)
            .await
            .unwrap_or_else(|_| Err(record(StoreError::Timeout(limit)).into()))
    }
}

/// One lane's requests waiting for a call, and its calls outstanding.
struct Lane {
    waiting: VecDeque<Job>,
    in_flight: usize,
    /// When a call of this lane last finished (or the lane was made): a lane whose calls
    /// keep finishing is busy, not stalled, and its own bound does not apply.
    progress: Instant,
}

impl Lane {
    /// How many waiting requests the lane's free call slots take at once.
    fn goes_now(&self) -> usize {
        (IN_FLIGHT - self.in_flight) * MAX_REQUESTS
    }
}

/// The dispatcher's state: every lane with something queued or in flight.
struct Lanes {
    /// Most requests a stalled lane keeps waiting beyond what its free call slots take:
    /// [`LANE_QUEUE`] on a cluster, none on a single server (its one lane has the whole
    /// store-wide bound).
    lane_cap: Option<usize>,
    /// How long a lane may go without a call finishing before its own bound applies (a
    /// quarter of the store's timeout): a hot slot on a healthy master keeps queueing up to
    /// the store-wide bound, a hung master's slot is bounded by `lane_cap`.
    stall: Duration,
    /// When the queues of every lane may next be swept for callers that gave up (at most
    /// every [`SWEEP_EVERY`], so a flood does not make each refusal walk every lane).
    next_sweep: Instant,
    /// Calls started (a lane and its batch) that the dispatcher has not sent yet: it drains
    /// them into its calls; unit tests read them here instead.
    started: Vec<(u16, Vec<Job>)>,
    /// Keyed by slot through FxHash: a lane is a `u16` (at most 16,384 of them, taken from
    /// keys' CRC16), so SipHash's resistance to chosen keys buys nothing on this per-request
    /// lookup (docs/BENCHMARKS.md, session 20).
    lanes: HashMap<u16, Lane, FxBuildHasher>,
    /// Requests waiting over all lanes.
    waiting: usize,
    /// Lanes that took requests since they last sent (they may have free call slots).
    touched: Vec<u16>,
    /// Empty queues of lanes that went idle, for the next new lane.
    spare_queues: Vec<VecDeque<Job>>,
    /// Empty batch vectors of finished calls, for the next call.
    spare_batches: Vec<Vec<Job>>,
}

impl Lanes {
    fn new(lane_cap: Option<usize>, stall: Duration) -> Self {
        Self {
            lane_cap,
            stall,
            next_sweep: Instant::now(),
            started: Vec::new(),
            lanes: HashMap::default(),
            waiting: 0,
            touched: Vec::new(),
            spare_queues: Vec::new(),
            spare_batches: Vec::new(),
        }
    }

    /// The state of lane `id`, created (from a pooled queue) if it had none.
    fn lane(&mut self, id: u16) -> &mut Lane {
        let spare = &mut self.spare_queues;
        self.lanes.entry(id).or_insert_with(|| Lane {
            waiting: spare.pop().unwrap_or_default(),
            in_flight: 0,
            progress: Instant::now(),
        })
    }

    /// Queues `job` in its lane, or refuses it if it cannot go now and its lane (or all
    /// lanes) is full.
    fn queue(&mut self, job: Job) {
        if job.answer.is_closed() {
            return;
        }
        let id = job.lane;
        if self.full(id).is_some() {
            self.make_room(id);
            if let Some(why) = self.full(id) {
                metrics::counter!(BATCH_REFUSED).increment(1);
                // A lane whose node has answered nothing for a while is stuck (a hung master):
                // that is the store failing. One still answering is only slower than this
                // node's traffic: this node overloaded. (A slot's own bound refuses only a
                // stalled lane.)
                let refused = if self.lane(id).progress.elapsed() >= self.stall {
                    StoreError::Unavailable(why.into())
                } else {
                    StoreError::Overloaded(why.into())
                };
                let refused = record(refused);
                let _ = job.answer.send(Err(BatchError::QueueFull(refused)));
                self.launch(id); // drops the lane if it is idle
                return;
            }
        }
        let waiting = &mut self.lane(id).waiting;
        waiting.push_back(job);
        let first = waiting.len() == 1;
        self.waiting += 1;
        // A lane that already had requests waiting is marked already, or has every call out
        // (and `finished` sends from it).
        if first {
            self.touched.push(id);
        }
    }

    /// Why a new request for lane `id` cannot queue, if it cannot: what the lane's free call
    /// slots take at once never counts; beyond that, a stalled cluster lane is held to its
    /// own bound and every lane to the store-wide one.
    fn full(&mut self, id: u16) -> Option<&'static str> {
        let (cap, stall, total) = (self.lane_cap, self.stall, self.waiting);
        // Without a bound per lane (a single server), only the store-wide one can refuse:
        // no need to look the lane up.
        if cap.is_none() && total < QUEUE {
            return None;
        }
        let lane = self.lane(id);
        let beyond = lane.waiting.len().checked_sub(lane.goes_now())?;
        if cap.is_some_and(|cap| beyond >= cap) && lane.progress.elapsed() >= stall {
            Some(SLOT_QUEUE_FULL)
        } else if total >= QUEUE {
            Some(STORE_QUEUE_FULL)
        } else {
            None
        }
    }

    /// Before refusing a request for lane `id`: sends what free call slots take (the lane's,
    /// and every lane's if all together are full), then forgets requests whose callers gave
    /// up from the front of the queues (callers share one timeout, so they give up in about
    /// the order they queued).
    fn make_room(&mut self, id: u16) {
        self.launch(id);
        if let Some(lane) = self.lanes.get_mut(&id) {
            self.waiting -= prune_front(&mut lane.waiting);
        }
        if self.waiting >= QUEUE {
            self.launch_touched();
        }
        let now = Instant::now();
        if self.waiting >= QUEUE && now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            let mut pruned = 0;
            for lane in self.lanes.values_mut() {
                pruned += prune_front(&mut lane.waiting);
            }
            self.waiting -= pruned;
        }
    }

    /// Sends what every lane that took requests has queued, as far as free call slots go.
    fn launch_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            self.launch(id);
        }
        self.touched = touched; // keep the allocation (`launch` marks nothing)
    }

    /// Sends what `lane` has queued, as far as its free call slots go; drops the lane once it
    /// is idle.
    fn launch(&mut self, lane: u16) {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        while state.in_flight < IN_FLIGHT && !state.waiting.is_empty() {
            let mut batch = self.spare_batches.pop().unwrap_or_default();
            let mut checks = 0;
            while batch.len() < MAX_REQUESTS && checks < MAX_CHECKS {
                let Some(job) = state.waiting.pop_front() else {
                    break;
                };
                self.waiting -= 1;
                // A caller that gave up is not charged.
                if job.answer.is_closed() {
                    continue;
                }
                checks += job.checks.len();
                batch.push(job);
            }
            if batch.is_empty() {
                self.spare_batches.push(batch);
                continue;
            }
            state.in_flight += 1;
            self.started.push((lane, batch));
        }
        if state.in_flight == 0 && state.waiting.is_empty() {
            if let Some(idle) = self.lanes.remove(&lane) {
                if self.spare_queues.len() < SPARES && idle.waiting.capacity() <= MAX_REQUESTS {
                    self.spare_queues.push(idle.waiting);
                }
            }
        }
    }

    /// A call of `lane` came back; `answered`: Redis answered it (a timed-out call is no
    /// sign of life, so a hung master's lane stays stalled).
    fn finished(&mut self, lane: u16, mut batch: Vec<Job>, answered: bool) {
        if let Some(state) = self.lanes.get_mut(&lane) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if answered {
                state.progress = Instant::now();
            }
        }
        batch.clear();
        if self.spare_batches.len() < SPARES {
            self.spare_batches.push(batch);
        }
        self.launch(lane);
    }
}

/// Drops the requests at the front of `queue` whose callers gave up; how many it dropped.
fn prune_front(queue: &mut VecDeque<Job>) -> usize {
    let mut dropped = 0;
    while queue.front().is_some_and(|job| job.answer.is_closed()) {
        queue.pop_front();
        dropped += 1;
    }
    dropped
}

/// Takes queued requests into calls, lane by lane; see the module docs. The calls are driven
/// by this task itself, not a task each: spawning one per call cost more work than the rest
/// of the dispatch (see docs/BENCHMARKS.md, session 15). What a call does on this task is
/// small (its arguments, splitting the reply, answering its callers); the client's connection
/// task writes and parses on its own, so the one task is not what bounds throughput.
async fn dispatch(runner: Runner, mut queue: mpsc::Receiver<Job>) {
    // On a single server (directly or through Sentinel) every request is in lane 0, so that
    // lane has the whole store-wide bound; a thread's connection to one cluster master has
    // one lane per slot, all on that master, so one stalls as the others do.
    let lane_cap = match runner.conn {
        Conn::Cluster(_) => Some(LANE_QUEUE),
        Conn::Server(_) | Conn::Sentinel(_) | Conn::Own(_) => None,
    };
    let stall = runner.timeout / 4;
    // Resharding retries go one at a time over the whole store (see `send`).
    let retries = tokio::sync::Mutex::new(());
    let (runner, retries) = (&runner, &retries);
    let mut calls = FuturesUnordered::new();
    let mut lanes = Lanes::new(lane_cap, stall);
    loop {
        for (lane, mut batch) in lanes.started.drain(..) {
            let call = async move {
                let answered = send(runner, &mut batch, retries).await;
                (lane, batch, answered)
            };
            // A call that panicked gives its slot back and leaves the others running; its
            // callers' answer channels went with it, so they hear at once that it failed.
            calls.push(
                AssertUnwindSafe(call)
                    .catch_unwind()
                    .map(move |ended| ended.unwrap_or((lane, Vec::new(), false))),
            );
        }
        tokio::select! {
            biased;
            Some((lane, batch, answered)) = calls.next() => lanes.finished(lane, batch, answered),
            job = queue.recv() => {
                let Some(job) = job else { return };
                // Take what queued meanwhile (a bounded helping), then send lane by lane.
                lanes.queue(job);
                for _ in 1..CHANNEL {
                    let Ok(job) = queue.try_recv() else { break };
                    lanes.queue(job);
                }
                lanes.launch_touched();
            }
        }
    }
}

/// Sends one batch and hands each request its reply (or the call's error), leaving `batch`
/// empty; whether Redis answered the call (with replies, or refusing it while its slot
/// moves), as opposed to timing out or failing to reach it. `retries` is held while the
/// requests of a call refused during resharding go again.
async fn send(runner: &Runner, batch: &mut Vec<Job>, retries: &tokio::sync::Mutex<()>) -> bool {
    #[allow(clippy::cast_precision_loss)] // at most MAX_REQUESTS
    metrics::histogram!(BATCH_REQUESTS).record(batch.len() as f64);
    let outcome = call(runner, runner.timeout, batch).await;
    let answered = matches!(
        outcome,
        Ok(_)
            | Err(Failed {
                again: Again::Alone,
                ..
            })
    );
    match outcome {
        Err(Failed {
            err,
            again: Again::Alone,
        }) => {
            // Each request alone, once, within what is left of its own caller's time. One
            // after another, over the whole store (the lock): a request for a key not yet on
            // the target is redirected (`ASK`), and the client sends `ASKING` and the call as
            // two commands on the shared connection, so redirected calls sent together (by
            // this loop, or by retries of other calls of the same slot) can take each other's
            // `ASKING` and bounce with `MOVED`. A call of one request goes again too: it may
            // have bounced that way.
            let _one_at_a_time = retries.lock().await;
            for job in batch.drain(..) {
                if job.answer.is_closed() {
                    continue;
                }
                let left = job.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // No time left to send it again: the refusal is its answer, and is counted
                    // if its caller takes it (a caller whose own timeout fired first counted
                    // that instead).
                    if job.answer.send(Err(err.clone().into())).is_ok() {
                        Failed::count(err.clone());
                    }
                    continue;
                }
                metrics::counter!(BATCH_RETRIED).increment(1);
                let reply = only_reply(
                    call(runner, left, std::slice::from_ref(&job))
                        .await
                        .map_err(Failed::settled),
                );
                let _ = job.answer.send(reply.map_err(BatchError::Store));
            }
        }
        Ok(replies) => {
            for (job, reply) in batch.drain(..).zip(replies) {
                let _ = job.answer.send(Ok(reply));
            }
        }
        Err(Failed {
            err,
            again: again @ (Again::Elsewhere | Again::Unreached),
        }) => {
            // Each request goes back to its caller, to go again on another connection. Only
            // a thread's own batcher meets this, which carries checks alone (reports take the
            // shared path), so a request's kind is its check mode, which its caller knows.
            for job in batch.drain(..) {
                debug_assert!(matches!(job.kind, Kind::Check(_)), "a report was not sent");
                let unsent = Unsent {
                    keys: job.keys,
                    checks: job.checks,
                    deadline: job.deadline,
                    err: err.clone(),
                    unreached: again == Again::Unreached,
                };
                let _ = job.answer.send(Err(BatchError::NotSent(Box::new(unsent))));
            }
        }
        Err(Failed {
            err,
            again: Again::No,
        }) => {
            for job in batch.drain(..) {
                let _ = job.answer.send(Err(err.clone().into()));
            }
        }
    }
    answered
}

/// One call carrying `batch`, within `limit`: one reply per request, or the call's error
/// (counted).
async fn call(runner: &Runner, limit: Duration, batch: &[Job]) -> Result<Vec<Reply>, Failed> {
    let (keys, checks) = batch.iter().fold((0, 0), |(k, c), job| {
        (k + job.key_count(), c + job.checks.len())
    });
    let mut args = CallArgs::with_capacity(batch.len(), keys, checks);
    for job in batch {
        job.push_to(&mut args);
    }
    let replies = runner.run_call_typed(limit, &args).await?;
    if replies.len() == batch.len() {
        Ok(replies)
    } else {
        let err = StoreError::Protocol(format!(
            "the check answered {} requests of {}",
            replies.len(),
            batch.len()
        ));
        Err(Failed::new(err, Again::No))
    }
}

#[cfg(test)]
mod resharding_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Lanes whose started calls stay in `started` (outstanding until `finished`), every
    /// lane counting as stalled at once (its own bound applies).
    fn lanes(lane_cap: Option<usize>) -> Lanes {
        Lanes::new(lane_cap, Duration::ZERO)
    }

    type Answer = oneshot::Receiver<Result<Reply, BatchError>>;

    fn job(lane: u16) -> (Job, Answer) {
        let (answer, reply) = oneshot::channel();
        let job = Job {
            lane,
            keys: vec![format!("k{lane}")],
            checks: Vec::new(),
            kind: Kind::Check(CheckMode::Consume),
            deadline: Instant::now() + Duration::from_secs(1),
            answer,
        };
        (job, reply)
    }

    /// How many of `answers` are refusals for a full queue, told apart from an unreachable
    /// Redis as the thread lanes tell them (by `BatchError::QueueFull`).
    fn refused(answers: &mut [Answer]) -> usize {
        answers
            .iter_mut()
            .map(oneshot::Receiver::try_recv)
            .filter(|r| matches!(r, Ok(Err(BatchError::QueueFull(_)))))
            .count()
    }

    /// `n` requests for `lane` as the dispatcher takes them from the channel in one go.
    fn burst(lanes: &mut Lanes, lane: u16, n: usize) -> Vec<Answer> {
        let answers = (0..n)
            .map(|_| {
                let (job, answer) = job(lane);
                lanes.queue(job);
                answer
            })
            .collect();
        lanes.launch_touched();
        answers
    }

    #[test]
    fn a_burst_to_an_idle_single_server_lane_is_not_refused() {
        let mut lanes = lanes(None);
        let mut answers = burst(&mut lanes, 0, 2000);
        assert_eq!(refused(&mut answers), 0);
        // Its four calls went out full; the rest waits for them.
        assert_eq!(lanes.started.len(), IN_FLIGHT);
        assert_eq!(lanes.waiting, 2000 - IN_FLIGHT * MAX_REQUESTS);
        // As much as the channel holds, again and again while nothing returns (main kept
        // 4,096 waiting plus 4,096 in the channel): still nothing refused.
        for _ in 0..3 {
            assert_eq!(refused(&mut burst(&mut lanes, 0, CHANNEL)), 0);
        }
    }

    #[test]
    fn a_single_server_lane_is_held_to_the_store_wide_bound() {
        let mut lanes = lanes(None);
        // While nothing comes back: four full calls out, then QUEUE waiting, then refusals.
        let goes_now = IN_FLIGHT * MAX_REQUESTS;
        let mut answers = burst(&mut lanes, 0, goes_now + QUEUE);
        assert_eq!(refused(&mut answers), 0);
        assert_eq!(lanes.waiting, QUEUE);
        assert_eq!(refused(&mut burst(&mut lanes, 0, 10)), 10);
        // A call coming back makes room for what it takes from the queue.
        let (lane, batch) = lanes.started.remove(0);
        lanes.finished(lane, batch, true);
        assert_eq!(refused(&mut burst(&mut lanes, 0, MAX_REQUESTS + 1)), 1);
        drop(answers);
    }

    #[test]
    fn a_cluster_lane_counts_its_bound_past_what_goes_now() {
        let mut lanes = lanes(Some(LANE_QUEUE));
        let fits = IN_FLIGHT * MAX_REQUESTS + LANE_QUEUE;
        let mut answers = burst(&mut lanes, 7, fits);
        assert_eq!(refused(&mut answers), 0);
        assert_eq!(lanes.started.len(), IN_FLIGHT);
        // The lane is full: the next is refused at once; another slot's lane is not.
        assert_eq!(refused(&mut burst(&mut lanes, 7, 1)), 1);
        assert_eq!(refused(&mut burst(&mut lanes, 8, 100)), 0);
        // Callers that gave up at the front make room again.
        for answer in answers.iter_mut().skip(IN_FLIGHT * MAX_REQUESTS).take(10) {
            answer.close();
        }
        assert_eq!(refused(&mut burst(&mut lanes, 7, 10)), 0);
        assert_eq!(refused(&mut burst(&mut lanes, 7, 1)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_is_held_to_its_own_bound_only_while_no_call_comes_back() {
        let stall = Duration::from_millis(25);
        let mut lanes = Lanes::new(Some(LANE_QUEUE), stall);
        let fits = IN_FLIGHT * MAX_REQUESTS + LANE_QUEUE;
        // A new lane is not stalled: a burst past its own bound waits (store-wide bound only).
        let mut answers = burst(&mut lanes, 9, 2 * fits);
        assert_eq!(refused(&mut answers), 0);
        // No call back for the stall time: its own bound applies.
        tokio::time::advance(stall).await;
        assert_eq!(refused(&mut burst(&mut lanes, 9, 1)), 1);
        // A call that timed out is no sign of life; one Redis answered is.
        let (lane, batch) = lanes.started.remove(0);
        lanes.finished(lane, batch, false);
        assert_eq!(refused(&mut burst(&mut lanes, 9, 1)), 1);
        let (lane, batch) = lanes.started.remove(0);
        lanes.finished(lane, batch, true);
        assert_eq!(refused(&mut burst(&mut lanes, 9, 100)), 0);
        // The store-wide bound holds whatever the lane's state.
        let mut more = burst(&mut lanes, 9, QUEUE);
        assert!(refused(&mut more) > 0);
        assert!(lanes.waiting <= QUEUE);
        drop(answers);
    }

    #[test]
    fn hung_cluster_lanes_leave_room_for_busy_healthy_ones() {
        let mut lanes = lanes(Some(LANE_QUEUE));
        // Eight hung hot slots, each with full calls out and a full queue (8 x 1,024 waiting).
        for slot in 0..8 {
            let mut answers = burst(&mut lanes, slot, IN_FLIGHT * MAX_REQUESTS + LANE_QUEUE);
            assert_eq!(refused(&mut answers), 0);
            std::mem::forget(answers); // their callers are still waiting
        }
        // A busy healthy slot: its calls come back and it keeps taking bursts.
        for _ in 0..10 {
            let mut answers = burst(&mut lanes, 100, 500);
            assert_eq!(refused(&mut answers), 0);
            let done: Vec<_> = std::mem::take(&mut lanes.started)
                .into_iter()
                .filter(|(lane, _)| *lane == 100)
                .collect();
            for (lane, batch) in done {
                lanes.finished(lane, batch, true);
            }
            drop(answers);
        }
    }

    #[test]
    fn with_all_lanes_full_what_free_call_slots_take_still_goes() {
        let mut lanes = lanes(Some(LANE_QUEUE));
        let per_lane = IN_FLIGHT * MAX_REQUESTS + LANE_QUEUE;
        for slot in 0..16 {
            let answers = burst(&mut lanes, slot, per_lane);
            std::mem::forget(answers); // hung: their callers are still waiting
        }
        assert_eq!(lanes.waiting, QUEUE);
        // A new slot's lane sends four full calls; only what would wait is refused.
        let before = lanes.started.len();
        let mut answers = burst(&mut lanes, 500, IN_FLIGHT * MAX_REQUESTS + 44);
        assert_eq!(refused(&mut answers), 44);
        assert_eq!(lanes.started.len() - before, IN_FLIGHT);
    }

    /// On a store `timed_by_caller`, a check waits for its answer until its caller gives up
    /// (here: past ten timeouts, with the dispatcher never running), while a report's charge
    /// still fails at the store's timeout by its own timer: its caller waits in a task nobody
    /// drops. Without the flag, a check fails at the timeout too. (A real server to connect
    /// to; the paused clock once connected.)
    #[tokio::test]
    async fn only_a_check_on_a_store_timed_by_its_callers_waits_without_a_timer() {
        let server = spillway_testkit::redis::RedisServer::start();
        const MS: Duration = Duration::from_millis(1);
        let timeout = Duration::from_millis(300);
        let target = crate::own_conn::Target::of_url(&server.url(), timeout).expect("RESP2");
        let conn = Conn::Own(crate::own_conn::OwnConn::connect(target).await.expect("up"));
        let clock = std::sync::Arc::new(spillway_core::time::SystemClock);
        let mut runner = Runner::new(conn, timeout, clock, None);
        tokio::time::pause();
        let waited = |batcher: Batcher, charge: bool| async move {
            let start = Instant::now();
            let keys = vec!["k".to_owned()];
            let asked = async {
                if charge {
                    batcher.charge(0, None, keys, Vec::new()).await
                } else {
                    batcher.check(0, keys, Vec::new(), CheckMode::Consume).await
                }
            };
            let outcome = tokio::time::timeout(timeout * 10, asked).await;
            (outcome.map(|reply| reply.map(|_| ())), start.elapsed())
        };
        // When a timer of `due` fired, on the paused clock (to its millisecond).
        let at = |after: Duration, due: Duration| after >= due && after <= due + MS;
        for timed_by_caller in [true, false] {
            runner.timed_by_caller = timed_by_caller;
            // The dispatcher is kept but never polled: nothing is ever sent or answered.
            let (batcher, _dispatcher) = Batcher::new(runner.clone());
            let (check, after) = waited(batcher.clone(), false).await;
            if timed_by_caller {
                assert!(check.is_err(), "the caller gave up first: {check:?}");
                assert!(at(after, timeout * 10), "{after:?}");
            } else {
                assert!(
                    matches!(check, Ok(Err(BatchError::Store(StoreError::Timeout(_))))),
                    "{check:?}"
                );
                assert!(at(after, timeout), "{after:?}");
            }
            let (charge, after) = waited(batcher, true).await;
            assert!(
                matches!(charge, Ok(Err(BatchError::Store(StoreError::Timeout(_))))),
                "timed_by_caller {timed_by_caller}: {charge:?}"
            );
            assert!(at(after, timeout), "{after:?}");
        }
    }

    #[test]
    fn a_job_stays_small() {
        // What QUEUE's memory estimate assumes (its heap parts come on top).
        assert!(
            std::mem::size_of::<Job>() <= 112,
            "{}",
            std::mem::size_of::<Job>()
        );
    }
}
