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
//! A lane whose calls are all outstanding keeps at most [`LANE_QUEUE`] requests waiting, and
//! all lanes together at most [`QUEUE`]. A request that finds its lane (or all lanes) full is
//! refused at once (`StoreError::Unavailable`, counted in [`BATCH_REFUSED`]) after the
//! requests whose callers already gave up are dropped from the queue; a request whose lane has
//! a free call slot is never refused. So when one cluster master hangs, only its own slots'
//! lanes fill: their callers time out at the store's timeout (or are refused at once), while
//! lanes of slots on healthy masters keep sending at their normal latency. The dispatcher
//! never stops reading new requests to wait for a lane (the queue used to be shared, and one
//! hung master could fill it for everyone).
//!
//! # Resharding
//! While a slot migrates, a call over several keys of that slot, some already moved, is
//! refused with `TRYAGAIN` (nothing is applied). Requests that merely shared such a call
//! should not fail for it: a batch of several requests refused that way (or with a redirect
//! the client could not follow) is sent again once, each request alone in its own call, within
//! what is left of the timeout (counted in [`BATCH_RETRIED`]). A request alone holds one
//! key, or keys it needs together, so a refusal of it is its own answer.
//!
//! A request whose caller gave up before its batch was sent is dropped from the batch and
//! never charged. Each caller still waits at most the store's timeout, queueing included.
//! A request alone in an idle lane takes a queue and a batch vector from small pools, so low
//! load costs no allocation per request here beyond the call itself.

use crate::error::record;
use crate::runner::Runner;
use crate::script::{CallArgs, Encoded, Reply};
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Calls outstanding at once per lane.
pub const IN_FLIGHT: usize = 4;
/// Most requests in one call.
pub const MAX_REQUESTS: usize = 64;
/// Most limits in one call (a batch stops growing once it has this many).
pub const MAX_CHECKS: usize = 256;
/// Most requests waiting in one lane whose calls are all outstanding (four calls' worth of
/// full batches); past it the lane's new requests are refused at once.
pub const LANE_QUEUE: usize = 4 * IN_FLIGHT * MAX_REQUESTS;
/// Most requests waiting in all lanes together (and as many in the channel in front of them).
pub const QUEUE: usize = 4096;

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
    answer: oneshot::Sender<Result<Reply, StoreError>>,
}

impl Job {
    /// Appends this request to a call's arguments.
    fn push_to(&self, args: &mut CallArgs) {
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

/// The queue in front of the shared connection; see the module docs.
#[derive(Clone)]
pub(crate) struct Batcher {
    jobs: mpsc::Sender<Job>,
    runner: Runner,
}

impl Batcher {
    /// A batcher sending through `runner`; its dispatcher runs on the current tokio runtime.
    pub(crate) fn start(runner: Runner) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(runner.clone(), queue));
        Self { jobs, runner }
    }

    /// Decides one request (keys and checks in the same order, every key in `lane`) within
    /// the store's timeout.
    pub(crate) async fn check(
        &self,
        lane: u16,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        mode: CheckMode,
    ) -> Result<Reply, StoreError> {
        self.submit(lane, keys, checks, Kind::Check(mode)).await
    }

    /// Charges one slot's part of a report (every key in `lane`, the marker too) within the
    /// store's timeout.
    pub(crate) async fn charge(
        &self,
        lane: u16,
        marker: Option<String>,
        keys: Vec<String>,
        checks: Vec<Encoded>,
    ) -> Result<Reply, StoreError> {
        self.submit(lane, keys, checks, Kind::Charge(marker)).await
    }

    async fn submit(
        &self,
        lane: u16,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        kind: Kind,
    ) -> Result<Reply, StoreError> {
        let limit = self.runner.timeout;
        let (answer, reply) = oneshot::channel();
        let job = Job {
            lane,
            keys,
            checks,
            kind,
            answer,
        };
        let waited = tokio::time::timeout(limit, async {
            if let Err(mpsc::error::SendError(job)) = self.jobs.send(job).await {
                // The dispatcher is gone (its runtime shut down): call directly.
                let mut args = CallArgs::default();
                job.push_to(&mut args);
                return self.runner.run_call(limit, &args).await.and_then(|mut r| {
                    r.pop().ok_or_else(|| {
                        record(StoreError::Protocol("the check returned no request".into()))
                    })
                });
            }
            reply.await.unwrap_or_else(|_| {
                Err(record(StoreError::Protocol(
                    "the batch carrying the request was dropped".into(),
                )))
            })
        })
        .await;
        waited.unwrap_or_else(|_| Err(record(StoreError::Timeout(limit))))
    }
}

/// One lane's requests waiting for a call, and its calls outstanding.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<Job>,
    in_flight: usize,
}

/// The dispatcher's state: every lane with something queued or in flight.
struct Lanes {
    runner: Runner,
    lanes: HashMap<u16, Lane>,
    /// Requests waiting over all lanes.
    waiting: usize,
    /// Where a finished call reports its lane and hands back its (emptied) batch vector.
    done: mpsc::UnboundedSender<(u16, Vec<Job>)>,
    /// Empty queues of lanes that went idle, for the next new lane.
    spare_queues: Vec<VecDeque<Job>>,
    /// Empty batch vectors of finished calls, for the next call.
    spare_batches: Vec<Vec<Job>>,
}

impl Lanes {
    /// Queues `job` in its lane, or refuses it if the lane must wait and is full.
    fn queue(&mut self, job: Job) {
        if job.answer.is_closed() {
            return;
        }
        let spare = &mut self.spare_queues;
        let lane = self.lanes.entry(job.lane).or_insert_with(|| Lane {
            waiting: spare.pop().unwrap_or_default(),
            in_flight: 0,
        });
        // What the lane's free call slots take at once never waits, so never counts as full.
        let goes_now = (IN_FLIGHT - lane.in_flight) * MAX_REQUESTS;
        if lane.waiting.len() >= goes_now
            && (lane.waiting.len() >= LANE_QUEUE || self.waiting >= QUEUE)
        {
            // Make room by forgetting requests whose callers gave up: first in this lane, then,
            // if all lanes together are full, everywhere.
            self.waiting -= prune(&mut lane.waiting);
            if lane.waiting.len() < LANE_QUEUE && self.waiting >= QUEUE {
                let mut pruned = 0;
                for other in self.lanes.values_mut() {
                    pruned += prune(&mut other.waiting);
                }
                self.waiting -= pruned;
            }
            let Some(lane) = self.lanes.get_mut(&job.lane) else {
                return;
            };
            if lane.waiting.len() >= LANE_QUEUE || self.waiting >= QUEUE {
                metrics::counter!(BATCH_REFUSED).increment(1);
                let why = if lane.waiting.len() >= LANE_QUEUE {
                    "the queue for this key's slot is full (its node is slow or unreachable)"
                } else {
                    "the queue for the store is full"
                };
                let _ = job
                    .answer
                    .send(Err(record(StoreError::Unavailable(why.into()))));
                return;
            }
            lane.waiting.push_back(job);
        } else {
            lane.waiting.push_back(job);
        }
        self.waiting += 1;
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
            let (runner, done) = (self.runner.clone(), self.done.clone());
            tokio::spawn(async move {
                send(&runner, &mut batch).await;
                let _ = done.send((lane, batch));
            });
        }
        if state.in_flight == 0 && state.waiting.is_empty() {
            if let Some(idle) = self.lanes.remove(&lane) {
                if self.spare_queues.len() < SPARES && idle.waiting.capacity() <= MAX_REQUESTS {
                    self.spare_queues.push(idle.waiting);
                }
            }
        }
    }

    fn finished(&mut self, lane: u16, mut batch: Vec<Job>) {
        if let Some(state) = self.lanes.get_mut(&lane) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        batch.clear();
        if self.spare_batches.len() < SPARES {
            self.spare_batches.push(batch);
        }
        self.launch(lane);
    }
}

/// Drops the requests in `queue` whose callers gave up; how many it dropped.
fn prune(queue: &mut VecDeque<Job>) -> usize {
    let before = queue.len();
    queue.retain(|job| !job.answer.is_closed());
    before - queue.len()
}

/// Takes queued requests into calls, lane by lane; see the module docs.
async fn dispatch(runner: Runner, mut queue: mpsc::Receiver<Job>) {
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut lanes = Lanes {
        runner,
        lanes: HashMap::new(),
        waiting: 0,
        done,
        spare_queues: Vec::new(),
        spare_batches: Vec::new(),
    };
    let mut touched = Vec::new();
    loop {
        tokio::select! {
            biased;
            Some((lane, batch)) = finished.recv() => lanes.finished(lane, batch),
            job = queue.recv() => {
                let Some(job) = job else { return };
                // Take everything queued meanwhile (a bounded helping), then send lane by lane.
                touched.push(job.lane);
                lanes.queue(job);
                while touched.len() < QUEUE {
                    let Ok(job) = queue.try_recv() else { break };
                    touched.push(job.lane);
                    lanes.queue(job);
                }
                for lane in touched.drain(..) {
                    lanes.launch(lane);
                }
            }
        }
    }
}

/// Whether `err` is Redis refusing a call because its slot is migrating: `TRYAGAIN` (some of
/// the call's keys moved, some not), or an `ASK`/`MOVED` redirect the client gave up on.
fn resharding(err: &StoreError) -> bool {
    match err {
        // The client spells the codes either way (`TryAgain: Multiple keys request during
        // rehashing of slot`).
        StoreError::Unavailable(text) | StoreError::Protocol(text) => {
            ["TRYAGAIN", "TryAgain", "ASK ", "Ask:", "MOVED ", "Moved:"]
                .iter()
                .any(|code| text.contains(code))
        }
        StoreError::Timeout(_) => false,
    }
}

/// Sends one batch and hands each request its reply (or the call's error), leaving `batch`
/// empty.
async fn send(runner: &Runner, batch: &mut Vec<Job>) {
    #[allow(clippy::cast_precision_loss)] // at most MAX_REQUESTS
    metrics::histogram!(BATCH_REQUESTS).record(batch.len() as f64);
    let started = tokio::time::Instant::now();
    match call(runner, runner.timeout, batch).await {
        Err(err) if batch.len() > 1 && resharding(&err) => {
            // Each request alone, once, within what is left of the timeout. One after another:
            // a request for a key not yet on the target is redirected (`ASK`), and the client
            // sends `ASKING` and the call as two commands on the shared connection, so
            // redirected calls sent together can take each other's `ASKING` and bounce.
            let deadline = started + runner.timeout;
            for job in batch.drain(..) {
                if job.answer.is_closed() {
                    continue;
                }
                metrics::counter!(BATCH_RETRIED).increment(1);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let reply = if left.is_zero() {
                    Err(StoreError::Timeout(runner.timeout))
                } else {
                    call(runner, left, std::slice::from_ref(&job))
                        .await
                        .and_then(|mut replies| {
                            replies.pop().ok_or_else(|| {
                                StoreError::Protocol("the check returned no request".into())
                            })
                        })
                };
                let _ = job.answer.send(reply);
            }
        }
        Ok(replies) => {
            for (job, reply) in batch.drain(..).zip(replies) {
                let _ = job.answer.send(Ok(reply));
            }
        }
        Err(err) => {
            for job in batch.drain(..) {
                let _ = job.answer.send(Err(err.clone()));
            }
        }
    }
}

/// One call carrying `batch`, within `limit`: one reply per request, or the call's error.
async fn call(runner: &Runner, limit: Duration, batch: &[Job]) -> Result<Vec<Reply>, StoreError> {
    let mut args = CallArgs::default();
    for job in batch {
        job.push_to(&mut args);
    }
    let replies = runner.run_call(limit, &args).await?;
    if replies.len() == batch.len() {
        Ok(replies)
    } else {
        Err(StoreError::Protocol(format!(
            "the check answered {} requests of {}",
            replies.len(),
            batch.len()
        )))
    }
}
