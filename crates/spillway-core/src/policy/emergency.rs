//! Emergency quotas: the small per-node limits a `degrade` route falls back to while the
//! shared store is unreachable.
//!
//! Each node enforces them alone, in memory, so during an outage a deployment of `n` nodes
//! admits up to `n` times the emergency quota. The default therefore splits the real quota
//! over the expected node count (`store.expected_nodes`): `ceil(quota / nodes)`. A limit may
//! set its own with `emergency: {limit: 10}` or `emergency: {fraction: 0.1}` (of its quota).
//!
//! The emergency version of a limit keeps its algorithm and window; only the amount shrinks
//! (and, for the buckets, the refill rate shrinks in proportion, so the bucket refills in the
//! same time as the real one).

use super::error::Issues;
use super::limit::Defs;
use super::raw::{Named, RawLimit};
use crate::algorithm::{
    FixedWindow, Gcra, LeakyBucket, LimitParams, ScaledRate, SlidingLog, SlidingWindow, TokenBucket,
};
use crate::rate::Rate;
use std::collections::HashMap;
use std::sync::Arc;

/// How one limit's emergency quota is set in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emergency {
    /// An absolute quota per node.
    Limit(u64),
    /// A share of the limit's quota, in millionths (`fraction: 0.1` is 100,000).
    Fraction(u64),
}

const MILLION: u64 = 1_000_000;

impl Emergency {
    /// The per-node quota for a limit whose real quota is `quota`: the policy's own setting,
    /// else `ceil(quota / expected_nodes)`. Never below 1, never above `quota`.
    pub fn quota(setting: Option<Emergency>, quota: u64, expected_nodes: u64) -> u64 {
        let wanted = match setting {
            Some(Self::Limit(n)) => n,
            Some(Self::Fraction(ppm)) => {
                let scaled = u128::from(quota) * u128::from(ppm);
                u64::try_from(scaled.div_ceil(u128::from(MILLION))).unwrap_or(u64::MAX)
            }
            None => quota.div_ceil(expected_nodes.max(1)),
        };
        wanted.clamp(1, quota.max(1))
    }
}

/// `params` with its quota cut to `quota` (same algorithm and window). Falls back to the
/// original parameters if the smaller ones cannot be represented, which over-admits locally
/// rather than failing a request.
pub fn scaled(params: &LimitParams, quota: u64) -> LimitParams {
    let original = params.quota();
    if quota >= original {
        return params.clone();
    }
    // The bucket refills `quota` tokens in the time the real one refills `original`.
    let shrink = |rate: ScaledRate| {
        let count = rate.tokens.checked_mul(quota)?;
        let period = rate.micros.checked_mul(original)?;
        Rate::new(count, period).ok()
    };
    let built = match params {
        LimitParams::TokenBucket(p) => shrink(p.rate())
            .and_then(|r| TokenBucket::new(r, quota).ok())
            .map(LimitParams::TokenBucket),
        LimitParams::Gcra(p) => shrink(p.rate())
            .and_then(|r| Gcra::new(r, quota).ok())
            .map(LimitParams::Gcra),
        LimitParams::LeakyBucket(p) => shrink(p.drain())
            .and_then(|r| LeakyBucket::new(r, quota).ok())
            .map(LimitParams::LeakyBucket),
        LimitParams::FixedWindow(p) => FixedWindow::new(quota, p.window())
            .ok()
            .map(LimitParams::FixedWindow),
        LimitParams::SlidingWindow(p) => SlidingWindow::new(quota, p.window())
            .ok()
            .map(LimitParams::SlidingWindow),
        LimitParams::SlidingLog(p) => SlidingLog::new(quota, p.window())
            .ok()
            .map(LimitParams::SlidingLog),
    };
    built.unwrap_or_else(|| params.clone())
}

/// Checks every limit's `emergency` field; returns the valid settings by limit name.
pub(crate) fn compile(
    limits: &Named<RawLimit>,
    defs: &Defs<'_>,
    issues: &mut Issues,
) -> HashMap<Arc<str>, Emergency> {
    let mut out = HashMap::new();
    for (name, raw) in &limits.0 {
        let Some(e) = &raw.emergency else { continue };
        let path = format!("limits.{}.emergency", name.value);
        let quota = defs
            .get(&name.value)
            .and_then(|d| d.compiled.as_ref())
            .map(|d| d.params.quota());
        let setting = match (&e.value.limit, &e.value.fraction) {
            (Some(_), Some(_)) | (None, None) => {
                issues.push(
                    e.referenced,
                    path,
                    "set exactly one of `limit` (requests per node) or `fraction` (of the \
                     limit's quota), e.g. `emergency: {limit: 10}`",
                );
                continue;
            }
            (Some(limit), None) => match limit.value.positive() {
                Ok(n) if quota.is_some_and(|q| n > q) => {
                    let message = format!(
                        "an emergency limit of {n} is above the limit's own quota of {}",
                        quota.unwrap_or_default()
                    );
                    issues.push(limit.referenced, format!("{path}.limit"), message);
                    continue;
                }
                Ok(n) => Emergency::Limit(n),
                Err(message) => {
                    issues.push(limit.referenced, format!("{path}.limit"), message);
                    continue;
                }
            },
            (None, Some(fraction)) => match fraction.value.fraction() {
                Some(f) if f > 0.0 && f <= 1.0 => Emergency::Fraction((f * 1e6).ceil() as u64),
                _ => {
                    issues.push(
                        fraction.referenced,
                        format!("{path}.fraction"),
                        "must be a number above 0 and at most 1 (e.g. 0.1)",
                    );
                    continue;
                }
            },
        };
        out.insert(name.value.as_str().into(), setting);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{MINUTE, SECOND};

    #[test]
    fn the_default_splits_the_quota_over_the_expected_nodes() {
        assert_eq!(Emergency::quota(None, 100, 3), 34);
        assert_eq!(Emergency::quota(None, 2, 3), 1);
        assert_eq!(Emergency::quota(None, 100, 0), 100);
        assert_eq!(Emergency::quota(Some(Emergency::Limit(10)), 100, 3), 10);
        assert_eq!(Emergency::quota(Some(Emergency::Limit(500)), 100, 3), 100);
        assert_eq!(
            Emergency::quota(Some(Emergency::Fraction(100_000)), 95, 3),
            10
        );
    }

    #[test]
    fn scaling_keeps_the_algorithm_and_window() {
        let fixed = LimitParams::FixedWindow(FixedWindow::new(100, MINUTE).expect("valid"));
        let small = scaled(&fixed, 10);
        assert_eq!((small.quota(), small.window()), (10, MINUTE));

        let rate = Rate::new(100, SECOND).expect("valid");
        let bucket = LimitParams::TokenBucket(TokenBucket::new(rate, 100).expect("valid"));
        let small = scaled(&bucket, 5);
        assert_eq!(small.quota(), 5);
        assert_eq!(small.window(), bucket.window(), "refills in the same time");
        assert_eq!(scaled(&bucket, 1_000).quota(), 100);
    }
}
