//! What orchestrators and monitoring ask: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` says the process is alive and serving HTTP: always 200 `ok`. It deliberately
//!   checks nothing else, so a slow store never gets a healthy process restarted.
//! - `/readyz` says whether this instance should receive traffic: 200 once a policy is loaded.
//!   A store that is down does not make it 503: every node shares the store, so taking nodes
//!   out of rotation would only turn a degraded service into an outage, and each route's
//!   failure mode already says what to answer without the store. Instead `status` reads
//!   `degraded` when the store does not answer a ping within a second or any of its circuit
//!   breakers is not closed (on a Redis Cluster, one per master: one master's open breaker
//!   degrades that master's keys only, but the node is not fully healthy). The JSON body says
//!   which policy is in force (source, load time in milliseconds since the epoch, limit count)
//!   and how the store is doing (ping, the worst breaker state as `circuit`, each master whose
//!   breaker is not closed under `domains`, emergency counters held), and how current the tenant catalog is (where it came
//!   from, its version, whether it is stale, seconds since the database last answered). The
//!   one case that is not ready: a catalog database that was unreachable at start with no
//!   snapshot to boot from (every tenant would be judged by the default tier).
//! - `/metrics` is the Prometheus text exposition (see [`crate::metrics`]).

use crate::catalog::{CatalogStatus, Origin};
use crate::failure::breaker::CircuitState;
use crate::metrics;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long `/readyz` waits for the store before calling it unavailable.
pub const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The `/readyz` body.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    status: &'static str,
    policy: PolicyReport,
    store: StoreReport,
    catalog: CatalogReport,
}

#[derive(Debug, Serialize)]
struct CatalogReport {
    #[serde(flatten)]
    status: CatalogStatus,
    /// Seconds since the database last answered; `null` if it never has (or there is none).
    age_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PolicyReport {
    loaded: bool,
    source: String,
    loaded_at_ms: u64,
    limits: usize,
}

#[derive(Debug, Serialize)]
struct StoreReport {
    ok: bool,
    status: String,
    keys: u64,
    circuit: &'static str,
    /// Each failure domain (a cluster master's `host:port`) whose breaker is not closed, with
    /// its state; absent when every one is closed.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    domains: std::collections::BTreeMap<String, &'static str>,
    emergency_keys: u64,
}

/// Liveness: the process answers HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: a policy is loaded; the store's health is reported, not required.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let info = app.policy_info.load();
    let store = match tokio::time::timeout(STORE_PING_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no answer to a ping within {} ms",
            STORE_PING_TIMEOUT.as_millis()
        )),
    };
    let ok = store.is_ok();
    let circuit = app.failover.circuit();
    let healthy = ok && circuit == CircuitState::Closed;
    let catalog = app.catalog.status();
    // A node with a catalog database that has neither reached it nor found a snapshot would
    // judge every tenant by the default tier: keep traffic away until it has a catalog.
    let ready = catalog.origin != Origin::Empty;
    let age_seconds = catalog
        .contact_at
        .map(|at| app.clock.now().saturating_sub(at) as f64 / 1e6);
    let body = Readiness {
        ready,
        status: if healthy { "ok" } else { "degraded" },
        policy: PolicyReport {
            loaded: true,
            source: info.source.clone(),
            loaded_at_ms: info.loaded_at / 1_000,
            limits: info.limits,
        },
        store: StoreReport {
            ok,
            status: store.err().unwrap_or_else(|| "ok".to_owned()),
            keys: app.store.key_count(),
            circuit: circuit.as_str(),
            domains: app
                .failover
                .open_domains()
                .into_iter()
                .map(|(name, state)| (name, state.as_str()))
                .collect(),
            emergency_keys: app.failover.emergency_keys(),
        },
        catalog: CatalogReport {
            status: catalog,
            age_seconds,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The Prometheus scrape endpoint. Store gauges are refreshed first so a scrape never shows a
/// size up to a second old; the store's per-domain breaker gauge
/// (`spillway_store_domain_circuit_state`) and the ten most denied tenants
/// (`spillway_top_blocked`) follow the recorder's lines, rendered as they stand now.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    metrics::record_store(app.store.key_count(), app.store.evictions());
    crate::serving::body_memory::record();
    let mut text = app.metrics.render();
    text.push_str(&app.failover.domain_exposition());
    text.push_str(&app.top.blocked_exposition(app.clock.now()));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
