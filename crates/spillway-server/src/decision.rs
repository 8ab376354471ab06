//! The decision: the one step every request takes, whichever transport brought it.
//!
//! A transport turns its request into an [`Ask`]: the planned limits (each with its counter key
//! and cost), the labels the verdict carries, and the failure mode that applies. [`decide`]
//! then runs the same path for all of them:
//!
//! ```text
//! Ask ─► Engine::check_planned ─► store (behind failure::guard: budget, breaker)
//!    └─► (global limits) RegionNode::check ─► the own store and far regions' stores; a
//!              │                              store failing after the first look: its limits
//!              │                              to the failure mode within the check
//!              │ Err(StoreError)
//!              ▼
//!        failure_mode_answer ─► Failover::fallback (open / closed / degrade with emergency
//!              │   quotas; with regions, an `aggregate` limit's quota cut to the region's
//!              │   room, and what it admits published)
//!              ▼
//!        Outcome::Decided { verdict, degraded } | Outcome::Refused { retry_after, .. }
//!              ▼
//!        observe (metrics, the top-k sketches of `telemetry::top`, the dashboard's
//!                 `telemetry::live`, the decision log)
//! ```
//!
//! With traces on (`telemetry::trace`), the same steps run with a span open: the decision's,
//! with a child around the store call and another around a failover.
//!
//! Transports only translate the [`Outcome`]: the HTTP API into a status, headers and a JSON
//! body (`http::verdict`), the Envoy service into a `RateLimitResponse` or a gRPC status
//! (`grpc::response`). Neither matches on store errors; they read only which failure mode
//! answered (the degraded mark, and for gRPC whether an `open` answer checked nothing).

use crate::failure::Fallback;
use crate::metrics;
use crate::region::FarFailure;
use crate::state::AppState;
use crate::telemetry::decision_log::{self, Subject};
use crate::telemetry::trace::{DecisionTrace, Untraced};
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::policy::{FailureMode, Planned, Policy, Resolved, Scope};
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// One request, as the decision sees it: what to check and how to label the answer.
#[derive(Debug)]
pub struct Ask<'a> {
    /// Every limit to check, with its key and cost, checked as one all-or-nothing step.
    pub planned: &'a [Planned],
    /// The verdict's tier (for the Envoy service, the domain).
    pub tier: Arc<str>,
    /// The verdict's route (the matched pattern), if any.
    pub route: Option<Arc<str>>,
    /// The name degraded decisions are counted and logged under: the route, or the Envoy
    /// domain. It comes from configuration, never from the request, so it bounds the metric's
    /// cardinality.
    pub label: Option<&'a str>,
    /// What to do if the store cannot answer.
    pub failure_mode: FailureMode,
    /// The cost the verdict reports.
    pub cost: u64,
    /// Charge the limits, or only look.
    pub mode: CheckMode,
    /// Who asked, for the decision log.
    pub subject: Subject<'a>,
    /// Who asked, for the most-denied lists of `/v1/top`.
    pub who: Who<'a>,
}

/// The tenant and user a request named, as the transport read them (client-given text).
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// The request's tenant.
    pub tenant: Option<&'a str>,
    /// The request's user.
    pub user: Option<&'a str>,
}

impl<'a> Ask<'a> {
    /// The ask for a request the policy resolved.
    pub fn resolved(resolved: &'a Resolved, mode: CheckMode) -> Self {
        Self {
            planned: &resolved.limits,
            tier: resolved.tier.clone(),
            route: resolved.route.as_ref().map(|r| r.name.clone()),
            label: resolved.route.as_ref().map(|r| &*r.name),
            failure_mode: resolved.failure_mode,
            cost: resolved.cost,
            mode,
            subject: Subject::default(),
            who: Who::default(),
        }
    }

    /// The same ask, naming who sent it.
    pub fn by(self, who: Who<'a>) -> Self {
        Self { who, ..self }
    }

    fn verdict(&self, allowed: bool, outcomes: Vec<LimitOutcome>) -> Verdict {
        Verdict {
            allowed,
            tier: self.tier.clone(),
            route: self.route.clone(),
            failure_mode: self.failure_mode,
            cost: self.cost,
            outcomes,
        }
    }
}

/// A verdict, and whether it was reached without the store.
#[derive(Debug, Clone)]
pub struct Decided {
    /// What to answer.
    pub verdict: Verdict,
    /// `Some(mode)` when the store failed and a failure mode decided, naming the one that
    /// answered: `open` (the verdict allows and lists no limits; also a `degrade` request
    /// whose emergency store failed) or `degrade` (the limits are the emergency quotas).
    /// Answers then carry the `Spillway-Degraded` marker. When a store failed within a check
    /// across regions (`crate::region`: a far region's, or the own store at its charge), the
    /// mode decided that store's limits and the others were counted as usual: under `open`
    /// the verdict lists them all (the uncounted ones as shadow limits) and may deny.
    pub degraded: Option<FailureMode>,
    /// With `store.regions`, the home region of the request's tenant (`crate::region`),
    /// which answers name so a gateway can route the tenant there.
    pub home_region: Option<Arc<str>>,
}

/// A request refused because the store failed and its failure mode is `closed`.
#[derive(Debug)]
pub struct Refused {
    /// How long the client should wait before trying again (about when the breaker probes).
    pub retry_after: Duration,
    /// Why the store could not answer, for the refusal's message.
    pub error: StoreError,
}

/// How a decision ended; see the module docs.
#[derive(Debug)]
pub enum Outcome {
    /// A verdict was reached, by the store or by the failure mode.
    Decided(Decided),
    /// No verdict: the store failed and the request fails closed.
    Refused(Refused),
}

/// Decides `ask` against `policy`, the snapshot the caller resolved it with (so the request
/// and a failure's fallback see one policy), and observes the result.
pub async fn decide(app: &AppState, policy: &Policy, ask: &Ask<'_>) -> Outcome {
    match &app.tracing {
        // Tracing off costs this one branch: `Untraced`'s hooks are empty.
        None => run(app, policy, ask, Untraced).await,
        // Boxed, so the span does not enlarge the future of every untraced decision.
        Some(tracing) => Box::pin(run(app, policy, ask, tracing.decision(ask))).await,
    }
}

/// The decision itself, reporting its steps to `trace`: monomorphised once with [`Untraced`]
/// (whose hooks compile to nothing) and once with a span.
async fn run(
    app: &AppState,
    policy: &Policy,
    ask: &Ask<'_>,
    mut trace: impl DecisionTrace,
) -> Outcome {
    let stopwatch = metrics::Stopwatch::start();
    trace.store_call(ask.planned.len());
    // Set when a store failed within a check across regions and the failure mode decided
    // its limits alone.
    let mut fell_back = None;
    let result = match &app.regions {
        // Only `home` and `aggregate` limits need more than the region's own store; a request
        // whose planned limits are all `regional` takes the plain path.
        Some(regions)
            if policy.has_global_limits()
                && (ask.planned.iter()).any(|p| p.def.scope != Scope::Regional) =>
        {
            let own = app.engine.store().as_ref();
            let far = FarFailure {
                mode: ask.failure_mode,
                failover: &app.failover,
                label: ask.label,
            };
            // Boxed, as is the failover below: a future's size is that of its largest
            // state, and every check's future is copied whole into its box by the serving
            // thread, so the rare paths keep theirs out of it.
            let checked = Box::pin(regions.check(policy, own, ask.planned, ask.mode, &far)).await;
            checked.map(|c| {
                fell_back = c.fell_back;
                (c.allowed, c.outcomes)
            })
        }
        _ => app.engine.check_planned(ask.planned, ask.mode).await,
    };
    let home_region = (app.regions.as_ref())
        .zip(ask.who.tenant)
        .map(|(regions, tenant)| regions.home_name(policy, tenant));
    trace.store_answered(&result);
    if let Some(how) = fell_back {
        // Counted as a store failure of the mode that answered, as below; the failover itself
        // (its degraded-decision count and log line) was recorded where it answered.
        metrics::record_store_failure(how.mode);
        trace.failover(how.mode);
        trace.failover_answered(&how.as_fallback());
    }
    let elapsed = stopwatch.elapsed();
    metrics::record_check_duration(elapsed);
    let outcome = match result {
        Ok((allowed, outcomes)) => Outcome::Decided(Decided {
            verdict: ask.verdict(allowed, outcomes),
            degraded: fell_back.map(|f| f.mode),
            home_region,
        }),
        Err(error) => {
            let mode = failure_mode_for(ask.failure_mode, &error);
            metrics::record_store_failure(mode);
            trace.failover(mode);
            let fallback = Box::pin(failure_mode_answer(app, policy, ask, mode, &error)).await;
            trace.failover_answered(&fallback);
            match fallback {
                Fallback::Closed { retry_after } => {
                    Outcome::Refused(Refused { retry_after, error })
                }
                Fallback::Open => Outcome::Decided(Decided {
                    verdict: ask.verdict(true, Vec::new()),
                    degraded: Some(FailureMode::Open),
                    home_region,
                }),
                Fallback::Degraded { allowed, outcomes } => Outcome::Decided(Decided {
                    verdict: ask.verdict(allowed, outcomes),
                    degraded: Some(FailureMode::Degrade),
                    home_region,
                }),
            }
        }
    };
    observe(app, policy, ask, &outcome, elapsed);
    trace.finish(ask, &outcome);
    outcome
}

/// The failure mode that answers a request of a route failing `mode` whose store call failed
/// with `error`: the route's own, but for a call that never left this node because its queue
/// to the store was full ([`StoreError::Overloaded`]), which an `open` route answers with its
/// emergency quotas (`degrade`): a flood that fills the queue must not buy unlimited admission
/// for itself and everyone else.
pub fn failure_mode_for(mode: FailureMode, error: &StoreError) -> FailureMode {
    match mode {
        FailureMode::Open if error.is_overload() => FailureMode::Degrade,
        mode => mode,
    }
}

/// The failure mode `mode`'s answer for `ask`, whose store failed with `error`. Its own
/// future, boxed by the caller: what it holds across its await stays out of every decision's.
async fn failure_mode_answer(
    app: &AppState,
    policy: &Policy,
    ask: &Ask<'_>,
    mode: FailureMode,
    error: &StoreError,
) -> Fallback {
    let regions = (app.regions.as_ref()).filter(|_| policy.has_global_limits());
    // With regions, an `aggregate` limit's emergency quota is a part of what this region may
    // still admit of it, not of the whole limit (only emergency quotas read the numbers).
    let cut = (regions.filter(|_| mode == FailureMode::Degrade))
        .map(|regions| regions.for_failover(ask.planned));
    let planned = cut.as_deref().unwrap_or(ask.planned);
    let fallback = (app.failover)
        .fallback(policy, mode, ask.label, planned, ask.mode, error)
        .await;
    if let Some(regions) = regions.filter(|_| ask.mode == CheckMode::Consume) {
        // What a failure mode admitted goes to the other regions like any admission (once
        // this region's store takes publications again), so they do not count it as unused.
        match &fallback {
            Fallback::Open => regions.count_admitted(ask.planned, &[]),
            Fallback::Degraded {
                allowed: true,
                outcomes,
            } => regions.count_admitted(ask.planned, outcomes),
            _ => {}
        }
    }
    fallback
}

/// A report of a cost known only after the response, for the limits metered after the fact
/// (`charge: after`); see `POST /v1/report` and the Envoy service's stream-done calls.
#[derive(Debug)]
pub struct Report<'a> {
    /// The metered limits the report reaches, each with the reported cost.
    pub planned: &'a [Planned],
    /// The caller's id for the request, so a retried report is recorded once.
    pub request_id: Option<&'a str>,
    /// The labels the standing carries, as a verdict's.
    pub tier: Arc<str>,
    /// The matched route, if any.
    pub route: Option<Arc<str>>,
    /// The reported cost.
    pub cost: u64,
    /// How the report came, for the metrics: `http` or `envoy`.
    pub via: &'static str,
    /// The tenant the report is charged to (the verified one under `principals:`), which
    /// scopes its request id and shares the stores' memory of ids fairly between tenants.
    pub tenant: Option<&'a str>,
    /// Who reported, for the decision log (never a credential).
    pub subject: Subject<'a>,
}

/// What a report came to.
#[derive(Debug)]
pub enum Reported {
    /// The store answered. `recorded` is `false` for a retry of a report already recorded
    /// (or a report that reached no metered limit); `standing` is a verdict of the keys
    /// after the charge: allowed while none owes anything, else denied with the time until
    /// the debt is repaid.
    Answered {
        /// Whether this call charged anything.
        recorded: bool,
        /// The keys' standing.
        standing: Verdict,
    },
    /// The store could not record it. Reports are best-effort: a failed one is lost unless
    /// the caller retries it (with the same id, it still counts once).
    Failed(StoreError),
}

/// Records `report` through the guarded store (budget and breaker, but no failure mode: a
/// cost that already happened cannot be denied, only recorded or lost) and observes it
/// (metrics, and the decision log: a recorded or failed report is logged, a retry is not).
/// `policy` is the snapshot the report was resolved with.
pub async fn report(app: &AppState, policy: &Policy, report: &Report<'_>) -> Reported {
    // A limit counted under several route keys is planned once per key; its metric counts
    // the report once.
    let mut limits: Vec<Arc<str>> = Vec::with_capacity(report.planned.len());
    for (i, planned) in report.planned.iter().enumerate() {
        let name = &planned.def.name;
        if !report.planned[..i]
            .iter()
            .any(|p| p.def.name.same_compilation(name))
        {
            limits.push(name.to_arc());
        }
    }
    let verdict = |allowed, outcomes| Verdict {
        allowed,
        tier: report.tier.clone(),
        route: report.route.clone(),
        failure_mode: FailureMode::Open,
        cost: report.cost,
        outcomes,
    };
    if report.planned.is_empty() {
        metrics::record_report(report.via, "unmetered", &limits, report.cost);
        return Reported::Answered {
            recorded: false,
            standing: verdict(true, Vec::new()),
        };
    }
    let reported = match app
        .engine
        .charge_planned(report.planned, report.request_id, report.tenant)
        .await
    {
        Ok((recorded, outcomes)) => {
            let outcome = if recorded { "recorded" } else { "duplicate" };
            metrics::record_report(report.via, outcome, &limits, report.cost);
            let allowed = outcomes.iter().all(|o| o.shadow || o.decision.allowed);
            Reported::Answered {
                recorded,
                standing: verdict(allowed, outcomes),
            }
        }
        Err(error) => {
            metrics::record_report(report.via, "failed", &limits, report.cost);
            tracing::warn!(%error, "a reported cost could not be recorded and is lost");
            Reported::Failed(error)
        }
    };
    decision_log::observe_report(app, policy, report, &reported);
    reported
}

/// The one place a finished decision is seen: the top-k sketches, the dashboard's decisions
/// per second (with the store call's time `elapsed`), decisions by route, consuming verdicts
/// the store reached by limit (degraded decisions are also counted by `failure::report` as
/// they are made), and the decision log.
fn observe(app: &AppState, policy: &Policy, ask: &Ask<'_>, outcome: &Outcome, elapsed: Duration) {
    // One clock read for every observer that needs the time.
    let now = app.clock.now();
    app.top.observe(now, ask, outcome);
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    app.live.observe(now, ask, outcome, micros);
    metrics::record_route_decision(ask, outcome);
    if let Outcome::Decided(decided) = outcome {
        if decided.degraded.is_none() && ask.mode == CheckMode::Consume {
            metrics::record_verdict(&decided.verdict);
        }
    }
    decision_log::observe(app, policy, now, ask, outcome);
}
