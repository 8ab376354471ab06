//! The dashboard's read-only JSON endpoints, except the lookup (`super::lookup`): each reads
//! what the node already keeps and shapes it for the page (and for scripts). Fields are
//! described in `docs/dashboard-openapi.yaml`.

use crate::failure::breaker::CircuitState;
use crate::http::probes::STORE_PING_TIMEOUT;
use crate::http::problem::Problem;
use crate::metrics::Stopwatch;
use crate::state::AppState;
use crate::telemetry::decision_log::record::rfc3339_ms;
use crate::telemetry::live::rates::{Series, SECONDS};
use crate::telemetry::live::shadow::ShadowRow;
use crate::telemetry::live::{CatalogApplied, ReloadEvent};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use spillway_core::policy::{LimitDef, Policy};
use std::collections::HashSet;
use std::sync::Arc;

/// Seconds of recent traffic `store` sums for "now".
pub const RECENT_SECONDS: usize = 10;

/// What the page needs to know about where it is served.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Whether the admin API is on the same listener (an admin token is set).
    pub admin_api: bool,
}

/// `GET /ui/api/auth`: open to all, so the page knows whether to ask for the token before its
/// first call (rather than learn it from a refusal).
#[derive(Debug, Serialize)]
pub struct Auth {
    /// Whether every other endpoint needs `Authorization: Bearer <admin token>`.
    pub token_required: bool,
}

/// `GET /ui/api/info`.
#[derive(Debug, Serialize)]
pub struct Info {
    /// This node's name (`--node-name`).
    pub node: Arc<str>,
    /// The server's version.
    pub version: &'static str,
    /// Whether the admin API can be called from the page (same listener, same token).
    pub admin_api: bool,
    /// Whether tenants can change at runtime (a catalog database is configured).
    pub catalog_database: bool,
    /// Whether the decision log is on (the lookup's recent decisions come from it).
    pub decision_log: bool,
    /// Whether hot keys and denials are counted (`--no-top-k` turns them off).
    pub top_k: bool,
}

/// Where the page is, and what this node has turned on.
pub async fn info(
    State(app): State<Arc<AppState>>,
    Extension(placement): Extension<Placement>,
) -> Json<Info> {
    Json(Info {
        node: app.top.node().clone(),
        version: env!("CARGO_PKG_VERSION"),
        admin_api: placement.admin_api,
        catalog_database: app.catalog.db().is_some(),
        decision_log: app.decision_log.is_some(),
        top_k: app.top.enabled(),
    })
}

/// `?seconds=` of `/ui/api/series`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// How many seconds back (1 to 899; default all of them).
    pub seconds: Option<usize>,
}

/// `GET /ui/api/series`.
#[derive(Debug, Serialize)]
pub struct SeriesBody {
    /// The server's time, in milliseconds since the epoch.
    pub now_ms: u64,
    /// Seconds between points: always 1.
    pub step_s: u64,
    /// The counts, oldest second first (`start` is its time in seconds since the epoch).
    #[serde(flatten)]
    pub series: Series,
}

/// Decisions per second (allowed, denied, degraded) and store-call times.
pub async fn series(
    State(app): State<Arc<AppState>>,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let seconds = match query {
        Ok(Query(q)) => q.seconds.unwrap_or(SECONDS - 1),
        Err(e) => return Problem::invalid(e.body_text(), None).into_response(),
    };
    if !(1..SECONDS).contains(&seconds) {
        let detail = format!("`seconds` must be from 1 to {}", SECONDS - 1);
        return Problem::invalid(detail, Some("seconds".into())).into_response();
    }
    let now = app.clock.now();
    Json(SeriesBody {
        now_ms: now / 1_000,
        step_s: 1,
        series: app.live.rates.series(now, seconds),
    })
    .into_response()
}

/// `GET /ui/api/store`.
#[derive(Debug, Serialize)]
pub struct StoreBody {
    /// `memory`, `redis` or `redis_cluster`.
    pub kind: &'static str,
    /// Whether it answered a ping just now.
    pub ok: bool,
    /// `ok`, or why not.
    pub status: String,
    /// How long the ping took, in milliseconds (`null` when it failed).
    pub ping_ms: Option<f64>,
    /// The circuit breaker: `closed`, `open` or `half_open`.
    pub circuit: &'static str,
    /// Whether decisions are being made without the store right now: the breaker is not
    /// closed, the ping failed, or a decision of the last [`RECENT_SECONDS`] was degraded.
    pub degraded_now: bool,
    /// The last [`RECENT_SECONDS`] seconds of decisions.
    pub recent: Recent,
    /// Keys held (0 when the store cannot say, as with Redis).
    pub keys: u64,
    /// Keys of the local emergency quotas (the `degrade` failure mode).
    pub emergency_keys: u64,
}

/// Recent decisions and store-call times.
#[derive(Debug, Serialize)]
pub struct Recent {
    /// How many seconds these figures cover.
    pub seconds: usize,
    /// Decisions in that time.
    pub decisions: u64,
    /// Of which degraded.
    pub degraded: u64,
    /// The mean store-call time, in microseconds.
    pub mean_micros: u64,
    /// The longest store call, in microseconds.
    pub max_micros: u64,
}

/// The store's health, as the page's status panel shows it.
pub async fn store(State(app): State<Arc<AppState>>) -> Json<StoreBody> {
    let stopwatch = Stopwatch::start();
    let ping = match tokio::time::timeout(STORE_PING_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Ok(stopwatch.elapsed().as_secs_f64() * 1e3),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no answer to a ping within {} ms",
            STORE_PING_TIMEOUT.as_millis()
        )),
    };
    let circuit = app.failover.circuit();
    let series = app.live.rates.series(app.clock.now(), RECENT_SECONDS);
    let (allowed, denied, degraded) = series.totals();
    let decisions = allowed + denied + degraded;
    let weighted: u64 = series
        .mean_micros
        .iter()
        .zip(
            series
                .allowed
                .iter()
                .zip(&series.denied)
                .zip(&series.degraded),
        )
        .map(|(mean, ((a, d), g))| mean * (a + d + g))
        .sum();
    Json(StoreBody {
        kind: if app.live.store_kind.is_empty() {
            "memory"
        } else {
            app.live.store_kind
        },
        ok: ping.is_ok(),
        degraded_now: ping.is_err() || circuit != CircuitState::Closed || degraded > 0,
        status: ping.as_ref().err().cloned().unwrap_or_else(|| "ok".into()),
        ping_ms: ping.ok(),
        circuit: circuit.as_str(),
        recent: Recent {
            seconds: RECENT_SECONDS,
            decisions,
            degraded,
            mean_micros: weighted.checked_div(decisions).unwrap_or(0),
            max_micros: series.max_micros.iter().copied().max().unwrap_or(0),
        },
        keys: app.store.key_count(),
        emergency_keys: app.failover.emergency_keys(),
    })
}

/// A limit as the policy tables show it.
#[derive(Debug, Serialize)]
pub struct LimitRow {
    /// Its name.
    pub name: Arc<str>,
    /// Its algorithm.
    pub algorithm: &'static str,
    /// The dimensions it counts by.
    pub key: Vec<String>,
    /// The most it admits at once.
    pub quota: u64,
    /// The window the quota is for (a bucket's time to refill), in milliseconds.
    pub window_ms: u64,
    /// Whether it only counts (never denies).
    pub shadow: bool,
}

impl LimitRow {
    /// The row of `def`.
    pub fn of(def: &LimitDef) -> Self {
        Self {
            name: def.name.to_arc(),
            algorithm: def.params.algorithm(),
            key: def.key.iter().map(|d| d.as_str().to_owned()).collect(),
            quota: def.params.quota(),
            window_ms: def.params.window() / 1_000,
            shadow: def.shadow,
        }
    }
}

/// A tier's row.
#[derive(Debug, Serialize)]
pub struct TierRow {
    /// Its name.
    pub name: String,
    /// Whether requests that name no tier (and whose tenant names none) get it.
    pub default: bool,
    /// The limits its requests pass off any route: the global ones, then its own.
    pub limits: Vec<Arc<str>>,
}

/// A route's row.
#[derive(Debug, Serialize)]
pub struct RouteRow {
    /// Its pattern, e.g. `POST /v1/generate`.
    #[serde(rename = "match")]
    pub pattern: Arc<str>,
    /// What one request costs.
    pub cost: u64,
    /// Its failure mode, if it sets one.
    pub failure_mode: Option<&'static str>,
    /// The limits it adds.
    pub limits: Vec<Arc<str>>,
}

/// `GET /ui/api/policy`.
#[derive(Debug, Serialize)]
pub struct PolicyBody {
    /// The policy in force.
    pub policy: PolicyHead,
    /// Every limit the tiers and routes use, then any other the policy defines.
    pub limits: Vec<LimitRow>,
    /// The tiers, in file order.
    pub tiers: Vec<TierRow>,
    /// The routes, in match order.
    pub routes: Vec<RouteRow>,
    /// The catalog in force (as `/readyz` reports it), and when this node applied it.
    pub catalog: serde_json::Value,
    /// The last policy reloads, newest first, with why each rejected one was.
    pub reloads: Vec<ReloadEvent>,
}

/// Which policy is in force.
#[derive(Debug, Serialize)]
pub struct PolicyHead {
    /// Where it came from.
    pub source: String,
    /// When it was loaded, in milliseconds since the epoch.
    pub loaded_at_ms: u64,
    /// Its version as decision records name it: `source@load time`.
    pub version: String,
    /// The tier of requests that name none.
    pub default_tier: String,
    /// The failure mode of routes that set none.
    pub failure_mode: &'static str,
}

/// The limits of `policy`'s tiers and routes (each once, first use first), then the rest.
fn limit_rows(policy: &Policy) -> Vec<LimitRow> {
    let mut seen = HashSet::new();
    let tiers = policy
        .tiers()
        .flat_map(|t| policy.tier_limits(t).unwrap_or_default().iter());
    let routes = policy.routes().flat_map(|r| r.limits.iter());
    tiers
        .chain(routes)
        .chain(policy.limits())
        .filter(|d| seen.insert(d.name.clone()))
        .map(|d| LimitRow::of(d))
        .collect()
}

/// The policy as tables, its version, the catalog's, and the last reloads.
pub async fn policy(State(app): State<Arc<AppState>>) -> Json<PolicyBody> {
    let policy = app.engine.policy();
    let info = app.policy_info.load_full();
    let names = |defs: &[Arc<LimitDef>]| defs.iter().map(|d| d.name.to_arc()).collect();
    let mut catalog = serde_json::to_value(app.catalog.status()).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut catalog {
        let applied: Option<CatalogApplied> = app.live.catalog();
        map.insert(
            "applied_at_ms".into(),
            serde_json::json!(applied.map(|a| a.at_ms)),
        );
    }
    Json(PolicyBody {
        policy: PolicyHead {
            source: info.source.clone(),
            loaded_at_ms: info.loaded_at / 1_000,
            version: format!("{}@{}", info.source, rfc3339_ms(info.loaded_at)),
            default_tier: policy.default_tier().to_owned(),
            failure_mode: policy.failure_mode().as_str(),
        },
        limits: limit_rows(&policy),
        tiers: policy
            .tiers()
            .map(|t| TierRow {
                name: t.to_owned(),
                default: t == policy.default_tier(),
                limits: names(policy.tier_limits(t).unwrap_or_default()),
            })
            .collect(),
        routes: policy
            .routes()
            .map(|r| RouteRow {
                pattern: r.name.clone(),
                cost: r.cost,
                failure_mode: r.failure_mode.map(|m| m.as_str()),
                limits: names(&r.limits),
            })
            .collect(),
        catalog,
        reloads: app.live.reloads(),
    })
}

/// `GET /ui/api/shadow`.
#[derive(Debug, Serialize)]
pub struct ShadowBody {
    /// One row per shadow limit of the policy (then any limit of an earlier policy that
    /// counted).
    pub limits: Vec<ShadowRow>,
}

/// The shadow limits and what they would have denied.
pub async fn shadow(State(app): State<Arc<AppState>>) -> Json<ShadowBody> {
    let policy = app.engine.policy();
    let names: Vec<Arc<str>> = limit_rows(&policy)
        .into_iter()
        .filter(|l| l.shadow)
        .map(|l| l.name)
        .collect();
    Json(ShadowBody {
        limits: app.live.shadow.rows(app.clock.now(), &names),
    })
}
