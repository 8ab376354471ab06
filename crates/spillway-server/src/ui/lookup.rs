//! `GET /ui/api/lookup?tenant=T[&user=U][&ip=A][&method=M&path=P]`: why is this tenant limited?
//!
//! The request is resolved as a decision would resolve it (the tier in effect and where it
//! came from, the route, every limit with the tenant's or user's override in place), then the
//! limits' counters are read with a **peek** of cost 0 through the same guarded store a
//! decision uses: nothing is consumed, no counter is created, and nothing is counted as a
//! decision. The answer adds the catalog entries that set the tier and overrides, and the
//! tenant's newest records from the decision log (`decision_log::recent`).
//!
//! With regions (`store.regions`) the counters are read as a decision on this node sees them
//! (`RegionNode::standing`): a `home` limit in the tenant's home region's store (one call
//! there), an `aggregate` limit as the worldwide figure (this region's count plus the others'
//! as last exchanged, within its lease); each limit says where it is counted (`counted_in`).
//!
//! Values are client-controlled text like any request's; they only name counters to read, are
//! capped at [`MAX_VALUE`] bytes, and `ip` must be an address (a limit counts it by network).

use super::api::LimitRow;
use crate::http::problem::Problem;
use crate::state::AppState;
use crate::telemetry::decision_log::record::Line;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use spillway_core::catalog::{Entry, EntryKey};
use spillway_core::policy::{Planned, Scope};
use spillway_core::request::{CheckMode, RequestAttrs};
use std::net::IpAddr;
use std::sync::Arc;

/// The longest value a lookup takes, in bytes.
pub const MAX_VALUE: usize = 1024;
/// Most decision records returned.
pub const RECORDS: usize = 50;

/// The query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// The tenant (required).
    pub tenant: Option<String>,
    /// A user of the tenant.
    pub user: Option<String>,
    /// A client address.
    pub ip: Option<String>,
    /// A method, for the route.
    pub method: Option<String>,
    /// A path, for the route.
    pub path: Option<String>,
}

/// One limit that applies, with its counter's state.
#[derive(Debug, Serialize)]
pub struct LimitState {
    /// The limit as in effect (an override's numbers when one applies).
    #[serde(flatten)]
    pub def: LimitRow,
    /// The counter's key values, in the limit's dimension order.
    pub values: Vec<String>,
    /// `tenant` or `user` when that entry's override replaced the limit's numbers.
    #[serde(rename = "override")]
    pub overridden_by: Option<&'static str>,
    /// The counter now; `null` when the store could not be read.
    pub usage: Option<Usage>,
    /// The limit's scope: `regional`, `home` or `aggregate` (see `docs/GLOBAL.md`).
    pub scope: &'static str,
    /// With regions, where the counter shown is kept: a region's name (this node's for a
    /// `regional` limit, the tenant's home for a `home` one), or `all regions` for an
    /// `aggregate` limit, whose usage is the worldwide figure a decision here sees. `null`
    /// without regions.
    pub counted_in: Option<Arc<str>>,
}

/// A counter's state, read without consuming.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// The most it admits at once.
    pub limit: u64,
    /// What it would admit now.
    pub remaining: u64,
    /// How long until it is whole again, in milliseconds.
    pub reset_after_ms: u64,
    /// Whether a request of the route's cost would get through this limit now.
    pub next_allowed: bool,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct LookupBody {
    /// The tenant looked up.
    pub tenant: String,
    /// The user, if given.
    pub user: Option<String>,
    /// The tier in effect.
    pub tier: Arc<str>,
    /// Where it came from: `user`, `tenant` (their catalog entries) or `default`.
    pub tier_source: &'static str,
    /// The route matched, if `method`/`path` were given and one matches.
    pub route: Option<Arc<str>>,
    /// What one such request costs.
    pub cost: u64,
    /// What happens to such a request when the store fails.
    pub failure_mode: &'static str,
    /// The catalog version in force and the entries that shape this lookup.
    pub catalog: CatalogPart,
    /// Every limit that applies, in the order a decision checks them.
    pub limits: Vec<LimitState>,
    /// Why usage could not be read, if it could not.
    pub store_error: Option<String>,
    /// The newest decision records of the tenant (and user), newest first.
    pub decisions: DecisionsPart,
}

/// The catalog's part.
#[derive(Debug, Serialize)]
pub struct CatalogPart {
    /// The version in force.
    pub version: u64,
    /// The tenant's entry (tier, overrides), if it has one.
    pub tenant: Option<serde_json::Value>,
    /// The user's entry, if a user was given and has one.
    pub user: Option<serde_json::Value>,
}

/// The decision log's part.
#[derive(Debug, Serialize)]
pub struct DecisionsPart {
    /// Whether the log is on (`--decision-log`); without it there are no records.
    pub log: bool,
    /// The records (the log keeps every denial up to its per-second cap, and allowed
    /// decisions as sampled).
    pub records: Vec<Line>,
}

fn bad(field: &str, detail: String) -> Response {
    Problem::invalid(detail, Some(field.to_owned())).into_response()
}

/// The handler; see the module docs.
pub async fn lookup(
    State(app): State<Arc<AppState>>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return Problem::invalid(e.body_text(), None).into_response(),
    };
    for (field, value) in [
        ("tenant", &q.tenant),
        ("user", &q.user),
        ("ip", &q.ip),
        ("method", &q.method),
        ("path", &q.path),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE) {
            return bad(field, format!("`{field}` is longer than {MAX_VALUE} bytes"));
        }
    }
    let empty_is_none = |v: Option<String>| v.filter(|s| !s.is_empty());
    let Some(tenant) = empty_is_none(q.tenant) else {
        return bad("tenant", "`tenant` is required".into());
    };
    let user = empty_is_none(q.user);
    let ip = match empty_is_none(q.ip).map(|t| t.trim().parse::<IpAddr>()) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => {
            return bad(
                "ip",
                "`ip` must be an IPv4 or IPv6 address (limits count clients by network)".into(),
            )
        }
    };
    let attrs = RequestAttrs {
        tenant: Some(tenant.clone()),
        user: user.clone(),
        ip,
        method: empty_is_none(q.method),
        path: empty_is_none(q.path),
        ..RequestAttrs::default()
    };
    let policy = app.engine.policy();
    let resolved = policy.resolve(&attrs);

    let catalog = policy.catalog();
    let tenant_entry = catalog.get(&EntryKey::Tenant {
        tenant: tenant.clone(),
    });
    let user_entry = user.as_ref().and_then(|u| {
        catalog.get(&EntryKey::User {
            tenant: tenant.clone(),
            user: u.clone(),
        })
    });
    let (tenant_tier, tenant_overrides) = parts(tenant_entry.as_ref());
    let (user_tier, user_overrides) = parts(user_entry.as_ref());
    let known = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| policy.tier_limits(t).is_some())
    };
    let tier_source = if known(&user_tier) {
        "user"
    } else if known(&tenant_tier) {
        "tenant"
    } else {
        "default"
    };

    // Cost 0 with a peek: every algorithm then reports what remains without counting this look.
    let looks: Vec<Planned> = resolved
        .limits
        .iter()
        .map(|p| Planned {
            cost: 0,
            ..p.clone()
        })
        .collect();
    // With regions and a `home` or `aggregate` limit, read each where a decision would.
    let regions = app.regions.as_ref().filter(|_| policy.has_global_limits());
    let read = match regions {
        Some(regions) => {
            let own = app.engine.store().as_ref();
            regions.standing(&policy, own, &looks).await
        }
        None => (app.engine.check_planned(&looks, CheckMode::Peek).await).map(|(_, o)| o),
    };
    let (usage, store_error) = match read {
        Ok(outcomes) => (outcomes.into_iter().map(Some).collect(), None),
        Err(err) => (vec![None; looks.len()], Some(err.to_string())),
    };
    let all_regions: Arc<str> = Arc::from("all regions");
    let counted_in = |p: &Planned| {
        let regions = app.regions.as_ref()?;
        Some(match p.def.scope {
            Scope::Aggregate => Arc::clone(&all_regions),
            _ => Arc::clone(regions.counted_in(&policy, p)),
        })
    };
    let limits = resolved
        .limits
        .iter()
        .zip(usage)
        .map(|(p, outcome)| LimitState {
            def: LimitRow::of(&p.def),
            values: p.key.values.iter().map(|v| v.to_string()).collect(),
            overridden_by: if user_overrides.contains(&&*p.def.name) {
                Some("user")
            } else if tenant_overrides.contains(&&*p.def.name) {
                Some("tenant")
            } else {
                None
            },
            usage: outcome.map(|o| Usage {
                limit: o.decision.limit,
                remaining: o.decision.remaining,
                reset_after_ms: o.decision.reset_after.div_ceil(1_000),
                next_allowed: o.decision.remaining >= resolved.cost,
            }),
            scope: p.def.scope.as_str(),
            counted_in: counted_in(p),
        })
        .collect();
    let records = app
        .decision_log
        .as_ref()
        .map(|log| log.recent().of(&tenant, user.as_deref(), RECORDS))
        .unwrap_or_default();
    let value = |e: Option<Entry>| e.map(|e| crate::admin::record_value(&e));
    Json(LookupBody {
        tenant,
        user,
        tier: resolved.tier.clone(),
        tier_source,
        route: resolved.route.as_ref().map(|r| r.name.clone()),
        cost: resolved.cost,
        failure_mode: resolved.failure_mode.as_str(),
        catalog: CatalogPart {
            version: catalog.version(),
            tenant: value(tenant_entry),
            user: value(user_entry),
        },
        limits,
        store_error,
        decisions: DecisionsPart {
            log: app.decision_log.is_some(),
            records,
        },
    })
    .into_response()
}

/// An entry's tier and the names of the limits it overrides.
fn parts(entry: Option<&Entry>) -> (Option<String>, Vec<&str>) {
    match entry {
        Some(Entry::Tenant(r)) => (
            r.tier.clone(),
            r.overrides.keys().map(String::as_str).collect(),
        ),
        Some(Entry::User(r)) => (
            r.tier.clone(),
            r.overrides.keys().map(String::as_str).collect(),
        ),
        _ => (None, Vec::new()),
    }
}
