//! Coalescing concurrent requests bound for one Redis server into one call.
//!
//! Every call costs Redis a fixed part (reading the command, starting the function, `TIME`,
//! writing the reply, the system calls around them) on top of its limits' work; at one limit
//! per request that fixed part is most of the cost. So on a single server (directly or through
//! Sentinel) requests are not sent one call each: a [`Batcher`] queues them, and a dispatcher
//! task sends whatever has queued as one call of the check function, which decides the requests
//! one after another inside that one atomic call, each all-or-nothing on its own and each
//! seeing what the ones before it wrote (see `lua/check.lua`). The result is the same as
//! separate calls arriving back to back.
//!
//! Nothing waits to fill a batch: a request that finds a call slot free goes at once, alone.
//! Up to [`IN_FLIGHT`] calls are outstanding at a time; requests that arrive meanwhile queue,
//! and the next free slot takes them all (at most [`MAX_REQUESTS`] requests and [`MAX_CHECKS`]
//! limits per call). So batches grow only when Redis is busy, which is when they help.
//! `spillway_redis_batch_requests` records each call's size (about 10 under `bench/redis.sh`;
//! see docs/BENCHMARKS.md).
//!
//! A request whose caller gave up before its batch was sent is dropped from the batch and
//! never charged. Each caller still waits at most the store's timeout, queueing included.
//! Clusters are not coalesced (a call may touch only one slot); requests spanning slots go
//! through [`crate::multi_slot`] as before.

use crate::error::record;
use crate::runner::Runner;
use crate::script::{CallArgs, Encoded, Reply};
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Calls outstanding at once.
pub const IN_FLIGHT: usize = 4;
/// Most requests in one call.
pub const MAX_REQUESTS: usize = 64;
/// Most limits in one call (a batch stops growing once it has this many).
pub const MAX_CHECKS: usize = 256;
/// Requests that may wait for a call slot before callers wait to queue.
const QUEUE: usize = 4096;

/// Histogram of requests per call sent by a batcher: how much coalescing happens under the
/// load at hand (1 everywhere means Redis pays each call's fixed cost per request).
pub const BATCH_REQUESTS: &str = "spillway_redis_batch_requests";
/// Buckets for [`BATCH_REQUESTS`]: powers of two up to [`MAX_REQUESTS`].
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// One queued request.
struct Job {
    keys: Vec<String>,
    checks: Vec<Encoded>,
    mode: CheckMode,
    answer: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The queue in front of one server's connection; see the module docs.
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

    /// Decides one request (keys and checks in the same order) within the store's timeout.
    pub(crate) async fn check(
        &self,
        keys: Vec<String>,
        checks: Vec<Encoded>,
        mode: CheckMode,
    ) -> Result<Reply, StoreError> {
        let limit = self.runner.timeout;
        let (answer, reply) = oneshot::channel();
        let job = Job {
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

/// Takes queued requests into calls; see the module docs.
async fn dispatch(runner: Runner, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Wait for a call slot first: whatever queues meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut checks = first.checks.len();
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS && checks < MAX_CHECKS {
            match queue.try_recv() {
                Ok(job) => {
                    checks += job.checks.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up is not charged.
        batch.retain(|job| !job.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let runner = runner.clone();
        tokio::spawn(async move {
            send(&runner, batch).await;
            drop(slot);
        });
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
