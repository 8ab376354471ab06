//! How an engine [`Verdict`] is shown to HTTP clients: a JSON body and rate-limit headers.
//!
//! `/v1/check` and `/v1/authorize` share this, so a verdict reads the same wherever it is
//! asked for. Durations in the body are whole milliseconds, rounded up, so a client that waits
//! the advertised time is never early; the headers keep their standard whole seconds.
//!
//! Body shape:
//! ```json
//! {"allowed": false, "tier": "free", "route": "generate", "cost": 1,
//!  "limits": [{"name": "per_user", "allowed": false, "limit": 10, "remaining": 0,
//!              "reset_ms": 60000, "retry_after_ms": 6000, "denial": "over_limit",
//!              "shadow": false}]}
//! ```
//! `retry_after_ms` appears only when waiting will help; `denial` only on a denying limit.

use crate::http::problem::{self, Problem};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use spillway_core::algorithm::Denial;
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::rate::format_duration;
use spillway_core::time::Micros;

/// Microseconds as whole milliseconds, rounded up.
pub fn ceil_ms(micros: Micros) -> u64 {
    micros.div_ceil(1_000)
}

/// Why a verdict denies, as far as the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// Used up for now: retrying after `Retry-After` will work.
    OverLimit,
    /// The cost can never fit: retrying the same request is pointless.
    CostExceedsLimit,
}

/// Classifies a denying verdict; `None` when it allows. A cost no enforced limit could ever
/// admit outranks a limit that is merely used up, since no amount of waiting would help.
pub fn denial_kind(verdict: &Verdict) -> Option<DenialKind> {
    if verdict.allowed {
        return None;
    }
    if enforced(verdict).any(|o| o.decision.denial == Some(Denial::CostExceedsLimit)) {
        Some(DenialKind::CostExceedsLimit)
    } else {
        Some(DenialKind::OverLimit)
    }
}

fn enforced(verdict: &Verdict) -> impl Iterator<Item = &LimitOutcome> {
    verdict.outcomes.iter().filter(|o| !o.shadow)
}

/// The verdict as a JSON object (the success body, and the extension members of a denial).
pub fn verdict_json(verdict: &Verdict) -> Map<String, Value> {
    let limits: Vec<Value> = verdict.outcomes.iter().map(limit_json).collect();
    let mut body = Map::new();
    body.insert("allowed".into(), verdict.allowed.into());
    body.insert("tier".into(), verdict.tier.as_ref().into());
    body.insert(
        "route".into(),
        verdict.route.as_deref().map_or(Value::Null, Value::from),
    );
    body.insert("cost".into(), verdict.cost.into());
    body.insert("limits".into(), limits.into());
    body
}

fn limit_json(outcome: &LimitOutcome) -> Value {
    let d = &outcome.decision;
    let mut limit = json!({
        "name": outcome.name.as_ref(),
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_ms": ceil_ms(d.reset_after),
        "shadow": outcome.shadow,
    });
    if let Some(map) = limit.as_object_mut() {
        if let Some(retry) = d.retry_after {
            map.insert("retry_after_ms".into(), ceil_ms(retry).into());
        }
        if let Some(denial) = d.denial {
            let name = match denial {
                Denial::OverLimit => "over_limit",
                Denial::CostExceedsLimit => "cost_exceeds_limit",
            };
            map.insert("denial".into(), name.into());
        }
    }
    limit
}

/// The rate-limit headers for a verdict, as `spillway_core::headers::render` words them.
/// `Retry-After` is dropped when the cost can never fit, since it would promise a retry that
/// cannot succeed.
pub fn verdict_headers(verdict: &Verdict) -> HeaderMap {
    let cost_too_big = denial_kind(verdict) == Some(DenialKind::CostExceedsLimit);
    let mut headers = HeaderMap::new();
    for (name, value) in spillway_core::headers::render(verdict) {
        if cost_too_big && name.eq_ignore_ascii_case("retry-after") {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            tracing::warn!(header = name, value, "skipping a header that is not valid HTTP");
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// The problem document for a denial, answered with `status` (429 on `/v1/check`, the
/// configured deny status on `/v1/authorize`). It carries the verdict's members too, so a
/// client reads a denial exactly like an allowance.
pub fn denial_problem(verdict: &Verdict, status: StatusCode) -> Problem {
    let culprit = |wanted: Denial| {
        enforced(verdict)
            .find(|o| o.decision.denial == Some(wanted))
            .or_else(|| verdict.governing())
    };
    let problem = match denial_kind(verdict) {
        Some(DenialKind::CostExceedsLimit) => {
            let detail = match culprit(Denial::CostExceedsLimit) {
                Some(o) => format!(
                    "a cost of {} can never fit limit `{}`, which admits at most {} at once; \
                     retrying will not help",
                    verdict.cost, o.name, o.decision.limit
                ),
                None => format!("a cost of {} can never be admitted", verdict.cost),
            };
            Problem::new(
                status,
                problem::COST_EXCEEDS_LIMIT,
                "Cost exceeds limit",
                detail,
            )
        }
        _ => {
            let detail = match culprit(Denial::OverLimit) {
                Some(o) => {
                    let retry = o
                        .decision
                        .retry_after
                        .map(|r| format!("; retry in {} ms", ceil_ms(r)))
                        .unwrap_or_default();
                    format!(
                        "limit `{}` ({} per {}) is used up{retry}",
                        o.name,
                        o.quota,
                        format_duration(o.window)
                    )
                }
                None => "the request is over its rate limit".to_owned(),
            };
            Problem::new(status, problem::RATE_LIMITED, "Rate limit exceeded", detail)
        }
    };
    problem.with_all(verdict_json(verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_up() {
        assert_eq!(ceil_ms(0), 0);
        assert_eq!(ceil_ms(1), 1);
        assert_eq!(ceil_ms(1_000), 1);
        assert_eq!(ceil_ms(1_001), 2);
    }
}
