//! Designed failure: what a node does when its shared store is slow or down.
//!
//! Both transports (the HTTP API and the Envoy gRPC service) reach it through
//! `crate::decision`, so a route behaves the same whichever way a request arrives:
//!
//! - [`guard`]: the store behind a time budget and circuit breakers ([`breaker`]), one per
//!   failure domain ([`domains`]: the store, or each cluster master), so no request waits past
//!   the budget and a dead store (or master) gets no traffic while its breaker is open;
//! - [`Failover::fallback`]: when the store fails, applies the request's failure mode (called
//!   by `crate::decision`, the path every request takes): `open` allows (marked degraded), `closed` refuses with a short
//!   `Retry-After`, `degrade` checks the request against per-node emergency quotas
//!   ([`emergency`]);
//! - [`on_runtime`]: polls store calls with the main runtime entered, so nothing a store
//!   client spawns lands on a serving thread;
//! - [`report`]: counts every degraded decision by route and mode, and logs them at a bounded
//!   rate.
//!
//! `docs/FAILURE.md` explains the model and each default.

pub mod breaker;
pub mod domains;
pub mod emergency;
pub mod guard;
pub mod on_runtime;
pub mod report;

use breaker::CircuitState;
use domains::DomainBreakers;
use emergency::EmergencyLimiter;
use guard::GuardedStore;
use spillway_core::engine::LimitOutcome;
use spillway_core::policy::{FailureMode, Planned, Policy, StoreConfig};
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;

/// The header (and JSON member) that marks a decision made without the store, on both
/// transports: an HTTP response header, and an Envoy `response_headers_to_add` entry. It is
/// lower-case because HTTP/2 and gRPC require it on the wire; docs write `Spillway-Degraded`,
/// the same name, since header names are case-insensitive.
pub const DEGRADED_HEADER: &str = "spillway-degraded";
/// The value of [`DEGRADED_HEADER`]: why the decision was degraded.
pub const DEGRADED_REASON: &str = "store-unavailable";

/// Default budget of one store call: well above a healthy Redis round trip in the same
/// network (well under a millisecond), small next to the latency of the request it guards.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(10);
/// Default consecutive failures that open the breaker: a single lost packet does not open it,
/// a dead store opens it within a handful of requests.
pub const DEFAULT_BREAKER_FAILURES: u64 = 5;
/// Default time an open breaker waits before probing: recovery is noticed within a second.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default `Retry-After` of a fail-closed refusal: about when the next probe will have run.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Default number of nodes that split an emergency quota.
pub const DEFAULT_EXPECTED_NODES: u64 = 3;

/// How a node copes with store failures, from the policy's `store:` section and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureSettings {
    /// The most one store call may take.
    pub budget: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u64,
    /// How long the breaker stays open before one probe.
    pub breaker_cooldown: Duration,
    /// What a fail-closed refusal's `Retry-After` says (whole seconds, at least 1).
    pub retry_after: Duration,
    /// Nodes expected to share the store; emergency quotas default to `ceil(quota / nodes)`.
    pub expected_nodes: u64,
}

impl Default for FailureSettings {
    fn default() -> Self {
        Self {
            budget: DEFAULT_BUDGET,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            retry_after: DEFAULT_RETRY_AFTER,
            expected_nodes: DEFAULT_EXPECTED_NODES,
        }
    }
}

impl FailureSettings {
    /// The settings for `store`, with `--store-timeout` (if given) as the budget.
    pub fn from_store(store: &StoreConfig, budget_override: Option<Duration>) -> Self {
        let mut out = Self::default();
        if let Some(s) = store.redis() {
            let micros =
                |m: Option<u64>, default: Duration| m.map_or(default, Duration::from_micros);
            out.budget = micros(s.timeout, out.budget);
            out.breaker_failures = s.breaker_failures.unwrap_or(out.breaker_failures);
            out.breaker_cooldown = micros(s.breaker_cooldown, out.breaker_cooldown);
            out.retry_after = micros(s.retry_after, out.retry_after);
            out.expected_nodes = s.expected_nodes.unwrap_or(out.expected_nodes);
        }
        if let Some(budget) = budget_override {
            out.budget = budget;
        }
        out
    }
}

/// What to answer for a request whose store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Allow it, marked degraded, with no limits reported.
    Open,
    /// Refuse it (HTTP 503, gRPC `UNAVAILABLE`), advising a retry after this long.
    Closed {
        /// For `Retry-After`.
        retry_after: Duration,
    },
    /// The emergency quotas decided, marked degraded.
    Degraded {
        /// Whether every enforced emergency limit admitted the request.
        allowed: bool,
        /// Each limit's outcome against its emergency quota, in the order given.
        outcomes: Vec<LimitOutcome>,
    },
}

/// The failure handling one node shares between its transports; see the module docs.
pub struct Failover {
    settings: FailureSettings,
    /// Whether this is the node's own store's (its breakers are the store's gauges).
    gauges: bool,
    breakers: Arc<DomainBreakers>,
    emergency: Arc<EmergencyLimiter>,
    report: report::Report,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("settings", &self.settings)
            .field("breakers", &self.breakers)
            .field("emergency", &self.emergency)
            .finish_non_exhaustive()
    }
}

impl Failover {
    /// Failure handling with `settings`; emergency quotas and the breaker's cooldown read time
    /// from `clock`.
    pub fn new(settings: FailureSettings, clock: Arc<dyn Clock>) -> Self {
        Self::with_gauges(settings, clock, true)
    }

    /// [`Failover::new`] for a store other than the node's own (a far region's): its
    /// breakers do not write the store's circuit metrics.
    pub fn for_region(settings: FailureSettings, clock: Arc<dyn Clock>) -> Self {
        Self::with_gauges(settings, clock, false)
    }

    fn with_gauges(settings: FailureSettings, clock: Arc<dyn Clock>, gauges: bool) -> Self {
        Self {
            breakers: Arc::new(DomainBreakers::with_gauges(
                settings.breaker_failures,
                settings.breaker_cooldown,
                gauges,
            )),
            emergency: Arc::new(EmergencyLimiter::new(
                clock.clone(),
                settings.expected_nodes,
            )),
            report: report::Report::new(),
            settings,
            gauges,
            clock,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &FailureSettings {
        &self.settings
    }

    /// Wraps a shared store in the budget and the breaker. The in-memory store is returned
    /// as it is: it cannot be unreachable, and a budget would only add spurious timeouts.
    pub fn guard(&self, store: Arc<dyn Store>, shared: bool) -> Arc<dyn Store> {
        if !shared {
            return store;
        }
        Arc::new(GuardedStore::new(
            store,
            self.settings.budget,
            self.breakers.clone(),
            self.emergency.clone(),
            self.clock.clone(),
        ))
    }

    /// The worst state of the store's breakers (`open` if any domain's is), for `/readyz`.
    pub fn circuit(&self) -> CircuitState {
        self.breakers.state()
    }

    /// Each named failure domain (a cluster master) whose breaker is not closed, for
    /// `/readyz`.
    pub fn open_domains(&self) -> Vec<(String, CircuitState)> {
        self.breakers.not_closed()
    }

    /// The [`breaker::DOMAIN_STATE`] gauge in Prometheus text, one line per failure domain
    /// the store names now (empty for a far region's store, and for a store that is one
    /// domain). Rendered at each scrape rather than kept in the metrics recorder, which
    /// cannot drop one series: a master replaced by its replica, or removed, leaves the
    /// exposition once no slot maps to it, instead of reading 0 for the life of the process
    /// (at most [`spillway_core::store::MAX_DOMAINS`] lines).
    pub fn domain_exposition(&self) -> String {
        let named = self.breakers.named();
        if !self.gauges || named.is_empty() {
            return String::new();
        }
        let name = breaker::DOMAIN_STATE;
        let mut out = format!(
            "# HELP {name} Circuit breaker state of one failure domain of the store (a Redis \
             Cluster master): 0 closed, 1 half-open, 2 open.\n# TYPE {name} gauge\n"
        );
        // Two domains may carry one name (a new master at an old master's address while the
        // old one is still mapped): one series each name, at the worse state.
        let mut worst: std::collections::BTreeMap<Arc<str>, f64> = Default::default();
        for (domain, state) in named {
            let g = worst.entry(domain).or_insert(0.0);
            *g = g.max(state.gauge());
        }
        for (domain, gauge) in worst {
            // Names come from the store's topology, never from a client; escaped all the same,
            // and whole (a long host name keeps its port).
            let label = crate::telemetry::top::prometheus::escape_whole(&domain);
            out.push_str(&format!("{name}{{domain=\"{label}\"}} {gauge}\n"));
        }
        out
    }

    /// Emergency counters held now, for `/readyz`.
    pub fn emergency_keys(&self) -> u64 {
        self.emergency.key_count()
    }

    /// Decides a request the store could not answer, by its failure `mode`, and counts it.
    /// `planned` are the request's limits, needed by `degrade`; `route` names the route (or
    /// Envoy domain) for metrics and logs and must come from configuration, never from the
    /// request. Callers: `crate::decision`'s `failure_mode_answer` for a request whose store
    /// failed, and `crate::region`'s check for the limits of a store that failed within it (a
    /// far region's, or the own store at its charge; the other limits counted as usual).
    pub async fn fallback(
        &self,
        policy: &Policy,
        mode: FailureMode,
        route: Option<&str>,
        planned: &[Planned],
        check: CheckMode,
        err: &StoreError,
    ) -> Fallback {
        let fallback = self.answer(policy, mode, planned, check).await;
        self.report
            .record(route.unwrap_or(report::NO_ROUTE), mode, err);
        fallback
    }

    /// What [`Failover::fallback`] answers, without counting or logging it: for more limits
    /// of a decision already counted.
    pub async fn answer(
        &self,
        policy: &Policy,
        mode: FailureMode,
        planned: &[Planned],
        check: CheckMode,
    ) -> Fallback {
        match mode {
            FailureMode::Open => Fallback::Open,
            FailureMode::Closed => Fallback::Closed {
                retry_after: self.settings.retry_after,
            },
            FailureMode::Degrade => match self.emergency.check(policy, planned, check).await {
                Ok((allowed, outcomes)) => Fallback::Degraded { allowed, outcomes },
                // The in-memory store does not fail; if it ever did, letting through is the
                // answer that keeps the API up.
                Err(_) => Fallback::Open,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::policy::RedisSettings;

    /// What `/metrics` shows after one of `failover`'s breakers opens, probes and closes.
    fn circuit_metrics(failover: impl FnOnce() -> Failover) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let t = &failover().breakers;
            let one = spillway_core::store::Domains::WHOLE;
            let now = 1_800_000_000_000_000;
            let a = t.admit(one, now).expect("closed");
            t.failed(a, now);
            let probe = t.admit(one, now + 1_000_000).expect("the probe");
            assert!(!t.succeeded(probe).is_empty());
        });
        handle.render()
    }

    #[test]
    fn only_the_nodes_own_store_writes_the_circuit_metrics() {
        let settings = FailureSettings {
            breaker_failures: 1,
            ..FailureSettings::default()
        };
        let clock = || -> Arc<dyn Clock> { Arc::new(spillway_core::time::ManualClock::new(0)) };
        let own = circuit_metrics(|| Failover::new(settings, clock()));
        for (from, to, n) in [
            ("closed", "open", 1),
            ("open", "half_open", 1),
            ("half_open", "closed", 1),
            ("half_open", "open", 0),
        ] {
            let line = format!(
                "{}{{from=\"{from}\",to=\"{to}\"}} {n}\n",
                breaker::TRANSITIONS
            );
            assert!(own.contains(&line), "{line} in {own}");
        }
        assert!(own.contains(&format!("{} 0\n", breaker::STATE)), "{own}");
        // A far region's breakers went through the same changes, unseen.
        let far = circuit_metrics(|| Failover::for_region(settings, clock()));
        assert!(!far.contains("spillway_store_"), "{far}");
    }

    #[test]
    fn the_domain_gauge_names_each_master_once_whole_and_only_for_the_own_store() {
        let clock = || -> Arc<dyn Clock> { Arc::new(spillway_core::time::ManualClock::new(0)) };
        let long = "redis-cluster-0.redis-cluster-headless.prod.svc.cluster.local:6379";
        let store = domains::tests::Named::default();
        store.name(
            vec![
                None,
                Some(long.into()),
                Some("10.0.0.2:6379".into()),
                Some("10.0.0.2:6379".into()),
            ],
            1,
        );
        let own = Failover::new(FailureSettings::default(), clock());
        assert_eq!(own.domain_exposition(), "", "nothing named yet");
        own.breakers.sync(&store);
        let text = own.domain_exposition();
        let name = breaker::DOMAIN_STATE;
        assert_eq!(text.matches("# TYPE ").count(), 1, "{text}");
        assert!(
            text.contains(&format!("{name}{{domain=\"{long}\"}} 0\n")),
            "the long name keeps its port: {text}"
        );
        assert_eq!(
            text.matches("10.0.0.2:6379").count(),
            1,
            "one series per name: {text}"
        );
        let far = Failover::for_region(FailureSettings::default(), clock());
        far.breakers.sync(&store);
        assert_eq!(
            far.domain_exposition(),
            "",
            "a far region's store has no gauge"
        );
    }

    #[test]
    fn policy_settings_and_the_cli_override_apply() {
        let store = StoreConfig::Redis(RedisSettings {
            urls: vec!["redis://a:1".into()],
            timeout: Some(5_000),
            breaker_failures: Some(2),
            expected_nodes: Some(4),
            ..RedisSettings::default()
        });
        let s = FailureSettings::from_store(&store, None);
        assert_eq!(s.budget, Duration::from_millis(5));
        assert_eq!((s.breaker_failures, s.expected_nodes), (2, 4));
        assert_eq!(s.breaker_cooldown, DEFAULT_BREAKER_COOLDOWN);
        let s = FailureSettings::from_store(&store, Some(Duration::from_millis(50)));
        assert_eq!(s.budget, Duration::from_millis(50));
        let memory = StoreConfig::Memory { max_keys: None };
        assert_eq!(
            FailureSettings::from_store(&memory, None),
            FailureSettings::default()
        );
    }
}
