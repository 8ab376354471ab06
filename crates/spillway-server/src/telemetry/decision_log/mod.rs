//! The decision log: why a request was limited, written off the request path.
//!
//! ```text
//! decision::observe ─► observe(app, ask, outcome)      request path: one branch when off
//!                        │ consuming decisions only (peeks are not decisions)
//!                        │ allowed: kept with probability --decision-log-sample-allowed
//!                        │ denied / shadow_denied / degraded / refused: kept up to
//!                        │   --decision-log-max-per-second (the rest counted as capped)
//!                        │
//! decision::report ─► observe_report(app, report, …)   costs known afterwards: reported /
//!                        │ report_failed kept up to the same cap; retries not logged
//!                        ▼
//!                      Pending (a few Arcs and short strings) ─ try_send ─► bounded queue
//!                                                        full: dropped and counted, never waits
//!                        ▼
//!                      Writer (own thread): every 50 ms takes what is queued (a send
//!                        never wakes it), formats JSON in batches, writes to the sink:
//!                        stdout | file (rotated by size and age, old files pruned)
//!                        | Redis stream (XADD MAXLEN ~ N); a failing sink drops the batch,
//!                        counts it and is retried later, with backoff
//! ```
//!
//! [`query`] reads the records back for `spillway decisions`; [`recent`] keeps the newest in
//! memory for the dashboard's lookup. The record's fields are listed
//! in [`record`]; the flags in [`settings`].

pub mod privacy;
pub mod query;
pub mod recent;
pub mod record;
pub mod rfc3339;
pub mod sampling;
pub mod settings;
pub mod sink;
pub mod subject;

pub use settings::{DecisionLogArgs, DecisionLogSettings, SinkSpec};
pub use sink::Sink;
pub use subject::{Ids, RequestIds, Subject};

use crate::decision::{Ask, Outcome, Report, Reported};
use crate::state::{AppState, PolicyInfo};
use metrics::{counter, Counter};
use privacy::{IpMode, IpPrivacy};
use record::{Kind, Line, Pending};
use sampling::{FirstOfSecond, RateCap, Sampler};
use sink::{Formatted, SinkError};
use spillway_core::policy::{IpPrefix, Policy};
use spillway_core::request::CheckMode;
use spillway_core::time::Micros;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Records dropped, by `reason`: `queue_full` (the writer fell behind) or `sink_error`.
pub const DROPPED: &str = "spillway_decision_log_dropped_total";
/// Always-logged records (denials, shadow denials, degraded, refused, reports) over the
/// per-second cap.
pub const CAPPED: &str = "spillway_decision_log_capped_total";
/// Records the sink accepted.
pub const WRITTEN: &str = "spillway_decision_log_written_total";
/// Failed writes to the sink (each losing one batch).
pub const SINK_ERRORS: &str = "spillway_decision_log_sink_errors_total";

/// Most records the writer formats and writes at once.
const BATCH: usize = 512;
/// How often the writer takes what is queued (see [`Writer::run`]).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// The request path's end of the log, held in [`AppState::decision_log`].
pub struct DecisionLog {
    queue: mpsc::Sender<Pending>,
    sampler: Sampler,
    sample_rate: f64,
    cap: RateCap,
    /// Past the cap, each counter's (or tenant's) first record of a second still goes in,
    /// up to a cap of its own (the same number, at most [`sampling::FIRST_BUCKETS`]).
    first: FirstOfSecond,
    first_cap: RateCap,
    truncate: bool,
    counts: Arc<Counts>,
    dropped: Counter,
    capped: Counter,
    recent: Arc<recent::Recent>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("sample_rate", &self.sample_rate)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The log's running counts (also exported as metrics), for tests and diagnostics.
#[derive(Debug, Default)]
struct Counts {
    queued: AtomicU64,
    dropped_full: AtomicU64,
    capped: AtomicU64,
    written: AtomicU64,
    dropped_sink: AtomicU64,
    sink_errors: AtomicU64,
}

/// A snapshot of the log's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records handed to the queue.
    pub queued: u64,
    /// Records dropped because the queue was full.
    pub dropped_full: u64,
    /// Records over the per-second cap.
    pub capped: u64,
    /// Records the sink accepted.
    pub written: u64,
    /// Records lost to sink failures.
    pub dropped_sink: u64,
    /// Failed sink writes.
    pub sink_errors: u64,
}

/// Offers a finished report (a cost known after the response) to the log, if it is on. Called
/// by `decision::report`. A recorded report is logged as `reported`, one the store could not
/// record as `report_failed`; a retry of a report already recorded (`recorded: false`) and a
/// report that reaches no metered limit change nothing and are not logged. Reports are not
/// sampled, but share the per-second cap of denials.
pub fn observe_report(app: &AppState, policy: &Policy, report: &Report<'_>, reported: &Reported) {
    if let Some(log) = &app.decision_log {
        log.offer_report(app, policy, report, reported);
    }
}

/// Offers a finished decision to the log, if it is on. Called by `decision::observe`.
#[inline]
pub fn observe(app: &AppState, policy: &Policy, now: Micros, ask: &Ask<'_>, outcome: &Outcome) {
    if let Some(log) = &app.decision_log {
        log.offer(app, policy, now, ask, outcome);
    }
}

impl DecisionLog {
    /// The log's two ends: this one for the request path, and the writer that must be
    /// [started](Writer::start) with a sink.
    pub fn new(settings: &DecisionLogSettings) -> (Self, Writer) {
        describe();
        let (queue, rx) = mpsc::channel(settings.queue.max(1));
        let counts = Arc::<Counts>::default();
        let recent = Arc::<recent::Recent>::default();
        let log = Self {
            queue,
            sampler: Sampler::new(settings.sample_allowed),
            sample_rate: settings.sample_allowed,
            cap: RateCap::new(settings.max_per_second),
            first: FirstOfSecond::default(),
            first_cap: RateCap::new((settings.max_per_second).min(sampling::FIRST_BUCKETS as u32)),
            truncate: settings.ip.mode() == IpMode::Truncate,
            counts: counts.clone(),
            dropped: counter!(DROPPED, "reason" => "queue_full"),
            capped: counter!(CAPPED),
            recent: recent.clone(),
        };
        let writer = Writer {
            rx,
            node: settings.node.clone(),
            privacy: settings.ip.clone(),
            counts,
            written: counter!(WRITTEN),
            dropped: counter!(DROPPED, "reason" => "sink_error"),
            errors: counter!(SINK_ERRORS),
            recent,
        };
        (log, writer)
    }

    /// Keeps a record of the decision if the sampling or the cap says so, without waiting.
    /// `policy` is the snapshot the decision was made with, so the record names the very
    /// catalog version and network prefix that applied.
    pub fn offer(
        &self,
        app: &AppState,
        policy: &Policy,
        now: Micros,
        ask: &Ask<'_>,
        outcome: &Outcome,
    ) {
        if ask.mode != CheckMode::Consume {
            return;
        }
        let kind = Kind::of(outcome);
        let sample_rate = if kind == Kind::Allowed {
            if !self.sampler.keep() {
                return;
            }
            self.sample_rate
        } else {
            // Whom the record is about: the counter that denied, else the tenant.
            let denying = match outcome {
                Outcome::Decided(d) => (d.verdict.outcomes.iter())
                    .position(|o| !o.decision.allowed && !o.shadow)
                    .and_then(|i| ask.planned.get(i))
                    .map(|p| &p.key),
                Outcome::Refused(_) => None,
            };
            if !self.under_cap(now, (denying, ask.who.tenant)) {
                return;
            }
            1.0
        };
        self.keep(app, policy, |prefix, info| {
            Pending::new(now, kind, sample_rate, ask, outcome, prefix, info)
        });
    }

    /// Keeps a record of a report (see [`observe_report`]) unless over the cap, without
    /// waiting.
    pub fn offer_report(
        &self,
        app: &AppState,
        policy: &Policy,
        report: &Report<'_>,
        reported: &Reported,
    ) {
        let (kind, standing) = match reported {
            Reported::Answered {
                recorded: true,
                standing,
            } if !report.planned.is_empty() => (Kind::Reported, Some(standing)),
            Reported::Answered { .. } => return,
            Reported::Failed(_) => (Kind::ReportFailed, None),
        };
        let now = app.clock.now();
        if !self.under_cap(now, report.tenant) {
            return;
        }
        self.keep(app, policy, |prefix, info| {
            Pending::report(now, kind, report, standing, prefix, info)
        });
    }

    /// Whether the per-second cap lets one more record about `subject` through at `now` (a
    /// full cap still lets a subject's first of the second through: [`FirstOfSecond`]); one
    /// it holds back is counted.
    fn under_cap(&self, now: Micros, subject: impl std::hash::Hash) -> bool {
        if self.cap.admit(now) || (self.first.first(subject, now) && self.first_cap.admit(now)) {
            return true;
        }
        self.counts.capped.fetch_add(1, Ordering::Relaxed);
        self.capped.increment(1);
        false
    }

    /// Queues the record `build` makes (of a decision or a report) with what every kept record
    /// takes from the policy it was decided under: the network prefix (when IPs are
    /// truncated) and the policy's description, handed to `build`, and the catalog version
    /// (with a catalog database).
    fn keep(
        &self,
        app: &AppState,
        policy: &Policy,
        build: impl FnOnce(IpPrefix, Arc<PolicyInfo>) -> Pending,
    ) {
        let prefix = if self.truncate {
            policy.ip_prefix()
        } else {
            IpPrefix::default()
        };
        let catalog = app.catalog.db().map(|_| policy.catalog().version());
        let record = build(prefix, app.policy_info.load_full()).with_catalog(catalog);
        self.enqueue(record);
    }

    fn enqueue(&self, record: Pending) {
        match self.queue.try_send(record) {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counts.dropped_full.fetch_add(1, Ordering::Relaxed);
                self.dropped.increment(1);
            }
        }
    }

    /// The newest records written (whatever the sink), for the dashboard.
    pub fn recent(&self) -> &recent::Recent {
        &self.recent
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            queued: get(&c.queued),
            dropped_full: get(&c.dropped_full),
            capped: get(&c.capped),
            written: get(&c.written),
            dropped_sink: get(&c.dropped_sink),
            sink_errors: get(&c.sink_errors),
        }
    }
}

/// The background end: formats queued records and writes them to the sink in batches.
pub struct Writer {
    rx: mpsc::Receiver<Pending>,
    node: Arc<str>,
    privacy: IpPrivacy,
    counts: Arc<Counts>,
    written: Counter,
    dropped: Counter,
    errors: Counter,
    recent: Arc<recent::Recent>,
}

/// The running writer; [`WriterHandle::finish`] flushes it.
#[derive(Debug)]
pub struct WriterHandle {
    stop: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<()>,
}

impl Writer {
    /// Runs the writer on a thread of its own (with its own event loop), so a slow disk or
    /// sink never holds up a serving thread.
    pub fn start(self, sink: Sink) -> std::io::Result<WriterHandle> {
        let (stop, stopped) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(self.run(sink, stopped)),
                    Err(err) => tracing::error!("the decision log cannot start its writer: {err}"),
                }
                let _ = finished.send(());
            })?;
        Ok(WriterHandle {
            stop: Some(stop),
            done,
        })
    }

    /// Writes batches until told to stop (or every sender is gone), then drains the queue.
    ///
    /// The queue is drained every [`DRAIN_EVERY`] rather than waited on: a writer parked on
    /// the channel would be woken by every record sent, which costs the serving thread that
    /// sends it a system call (and the machine a context switch) per kept record. On a
    /// timer, a send only enqueues, and the records of each period go out in one batch.
    pub async fn run(mut self, mut sink: Sink, mut stop: oneshot::Receiver<()>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    self.rx.close();
                    while self.rx.recv_many(&mut batch, BATCH).await > 0 {
                        self.write(&mut sink, &mut batch).await;
                    }
                    break;
                }
                _ = tick.tick() => {
                    if !self.drain(&mut sink, &mut batch).await {
                        break;
                    }
                }
            }
        }
        sink.flush();
    }

    /// Writes everything queued now, in batches; `false` once every sender is gone.
    async fn drain(&mut self, sink: &mut Sink, batch: &mut Vec<Pending>) -> bool {
        loop {
            let mut open = true;
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                return open;
            }
            self.write(sink, batch).await;
        }
    }

    async fn write(&self, sink: &mut Sink, batch: &mut Vec<Pending>) {
        let lines: Vec<Line> = batch
            .drain(..)
            .map(|record| record.line(&self.node, &self.privacy))
            .collect();
        self.recent.extend(lines.iter().cloned());
        let lines: Vec<Formatted> = lines.into_iter().filter_map(Formatted::new).collect();
        let n = lines.len() as u64;
        match sink.write(&lines).await {
            Ok(()) => {
                self.counts.written.fetch_add(n, Ordering::Relaxed);
                self.written.increment(n);
            }
            Err(error) => {
                if !matches!(error, SinkError::BackingOff) {
                    self.counts.sink_errors.fetch_add(1, Ordering::Relaxed);
                    self.errors.increment(1);
                }
                match &error {
                    SinkError::Failed(why) => {
                        tracing::warn!(records = n, "decision log: the sink failed: {why}");
                    }
                    SinkError::Refused(Some(why)) => tracing::error!(
                        records = n,
                        "decision log: {why}; records are dropped until the login is accepted \
                         (told once, counted in {SINK_ERRORS})"
                    ),
                    SinkError::Refused(None) | SinkError::BackingOff => {}
                }
                self.counts.dropped_sink.fetch_add(n, Ordering::Relaxed);
                self.dropped.increment(n);
            }
        }
    }
}

impl WriterHandle {
    /// Stops taking records, writes what is queued and waits for that, at most `wait`.
    pub async fn finish(mut self, wait: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(wait, &mut self.done).await.is_err() {
            tracing::warn!("decision log: records still queued at exit were not written");
        }
    }
}

fn describe() {
    metrics::describe_counter!(
        DROPPED,
        "Decision-log records dropped, by reason (queue_full, sink_error)."
    );
    metrics::describe_counter!(
        CAPPED,
        "Denied, shadow-denied, degraded and refused decisions and reports not logged: over the per-second cap."
    );
    metrics::describe_counter!(WRITTEN, "Decision-log records written to the sink.");
    metrics::describe_counter!(
        SINK_ERRORS,
        "Failed writes to the decision-log sink (each loses one batch)."
    );
    for reason in ["queue_full", "sink_error"] {
        counter!(DROPPED, "reason" => reason).increment(0);
    }
    counter!(CAPPED).increment(0);
    counter!(WRITTEN).increment(0);
    counter!(SINK_ERRORS).increment(0);
}

#[cfg(test)]
mod tests;
