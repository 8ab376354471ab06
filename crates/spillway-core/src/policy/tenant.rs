//! Tenants: their tier, and their overrides of limit numbers.
//!
//! An override is laid over the limit it names and compiled like a limit, so every field it
//! may carry gets the same checks and its errors point into the override. It may only name a
//! limit the tenant can meet (global, in its tier, or on a route); anything else would be a
//! silent no-op, which is almost always a typo or a tier mix-up.

use super::error::Issues;
use super::limit::Defs;
use super::params::{self, Fields};
use super::raw::{RawPolicy, RawTenant};
use super::resolve::Tenant;
use super::validate::tier_ref;
use super::{Dimension, LimitDef};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Checks every tenant; override definitions not already in `limits` are added to it.
pub(crate) fn compile(
    raw: &RawPolicy,
    defs: &Defs<'_>,
    tiers: &HashMap<Box<str>, usize>,
    default_tier: Option<usize>,
    limits: &mut Vec<Arc<LimitDef>>,
    issues: &mut Issues,
) -> HashMap<Box<str>, Tenant> {
    let mut tenants = HashMap::with_capacity(raw.tenants.0.len());
    for (name, tenant) in &raw.tenants.0 {
        let path = format!("tenants.{}", name.value);
        let tier = match &tenant.tier {
            Some(t) => match tier_ref(t, format!("{path}.tier"), tiers, issues) {
                Some(index) => Some(index),
                // Unknown tier, already reported; judging overrides against a guess would
                // only add noise.
                None => continue,
            },
            None => None,
        };
        let scope = scope(raw, tier.or(default_tier));
        let overrides = overrides(
            (name.value.as_str(), tenant),
            &path,
            defs,
            scope.as_ref(),
            limits,
            issues,
        );
        tenants.insert(name.value.as_str().into(), Tenant { tier, overrides });
    }
    tenants
}

/// The names of every limit a tenant on tier `tier` can meet; `None` if the tier is unknown.
fn scope(raw: &RawPolicy, tier: Option<usize>) -> Option<HashSet<&str>> {
    let (_, own) = raw.tiers.0.get(tier?)?;
    let on_routes = raw.routes.iter().flat_map(|r| &r.value.limits);
    let names = raw.global.iter().chain(&own.limits).chain(on_routes);
    Some(names.map(|n| n.value.as_str()).collect())
}

/// Compiles one tenant's overrides, sharing any definition identical to one in `limits`.
fn overrides(
    (tenant_name, tenant): (&str, &RawTenant),
    path: &str,
    defs: &Defs<'_>,
    scope: Option<&HashSet<&str>>,
    limits: &mut Vec<Arc<LimitDef>>,
    issues: &mut Issues,
) -> Vec<Arc<LimitDef>> {
    let mut out = Vec::with_capacity(tenant.overrides.0.len());
    for (target, raw) in &tenant.overrides.0 {
        let path = format!("{path}.overrides.{}", target.value);
        let Some(base) = defs.get(&target.value) else {
            let message = format!(
                "no limit named `{}` is defined under `limits`",
                target.value
            );
            issues.push(target.referenced, path, message);
            continue;
        };
        if scope.is_some_and(|s| !s.contains(target.value.as_str())) {
            let message = format!(
                "limit `{}` never applies to this tenant (it is not global, not in its tier \
                 and not on any route), so overriding it has no effect",
                target.value
            );
            issues.push(target.referenced, path, message);
            continue;
        }
        let (Some(algorithm), Some(original)) = (base.algorithm, &base.compiled) else {
            continue; // the limit itself is invalid, and already reported
        };
        let fields =
            Fields::of_limit(base.raw, &base.path, base.at).overlay(raw, &path, target.referenced);
        let Some(compiled) = params::compile(algorithm, &fields, issues) else {
            continue;
        };
        let mut fingerprint = compiled.fingerprint(&original.name, &original.key);
        // A limit keyed by tenant counts each tenant apart already, so its override shares
        // the tenant's counters with the base limit and they carry over when the override
        // comes or goes. A limit keyed by something else (an IP, a user, a descriptor) would
        // have one counter read under two tenants' numbers at once, and a client able to act
        // as both tenants could shrink or reset the other's usage: its override counts apart.
        if compiled.params != original.params && !original.key.contains(&Dimension::Tenant) {
            fingerprint = params::tenant_scoped(fingerprint, tenant_name);
        }
        let def = LimitDef {
            name: Arc::clone(&original.name),
            fingerprint,
            params: compiled.params,
            key: original.key.clone(),
            shadow: raw.shadow.unwrap_or(original.shadow),
        };
        // Identical definitions share one `Arc`, so `Policy::limits` lists each once and an
        // override that changes nothing is the original itself.
        let shared = match limits.iter().find(|d| ***d == def) {
            Some(existing) => Arc::clone(existing),
            None => {
                let fresh = Arc::new(def);
                limits.push(Arc::clone(&fresh));
                fresh
            }
        };
        out.push(shared);
    }
    out
}
