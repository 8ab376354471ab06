//! Limit definitions under validation: each checked on its own (name, algorithm, key,
//! numbers), then looked up by the lists that name it.
//!
//! A definition that fails its own checks stays known by name, so a tier or route listing it
//! does not add an "undefined limit" error on top of the real one.

use super::error::Issues;
use super::params::{self, check_name, Algorithm, Fields};
use super::raw::{Named, RawLimit, Text};
use super::{Dimension, LimitDef, Scope};
use serde_saphyr::Location;
use std::collections::HashMap;
use std::sync::Arc;

/// A limit definition on its way through validation.
pub(crate) struct Def<'a> {
    /// The definition as written, which tenant overrides are laid over.
    pub raw: &'a RawLimit,
    /// Its field path, `limits.<name>`.
    pub path: String,
    /// Its algorithm, if that much was valid.
    pub algorithm: Option<Algorithm>,
    /// Set only when the whole definition is valid.
    pub compiled: Option<Arc<LimitDef>>,
}

/// Every limit definition by name, in file order.
pub(crate) struct Defs<'a> {
    by_name: HashMap<&'a str, Def<'a>>,
    order: Vec<&'a str>,
}

impl<'a> Defs<'a> {
    /// Checks every definition under `limits`, recording all problems.
    pub(crate) fn new(
        limits: &'a Named<RawLimit>,
        descriptors: &[Arc<str>],
        issues: &mut Issues,
    ) -> Self {
        let mut by_name = HashMap::with_capacity(limits.0.len());
        let mut order = Vec::with_capacity(limits.0.len());
        for (name, raw) in &limits.0 {
            by_name.insert(
                name.value.as_str(),
                limit_def(name, raw, descriptors, issues),
            );
            order.push(name.value.as_str());
        }
        Self { by_name, order }
    }

    /// The definition named `name`, valid or not.
    pub(crate) fn get(&self, name: &str) -> Option<&Def<'a>> {
        self.by_name.get(name)
    }

    /// Every definition, valid or not, in file order.
    pub(crate) fn each(&self) -> impl Iterator<Item = &Def<'a>> {
        self.order.iter().filter_map(|n| self.by_name.get(n))
    }

    /// The valid definitions, in file order.
    pub(crate) fn valid(&self) -> Vec<Arc<LimitDef>> {
        let compiled = self
            .order
            .iter()
            .filter_map(|n| self.by_name.get(n)?.compiled.clone());
        compiled.collect()
    }

    /// Resolves a list of limit names; undefined ones are reported, invalid ones skipped quietly.
    pub(crate) fn refs(
        &self,
        list: &[Text],
        path: &str,
        issues: &mut Issues,
    ) -> Vec<Arc<LimitDef>> {
        let mut out = Vec::with_capacity(list.len());
        for (i, name) in list.iter().enumerate() {
            match self.get(&name.value) {
                Some(def) => out.extend(def.compiled.clone()),
                None => {
                    let message =
                        format!("no limit named `{}` is defined under `limits`", name.value);
                    issues.push(name.referenced, format!("{path}[{i}]"), message);
                }
            }
        }
        out
    }
}

/// Checks one limit definition: name, algorithm, key and numbers.
fn limit_def<'a>(
    name: &'a Text,
    raw: &'a RawLimit,
    descriptors: &[Arc<str>],
    issues: &mut Issues,
) -> Def<'a> {
    let path = format!("limits.{}", name.value);
    let before = issues.len();
    if let Err(message) = check_name(name, "limit") {
        issues.push(name.referenced, path.clone(), message);
    }
    let algorithm = Algorithm::parse(&raw.algorithm.value)
        .map_err(|message| {
            issues.push(
                raw.algorithm.referenced,
                format!("{path}.algorithm"),
                message,
            )
        })
        .ok();
    let key = key(raw, &path, name.referenced, descriptors, issues);
    let compiled = algorithm
        .and_then(|a| params::compile(a, &Fields::of_limit(raw, &path, name.referenced), issues));
    let metered = metered(raw, &path, algorithm, issues);
    let scope = super::region::scope(raw, &path, algorithm, issues);
    if let Some(at) = metered.filter(|_| scope != Scope::Regional) {
        // A report is recorded in this region's store only: a home or aggregate count would
        // never see it, and the limit would over-admit worldwide.
        issues.push(
            at,
            format!("{path}.charge"),
            format!(
                "`charge: after` is counted in each region's own store and cannot be combined \
                 with scope `{}`; use scope `regional` (the default) for a metered limit",
                scope.as_str()
            ),
        );
    }
    let compiled = match (compiled, key) {
        (Some(c), Some(key)) if issues.len() == before => Some(Arc::new(LimitDef {
            name: name.value.as_str().into(),
            fingerprint: c.fingerprint(name.value.as_str(), &key),
            params: c.params,
            key,
            shadow: raw.shadow.unwrap_or(false),
            metered: metered.is_some(),
            scope,
        })),
        _ => None,
    };
    Def {
        raw,
        path,
        algorithm,
        compiled,
    }
}

/// Checks a limit's `charge`: `before` (the default) or `after`, which the sliding log cannot
/// do (its state keeps one entry per admitted request, with no room to owe). Where a valid
/// `charge: after` is written when the limit is metered, for later checks to point at.
fn metered(
    raw: &RawLimit,
    path: &str,
    algorithm: Option<Algorithm>,
    issues: &mut Issues,
) -> Option<Location> {
    let charge = raw.charge.as_ref()?;
    let at = charge.referenced;
    match charge.value.as_str() {
        "before" => None,
        "after" if algorithm == Some(Algorithm::SlidingLog) => {
            issues.push(
                at,
                format!("{path}.charge"),
                "`charge: after` is not supported by the sliding_log algorithm (it cannot \
                 record a debt); use token_bucket, gcra, leaky_bucket, fixed_window or \
                 sliding_window",
            );
            None
        }
        "after" => Some(at),
        other => {
            issues.push(
                at,
                format!("{path}.charge"),
                format!("unknown charge `{other}`: expected `before` or `after`"),
            );
            None
        }
    }
}

/// Checks a limit's `key`: present, not empty, known dimensions, none twice.
fn key(
    raw: &RawLimit,
    path: &str,
    at: Location,
    descriptors: &[Arc<str>],
    issues: &mut Issues,
) -> Option<Vec<Dimension>> {
    let Some(list) = &raw.key else {
        issues.push(
            at,
            format!("{path}.key"),
            "a limit needs `key`: the dimensions it counts by (tenant, user, ip, route or a \
             declared descriptor)",
        );
        return None;
    };
    if list.value.is_empty() {
        issues.push(
            list.referenced,
            format!("{path}.key"),
            "`key` must list at least one dimension",
        );
        return None;
    }
    let before = issues.len();
    let mut dims = Vec::with_capacity(list.value.len());
    for (i, item) in list.value.iter().enumerate() {
        let dim = match item.value.as_str() {
            "tenant" => Dimension::Tenant,
            "user" => Dimension::User,
            "ip" => Dimension::Ip,
            "route" => Dimension::Route,
            other => match descriptors.iter().find(|d| &***d == other) {
                Some(d) => Dimension::Descriptor(Arc::clone(d)),
                None => {
                    let message = format!(
                        "unknown dimension `{other}` (use tenant, user, ip, route, or declare \
                         it under `descriptors`)"
                    );
                    issues.push(item.referenced, format!("{path}.key[{i}]"), message);
                    continue;
                }
            },
        };
        if dims.contains(&dim) {
            let message = format!("dimension `{dim}` is listed twice");
            issues.push(item.referenced, format!("{path}.key[{i}]"), message);
        }
        dims.push(dim);
    }
    (issues.len() == before).then_some(dims)
}

/// Checks the declared custom dimensions; returns the usable ones.
pub(crate) fn descriptors(list: &[Text], issues: &mut Issues) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        let problem = if let Err(message) = check_name(name, "descriptor") {
            Some(message)
        } else if ["tenant", "user", "ip", "route"].contains(&name.value.as_str()) {
            Some(format!(
                "`{}` is a built-in dimension; descriptors add new ones",
                name.value
            ))
        } else if out.iter().any(|d| **d == name.value) {
            Some(format!("descriptor `{}` is declared twice", name.value))
        } else {
            out.iter()
                .find(|d| header_form(d) == header_form(&name.value))
                .map(|d| {
                    format!(
                        "descriptor `{}` differs from `{d}` only in case, `-` or `_`, which proxy \
                         headers cannot tell apart",
                        name.value
                    )
                })
        };
        match problem {
            Some(message) => issues.push(name.referenced, format!("descriptors[{i}]"), message),
            None => out.push(name.value.as_str().into()),
        }
    }
    out
}

/// How a descriptor's name is matched to a proxy header's: header names are case-insensitive,
/// and `_` is awkward in them, so case, `-` and `_` are ignored (`Api-Key`, `api_key` and
/// `apiKey` all read `apikey`).
pub(crate) fn header_form(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
