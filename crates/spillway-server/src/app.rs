//! The state every handler shares, and the router that maps paths to handlers.
//!
//! Routes:
//!
//! | path                      | methods | purpose                                   |
//! |---------------------------|---------|-------------------------------------------|
//! | `/v1/check`               | POST    | JSON decision API                         |
//! | `/v1/authorize`           | any     | decision from proxy headers (nginx, Traefik) |
//! | `/v1/authorize/{*path}`   | any     | the same, Envoy `path_prefix` form        |
//! | `/healthz`                | GET     | liveness                                  |
//! | `/readyz`                 | GET     | readiness (policy loaded, store pingable) |
//! | `/metrics`                | GET     | Prometheus text                           |
//! | `/debug/clock`            | POST    | only with `--manual-clock` (tests)        |
//!
//! Unknown paths get a 404 problem, known paths asked with the wrong method a 405 problem with
//! an `Allow` header. Request bodies over 16 KiB are refused with 413.

use crate::clock::ServerClock;
use crate::config::PolicyInfo;
use crate::http::authorize::{self, AuthorizeSettings};
use crate::http::{check, debug, probes, problem};
use arc_swap::ArcSwap;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use spillway_core::engine::Engine;
use spillway_core::store::Store;
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
}

/// The HTTP surface of the server, ready for `axum::serve`.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/v1/check", post(check::check))
        .route(authorize::PREFIX, any(authorize::authorize))
        .route(
            &format!("{}/{{*path}}", authorize::PREFIX),
            any(authorize::authorize_prefixed),
        )
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics));
    if state.clock.manual_control().is_some() {
        router = router.route(debug::CLOCK_PATH, post(debug::clock));
    }
    router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(check::MAX_BODY_BYTES))
        .with_state(state)
}
