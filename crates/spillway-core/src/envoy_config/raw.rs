//! An envoyproxy/ratelimit configuration file exactly as written, with positions kept on every
//! value a later check may reject.
//!
//! The fields upstream defines are all accepted, so an existing file loads unchanged. Spillway's
//! extensions sit next to them: `failure_mode` and `allow_limit_override` on the document, and
//! `algorithm`, `window`, `burst` and `capacity` on a `rate_limit`, plus `rate_limits` (a list)
//! for several limits on one descriptor. Unknown fields are refused, so a typo is reported
//! instead of silently leaving a descriptor unlimited.

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A string with the place it was written.
pub(crate) type Text = Spanned<String>;

/// One file: the limits of one domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub domain: Text,
    #[serde(default, deserialize_with = "or_default")]
    pub descriptors: Vec<Spanned<RawDescriptor>>,
    /// Spillway: what to answer when the store fails (`open`, `closed` or `degrade`; default
    /// `degrade`).
    #[serde(default)]
    pub failure_mode: Option<Text>,
    /// Spillway: whether a request's own `limit` override is honoured (default `false`).
    #[serde(default)]
    pub allow_limit_override: Option<bool>,
}

/// One node of the descriptor tree: a key, maybe a value, maybe limits, maybe children.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDescriptor {
    pub key: Text,
    #[serde(default)]
    pub value: Option<Text>,
    #[serde(default)]
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Spillway: several limits that must all pass (e.g. a burst and a sustained rate).
    #[serde(default)]
    pub rate_limits: Option<Spanned<Vec<Spanned<RawRateLimit>>>>,
    #[serde(default, deserialize_with = "or_default")]
    pub descriptors: Vec<Spanned<RawDescriptor>>,
    #[serde(default)]
    pub shadow_mode: Option<bool>,
    /// Upstream's per-value metrics; accepted and ignored (metric labels never carry values).
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility, deliberately unused
    pub detailed_metric: Option<bool>,
    /// Upstream's metric naming switch; accepted and ignored for the same reason.
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility, deliberately unused
    pub value_to_metric: Option<bool>,
    /// Values matched by a `prefix*` wildcard share one counter instead of one each.
    #[serde(default)]
    pub share_threshold: Option<bool>,
}

/// A limit as upstream writes it, with Spillway's optional algorithm fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    #[serde(default)]
    pub unit: Option<Text>,
    #[serde(default)]
    pub requests_per_unit: Option<Spanned<u64>>,
    #[serde(default)]
    pub unlimited: Option<bool>,
    #[serde(default)]
    pub name: Option<Text>,
    #[serde(default, deserialize_with = "or_default")]
    pub replaces: Vec<RawReplaces>,
    /// Spillway: the algorithm (default `fixed_window`, upstream's semantics).
    #[serde(default)]
    pub algorithm: Option<Text>,
    /// Spillway: a window other than one `unit`, e.g. `30s`.
    #[serde(default)]
    pub window: Option<Text>,
    /// Spillway: the bucket size of `token_bucket` and `gcra`.
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
    /// Spillway: the bucket size of `leaky_bucket`.
    #[serde(default)]
    pub capacity: Option<Spanned<u64>>,
}

/// One entry of `replaces`: the name of a limit this one stands in for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplaces {
    pub name: Text,
}

/// Reads a field left blank (`descriptors:` with nothing after it) as its empty default.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
