//! The hot path: from a request's attributes to the limits it must pass and their keys.
//!
//! Everything that does not depend on the request is settled at load time: for every tier
//! and every route (or no route) the merged, de-duplicated list of limits already exists, and
//! a tenant's overrides are a short list looked up by name. Per request, the work is a tenant
//! and tier lookup in the catalog, a first-match scan of the routes (one per reading of an
//! oddly spelled request), and building the counter keys, whose
//! dimension values are copied in place (`crate::key::KeyValues`): a value too long to keep inline
//! and the client's network are the only allocations besides the result itself (and, for an
//! oddly spelled path, its readings and `_method` values).

use super::route::RequestPath;
use super::{Dimension, FailureMode, LimitDef, Planned, Policy, Resolved, Route};
use crate::key::{KeyValue, KeyValues, StateKey};
use crate::request::RequestAttrs;
use smallvec::SmallVec;
use std::cell::OnceCell;
use std::cmp::Reverse;
use std::sync::Arc;

/// A tier with its limit list for each route: `plans[0]` for requests that match no route,
/// `plans[i + 1]` for requests on route `i`.
#[derive(Debug, Clone)]
pub(crate) struct Tier {
    pub name: Arc<str>,
    pub plans: Vec<Vec<Arc<LimitDef>>>,
}

impl Tier {
    /// Builds the tier's plans: `global`, then `own`, then each route's limits, keeping only
    /// the first occurrence of each limit name.
    pub(crate) fn new(
        name: Arc<str>,
        global: &[Arc<LimitDef>],
        own: &[Arc<LimitDef>],
        routes: &[Arc<Route>],
    ) -> Self {
        let base = merge(global.iter().chain(own), &[]);
        let mut plans = Vec::with_capacity(routes.len() + 1);
        plans.push(base.clone());
        for route in routes {
            plans.push(merge(route.limits.iter(), &base));
        }
        Self { name, plans }
    }
}

/// `head` followed by those of `more` whose names `head` does not already hold.
fn merge<'a>(
    more: impl Iterator<Item = &'a Arc<LimitDef>>,
    head: &[Arc<LimitDef>],
) -> Vec<Arc<LimitDef>> {
    let mut out = head.to_vec();
    for def in more {
        if !out.iter().any(|d| d.name == def.name) {
            out.push(Arc::clone(def));
        }
    }
    out
}

impl Policy {
    /// Works out what applies to `req`: tier, route, cost, failure mode, and each limit with
    /// the counter key it keeps for this request. Never fails: an unknown tier falls back,
    /// and a limit whose key needs a dimension the request lacks is skipped.
    pub fn resolve(&self, req: &RequestAttrs) -> Resolved {
        let standing = (self.catalog).standing(req.tenant.as_deref(), req.user.as_deref());
        let tier_index = req
            .tier
            .as_deref()
            .and_then(|t| self.tier_index.get(t).copied())
            .or(standing.tier)
            .unwrap_or(self.default_tier);
        let tier = &self.tiers[tier_index];
        let matched = self.route_indices(req);
        let route = matched.first().map(|&i| Arc::clone(&self.routes[i]));
        // The costliest route matched is first: the request pays its cost.
        let cost = req.cost.or(route.as_ref().map(|r| r.cost)).unwrap_or(1);
        let failure_mode = (matched.iter())
            .map(|&i| self.routes[i].failure_mode.unwrap_or(self.failure_mode))
            .reduce(FailureMode::stricter)
            .unwrap_or(self.failure_mode);
        // The client's network, written once and only if a limit counts by it.
        let network = OnceCell::new();
        let ip = || -> Option<&str> {
            network
                .get_or_init(|| req.ip.map(|addr| self.ip_prefix.key(addr)))
                .as_deref()
        };
        // Each route matched brings its plan; a counter in several is charged once. No
        // route: the tier's own plan.
        let plans = (matched.iter().map(|&i| (i + 1, Some(&*self.routes[i]))))
            .chain(matched.is_empty().then_some((0, None)));
        let mut limits = Vec::with_capacity(tier.plans[matched.first().map_or(0, |i| i + 1)].len());
        for (n, (plan, on)) in plans.enumerate() {
            for def in &tier.plans[plan] {
                let def = standing.replacement(def).unwrap_or(def);
                if let Some(values) = key_values(def, req, on, &ip) {
                    let key = StateKey {
                        limit: def.name.to_arc(),
                        fingerprint: def.fingerprint,
                        values,
                    };
                    // A counter two routes share is charged once; a route-keyed limit counts
                    // under each route.
                    if n > 0 && limits.iter().any(|p: &Planned| p.key == key) {
                        continue;
                    }
                    // A metered limit charges nothing up front: planned at cost 0, it admits
                    // the request while the limit has room for one unit (`Check::metered`),
                    // and the real cost is reported afterwards.
                    limits.push(Planned {
                        def: Arc::clone(def),
                        key,
                        cost: if def.metered { 0 } else { cost },
                    });
                }
            }
        }

        Resolved {
            tier: Arc::clone(&tier.name),
            cost,
            failure_mode,
            route,
            limits,
        }
    }

    /// The routes `req` falls under, the costliest first (on a tie, the first found),
    /// usually one or none. The path is read once; each pattern then compares segments. A path
    /// servers could read apart (`route::RequestPath`), or a `POST` naming another method
    /// (`X-HTTP-Method-Override` and its kin, or a `_method` query parameter, which
    /// frameworks serve as that method), is matched under each reading and method, first
    /// match each, and every route so matched applies: spelling a request oddly can make it
    /// dearer, never cheaper.
    fn route_indices(&self, req: &RequestAttrs) -> SmallVec<[usize; 2]> {
        let mut found = SmallVec::new();
        let read = |path| RequestPath::read(path, self.format_suffixes);
        let Some(path) = req.path.as_deref().and_then(read) else {
            return found;
        };
        // Frameworks honour an override on a `POST` only.
        let overridable = self.method_overrides
            && (req.method.as_deref()).is_some_and(|m| m.eq_ignore_ascii_case("POST"));
        // The other methods named: each comma-separated part of the override (Express's
        // `method-override` takes the text before the first comma), then `_method`. Past
        // `MAX_OVERRIDES` distinct ones, any method could be the one served.
        let mut overrides: SmallVec<[&str; 4]> = SmallVec::new();
        let mut any_method = false;
        if overridable {
            let named = (req.method_override.iter())
                .flat_map(|text| text.split(','))
                .map(str::trim)
                .filter(|method| !method.is_empty())
                .chain(path.method_params());
            for method in named {
                if overrides.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                    continue;
                }
                if overrides.len() == MAX_OVERRIDES {
                    any_method = true;
                    break;
                }
                overrides.push(method);
            }
            any_method |= path.method_params_overflowed();
        }
        let methods =
            std::iter::once(req.method.as_deref()).chain(overrides.iter().map(|m| Some(*m)));
        for reading in path.readings() {
            for method in methods.clone() {
                let first = (self.routes.iter()).position(|r| r.pattern.matches(method, reading));
                if let Some(i) = first.filter(|i| !found.contains(i)) {
                    found.push(i);
                }
            }
            // More methods named than are kept: the `POST` may be served as any method, so
            // every route of the path applies.
            if any_method {
                for (i, route) in self.routes.iter().enumerate() {
                    if route.pattern.matches_path(reading) && !found.contains(&i) {
                        found.push(i);
                    }
                }
            }
        }
        // The costliest first; on a tie, the first found (the request's own method under the
        // lenient reading comes first), so a plain request keeps its route's name.
        if found.len() > 1 {
            found.sort_by_key(|&i| Reverse(self.routes[i].cost));
        }
        found
    }
}

/// The most distinct other methods a request is matched under (override parts and `_method`
/// values together); with more, every route of its path applies.
const MAX_OVERRIDES: usize = 8;

/// The request's value for each of `def`'s dimensions, in key order, or `None` when any is
/// missing. An empty value counts as missing: it identifies no one, and counting every such
/// request under one key would make strangers share a limit. The `ip` dimension's value is
/// the client's network, from `ip`.
fn key_values<'r>(
    def: &LimitDef,
    req: &'r RequestAttrs,
    route: Option<&'r Route>,
    ip: &dyn Fn() -> Option<&'r str>,
) -> Option<KeyValues> {
    let value = |dimension: &Dimension| -> Option<&str> {
        let found = match dimension {
            Dimension::Tenant => req.tenant.as_deref(),
            Dimension::User => req.user.as_deref(),
            Dimension::Ip => ip(),
            Dimension::Route => route.map(|r| &*r.name),
            Dimension::Descriptor(name) => req.descriptors.get(&**name).map(String::as_str),
        };
        found.filter(|v| !v.is_empty())
    };
    // One pass, stopping at the first missing dimension. (A plain loop: collecting into
    // `Option` cost about twice as much in the list's bookkeeping.)
    let mut values = KeyValues::default();
    for d in def.key.iter() {
        values.push(KeyValue::from(value(d)?));
    }
    Some(values)
}
