//! From one file's raw YAML to a checked [`Domain`]: every problem is collected with its line,
//! column and field path, the same way the main policy reports them.

use super::raw::{RawDescriptor, RawFile, RawRateLimit};
use super::{Domain, EnvoyLimit, KeyNodes, Level, Node, Overrides, Rule, Unit};
use crate::algorithm::{FixedWindow, LimitParams};
use crate::policy::error::{Issues, PolicyError};
use crate::policy::{locate, Algorithm, Dimension, FailureMode, LimitDef, LimitName, Scope};
use crate::rate::{parse_duration, Rate};
use crate::time::Micros;
use serde_saphyr::{Location, Spanned};
use siphasher::sip::SipHasher13;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;

const ALGORITHMS: &str =
    "fixed_window (the default), sliding_window, sliding_log, token_bucket, gcra or leaky_bucket";

/// Compiles one file. `known` says which file already defined a domain, if any.
pub(super) fn compile(
    text: &str,
    origin: &str,
    known: &dyn Fn(&str) -> Option<Arc<str>>,
) -> Result<Domain, PolicyError> {
    let raw: RawFile = serde_saphyr::from_str(text)
        .map_err(|e| PolicyError::new(origin, vec![locate::issue_from_yaml(text, &e)]))?;
    let mut issues = Issues::default();
    let name = raw.domain.value.trim();
    if name.is_empty() {
        issues.push(
            raw.domain.referenced,
            "domain",
            "`domain` must not be empty",
        );
    } else if let Some(other) = known(name) {
        let message = format!("domain `{name}` is already defined in {other}");
        issues.push(raw.domain.referenced, "domain", message);
    }
    let failure_mode = match &raw.failure_mode {
        None => FailureMode::default(),
        Some(text) => text.value.parse().unwrap_or_else(|message: String| {
            issues.push(text.referenced, "failure_mode", message);
            FailureMode::default()
        }),
    };
    let mut walk = Walk {
        domain: name,
        issues: &mut issues,
        limits: 0,
        counters: HashMap::new(),
        names: HashMap::new(),
    };
    let root = walk.level(&raw.descriptors, "descriptors", name, &[]);
    let limits = walk.limits;
    if !issues.is_empty() {
        return Err(issues.into_error(origin));
    }
    Ok(Domain {
        name: name.into(),
        overrides: Overrides::new(name),
        failure_mode,
        allow_limit_override: raw.allow_limit_override.unwrap_or(false),
        source: origin.into(),
        root,
        limits,
    })
}

/// State of the walk down one file's tree.
struct Walk<'a> {
    domain: &'a str,
    issues: &'a mut Issues,
    limits: usize,
    /// What identifies each limit's counters so far (its name, its fingerprint and how many
    /// values its key has), and its line: two descriptors must not share one.
    counters: HashMap<(String, u64, usize), u64>,
    /// Each limit name of the domain compiled once: limits sharing a name share its
    /// `LimitName`, so the headers, which list a name once, find them by pointer
    /// (`LimitName::same_compilation`).
    names: HashMap<String, LimitName>,
}

impl Walk<'_> {
    /// Builds one level from `list` (at field `path`); `name` is the default-name prefix and
    /// `keys` the descriptor keys above it.
    fn level(
        &mut self,
        list: &[Spanned<RawDescriptor>],
        path: &str,
        name: &str,
        keys: &[Dimension],
    ) -> Level {
        let mut level = Level::default();
        for (i, item) in list.iter().enumerate() {
            let raw = &item.value;
            let here = format!("{path}[{i}]");
            let key = raw.key.value.as_str();
            if key.is_empty() {
                self.issues.push(
                    raw.key.referenced,
                    format!("{here}.key"),
                    "`key` must not be empty",
                );
                continue;
            }
            let value = raw.value.as_ref().map(|v| v.value.as_str());
            let own_name = match value {
                Some(v) => format!("{name}.{key}_{v}"),
                None => format!("{name}.{key}"),
            };
            let mut own_keys = keys.to_vec();
            own_keys.push(Dimension::Descriptor(key.into()));
            let node = Node {
                rule: self.rule(raw, &here, &own_name, &own_keys, item.referenced),
                share: raw.share_threshold.unwrap_or(false),
                pattern: value.unwrap_or_default().into(),
                children: self.level(
                    &raw.descriptors,
                    &format!("{here}.descriptors"),
                    &own_name,
                    &own_keys,
                ),
            };
            // What identifies each of the node's limits' counters, but for the values.
            let counters: Vec<(String, u64, usize)> = match &node.rule {
                Some(Rule::Limits(list)) => list
                    .iter()
                    .map(|l| ((*l.def.name).to_owned(), l.def.fingerprint, own_keys.len()))
                    .collect(),
                _ => Vec::new(),
            };
            if node.rule.is_none() && node.children.is_empty() {
                let message =
                    "a descriptor needs `rate_limit`, `rate_limits` or nested `descriptors`";
                self.issues.push(item.referenced, here.clone(), message);
            }
            let slot = level
                .keys
                .entry(key.into())
                .or_insert_with(KeyNodes::default);
            let taken = match value {
                None if slot.any.is_some() => true,
                None => {
                    slot.any = Some(node);
                    false
                }
                Some(v) => match v.strip_suffix('*') {
                    Some(prefix) if slot.prefixes.iter().any(|(p, _)| &**p == prefix) => true,
                    Some(prefix) => {
                        slot.prefixes.push((prefix.into(), node));
                        false
                    }
                    None => slot.exact.insert(v.into(), node).is_some(),
                },
            };
            if taken {
                let what = value.map_or(String::new(), |v| format!(" and value `{v}`"));
                let message = format!("another descriptor at this level has key `{key}`{what}");
                self.issues.push(item.referenced, here, message);
            } else {
                // Default names are joined from keys and values with `.` and `_`, so two paths
                // as deep can spell one (key `a` value `b`, and key `a_b`, are both `a_b`),
                // and with it the counters' name and fingerprint.
                let line = item.referenced.line();
                for counter in counters {
                    let name = counter.0.clone();
                    if let Some(earlier) = self.counters.insert(counter, line) {
                        let message = format!(
                            "this descriptor's limit `{name}` would count in the same counters \
                             as the one on line {earlier} (their keys and values spell one \
                             name); rename a key or a value so that the names differ"
                        );
                        self.issues.push(item.referenced, here, message);
                        break;
                    }
                }
            }
        }
        level
    }

    /// The rule of one descriptor: `rate_limit`, `rate_limits`, or none.
    fn rule(
        &mut self,
        raw: &RawDescriptor,
        path: &str,
        name: &str,
        keys: &[Dimension],
        at: Location,
    ) -> Option<Rule> {
        let shadow = raw.shadow_mode.unwrap_or(false);
        match (&raw.rate_limit, &raw.rate_limits) {
            (None, None) => None,
            (Some(_), Some(list)) => {
                let message = "use either `rate_limit` or `rate_limits`, not both";
                self.issues
                    .push(list.referenced, format!("{path}.rate_limits"), message);
                None
            }
            (Some(one), None) if one.value.unlimited == Some(true) => {
                self.unlimited(&one.value, &format!("{path}.rate_limit"), one.referenced);
                Some(Rule::Unlimited)
            }
            (Some(one), None) => {
                let field = format!("{path}.rate_limit");
                let limit = self.limit(&one.value, &field, name, keys, shadow, one.referenced);
                Some(Rule::Limits(limit.into_iter().collect()))
            }
            (None, Some(list)) if list.value.is_empty() => {
                let message = "`rate_limits` must list at least one limit";
                self.issues
                    .push(list.referenced, format!("{path}.rate_limits"), message);
                None
            }
            (None, Some(list)) => {
                let mut limits = Vec::with_capacity(list.value.len());
                for (i, item) in list.value.iter().enumerate() {
                    let field = format!("{path}.rate_limits[{i}]");
                    if item.value.unlimited.is_some() {
                        let message = "`unlimited` goes in a single `rate_limit`, not in a list";
                        self.issues
                            .push(item.referenced, format!("{field}.unlimited"), message);
                        continue;
                    }
                    let own = format!("{name}#{i}");
                    limits.extend(self.limit(&item.value, &field, &own, keys, shadow, at));
                }
                Some(Rule::Limits(limits))
            }
        }
    }

    /// Checks that an `unlimited` limit carries no numbers.
    fn unlimited(&mut self, raw: &RawRateLimit, path: &str, at: Location) {
        let numbers = raw.unit.is_some()
            || raw.requests_per_unit.is_some()
            || raw.window.is_some()
            || raw.algorithm.is_some();
        if numbers {
            let message =
                "an `unlimited` limit takes no unit, requests_per_unit, window or algorithm";
            self.issues.push(at, path.to_owned(), message);
        }
    }

    /// Compiles one limit; `None` (with issues recorded) when it is not valid.
    fn limit(
        &mut self,
        raw: &RawRateLimit,
        path: &str,
        default_name: &str,
        keys: &[Dimension],
        shadow: bool,
        at: Location,
    ) -> Option<EnvoyLimit> {
        let before = self.issues.len();
        let unit = raw.unit.as_ref().and_then(|u| {
            let parsed = Unit::parse(&u.value);
            if parsed.is_none() {
                let message = format!(
                    "unknown unit `{}` (use second, minute, hour, day, week, month or year)",
                    u.value
                );
                self.issues
                    .push(u.referenced, format!("{path}.unit"), message);
            }
            parsed
        });
        let window = raw.window.as_ref().and_then(|w| {
            parse_duration(&w.value)
                .map_err(|m| self.issues.push(w.referenced, format!("{path}.window"), m))
                .ok()
        });
        let period = match (&raw.unit, &raw.window) {
            (Some(u), Some(_)) => {
                let message = "set `unit` or `window`, not both";
                self.issues
                    .push(u.referenced, format!("{path}.unit"), message);
                None
            }
            (None, None) => {
                let message = "a limit needs `unit` (second, minute, hour, day) or `window`";
                self.issues.push(at, format!("{path}.unit"), message);
                None
            }
            (Some(_), None) => unit.map(Unit::micros),
            (None, Some(_)) => window,
        };
        let count = match &raw.requests_per_unit {
            None => {
                self.issues.push(
                    at,
                    format!("{path}.requests_per_unit"),
                    "a limit needs `requests_per_unit`",
                );
                None
            }
            Some(n) if n.value == 0 => {
                let message =
                    "`requests_per_unit` must be at least 1 (upstream's service reads 0 as \
                    denying every request, which a file here cannot say; `unlimited: true` \
                    is the opposite)";
                self.issues
                    .push(n.referenced, format!("{path}.requests_per_unit"), message);
                None
            }
            Some(n) => Some(n.value),
        };
        let algorithm = raw
            .algorithm
            .as_ref()
            .map_or("fixed_window", |a| a.value.as_str());
        let params = self.params(raw, path, algorithm, count, period, at)?;
        let name = match &raw.name {
            Some(n) if n.value.trim().is_empty() => {
                self.issues.push(
                    n.referenced,
                    format!("{path}.name"),
                    "`name` must not be empty",
                );
                return None;
            }
            Some(n) => n.value.trim().to_owned(),
            None => default_name.to_owned(),
        };
        let replaces = raw.replaces.iter().enumerate().filter_map(|(i, r)| {
            if r.name.value.trim().is_empty() {
                let field = format!("{path}.replaces[{i}].name");
                self.issues
                    .push(r.name.referenced, field, "`name` must not be empty");
                return None;
            }
            Some(Arc::from(r.name.value.trim()))
        });
        let replaces: Vec<Arc<str>> = replaces.collect();
        if self.issues.len() > before {
            return None;
        }
        let count = count?;
        let given = raw.name.is_some().then_some(name.as_str());
        let fingerprint = fingerprint_of(self.domain, default_name, algorithm, given);
        self.limits += 1;
        Some(EnvoyLimit {
            def: Arc::new(LimitDef {
                name: (self.names.entry(name))
                    .or_insert_with_key(|name| name.as_str().into())
                    .clone(),
                params,
                key: keys.to_vec(),
                shadow,
                metered: false,
                scope: Scope::Regional,
                fingerprint,
            }),
            replaces,
            requests_per_unit: count,
            unit: unit.filter(|_| raw.window.is_none()),
        })
    }

    /// The algorithm's parameters.
    fn params(
        &mut self,
        raw: &RawRateLimit,
        path: &str,
        algorithm: &str,
        count: Option<u64>,
        period: Option<Micros>,
        limit_at: Location,
    ) -> Option<LimitParams> {
        let bucket = matches!(algorithm, "token_bucket" | "gcra");
        let misplaced = [
            ("burst", raw.burst.as_ref().map(|b| b.referenced), bucket),
            (
                "capacity",
                raw.capacity.as_ref().map(|c| c.referenced),
                algorithm == "leaky_bucket",
            ),
        ];
        for (field, at, fits) in misplaced {
            if let (Some(at), false) = (at, fits) {
                let message = format!("`{field}` does not apply to {algorithm}");
                self.issues.push(at, format!("{path}.{field}"), message);
            }
        }
        let at = raw.algorithm.as_ref().map(|a| a.referenced);
        let (count, period) = (count?, period?);
        let built = Algorithm::parse(algorithm)
            .map_err(|_| format!("unknown algorithm `{algorithm}` (use {ALGORITHMS})"))
            .and_then(|algorithm| {
                if algorithm.is_bucket() {
                    let amount = match algorithm {
                        Algorithm::LeakyBucket => raw.capacity.as_ref().map_or(count, |c| c.value),
                        _ => raw.burst.as_ref().map_or(count, |b| b.value),
                    };
                    Rate::new(count, period).and_then(|rate| algorithm.bucket(rate, amount))
                } else {
                    algorithm.window(count, period)
                }
            });
        built
            .map_err(|message| {
                let field = if at.is_some() {
                    "algorithm"
                } else {
                    "requests_per_unit"
                };
                let at = at.or(raw.requests_per_unit.as_ref().map(|n| n.referenced));
                self.issues
                    .push(at.unwrap_or(limit_at), format!("{path}.{field}"), message);
            })
            .ok()
    }
}

/// A stable hash of what identifies one limit's counters: its domain, its place in the tree
/// (its default name), its algorithm and, when the file gives one, its own name. Changing its
/// numbers on reload keeps its counters, read under the new numbers
/// (`crate::algorithm::carry`), as for a policy limit; moving it, renaming it or changing its
/// algorithm starts fresh ones.
///
/// The given name is part of it because default names can be spelled alike by two places
/// (key `a` value `b`, and key `a_b`): named apart, their limits must count apart, and the
/// in-memory store tells counters apart by fingerprint and values alone.
fn fingerprint_of(domain: &str, place: &str, algorithm: &str, name: Option<&str>) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    let named = name.map(|name| ["name", name]);
    let parts = ["envoy", domain, place, algorithm].into_iter();
    for part in parts.chain(named.into_iter().flatten()) {
        hasher.write(&(part.len() as u64).to_le_bytes());
        hasher.write(part.as_bytes());
    }
    hasher.finish()
}

impl Overrides {
    /// What every override on domain `domain` shares: its name, `{domain}.override`, and each
    /// unit's fingerprint. Each unit counts apart (a second's count means nothing to a day's
    /// window); the count is read under whatever limit the descriptor sends, like a policy
    /// limit's new numbers.
    fn new(domain: &str) -> Self {
        let name = format!("{domain}.override");
        let fingerprint = |unit: Unit| {
            let place = format!("{name}/{}", unit.micros());
            fingerprint_of(domain, &place, "fixed_window", None)
        };
        let fingerprints = Unit::ALL.map(fingerprint);
        let denies = fingerprint_of(domain, &format!("{name}/deny"), "fixed_window", None);
        Self {
            name: name.into(),
            fingerprints,
            denies,
        }
    }
}

/// The limit a descriptor's own `limit` field asks for: a fixed window of one `unit`, counted
/// per descriptor values like any other, apart from the configured limits. Its name and
/// fingerprint were made when the domain was compiled (`overrides`).
pub(super) fn override_limit(
    overrides: &Overrides,
    count: u64,
    unit: Unit,
) -> Result<EnvoyLimit, String> {
    // 0 denies every request (`EnvoyLimit::denies_all`), on a counter of its own.
    let params = LimitParams::FixedWindow(FixedWindow::new(count.max(1), unit.micros())?);
    let fingerprint = match count {
        0 => overrides.denies,
        _ => overrides.fingerprints[unit as usize],
    };
    Ok(EnvoyLimit {
        def: Arc::new(LimitDef {
            name: overrides.name.clone(),
            params,
            key: Vec::new(),
            shadow: false,
            metered: false,
            scope: Scope::Regional,
            fingerprint,
        }),
        replaces: Vec::new(),
        requests_per_unit: count,
        unit: Some(unit),
    })
}
