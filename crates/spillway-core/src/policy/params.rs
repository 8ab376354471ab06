//! A limit's algorithm and numbers: which fields each algorithm takes, their checks, and the
//! stable fingerprint of the limit's identity (name, algorithm, key; not the numbers).
//!
//! A limit and a tenant's override of it share this code: the override lays its fields over
//! the limit's, and every field remembers which entry wrote it, so a bad number is reported
//! at the place it was written.

use super::error::Issues;
use super::raw::{Number, RawLimit, RawOverride, Text};
use super::Dimension;
use crate::algorithm::{
    FixedWindow, Gcra, LeakyBucket, LimitParams, SlidingLog, SlidingWindow, TokenBucket,
};
use crate::rate::{parse_duration, Rate};
use crate::time::Micros;
use serde_saphyr::{Location, Spanned};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// The algorithms a policy may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    TokenBucket,
    Gcra,
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    LeakyBucket,
}

const NAMES: &str = "token_bucket, gcra, fixed_window, sliding_window, sliding_log or leaky_bucket";

impl Algorithm {
    /// Parses an algorithm name as written in a policy.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "token_bucket" => Self::TokenBucket,
            "gcra" => Self::Gcra,
            "fixed_window" => Self::FixedWindow,
            "sliding_window" => Self::SlidingWindow,
            "sliding_log" => Self::SlidingLog,
            "leaky_bucket" => Self::LeakyBucket,
            other => return Err(format!("unknown algorithm `{other}` (use {NAMES})")),
        })
    }

    /// Whether the algorithm is a bucket (a refill or drain rate and an amount: burst or
    /// capacity) rather than a window (a limit per window).
    pub(crate) fn is_bucket(self) -> bool {
        matches!(self, Self::TokenBucket | Self::Gcra | Self::LeakyBucket)
    }

    /// A bucket algorithm's parameters: `rate`, holding at most `amount`.
    pub(crate) fn bucket(self, rate: Rate, amount: u64) -> Result<LimitParams, String> {
        match self {
            Self::TokenBucket => TokenBucket::new(rate, amount).map(LimitParams::TokenBucket),
            Self::Gcra => Gcra::new(rate, amount).map(LimitParams::Gcra),
            Self::LeakyBucket => LeakyBucket::new(rate, amount).map(LimitParams::LeakyBucket),
            other => Err(format!(
                "{} takes a limit and a window, not a rate",
                other.name()
            )),
        }
    }

    /// A window algorithm's parameters: at most `limit` per `window`.
    pub(crate) fn window(self, limit: u64, window: Micros) -> Result<LimitParams, String> {
        match self {
            Self::FixedWindow => FixedWindow::new(limit, window).map(LimitParams::FixedWindow),
            Self::SlidingWindow => {
                SlidingWindow::new(limit, window).map(LimitParams::SlidingWindow)
            }
            Self::SlidingLog => SlidingLog::new(limit, window).map(LimitParams::SlidingLog),
            other => Err(format!(
                "{} takes a rate, not a limit and a window",
                other.name()
            )),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::Gcra => "gcra",
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindow => "sliding_window",
            Self::SlidingLog => "sliding_log",
            Self::LeakyBucket => "leaky_bucket",
        }
    }

    /// The fields this algorithm takes, required ones first; and how many are required.
    fn fields(self) -> (&'static [&'static str], usize, &'static str) {
        match self {
            Self::TokenBucket | Self::Gcra => (&["rate", "burst"], 1, "rate: 100/min"),
            Self::LeakyBucket => (&["rate", "capacity"], 2, "rate: 10/s, capacity: 50"),
            Self::FixedWindow | Self::SlidingWindow | Self::SlidingLog => {
                (&["limit", "window"], 2, "limit: 1000, window: 1h")
            }
        }
    }
}

/// One field's value and the path of the entry (limit or override) that wrote it.
struct Written<'a, T> {
    value: &'a Spanned<T>,
    owner: &'a str,
}

// Only references inside, so copyable whatever `T` is (a derive would demand `T: Copy`).
impl<T> Clone for Written<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Written<'_, T> {}

/// The numeric fields of a limit, each possibly from a different entry.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    rate: Option<Written<'a, String>>,
    burst: Option<Written<'a, Number>>,
    limit: Option<Written<'a, Number>>,
    window: Option<Written<'a, String>>,
    capacity: Option<Written<'a, Number>>,
    /// The entry missing fields are reported against, and where it starts.
    owner: &'a str,
    at: Location,
}

impl<'a> Fields<'a> {
    /// The fields of the limit at `owner` (its path), whose name was written at `at`.
    pub(crate) fn of_limit(raw: &'a RawLimit, owner: &'a str, at: Location) -> Self {
        let from = |v: &'a Option<Spanned<_>>| v.as_ref().map(|value| Written { value, owner });
        Self {
            rate: raw.rate.as_ref().map(|value| Written { value, owner }),
            burst: from(&raw.burst),
            limit: from(&raw.limit),
            window: raw.window.as_ref().map(|value| Written { value, owner }),
            capacity: from(&raw.capacity),
            owner,
            at,
        }
    }

    /// These fields with `raw`'s (an override at `owner`, named at `at`) laid on top.
    pub(crate) fn overlay(mut self, raw: &'a RawOverride, owner: &'a str, at: Location) -> Self {
        fn pick<'a, T>(
            own: &'a Option<Spanned<T>>,
            owner: &'a str,
            base: &mut Option<Written<'a, T>>,
        ) {
            if let Some(value) = own {
                *base = Some(Written { value, owner });
            }
        }
        pick(&raw.rate, owner, &mut self.rate);
        pick(&raw.burst, owner, &mut self.burst);
        pick(&raw.limit, owner, &mut self.limit);
        pick(&raw.window, owner, &mut self.window);
        pick(&raw.capacity, owner, &mut self.capacity);
        self.owner = owner;
        self.at = at;
        self
    }
}

/// The validated parameters of a limit, with the algorithm its fingerprint names.
pub(crate) struct Compiled {
    pub params: LimitParams,
    algorithm: Algorithm,
}

/// Checks `fields` against `algorithm`, recording every problem; `None` if there was any.
pub(crate) fn compile(
    algorithm: Algorithm,
    fields: &Fields<'_>,
    issues: &mut Issues,
) -> Option<Compiled> {
    let before = issues.len();
    let (allowed, required, example) = algorithm.fields();
    let present: [(&str, Option<(Location, &str)>); 5] = [
        ("rate", fields.rate.map(|f| (f.value.referenced, f.owner))),
        ("burst", fields.burst.map(|f| (f.value.referenced, f.owner))),
        ("limit", fields.limit.map(|f| (f.value.referenced, f.owner))),
        (
            "window",
            fields.window.map(|f| (f.value.referenced, f.owner)),
        ),
        (
            "capacity",
            fields.capacity.map(|f| (f.value.referenced, f.owner)),
        ),
    ];
    for (name, found) in present {
        let Some((at, owner)) = found else { continue };
        if !allowed.contains(&name) {
            issues.push(
                at,
                format!("{owner}.{name}"),
                format!(
                    "`{name}` does not apply to {} (it takes {})",
                    algorithm.name(),
                    allowed.join(" and ")
                ),
            );
        }
    }
    for name in &allowed[..required] {
        if present
            .iter()
            .any(|(n, found)| n == name && found.is_none())
        {
            issues.push(
                fields.at,
                format!("{}.{name}", fields.owner),
                format!("{} needs `{name}` (e.g. `{example}`)", algorithm.name()),
            );
        }
    }
    // Values of fields the algorithm does not take are not worth a second complaint.
    let takes = |name: &str| allowed.contains(&name);
    let rate = (fields.rate)
        .filter(|_| takes("rate"))
        .and_then(|f| check(f, issues, "rate", |t| Rate::parse(t)));
    let window = (fields.window).filter(|_| takes("window")).and_then(|f| {
        check(f, issues, "window", |t| {
            parse_duration(t).and_then(|w| {
                if w > crate::algorithm::MAX_WINDOW {
                    Err(format!(
                        "window `{t}` is too long (at most 3650d, ten years)"
                    ))
                } else {
                    Ok(w)
                }
            })
        })
    });
    let (amount_name, amount_written) = match algorithm {
        Algorithm::TokenBucket | Algorithm::Gcra => ("burst", fields.burst),
        Algorithm::LeakyBucket => ("capacity", fields.capacity),
        _ => ("limit", fields.limit),
    };
    let amount_field = amount_written.map(|f| (amount_name, f));
    let amount = amount_field.and_then(|(name, f)| {
        check(f, issues, name, |n| {
            n.positive().map_err(|m| format!("`{name}` {m}"))
        })
    });
    if issues.len() > before {
        return None;
    }
    let built = if algorithm.is_bucket() {
        let rate = rate?;
        // A bucket that holds one period's worth is the natural default burst.
        let amount = amount.unwrap_or(rate.count);
        algorithm.bucket(rate, amount)
    } else {
        let (limit, window) = (amount?, window?);
        algorithm.window(limit, window)
    };
    match built {
        Ok(params) => Some(Compiled { params, algorithm }),
        Err(message) => {
            // The constructors judge the numbers together; blame the amount if it was written.
            let (at, path) = match amount_field {
                Some((name, f)) => (f.value.referenced, format!("{}.{name}", f.owner)),
                None => (fields.at, fields.owner.to_owned()),
            };
            let message = match (amount_field, rate) {
                (None, Some(rate)) if algorithm.is_bucket() => format!(
                    "{message}; no `{amount_name}` was written, so it defaulted to the rate's \
                     count ({}): write a smaller `{amount_name}`",
                    rate.count
                ),
                _ => message,
            };
            issues.push(at, path, message);
            None
        }
    }
}

/// Parses one field, recording a failure under its own path.
fn check<T, V>(
    field: Written<'_, T>,
    issues: &mut Issues,
    name: &str,
    parse: impl FnOnce(&T) -> Result<V, String>,
) -> Option<V> {
    match parse(&field.value.value) {
        Ok(v) => Some(v),
        Err(message) => {
            issues.push(
                field.value.referenced,
                format!("{}.{name}", field.owner),
                message,
            );
            None
        }
    }
}

impl Compiled {
    /// A hash of the limit's name, its algorithm and its key, computed with fixed SipHash keys
    /// and an explicit byte encoding so it is identical on every machine, process and
    /// release. It identifies one limit's counters: stores use it as the limit's part of a
    /// counter's identity (the in-memory store seeds its key hash with it instead of hashing
    /// the name on every check). The numbers are left out on purpose, so a counter survives
    /// a change of them (on reload, or in a tenant's override): the state the old numbers
    /// left is read under the new ones (`crate::algorithm::carry`) instead of every key
    /// starting on a fresh quota. A change of algorithm starts fresh counters. (A tenant's
    /// override of a limit not keyed by tenant is kept apart: see [`tenant_scoped`].)
    pub(crate) fn fingerprint(&self, name: &str, key: &[Dimension]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(0, 0);
        let mut put = |bytes: &[u8]| {
            hasher.write(&(bytes.len() as u64).to_le_bytes());
            hasher.write(bytes);
        };
        put(name.as_bytes());
        put(self.algorithm.name().as_bytes());
        for dimension in key {
            // Tag built-ins apart from descriptors so a descriptor named like one cannot alias.
            let tag: &[u8] = if matches!(dimension, Dimension::Descriptor(_)) {
                b"d"
            } else {
                b"b"
            };
            put(tag);
            put(dimension.as_str().as_bytes());
        }
        hasher.finish()
    }
}

/// The fingerprint of a tenant's override of a limit whose key does not hold the tenant: the
/// limit's own fingerprint mixed with the tenant's name, so the override keeps counters of its
/// own instead of sharing the base limit's across tenants (see `tenant::overrides`).
pub(crate) fn tenant_scoped(fingerprint: u64, tenant: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    hasher.write(&fingerprint.to_le_bytes());
    hasher.write(b"tenant");
    hasher.write(&(tenant.len() as u64).to_le_bytes());
    hasher.write(tenant.as_bytes());
    hasher.finish()
}

/// The fingerprint of one user's override of a limit that does not count each user of each
/// tenant apart: like [`tenant_scoped`], for the pair.
pub(crate) fn user_scoped(fingerprint: u64, tenant: &str, user: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0, 0);
    hasher.write(&fingerprint.to_le_bytes());
    hasher.write(b"user");
    for part in [tenant, user] {
        hasher.write(&(part.len() as u64).to_le_bytes());
        hasher.write(part.as_bytes());
    }
    hasher.finish()
}

/// Checks a name written in the policy (a limit, tier or descriptor), which ends up in store
/// keys and metrics, so it is kept to characters that need no escaping anywhere.
pub(crate) fn check_name(name: &Text, what: &str) -> Result<(), String> {
    let text = name.value.as_str();
    if text.is_empty() {
        return Err(format!("a {what} name must not be empty"));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "{what} name `{text}` contains `{c}`; use letters, digits, `-`, `_` and `.`"
        )),
        None => Ok(()),
    }
}
