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
//! A decision made without the store adds `"degraded": "store-unavailable"` (and the
//! `Spillway-Degraded` header); under `degrade` its limits are the emergency quotas.

use crate::decision::Decided;
use crate::failure;
use crate::http::problem::{self, Problem};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use spillway_core::algorithm::Denial;
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::rate::format_duration;
use spillway_core::time::Micros;
use std::sync::Arc;

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

/// A verdict as clients see it: the success body, and the extension members of a denial.
/// Names are shared with the policy (`Arc<str>`), so building one allocates only its list.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictBody {
    allowed: bool,
    tier: Arc<str>,
    route: Option<Arc<str>>,
    cost: u64,
    limits: Vec<LimitBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<&'static str>,
}

/// One limit's part in a [`VerdictBody`].
#[derive(Debug, Clone, Serialize)]
pub struct LimitBody {
    name: Arc<str>,
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    denial: Option<&'static str>,
    shadow: bool,
}

impl From<&Verdict> for VerdictBody {
    fn from(verdict: &Verdict) -> Self {
        Self {
            allowed: verdict.allowed,
            tier: verdict.tier.clone(),
            route: verdict.route.clone(),
            cost: verdict.cost,
            limits: verdict.outcomes.iter().map(LimitBody::from).collect(),
            degraded: None,
        }
    }
}

impl From<&LimitOutcome> for LimitBody {
    fn from(outcome: &LimitOutcome) -> Self {
        let d = &outcome.decision;
        Self {
            name: outcome.name.clone(),
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: ceil_ms(d.reset_after),
            retry_after_ms: d.retry_after.map(ceil_ms),
            denial: d.denial.map(|denial| match denial {
                Denial::OverLimit => "over_limit",
                Denial::CostExceedsLimit => "cost_exceeds_limit",
            }),
            shadow: outcome.shadow,
        }
    }
}

/// A `200`-style JSON response: `body` serialized into one buffer sized for a typical verdict
/// (axum's `Json` starts smaller and regrows), with `headers` and the JSON content type.
pub fn json_response(status: StatusCode, mut headers: HeaderMap, body: &VerdictBody) -> Response {
    let mut bytes = Vec::with_capacity(128 + 128 * body.limits.len());
    // A VerdictBody holds only strings, numbers and booleans: serializing it cannot fail.
    if let Err(err) = serde_json::to_writer(&mut bytes, body) {
        tracing::error!(%err, "could not serialize a verdict");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The headers of a decision: the verdict's, plus the degraded mark when the store did not
/// take part.
pub fn decided_headers(decided: &Decided) -> HeaderMap {
    let mut headers = verdict_headers(&decided.verdict);
    if decided.degraded.is_some() {
        headers.insert(
            HeaderName::from_static(failure::DEGRADED_HEADER),
            HeaderValue::from_static(failure::DEGRADED_REASON),
        );
    }
    if let Some(home) = &decided.home_region {
        // A region name is letters, digits, `-`, `_` and `.` (policy validation).
        if let Ok(value) = HeaderValue::from_str(home) {
            headers.insert(HeaderName::from_static(crate::region::HOME_HEADER), value);
        }
    }
    headers
}

/// The JSON body of a decision, with the degraded mark when the store did not take part. Built
/// only by the responses that send a body (an allowed `/v1/authorize` sends none).
pub fn decided_body(decided: &Decided) -> VerdictBody {
    let mut body = VerdictBody::from(&decided.verdict);
    if decided.degraded.is_some() {
        body.degraded = Some(failure::DEGRADED_REASON);
    }
    body
}

/// The rate-limit headers for a verdict, as `spillway_core::headers::render` words them (it
/// already leaves out `Retry-After` when the cost can never fit). The names are the module's
/// lower-case constants and the values printable ASCII, so each value becomes a header without
/// a copy.
pub fn verdict_headers(verdict: &Verdict) -> HeaderMap {
    let rendered = spillway_core::headers::render(verdict);
    let mut headers = HeaderMap::with_capacity(rendered.len() + 4);
    for (name, value) in rendered {
        match HeaderValue::try_from(value) {
            Ok(value) => {
                headers.append(HeaderName::from_static(name), value);
            }
            Err(_) => tracing::warn!(
                header = name,
                "skipping a header value that is not valid HTTP"
            ),
        }
    }
    headers
}

/// The problem document for a denial, answered with `status` (429 on `/v1/check`, the
/// configured deny status on `/v1/authorize`). The caller attaches the verdict's members with
/// `Problem::with_verdict(decided_body(..))`, so a client reads a denial exactly like an
/// allowance.
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
    problem
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_core::algorithm::Decision;
    use spillway_core::policy::FailureMode;
    use spillway_core::time::SECOND;

    fn outcome(
        name: &str,
        denial: Option<Denial>,
        retry: Option<Micros>,
        shadow: bool,
    ) -> LimitOutcome {
        LimitOutcome {
            name: name.into(),
            decision: Decision {
                allowed: denial.is_none(),
                limit: 10,
                remaining: if denial.is_none() { 4 } else { 0 },
                reset_after: 30 * SECOND + 1,
                retry_after: retry,
                denial,
            },
            shadow,
            quota: 10,
            window: 60 * SECOND,
        }
    }

    fn verdict(allowed: bool, outcomes: Vec<LimitOutcome>) -> Verdict {
        Verdict {
            allowed,
            tier: "free".into(),
            route: Some("POST /v1/generate".into()),
            failure_mode: FailureMode::Open,
            cost: 12,
            outcomes,
        }
    }

    #[test]
    fn members_keep_the_documented_order() {
        let v = verdict(true, vec![outcome("a", None, None, false)]);
        let text = serde_json::to_string(&VerdictBody::from(&v)).expect("serializes");
        assert_eq!(
            text,
            r#"{"allowed":true,"tier":"free","route":"POST /v1/generate","cost":12,"limits":[{"name":"a","allowed":true,"limit":10,"remaining":4,"reset_ms":30001,"shadow":false}]}"#
        );
    }

    #[test]
    fn milliseconds_round_up() {
        assert_eq!(ceil_ms(0), 0);
        assert_eq!(ceil_ms(1), 1);
        assert_eq!(ceil_ms(1_000), 1);
        assert_eq!(ceil_ms(1_001), 2);
    }

    #[test]
    fn bodies_list_every_limit_with_optional_members_only_when_set() {
        let v = verdict(
            false,
            vec![
                outcome("a", None, None, false),
                outcome("b", Some(Denial::OverLimit), Some(2 * SECOND), false),
                outcome("s", Some(Denial::OverLimit), Some(SECOND), true),
            ],
        );
        let body = serde_json::to_value(VerdictBody::from(&v)).expect("serializes");
        assert_eq!(body["route"], "POST /v1/generate");
        assert_eq!(body["cost"], 12);
        assert_eq!(body["limits"][0]["reset_ms"], 30_001);
        assert!(body["limits"][0].get("retry_after_ms").is_none());
        assert!(body["limits"][0].get("denial").is_none());
        assert_eq!(body["limits"][1]["retry_after_ms"], 2_000);
        assert_eq!(body["limits"][1]["denial"], "over_limit");
        assert_eq!(body["limits"][2]["shadow"], true);
    }

    #[test]
    fn a_cost_that_never_fits_outranks_a_used_up_limit() {
        let v = verdict(
            false,
            vec![
                outcome("used-up", Some(Denial::OverLimit), Some(5 * SECOND), false),
                outcome("small", Some(Denial::CostExceedsLimit), None, false),
            ],
        );
        assert_eq!(denial_kind(&v), Some(DenialKind::CostExceedsLimit));
        assert!(!verdict_headers(&v).contains_key("retry-after"));
        let problem = denial_problem(&v, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(problem.to_json()["type"], problem::COST_EXCEEDS_LIMIT);
        let detail = problem.detail();
        assert!(
            detail.contains("`small`") && detail.contains("12"),
            "{detail}"
        );
    }

    #[test]
    fn shadow_denials_do_not_make_a_denial_kind() {
        let v = verdict(
            true,
            vec![outcome("s", Some(Denial::CostExceedsLimit), None, true)],
        );
        assert_eq!(denial_kind(&v), None);
        let v = verdict(
            false,
            vec![
                outcome("s", Some(Denial::CostExceedsLimit), None, true),
                outcome("real", Some(Denial::OverLimit), Some(SECOND), false),
            ],
        );
        assert_eq!(denial_kind(&v), Some(DenialKind::OverLimit));
        let problem = denial_problem(&v, StatusCode::FORBIDDEN);
        assert_eq!(problem.status(), StatusCode::FORBIDDEN);
        assert_eq!(problem.to_json()["status"], 403);
        let detail = problem.detail();
        assert!(
            detail.contains("`real` (10 per 1m)") && detail.contains("1000 ms"),
            "{detail}"
        );
    }
}
