//! From the file as written to a [`Policy`]: every name resolved, every number checked,
//! every problem recorded with its position before the verdict.
//!
//! The order follows the file's dependencies: descriptors before the limits whose keys use
//! them, limits before the tiers, routes and tenants that name them. Nothing stops at the
//! first problem; the policy is built only when there were none.

use super::error::Issues;
use super::limit::{descriptors, Defs};
use super::raw::{RawPolicy, Text};
use super::resolve::Tier;
use super::route::RoutePattern;
use super::{tenant, FailureMode, Policy, Route};
use crate::catalog::Catalog;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Validates `raw` completely; on any problem returns all of them.
pub(crate) fn compile(raw: &RawPolicy) -> Result<Policy, Issues> {
    let mut issues = Issues::default();
    let failure_mode = raw
        .failure_mode
        .as_ref()
        .and_then(|m| parse_failure_mode(m, "failure_mode".into(), &mut issues))
        .unwrap_or_default();
    let descriptors = descriptors(&raw.descriptors, &mut issues);
    let defs = Defs::new(&raw.limits, &descriptors, &mut issues);
    let global = defs.refs(&raw.global, "global", &mut issues);

    let mut tier_index = HashMap::new();
    let mut tier_limits = Vec::new();
    for (i, (name, tier)) in raw.tiers.0.iter().enumerate() {
        if let Err(message) = super::params::check_name(name, "tier") {
            issues.push(name.referenced, format!("tiers.{}", name.value), message);
        }
        tier_index.insert(name.value.as_str().into(), i);
        let path = format!("tiers.{}.limits", name.value);
        tier_limits.push(defs.refs(&tier.limits, &path, &mut issues));
    }
    let default_tier = tier_ref(
        &raw.default_tier,
        "default_tier".into(),
        &tier_index,
        &mut issues,
    );
    let routes = routes(raw, &defs, &mut issues);
    let ip_prefix = super::ip_prefix::compile(raw.ip_prefix.as_ref(), &mut issues);
    let store = super::store::compile(raw.store.as_ref(), &mut issues);
    let seed_logins = super::store::seed_logins(raw.store.as_ref());
    let regions = super::region::compile(raw.store.as_ref(), &store, &mut issues);
    super::region::check_homes(raw, regions.as_deref(), &mut issues);
    let emergency = super::emergency::compile(&raw.limits, &defs, &mut issues);
    let principals = super::principal::compile(
        raw.principals.as_ref(),
        &super::principal::Context {
            tiers: &tier_index,
            tier_limits: &tier_limits,
            global: &global,
        },
        &mut issues,
    )
    .map(Arc::new);
    let mut limits = defs.valid();
    let has_global_limits = limits.iter().any(|d| d.scope != super::Scope::Regional);
    let tenants = tenant::compile(
        raw,
        &defs,
        &tier_index,
        default_tier,
        &mut limits,
        &mut issues,
    );

    let Some(default_tier) = default_tier.filter(|_| issues.is_empty()) else {
        // A file already refused tells every problem in one pass.
        issues.extend(seed_logins.into_iter().map(|s| s.issue));
        return Err(issues);
    };
    let tiers = raw
        .tiers
        .0
        .iter()
        .zip(&tier_limits)
        .map(|((name, _), own)| Tier::new(name.value.as_str().into(), &global, own, &routes))
        .collect();
    let mut policy = Policy {
        id: next_policy_id(),
        default_tier,
        failure_mode,
        tiers,
        tier_index,
        routes,
        format_suffixes: (raw.route_matching.as_ref())
            .and_then(|m| m.format_suffixes)
            .unwrap_or(false),
        method_overrides: (raw.route_matching.as_ref())
            .and_then(|m| m.method_overrides)
            .unwrap_or(true),
        catalog: Arc::new(Catalog::placeholder()),
        bases: Arc::new(tenant::bases(&defs)),
        has_static_tenants: !tenants.is_empty(),
        limits,
        descriptors: descriptors
            .into_iter()
            .map(|d| (super::limit::header_form(&d), d))
            .collect(),
        store,
        emergency,
        ip_prefix,
        principals,
        regions,
        has_global_limits,
        seed_logins,
    };
    // The `tenants:` section is the static catalog; it passed the checks above, so the
    // catalog's own compilation refuses nothing in it.
    let (catalog, skipped) = Catalog::build(&policy, 0, tenants);
    debug_assert!(skipped.is_empty(), "{skipped:?}");
    policy.catalog = Arc::new(catalog);
    Ok(policy)
}

/// A fresh policy identity: catalogs name the policy they were compiled against.
fn next_policy_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Checks the routes: pattern, uniqueness, cost, limits and failure mode. Patterns ignore
/// the case of letters unless `route_matching.case_sensitive` is set.
fn routes(raw: &RawPolicy, defs: &Defs<'_>, issues: &mut Issues) -> Vec<Arc<Route>> {
    let case_sensitive = raw
        .route_matching
        .as_ref()
        .and_then(|m| m.case_sensitive)
        .unwrap_or(false);
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, entry) in raw.routes.iter().enumerate() {
        let (route, path) = (&entry.value, format!("routes[{i}]"));
        let pattern = match RoutePattern::parse(&route.pattern.value, case_sensitive) {
            Ok(p) => p,
            Err(message) => {
                issues.push(route.pattern.referenced, format!("{path}.match"), message);
                continue;
            }
        };
        // Compare canonical forms, so `post  /x` duplicates `POST /x` (and `POST /X`, when
        // routes ignore case).
        let name = pattern.to_string();
        let line = route.pattern.referenced.line();
        if let Some(earlier) = seen.insert(pattern.identity(), line) {
            let message = format!("`{name}` is already matched by the route on line {earlier}");
            issues.push(route.pattern.referenced, format!("{path}.match"), message);
        }
        // A `GET` route matches `HEAD` requests too: a `HEAD` route after it is never reached.
        if let Some(head) = pattern.head_identity() {
            seen.entry(head).or_insert(line);
        }
        let cost = match &route.cost {
            None => 1,
            Some(cost) => cost.value.positive().unwrap_or_else(|message| {
                issues.push(
                    cost.referenced,
                    format!("{path}.cost"),
                    format!("cost {message}"),
                );
                1
            }),
        };
        let failure_mode = route
            .failure_mode
            .as_ref()
            .and_then(|m| parse_failure_mode(m, format!("{path}.failure_mode"), issues));
        routes.push(Arc::new(Route {
            name: name.into(),
            cost,
            limits: defs.refs(&route.limits, &format!("{path}.limits"), issues),
            failure_mode,
            pattern,
        }));
    }
    routes
}

/// Resolves a tier name to its index, reporting an unknown one along with the known names.
pub(crate) fn tier_ref(
    name: &Text,
    path: String,
    index: &HashMap<Box<str>, usize>,
    issues: &mut Issues,
) -> Option<usize> {
    let found = index.get(name.value.as_str()).copied();
    if found.is_none() {
        let mut known: Vec<&str> = index.keys().map(|k| &**k).collect();
        known.sort_unstable();
        let message = match known.is_empty() {
            true => format!("no tier named `{}`: `tiers` defines none", name.value),
            false => format!(
                "no tier named `{}` (defined: {})",
                name.value,
                known.join(", ")
            ),
        };
        issues.push(name.referenced, path, message);
    }
    found
}

fn parse_failure_mode(text: &Text, path: String, issues: &mut Issues) -> Option<FailureMode> {
    text.value
        .parse()
        .map_err(|message: String| issues.push(text.referenced, path, message))
        .ok()
}
