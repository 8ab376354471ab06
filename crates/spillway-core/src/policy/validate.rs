//! From the file as written to a [`Policy`]: every name resolved, every number checked,
//! every problem recorded with its position before the verdict.
//!
//! Checks never stop at the first problem. A definition that fails its own checks is still
//! known by name, so the lists that mention it do not pile up "undefined" errors on top of
//! the real one.

use super::error::Issues;
use super::params::{self, check_name, Algorithm, Fields};
use super::raw::{RawLimit, RawPolicy, Text};
use super::resolve::{Tenant, Tier};
use super::route::RoutePattern;
use super::{Dimension, FailureMode, LimitDef, Policy, Route};
use serde_saphyr::Location;
use std::collections::{HashMap, HashSet};
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
    let defs: HashMap<&str, Def<'_>> = raw
        .limits
        .0
        .iter()
        .map(|(name, limit)| {
            (
                name.value.as_str(),
                limit_def(name, limit, &descriptors, &mut issues),
            )
        })
        .collect();
    let global = refs(&raw.global, "global", &defs, &mut issues);

    let mut tier_index = HashMap::new();
    let mut tier_limits = Vec::new();
    for (i, (name, tier)) in raw.tiers.0.iter().enumerate() {
        if let Err(message) = check_name(name, "tier") {
            issues.push(name.referenced, format!("tiers.{}", name.value), message);
        }
        tier_index.insert(name.value.as_str().into(), i);
        let path = format!("tiers.{}.limits", name.value);
        tier_limits.push(refs(&tier.limits, &path, &defs, &mut issues));
    }
    let default_tier = tier_ref(
        &raw.default_tier,
        "default_tier".into(),
        &tier_index,
        &mut issues,
    );

    let mut routes = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, entry) in raw.routes.iter().enumerate() {
        let (route, path) = (&entry.value, format!("routes[{i}]"));
        let pattern = match RoutePattern::parse(&route.pattern.value) {
            Ok(p) => p,
            Err(message) => {
                issues.push(route.pattern.referenced, format!("{path}.match"), message);
                continue;
            }
        };
        let name = pattern.to_string();
        if let Some(line) = seen.insert(name.clone(), route.pattern.referenced.line()) {
            let message = format!("`{name}` is already matched by the route on line {line}");
            issues.push(route.pattern.referenced, format!("{path}.match"), message);
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
        routes.push(Arc::new(Route {
            name: name.into(),
            cost,
            limits: refs(&route.limits, &format!("{path}.limits"), &defs, &mut issues),
            failure_mode: route
                .failure_mode
                .as_ref()
                .and_then(|m| parse_failure_mode(m, format!("{path}.failure_mode"), &mut issues)),
            pattern,
        }));
    }

    let mut limits: Vec<Arc<LimitDef>> = raw
        .limits
        .0
        .iter()
        .filter_map(|(name, _)| defs.get(name.value.as_str())?.compiled.clone())
        .collect();
    let mut tenants = HashMap::new();
    for (name, tenant) in &raw.tenants.0 {
        let path = format!("tenants.{}", name.value);
        let tier = tenant
            .tier
            .as_ref()
            .map(|t| tier_ref(t, format!("{path}.tier"), &tier_index, &mut issues));
        // Overrides may only touch limits the tenant can actually meet.
        let scope: Option<HashSet<&str>> = tier.unwrap_or(default_tier).map(|t| {
            let tier_names = raw
                .tiers
                .0
                .get(t)
                .map(|(_, tier)| &tier.limits[..])
                .unwrap_or(&[]);
            let route_names = raw.routes.iter().flat_map(|r| &r.value.limits);
            raw.global
                .iter()
                .chain(tier_names)
                .chain(route_names)
                .map(|n| n.value.as_str())
                .collect()
        });
        let mut overrides = Vec::new();
        for (target, raw_override) in &tenant.overrides.0 {
            let opath = format!("{path}.overrides.{}", target.value);
            let Some(base) = defs.get(target.value.as_str()) else {
                let message = format!(
                    "no limit named `{}` is defined under `limits`",
                    target.value
                );
                issues.push(target.referenced, opath, message);
                continue;
            };
            if scope
                .as_ref()
                .is_some_and(|s| !s.contains(target.value.as_str()))
            {
                let message = format!(
                    "limit `{}` never applies to this tenant (it is not global, not in its tier \
                     and not on any route), so overriding it has no effect",
                    target.value
                );
                issues.push(target.referenced, opath, message);
                continue;
            }
            let (Some(algorithm), Some(original)) = (base.algorithm, &base.compiled) else {
                continue; // the limit itself is invalid and already reported
            };
            let fields = Fields::of_limit(base.raw, &base.path, base.at).overlay(
                raw_override,
                &opath,
                target.referenced,
            );
            let Some(compiled) = params::compile(algorithm, &fields, &mut issues) else {
                continue;
            };
            let def = LimitDef {
                name: Arc::clone(&original.name),
                fingerprint: compiled.fingerprint(&original.key),
                params: compiled.params,
                key: original.key.clone(),
                shadow: raw_override.shadow.unwrap_or(original.shadow),
            };
            // Identical definitions share one `Arc`, so `Policy::limits` lists each once.
            let shared = match limits.iter().find(|d| ***d == def) {
                Some(existing) => Arc::clone(existing),
                None => {
                    let fresh = Arc::new(def);
                    limits.push(Arc::clone(&fresh));
                    fresh
                }
            };
            overrides.push(shared);
        }
        tenants.insert(
            name.value.as_str().into(),
            Tenant {
                tier: tier.flatten(),
                overrides,
            },
        );
    }

    let Some(default_tier) = default_tier else {
        return Err(issues);
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    let tiers = raw
        .tiers
        .0
        .iter()
        .zip(&tier_limits)
        .map(|((name, _), own)| Tier::new(name.value.as_str().into(), &global, own, &routes))
        .collect();
    Ok(Policy {
        default_tier,
        failure_mode,
        tiers,
        tier_index,
        routes,
        tenants,
        limits,
    })
}

/// Resolves a tier name to its index, reporting an unknown one along with the known names.
fn tier_ref(
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
