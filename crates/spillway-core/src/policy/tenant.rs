//! Tenants: their tier, and their overrides of limit numbers.
//!
//! An override is laid over the limit it names and compiled like a limit, so every field it
//! may carry gets the same checks and its errors point into the override. It may only name a
//! limit the tenant can meet (global, in its tier, or on a route); anything else would be a
//! silent no-op, which is almost always a typo or a tier mix-up.

use super::error::Issues;
use super::limit::Defs;
use super::params::{self, Algorithm, Fields};
use super::raw::Number;
use super::raw::{RawLimit, RawOverride, RawPolicy, RawTenant};
use super::validate::tier_ref;
use super::{Dimension, LimitDef};
use crate::catalog::{Entry, EntryKey, FieldIssue, OverrideRecord, TenantRecord};
use serde_saphyr::{Location, Spanned};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Checks every tenant; override definitions not already in `limits` are added to it. Returns
/// the tenants as catalog records (the static catalog, compiled like any other once the
/// policy is built).
pub(crate) fn compile(
    raw: &RawPolicy,
    defs: &Defs<'_>,
    tiers: &HashMap<Box<str>, usize>,
    default_tier: Option<usize>,
    limits: &mut Vec<Arc<LimitDef>>,
    issues: &mut Issues,
) -> Vec<(EntryKey, Entry)> {
    let mut tenants = Vec::with_capacity(raw.tenants.0.len());
    for (name, tenant) in &raw.tenants.0 {
        let path = format!("tenants.{}", name.value);
        // The ids the catalog takes, and no others: the section is the static catalog (and
        // `catalog import --from-policy` writes it there). An id with white space around it
        // would never match a request; one with an invisible character looks like another.
        let mut bad_id = Vec::new();
        crate::catalog::check_id("tenant", &name.value, &mut bad_id);
        for found in bad_id {
            issues.push(name.referenced, &path, found.message);
        }
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
        overrides(
            (name.value.as_str(), tenant),
            &path,
            defs,
            scope.as_ref(),
            limits,
            issues,
        );
        let record = TenantRecord {
            tier: tenant.tier.as_ref().map(|t| t.value.clone()),
            overrides: (tenant.overrides.0.iter())
                .map(|(limit, raw)| (limit.value.clone(), record_of(raw)))
                .collect(),
            home_region: tenant.home_region.as_ref().map(|h| h.value.clone()),
        };
        let key = EntryKey::Tenant {
            tenant: name.value.clone(),
        };
        tenants.push((key, Entry::Tenant(record)));
    }
    tenants
}

/// An override as the catalog stores it. Only called on overrides that passed validation, so
/// every count is a positive whole number.
fn record_of(raw: &RawOverride) -> OverrideRecord {
    let count = |n: &Option<Spanned<Number>>| n.as_ref().and_then(|n| n.value.positive().ok());
    OverrideRecord {
        shadow: raw.shadow,
        rate: raw.rate.as_ref().map(|t| t.value.clone()),
        burst: count(&raw.burst),
        limit: count(&raw.limit),
        window: raw.window.as_ref().map(|t| t.value.clone()),
        capacity: count(&raw.capacity),
    }
}

/// The written and compiled form of every valid limit, kept by the policy so catalog
/// overrides compile exactly as `tenants:` overrides do.
pub(crate) fn bases(defs: &Defs<'_>) -> HashMap<Arc<str>, OwnedBase> {
    defs.each()
        .filter_map(|def| {
            let (algorithm, original) = (def.algorithm?, def.compiled.clone()?);
            let base = OwnedBase {
                raw: def.raw.clone(),
                path: def.path.clone(),
                algorithm,
                original,
            };
            Some((base.original.name.to_arc(), base))
        })
        .collect()
}

/// A limit as an override sees it, owned: kept by the policy after its file is gone.
#[derive(Debug)]
pub(crate) struct OwnedBase {
    raw: RawLimit,
    path: String,
    algorithm: Algorithm,
    original: Arc<LimitDef>,
}

impl OwnedBase {
    /// The dimensions the limit counts by.
    pub(crate) fn key(&self) -> &[Dimension] {
        &self.original.key
    }

    /// `record` (an override written at `path`) laid over this limit and compiled.
    pub(crate) fn overlay(
        &self,
        record: &OverrideRecord,
        path: &str,
        owner: Owner<'_>,
    ) -> Result<LimitDef, Vec<FieldIssue>> {
        let at = Location::UNKNOWN;
        let text = |v: &Option<String>| v.clone().map(|v| Spanned::new(v, at, at));
        let count = |v: Option<u64>| v.map(|n| Spanned::new(Number::Int(n.into()), at, at));
        let raw = RawOverride {
            shadow: record.shadow,
            rate: text(&record.rate),
            burst: count(record.burst),
            limit: count(record.limit),
            window: text(&record.window),
            capacity: count(record.capacity),
        };
        let base = Base {
            raw: &self.raw,
            path: &self.path,
            algorithm: self.algorithm,
            original: &self.original,
        };
        let mut issues = Issues::default();
        match overlay(&base, &raw, (path, at), owner, &mut issues) {
            Some(def) if issues.is_empty() => Ok(def),
            _ => Err(issues
                .into_issues()
                .into_iter()
                .map(|i| FieldIssue {
                    field: i.path,
                    message: i.message,
                })
                .collect()),
        }
    }
}

/// The names of every limit a tenant on tier `tier` can meet; `None` if the tier is unknown.
fn scope(raw: &RawPolicy, tier: Option<usize>) -> Option<HashSet<&str>> {
    let (_, own) = raw.tiers.0.get(tier?)?;
    let on_routes = raw.routes.iter().flat_map(|r| &r.value.limits);
    let names = raw.global.iter().chain(&own.limits).chain(on_routes);
    Some(names.map(|n| n.value.as_str()).collect())
}

/// Checks one tenant's overrides; their definitions join `limits` (each distinct one once).
fn overrides(
    (tenant_name, tenant): (&str, &RawTenant),
    path: &str,
    defs: &Defs<'_>,
    scope: Option<&HashSet<&str>>,
    limits: &mut Vec<Arc<LimitDef>>,
    issues: &mut Issues,
) {
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
        let base = Base {
            raw: base.raw,
            path: &base.path,
            algorithm,
            original,
        };
        let owner = Owner::Tenant(tenant_name);
        let Some(def) = overlay(&base, raw, (&path, target.referenced), owner, issues) else {
            continue;
        };
        // `Policy::limits` lists each distinct definition once; an override that changes
        // nothing is the original itself.
        if !limits.iter().any(|d| **d == def) {
            limits.push(Arc::new(def));
        }
    }
}

/// A limit as an override sees it: the definition as written (whose fields the override
/// replaces) and as compiled (whose name, key and identity the override keeps).
#[derive(Debug, Clone)]
pub(crate) struct Base<'a> {
    pub raw: &'a RawLimit,
    pub path: &'a str,
    pub algorithm: Algorithm,
    pub original: &'a LimitDef,
}

/// Whose override it is: a tenant's, or one user's of one tenant.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner<'a> {
    Tenant(&'a str),
    User { tenant: &'a str, user: &'a str },
}

/// Lays `raw` (written at `path`, named at `at`) over `base` and compiles the result; `None`
/// when the numbers are invalid (recorded in `issues`).
pub(crate) fn overlay(
    base: &Base<'_>,
    raw: &RawOverride,
    (path, at): (&str, Location),
    owner: Owner<'_>,
    issues: &mut Issues,
) -> Option<LimitDef> {
    let fields = Fields::of_limit(base.raw, base.path, at).overlay(raw, path, at);
    let compiled = params::compile(base.algorithm, &fields, issues)?;
    let original = base.original;
    let mut fingerprint = compiled.fingerprint(&original.name, &original.key);
    // A limit keyed by tenant counts each tenant apart already, so its override shares the
    // tenant's counters with the base limit and they carry over when the override comes or
    // goes. A limit keyed by something else (an IP, a user, a descriptor) would have one
    // counter read under two tenants' numbers at once, and a client able to act as both
    // tenants could shrink or reset the other's usage: its override counts apart. A user's
    // override keeps the base counters only when the limit counts each user of each tenant
    // apart (keyed by both).
    if compiled.params != original.params {
        let has = |d: Dimension| original.key.contains(&d);
        fingerprint = match owner {
            Owner::Tenant(tenant) if !has(Dimension::Tenant) => {
                params::tenant_scoped(fingerprint, tenant)
            }
            Owner::User { tenant, user } if !(has(Dimension::Tenant) && has(Dimension::User)) => {
                params::user_scoped(fingerprint, tenant, user)
            }
            _ => fingerprint,
        };
    }
    Some(LimitDef {
        name: original.name.clone(),
        fingerprint,
        params: compiled.params,
        key: original.key.clone(),
        shadow: raw.shadow.unwrap_or(original.shadow),
        metered: original.metered,
        scope: original.scope,
    })
}
