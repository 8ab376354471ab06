//! What orchestrators and monitoring ask: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` says the process is alive and serving HTTP: always 200 `ok`. It deliberately
//!   checks nothing else, so a slow store never gets a healthy process restarted.
//! - `/readyz` says whether this instance should receive traffic: 200 when a policy is loaded
//!   and the store answers a ping within a second, else 503. The JSON body says which policy is
//!   in force (source, load time in milliseconds since the epoch, limit count) and how the
//!   store is doing.
//! - `/metrics` is the Prometheus text exposition (see [`crate::metrics`]).

use crate::app::AppState;
use crate::metrics;
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
    policy: PolicyReport,
    store: StoreReport,
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
}

/// Liveness: the process answers HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: a policy is loaded and the store is reachable.
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
    let ready = store.is_ok();
    let body = Readiness {
        ready,
        policy: PolicyReport {
            loaded: true,
            source: info.source.clone(),
            loaded_at_ms: info.loaded_at / 1_000,
            limits: info.limits,
        },
        store: StoreReport {
            ok: ready,
            status: store.err().unwrap_or_else(|| "ok".to_owned()),
            keys: app.store.key_count(),
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
/// size up to a second old.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    metrics::record_store(app.store.key_count(), app.store.evictions());
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}
