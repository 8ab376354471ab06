//! The state the whole process shares: the engine with its policy, the store, the failure
//! handling, the clock, and what `/readyz` says about the policy in force.
//!
//! Both transports hold it (the HTTP router as its state, the Envoy service through
//! `grpc::RlsState`), `decision` decides with it, and `reload` swaps the policy inside it.
//! It sits below everything that uses it: it imports no transport and no configuration
//! code, only the settings type of `/v1/authorize` (a leaf module), the decision log's
//! request-path handle and the tracer.

use crate::catalog::CatalogNode;
use crate::clock::ServerClock;
use crate::failure::Failover;
use crate::http::settings::AuthorizeSettings;
use crate::telemetry::decision_log::DecisionLog;
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use spillway_core::engine::Engine;
use spillway_core::store::Store;
use spillway_core::time::Micros;
use std::sync::Arc;

/// What the handlers share. Built once at start-up; the policy inside the engine and the
/// [`PolicyInfo`] are swapped atomically on reload, everything else is fixed.
pub struct AppState {
    /// The decision engine (holds the current policy).
    pub engine: Engine,
    /// The store behind the engine, for readiness pings, sweeping and size metrics.
    pub store: Arc<dyn Store>,
    /// The process clock.
    pub clock: ServerClock,
    /// What `/readyz` says about the policy in force.
    pub policy_info: ArcSwap<PolicyInfo>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// How `/v1/authorize` reads and answers requests.
    pub authorize: AuthorizeSettings,
    /// What to do when the store fails (shared with the gRPC service).
    pub failover: Arc<Failover>,
    /// The tenant catalog the engine's policy resolves against, and how current it is;
    /// policy reloads go through it.
    pub catalog: Arc<CatalogNode>,
    /// The decision log's request-path end; `None` when it is off.
    pub decision_log: Option<DecisionLog>,
    /// This node's hot keys and most denied tenants (`/v1/top`).
    pub top: Arc<crate::telemetry::top::Top>,
    /// Where the nodes share their top-k summaries; `None` on the in-memory store.
    pub top_board: Option<crate::telemetry::top::redis::Board>,
    /// Trace spans of decisions; `None` when traces are off (no `--otlp-endpoint`).
    pub tracing: Option<crate::telemetry::trace::Tracing>,
    /// Verifies who is calling when the policy has a `principals:` section (keys, token
    /// cache).
    pub principals: crate::principal::PrincipalState,
    /// The node's region and the others' stores and counts; `None` without `store.regions`.
    pub regions: Option<Arc<crate::region::RegionNode>>,
    /// What the dashboard shows live: decisions per second, shadow denials, reloads.
    pub live: crate::telemetry::live::Live,
}

/// What `/readyz` reports about the policy in force.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    /// Where it came from ([`crate::config::PolicySource::describe`]).
    pub source: String,
    /// When it was loaded, by the server's clock.
    pub loaded_at: Micros,
    /// How many limits it defines.
    pub limits: usize,
}
