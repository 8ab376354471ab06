//! envoyproxy/ratelimit's configuration format, compiled onto Spillway's limits, so a team
//! running that service can point Envoy at Spillway and keep its files.
//!
//! Each file names one `domain` and a tree of `descriptors`; every node with a `rate_limit`
//! becomes a [`LimitDef`] whose counter key is the request's values along the node's path.
//! Matching follows upstream: at each level an entry first looks for a node with the same key
//! and value, then for a `value: "prefix*"` node, then for a key-only node (any value); a limit
//! applies only when the descriptor's last entry lands on a node that carries one.
//!
//! Layout: `raw` mirrors the YAML, `compile` checks it and builds the tree (reporting every
//! problem as `file:line:col: path: message`, like the main policy), and `matching` is the
//! per-request walk. This module holds the compiled types.

mod compile;
mod matching;
mod raw;

#[cfg(test)]
mod tests;

pub use matching::Found;

use crate::policy::{FailureMode, LimitDef, LimitName, PolicyError};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Every loaded domain, ready to match descriptors. Immutable once built; a reload builds a
/// new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct EnvoyConfig {
    domains: HashMap<Box<str>, Arc<Domain>>,
}

/// One domain's descriptor tree and settings.
#[derive(Debug)]
pub struct Domain {
    /// The domain name Envoy sends in each request.
    pub name: Arc<str>,
    /// What every limit a descriptor's own `limit` asks for shares, made once.
    overrides: Overrides,
    /// What to answer when the store fails (`degrade` unless the file says `failure_mode`).
    pub failure_mode: FailureMode,
    /// Whether a descriptor's own `limit` (set by Envoy's route config) replaces the
    /// configured one. Off by default: it lets the caller choose its own limit.
    pub allow_limit_override: bool,
    /// Where the domain was loaded from, for logs.
    pub source: Arc<str>,
    root: Level,
    limits: usize,
}

/// The name and fingerprints of a domain's overrides, which never change: made when the
/// domain is compiled rather than on every gRPC call that sends its own limit.
#[derive(Debug)]
struct Overrides {
    /// `{domain}.override`, with its quoted forms; cloned into each override.
    name: LimitName,
    /// Each unit's fingerprint, by `Unit as usize` (the order of [`Unit::ALL`]).
    fingerprints: [u64; Unit::ALL.len()],
    /// The fingerprint of an override of 0 ([`EnvoyLimit::denies_all`]), whatever its unit:
    /// a counter of its own, so that another override on the same entries (which would share
    /// the unit's counter, and be judged in its place) cannot admit what it denies.
    denies: u64,
}

/// The time units of upstream's `rate_limit.unit`, also what a status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
    /// Seven days.
    Week,
    /// Thirty days, as upstream's service counts a month.
    Month,
    /// 365 days, as upstream's service counts a year.
    Year,
}

impl Unit {
    /// Every unit, in declaration order (so `unit as usize` is its index here).
    pub const ALL: [Self; 7] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::Day,
        Self::Week,
        Self::Month,
        Self::Year,
    ];

    /// The unit's length in microseconds.
    pub fn micros(self) -> u64 {
        use crate::time::{DAY, HOUR, MINUTE, SECOND};
        match self {
            Self::Second => SECOND,
            Self::Minute => MINUTE,
            Self::Hour => HOUR,
            Self::Day => DAY,
            Self::Week => 7 * DAY,
            Self::Month => 30 * DAY,
            Self::Year => 365 * DAY,
        }
    }

    /// Parses upstream's spelling, either case (`second`, `MINUTE`).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => Self::Second,
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// One limit of a descriptor node, with what Envoy is told about it.
#[derive(Debug, Clone)]
pub struct EnvoyLimit {
    /// The compiled limit the engine checks.
    pub def: Arc<LimitDef>,
    /// Names of limits this one stands in for when both match one request (upstream's
    /// `replaces`).
    pub replaces: Vec<Arc<str>>,
    /// `requests_per_unit` as written, reported in a status's `current_limit`.
    pub requests_per_unit: u64,
    /// The unit as written, when the limit's period is exactly one unit; `None` for custom
    /// windows such as `30s` (reported as `UNKNOWN`; the headers carry the exact window).
    pub unit: Option<Unit>,
}

impl EnvoyLimit {
    /// Whether the limit is 0, which upstream's service reads as denying every request (a
    /// descriptor's override may say it): compiled as a window of one, and charged above it
    /// by the plan, so every request is refused as costing more than the limit, and none is
    /// counted.
    pub fn denies_all(&self) -> bool {
        self.requests_per_unit == 0
    }
}

/// What a matched node says about the descriptor.
#[derive(Debug)]
pub enum Rule {
    /// `unlimited: true`: matched on purpose, never limited.
    Unlimited,
    /// One or more limits that must all pass.
    Limits(Vec<EnvoyLimit>),
}

/// A level of the descriptor tree: the nodes under one parent, by key.
#[derive(Debug, Default)]
struct Level {
    keys: HashMap<Box<str>, KeyNodes>,
}

/// The nodes of one key at one level, in the order matching tries them.
#[derive(Debug, Default)]
struct KeyNodes {
    exact: HashMap<Box<str>, Node>,
    prefixes: Vec<(Box<str>, Node)>,
    any: Option<Node>,
}

/// One configured descriptor.
#[derive(Debug)]
struct Node {
    rule: Option<Rule>,
    /// For a prefix node: whether all matching values share one counter.
    share: bool,
    /// The pattern as written, the shared counter's key part when `share` is set.
    pattern: Box<str>,
    children: Level,
}

/// Why a set of envoy config files was rejected: every problem of every file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct EnvoyConfigError {
    /// One error per rejected file, each listing that file's problems.
    pub errors: Vec<PolicyError>,
}

impl EnvoyConfig {
    /// Compiles `sources`, each `(origin, text)` with origin naming it in errors (a path).
    /// Every file is checked, and all problems are reported together; one domain per file, and
    /// no domain twice.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, EnvoyConfigError> {
        let mut domains: HashMap<Box<str>, Arc<Domain>> = HashMap::new();
        let mut errors = Vec::new();
        for (origin, text) in sources {
            let known = |d: &str| domains.get(d).map(|x| x.source.clone());
            let compiled = compile::compile(text, origin, &known);
            match compiled {
                Ok(domain) => {
                    domains.insert(domain.name.as_ref().into(), Arc::new(domain));
                }
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            Ok(Self { domains })
        } else {
            Err(EnvoyConfigError { errors })
        }
    }

    /// The domain named `name`, if one was loaded.
    pub fn domain(&self, name: &str) -> Option<&Arc<Domain>> {
        self.domains.get(name)
    }

    /// The loaded domain names, sorted.
    pub fn domain_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<_> = self.domains.values().map(|d| d.name.clone()).collect();
        names.sort();
        names
    }

    /// How many limits all domains define together.
    pub fn limit_count(&self) -> usize {
        self.domains.values().map(|d| d.limits).sum()
    }
}

impl Domain {
    /// The limit a descriptor's own `limit` field asks for (when the domain allows it): a
    /// fixed window of `count` per `unit`; a `count` of 0 denies every request
    /// ([`EnvoyLimit::denies_all`]).
    pub fn override_limit(&self, count: u64, unit: Unit) -> Result<EnvoyLimit, String> {
        compile::override_limit(&self.overrides, count, unit)
    }

    /// How many limits the domain defines.
    pub fn limit_count(&self) -> usize {
        self.limits
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
