//! The Prometheus metrics the server exports, and the recorder that holds them.
//!
//! The recorder is rendered by `/metrics` on the server's own port; the exporter's HTTP
//! listener is not used. Labels are limit names and fixed outcome words only, never a
//! rate-limit key (a tenant, user or IP), which would give every client its own time series.
//!
//! | metric                                   | type      | labels             |
//! |------------------------------------------|-----------|--------------------|
//! | `spillway_decisions_total`               | counter   | `outcome`, `limit` |
//! | `spillway_shadow_would_deny_total`       | counter   | `limit`            |
//! | `spillway_check_duration_seconds`        | histogram | none               |
//! | `spillway_config_reloads_total`          | counter   | `outcome`          |
//! | `spillway_store_keys`                    | gauge     | none               |
//! | `spillway_store_evictions_total`         | counter   | none               |
//! | `spillway_store_failures_total`          | counter   | `failure_mode`     |
//! | `spillway_degraded_decisions_total`      | counter   | `route`, `mode`    |
//! | `spillway_store_circuit_state`           | gauge     | none               |
//! | `spillway_store_domain_circuit_state`    | gauge     | `domain`           |
//! | `spillway_store_circuit_transitions_total` | counter | `from`, `to`       |
//! | `spillway_emergency_keys`                | gauge     | none               |
//! | `spillway_decision_log_written_total`    | counter   | none               |
//! | `spillway_decision_log_dropped_total`    | counter   | `reason`           |
//! | `spillway_decision_log_capped_total`     | counter   | none               |
//! | `spillway_decision_log_sink_errors_total` | counter  | none               |
//! | `spillway_route_decisions_total`         | counter   | `route`, `outcome` |
//! | `spillway_reports_total`                 | counter   | `via`, `outcome`   |
//! | `spillway_reported_cost_total`           | counter   | `limit`            |
//! | `spillway_body_memory_refusals_total`    | counter   | none               |
//! | `spillway_body_memory_held_bytes`        | gauge     | none               |
//!
//! The catalog's own metrics (`spillway_catalog_*`) are listed in [`crate::catalog::metrics`],
//! the principal checks' (`spillway_principal_*`) in [`crate::principal::metrics`].
//! `spillway_body_memory_refusals_total` counts request bodies refused under
//! `--max-body-memory`, and `spillway_body_memory_held_bytes` is what bodies still arriving
//! hold under it, set at each scrape ([`crate::serving::body_memory`]).
//!
//! The five before the decision log's are recorded by [`crate::failure`] (see
//! `docs/FAILURE.md`); `route` is a route's pattern from the policy (or an Envoy domain), never
//! a raw request path; `domain` is a Redis Cluster master's `host:port` as Redis reports it, or
//! `other` for the slots no master is known for (at most 64 at a time), never client input; that
//! gauge is not in the recorder but rendered from the breakers at each scrape
//! (`Failover::domain_exposition`), so a master that is gone leaves it. The decision log's are
//! named and described in [`crate::telemetry::decision_log`].
//!
//! `spillway_decisions_total` counts one per consuming check (peeks are not decisions):
//! `outcome` is `allowed` or `denied`, and `limit` is the verdict's governing limit, the one
//! that denied it or, when allowed, the one closest to denying; `(none)` when no limit applied.
//!
//! `spillway_route_decisions_total` counts every consuming decision, degraded and refused ones
//! included, by `route` (the matched route's pattern, the Envoy domain, or `(none)`: values
//! from configuration) and `outcome`: `allowed`, `denied`, `degraded_allowed`,
//! `degraded_denied` (a failure mode decided) or `refused` (the store failed on a `closed`
//! route).

use crate::decision::{Ask, Outcome};
use metrics::{counter, gauge, histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::policy::FailureMode;
use spillway_core::request::CheckMode;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Verdicts, by outcome and governing limit.
pub const DECISIONS: &str = "spillway_decisions_total";
/// Shadow limits that would have denied, by limit.
pub const SHADOW_WOULD_DENY: &str = "spillway_shadow_would_deny_total";
/// Time the engine took per check.
pub const CHECK_DURATION: &str = "spillway_check_duration_seconds";
/// Policy reloads, by outcome (`success` or `rejected`).
pub const CONFIG_RELOADS: &str = "spillway_config_reloads_total";
/// Checks the store could not answer, by the failure mode that was applied.
pub const STORE_FAILURES: &str = "spillway_store_failures_total";
/// Keys in the store now.
pub const STORE_KEYS: &str = "spillway_store_keys";
/// Keys evicted for room since start.
pub const STORE_EVICTIONS: &str = "spillway_store_evictions_total";

/// Consuming decisions, by route pattern and outcome.
pub const ROUTE_DECISIONS: &str = "spillway_route_decisions_total";

/// Reports of costs known after the response, by how they came (`http` for `/v1/report`,
/// `envoy` for the rate-limit filter's charge when the stream is done) and outcome:
/// `recorded`, `duplicate` (a retry of a report already recorded), `unmetered` (the request
/// reached no metered limit) or `failed` (the store could not record it: the report is lost
/// unless the caller retries it).
pub const REPORTS: &str = "spillway_reports_total";
/// Costs recorded after the response, by metered limit (the sum of reported costs).
pub const REPORTED_COST: &str = "spillway_reported_cost_total";

/// Counts one report and, when recorded, its cost against each limit it charged.
pub fn record_report(via: &'static str, outcome: &'static str, limits: &[Arc<str>], cost: u64) {
    counter!(REPORTS, "via" => via, "outcome" => outcome).increment(1);
    if outcome == "recorded" {
        for limit in limits {
            counter!(REPORTED_COST, "limit" => limit.clone()).increment(cost);
        }
    }
}

/// The `limit` label of a verdict no limit applied to.
pub const NO_LIMIT: &str = "(none)";

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for [`CHECK_DURATION`], in seconds: 50 µs to 100 ms. An in-memory check
/// takes microseconds; a networked store, milliseconds.
pub const CHECK_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// How a reload went, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new policy is in force.
    Success,
    /// The new policy was invalid; the old one stays.
    Rejected,
}

impl ReloadOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Rejected => "rejected",
        }
    }
}

/// Builds the recorder, installs it as the process's global one and returns the handle that
/// renders it. If another recorder is already installed (several servers in one test
/// process), the handle still works but stays empty.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CHECK_DURATION.to_owned()), CHECK_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(crate::store::ROUNDTRIP.to_owned()),
            crate::store::ROUNDTRIP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(spillway_redis::batch::BATCH_REQUESTS.to_owned()),
            spillway_redis::batch::BATCH_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder is already installed; this handle stays empty");
    }
    describe();
    crate::serving::body_memory::describe();
    crate::catalog::metrics::describe();
    // Handles kept past this point (this one, and the per-thread decision counters) assume the
    // recorder never drops a metric: no idle timeout is set.
    CHECK_DURATION_HANDLE.get_or_init(|| histogram!(CHECK_DURATION));
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        DECISIONS,
        "Rate-limit verdicts, by outcome and governing limit."
    );
    metrics::describe_counter!(
        SHADOW_WOULD_DENY,
        "Requests a shadow (log-only) limit would have denied."
    );
    metrics::describe_histogram!(
        CHECK_DURATION,
        Unit::Seconds,
        "Time the engine took to reach a verdict."
    );
    metrics::describe_counter!(CONFIG_RELOADS, "Policy reload attempts, by outcome.");
    metrics::describe_counter!(
        ROUTE_DECISIONS,
        "Consuming decisions, by route pattern (or Envoy domain) and outcome."
    );
    metrics::describe_counter!(
        STORE_FAILURES,
        "Checks the store could not answer, by the failure mode applied."
    );
    metrics::describe_gauge!(STORE_KEYS, "Rate-limit keys held by the store.");
    metrics::describe_counter!(
        STORE_EVICTIONS,
        "Keys the store evicted to stay within --max-keys."
    );
    // Make the reload counters visible at zero, so "no reload yet" reads as 0, not as absent.
    for outcome in [ReloadOutcome::Success, ReloadOutcome::Rejected] {
        counter!(CONFIG_RELOADS, "outcome" => outcome.label()).increment(0);
    }
}

/// Counts one consuming verdict.
pub fn record_verdict(verdict: &Verdict) {
    let name = verdict.governing().map_or(NO_LIMIT, |o| &*o.name);
    let outcome = usize::from(!verdict.allowed);
    DECISION_COUNTERS.with_borrow_mut(|counters| {
        let pair = match counters.get_mut(name) {
            Some(pair) => pair,
            None => counters.entry(Arc::from(name)).or_default(),
        };
        pair[outcome]
            .get_or_insert_with(|| {
                let limit = metrics::SharedString::from(name.to_owned());
                counter!(DECISIONS, "outcome" => OUTCOMES[outcome], "limit" => limit)
            })
            .increment(1);
    });
    // A request counts once per shadow limit, also when the limit was counted under several
    // route keys (copies sharing one compiled name).
    let would_deny = |o: &&LimitOutcome| o.shadow && !o.decision.allowed;
    let outcomes = &verdict.outcomes;
    for (i, o) in outcomes.iter().enumerate().filter(|(_, o)| would_deny(o)) {
        if !(outcomes[..i].iter())
            .filter(would_deny)
            .any(|earlier| earlier.name.same_compilation(&o.name))
        {
            counter!(SHADOW_WOULD_DENY, "limit" => o.name.to_arc()).increment(1);
        }
    }
}

/// A thread's counters by a name from the policy (a limit or a route). Looked up on every
/// decision, so it hashes with foldhash rather than the standard SipHash, which cost about 300
/// instructions per decision for the two lookups (`docs/BENCHMARKS.md`); the names come from
/// the policy, never from a client, so nothing here needs SipHash's resistance to chosen keys.
type NameMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// The `outcome` label of [`DECISIONS`], indexed by "was it denied".
const OUTCOMES: [&str; 2] = ["allowed", "denied"];

thread_local! {
    /// Each governing limit's `[allowed, denied]` decision counters, each registered on the
    /// first such decision on this thread. The registry's own lookup builds and hashes a
    /// labelled key on every call, which at load costs more than the decision it counts.
    /// Grows with the limit names a policy has ever had, which a reload rarely changes.
    static DECISION_COUNTERS: RefCell<NameMap<[Option<Counter>; 2]>> = RefCell::default();
}

/// Counts one finished consuming decision under its route and outcome (peeks are not counted).
pub fn record_route_decision(ask: &Ask<'_>, outcome: &Outcome) {
    if ask.mode != CheckMode::Consume {
        return;
    }
    let index = match outcome {
        Outcome::Decided(d) => match (d.degraded.is_some(), d.verdict.allowed) {
            (false, true) => 0,
            (false, false) => 1,
            (true, true) => 2,
            (true, false) => 3,
        },
        Outcome::Refused(_) => 4,
    };
    let route = ask.label.unwrap_or(NO_LIMIT);
    ROUTE_COUNTERS.with_borrow_mut(|counters| {
        let row = match counters.get_mut(route) {
            Some(row) => row,
            None => counters.entry(Arc::from(route)).or_default(),
        };
        row[index]
            .get_or_insert_with(|| {
                let route = metrics::SharedString::from(route.to_owned());
                counter!(ROUTE_DECISIONS, "route" => route, "outcome" => ROUTE_OUTCOMES[index])
            })
            .increment(1);
    });
}

/// The `outcome` label of [`ROUTE_DECISIONS`], by index.
const ROUTE_OUTCOMES: [&str; 5] = [
    "allowed",
    "denied",
    "degraded_allowed",
    "degraded_denied",
    "refused",
];

thread_local! {
    /// Each route's counters, one per outcome, registered on first use on this thread (as
    /// [`DECISION_COUNTERS`], for the same reason). Routes come from the policy: bounded.
    static ROUTE_COUNTERS: RefCell<NameMap<[Option<Counter>; 5]>> = RefCell::default();
}

/// Counts one reload attempt.
pub fn record_reload(outcome: ReloadOutcome) {
    counter!(CONFIG_RELOADS, "outcome" => outcome.label()).increment(1);
}

/// Counts one check the store failed, and what was done about it.
pub fn record_store_failure(mode: FailureMode) {
    counter!(STORE_FAILURES, "failure_mode" => mode.as_str()).increment(1);
}

/// Publishes the store's size and its running eviction count.
pub fn record_store(keys: u64, evictions: u64) {
    gauge!(STORE_KEYS).set(keys as f64);
    counter!(STORE_EVICTIONS).absolute(evictions);
}

/// Records how long one engine call took.
pub fn record_check_duration(took: Duration) {
    match CHECK_DURATION_HANDLE.get() {
        Some(histogram) => histogram.record(took.as_secs_f64()),
        None => histogram!(CHECK_DURATION).record(took.as_secs_f64()),
    }
}

/// The check-duration histogram, taken from the recorder once it is installed: it is
/// recorded on every decision, and has no labels to look up.
static CHECK_DURATION_HANDLE: OnceLock<Histogram> = OnceLock::new();

/// Measures latency on the monotonic clock. This is the one place the server reads real time
/// directly: latency is about the machine, never about the (possibly manual) policy clock.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts measuring.
    #[allow(clippy::disallowed_methods)] // latency timing only; see the type's docs
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Time since [`Stopwatch::start`].
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}
