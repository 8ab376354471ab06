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
//! back to back.
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
//! lane is busy, which is when they help. At most [`QUEUE`] requests wait in lanes (and as
//! many in the channel in front of them); a lane with nothing queued or in flight is dropped.
//! `spillway_redis_batch_requests` records each call's size (about 10 under `bench/redis.sh`;
//! see docs/BENCHMARKS.md).
//!
//! A request whose caller gave up before its batch was sent is dropped from the batch and
//! never charged. Each caller still waits at most the store's timeout, queueing included.

use crate::error::record;
use crate::runner::Runner;
use crate::script::{CallArgs, Encoded, Reply};
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::collections::{HashMap, VecDeque};
use tokio::sync::{mpsc, oneshot};

/// Calls outstanding at once per lane.
pub const IN_FLIGHT: usize = 4;
/// Most requests in one call.
pub const MAX_REQUESTS: usize = 64;
/// Most limits in one call (a batch stops growing once it has this many).
pub const MAX_CHECKS: usize = 256;
/// Most requests waiting in lanes; past it the channel in front fills, then callers wait to
/// queue (within their timeout).
pub const QUEUE: usize = 4096;

/// Histogram of requests per call sent by a batcher: how much coalescing happens under the
/// load at hand (1 everywhere means Redis pays each call's fixed cost per request).
pub const BATCH_REQUESTS: &str = "spillway_redis_batch_requests";
/// Buckets for [`BATCH_REQUESTS`]: powers of two up to [`MAX_REQUESTS`].
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// One queued request.
struct Job {
    /// Its lane: the hash slot of its keys on a cluster, 0 on a single server.
    lane: u16,
    keys: Vec<String>,
    checks: Vec<Encoded>,
    mode: CheckMode,
    answer: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The queue in front of the shared connection; see the module docs.
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
        let limit = self.runner.timeout;
        let (answer, reply) = oneshot::channel();
        let job = Job {
            lane,
            keys,
            checks,
            mode,
            answer,
        };
        let waited = tokio::time::timeout(limit, async {
            if let Err(mpsc::error::SendError(job)) = self.jobs.send(job).await {
                // The dispatcher is gone (its runtime shut down): call directly.
                let pairs = job.keys.iter().map(String::as_str).zip(job.checks);
                return self.runner.run_script(limit, pairs, job.mode, false).await;
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
    /// Where a finished call reports its lane.
    done: mpsc::UnboundedSender<u16>,
}

impl Lanes {
    fn queue(&mut self, job: Job) {
        self.waiting += 1;
        self.lanes
            .entry(job.lane)
            .or_default()
            .waiting
            .push_back(job);
    }

    /// Sends what `lane` has queued, as far as its free call slots go; drops the lane once it
    /// is idle.
    fn launch(&mut self, lane: u16) {
        let Some(state) = self.lanes.get_mut(&lane) else {
            return;
        };
        while state.in_flight < IN_FLIGHT && !state.waiting.is_empty() {
            let mut batch = Vec::new();
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
                continue;
            }
            state.in_flight += 1;
            let (runner, done) = (self.runner.clone(), self.done.clone());
            tokio::spawn(async move {
                send(&runner, batch).await;
                let _ = done.send(lane);
            });
        }
        if state.in_flight == 0 && state.waiting.is_empty() {
            self.lanes.remove(&lane);
        }
    }

    fn finished(&mut self, lane: u16) {
        if let Some(state) = self.lanes.get_mut(&lane) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.launch(lane);
    }
}

/// Takes queued requests into calls, lane by lane; see the module docs.
async fn dispatch(runner: Runner, mut queue: mpsc::Receiver<Job>) {
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut lanes = Lanes {
        runner,
        lanes: HashMap::new(),
        waiting: 0,
        done,
    };
    let mut touched = Vec::new();
    loop {
        tokio::select! {
            biased;
            Some(lane) = finished.recv() => lanes.finished(lane),
            job = queue.recv(), if lanes.waiting < QUEUE => {
                let Some(job) = job else { return };
                // Take everything queued meanwhile, then send lane by lane.
                touched.push(job.lane);
                lanes.queue(job);
                while lanes.waiting < QUEUE {
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

/// Sends one batch and hands each request its reply (or the call's error).
async fn send(runner: &Runner, batch: Vec<Job>) {
    #[allow(clippy::cast_precision_loss)] // at most MAX_REQUESTS
    metrics::histogram!(BATCH_REQUESTS).record(batch.len() as f64);
    let mut args = CallArgs::default();
    for job in &batch {
        let pairs = job
            .keys
            .iter()
            .map(String::as_str)
            .zip(job.checks.iter().copied());
        args.push(pairs, job.mode, false);
    }
    match runner.run_call(runner.timeout, &args).await {
        Ok(replies) if replies.len() == batch.len() => {
            for (job, reply) in batch.into_iter().zip(replies) {
                let _ = job.answer.send(Ok(reply));
            }
        }
        Ok(replies) => {
            let err = format!(
                "the check answered {} requests of {}",
                replies.len(),
                batch.len()
            );
            for job in batch {
                let _ = job.answer.send(Err(StoreError::Protocol(err.clone())));
            }
        }
        Err(err) => {
            for job in batch {
                let _ = job.answer.send(Err(err.clone()));
            }
        }
    }
}
