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
use crate::http::answer_headers::{answer_headers, AnswerBody};
use crate::http::problem::{self, Problem};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use spillway_core::algorithm::Denial;
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::json;
use spillway_core::policy::LimitName;
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
    name: LimitName,
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
            denial: d.denial.map(denial_word),
            shadow: outcome.shadow,
        }
    }
}

/// The `200` answer to a decision: the rate-limit headers, the JSON content type, the body
/// [`decided_body`] describes, written by [`write_decided_json`] into one buffer, and its
/// length.
pub fn decided_response(status: StatusCode, decided: &Decided) -> Response {
    let mut bytes = Vec::with_capacity(128 + 160 * decided.verdict.outcomes.len());
    write_decided_json(decided, &mut bytes);
    let headers = answer_headers(decided, AnswerBody::Json(bytes.len()));
    respond(status, headers, bytes)
}

/// A response of `status` with `headers` and `body`.
fn respond(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Writes the JSON of [`decided_body`]`(decided)` to `out`, byte for byte what serde_json
/// writes for it (a test holds the two together), without building the body first: member
/// names are literals, limit names come already quoted from the policy
/// ([`spillway_core::policy::LimitName`]), and the tier and route are escaped when they need
/// it ([`spillway_core::json`]). A decision answers every request, and serde's writer spent
/// as much on this as the decision itself.
pub fn write_decided_json(decided: &Decided, out: &mut Vec<u8>) {
    out.push(b'{');
    write_decided_members(decided, out);
    out.push(b'}');
}

/// The members of [`write_decided_json`]'s object, without its braces: a denial's problem
/// document carries the same members after its own.
fn write_decided_members(decided: &Decided, out: &mut Vec<u8>) {
    let verdict = &decided.verdict;
    out.extend_from_slice(b"\"allowed\":");
    push_bool(out, verdict.allowed);
    out.extend_from_slice(b",\"tier\":");
    json::push_str(out, &verdict.tier);
    out.extend_from_slice(b",\"route\":");
    match &verdict.route {
        Some(route) => json::push_str(out, route),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cost\":");
    push_u64(out, verdict.cost);
    out.extend_from_slice(b",\"limits\":[");
    for (i, outcome) in verdict.outcomes.iter().enumerate() {
        let d = &outcome.decision;
        // Each literal carries its neighbours' punctuation and the booleans, so a limit is a
        // dozen appends rather than twenty. Each branch appends its own literal: a copy of a
        // length known when compiled is a few moves, where one of either length is a call
        // to `memcpy` (about 240 instructions per check for these four).
        if i > 0 {
            out.extend_from_slice(b",{\"name\":");
        } else {
            out.extend_from_slice(b"{\"name\":");
        }
        // Quoted and escaped when the policy was compiled.
        out.extend_from_slice(outcome.name.json().as_bytes());
        if d.allowed {
            out.extend_from_slice(b",\"allowed\":true,\"limit\":");
        } else {
            out.extend_from_slice(b",\"allowed\":false,\"limit\":");
        }
        push_u64(out, d.limit);
        out.extend_from_slice(b",\"remaining\":");
        push_u64(out, d.remaining);
        out.extend_from_slice(b",\"reset_ms\":");
        push_u64(out, ceil_ms(d.reset_after));
        if let Some(retry) = d.retry_after {
            out.extend_from_slice(b",\"retry_after_ms\":");
            push_u64(out, ceil_ms(retry));
        }
        match d.denial {
            None => {}
            Some(Denial::OverLimit) => out.extend_from_slice(b",\"denial\":\"over_limit\""),
            Some(Denial::CostExceedsLimit) => {
                out.extend_from_slice(b",\"denial\":\"cost_exceeds_limit\"")
            }
        }
        if outcome.shadow {
            out.extend_from_slice(b",\"shadow\":true}");
        } else {
            out.extend_from_slice(b",\"shadow\":false}");
        }
    }
    out.push(b']');
    if decided.degraded.is_some() {
        out.extend_from_slice(b",\"degraded\":");
        json::push_str(out, failure::DEGRADED_REASON);
    }
}

/// The answer to a denial, with `status`: [`denial_problem`]'s document with the verdict's
/// members after its own, byte for byte what serde_json writes for
/// `denial_problem(..).with_verdict(decided_body(decided))` (a test holds the two together),
/// under the problem media type and then the rate-limit headers, the order the serde path's
/// answer has them in. The problem is built here, so it never carries more than the standard
/// members this writer knows how to place.
pub fn denied_response(status: StatusCode, decided: &Decided) -> Response {
    let problem = denial_problem(&decided.verdict, status);
    let mut bytes = Vec::with_capacity(256 + 160 * decided.verdict.outcomes.len());
    problem.write_standard_members(&mut bytes);
    bytes.push(b',');
    write_decided_members(decided, &mut bytes);
    bytes.push(b'}');
    let headers = answer_headers(decided, AnswerBody::Problem(bytes.len()));
    respond(problem.status(), headers, bytes)
}

fn push_bool(out: &mut Vec<u8>, value: bool) {
    if value {
        out.extend_from_slice(b"true");
    } else {
        out.extend_from_slice(b"false");
    }
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// The `denial` member's word for a denial.
fn denial_word(denial: Denial) -> &'static str {
    match denial {
        Denial::OverLimit => "over_limit",
        Denial::CostExceedsLimit => "cost_exceeds_limit",
    }
}

/// The headers of a decision: the verdict's, plus the degraded mark when the store did not
/// take part.
pub fn decided_headers(decided: &Decided) -> HeaderMap {
    answer_headers(decided, AnswerBody::Absent)
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

/// The problem document for a denial, answered with `status` (429 on `/v1/check`, the
/// configured deny status on `/v1/authorize`): only the standard members. [`denied_response`]
/// writes the verdict's members after them, so a client reads a denial exactly like an
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
    use axum::response::IntoResponse;
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
        assert!(!decided_headers(&decided(v.clone(), None)).contains_key("retry-after"));
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

    fn decided(verdict: Verdict, degraded: Option<FailureMode>) -> Decided {
        Decided {
            verdict,
            degraded,
            home_region: None,
        }
    }

    /// What serde_json writes for the body: the wire form the fast writer must match.
    fn serde_bytes(decided: &Decided) -> Vec<u8> {
        serde_json::to_vec(&decided_body(decided)).expect("serializes")
    }

    #[test]
    fn the_fast_writer_matches_serde_on_the_usual_answers() {
        let cases = [
            decided(verdict(true, vec![outcome("a", None, None, false)]), None),
            decided(
                verdict(
                    false,
                    vec![
                        outcome("a", None, None, false),
                        outcome("b", Some(Denial::OverLimit), Some(2 * SECOND), false),
                        outcome("c", Some(Denial::CostExceedsLimit), None, false),
                        outcome("s", Some(Denial::OverLimit), Some(1), true),
                    ],
                ),
                None,
            ),
            decided(verdict(true, Vec::new()), Some(FailureMode::Open)),
            decided(
                Verdict {
                    route: None,
                    ..verdict(true, vec![outcome("x", None, None, false)])
                },
                Some(FailureMode::Degrade),
            ),
        ];
        for case in &cases {
            let mut fast = Vec::new();
            write_decided_json(case, &mut fast);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&serde_bytes(case))
            );
        }
    }

    #[tokio::test]
    async fn the_answer_carries_the_body_and_the_json_type() {
        let case = decided(verdict(true, vec![outcome("a", None, None, false)]), None);
        let response = decided_response(StatusCode::OK, &case);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-ratelimit-remaining"], "4");
        let length = response.headers()["content-length"].clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(body, serde_bytes(&case));
        assert_eq!(length, body.len().to_string().as_str());
    }

    #[tokio::test]
    async fn a_denial_answers_as_the_serde_path_does() {
        // Not degraded (the prepared header map) and degraded (built name by name).
        for degraded in [None, Some(FailureMode::Open)] {
            a_denial_answers_as_serde_does(degraded).await;
        }
    }

    async fn a_denial_answers_as_serde_does(degraded: Option<FailureMode>) {
        let case = decided(
            verdict(
                false,
                vec![
                    outcome("a\"q", None, None, false),
                    outcome("b", Some(Denial::OverLimit), Some(2 * SECOND), false),
                ],
            ),
            degraded,
        );
        let problem = denial_problem(&case.verdict, StatusCode::TOO_MANY_REQUESTS);
        let old = (
            decided_headers(&case),
            problem.clone().with_verdict(decided_body(&case)),
        )
            .into_response();
        let new = denied_response(StatusCode::TOO_MANY_REQUESTS, &case);
        assert_eq!(new.status(), old.status());
        let names = |r: &Response| -> Vec<(String, String)> {
            r.headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                .collect()
        };
        // The new answer carries its own length, last; the router adds it to the old one.
        let mut new_names = names(&new);
        let length = new_names.pop().expect("a length");
        assert_eq!(names(&old), new_names);
        assert_eq!(new.headers()["content-type"], problem::PROBLEM_JSON);
        let old = axum::body::to_bytes(old.into_body(), 1 << 16)
            .await
            .expect("body");
        let new = axum::body::to_bytes(new.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(new, old);
        assert_eq!(length, ("content-length".to_owned(), new.len().to_string()));
    }

    #[test]
    fn headers_keep_core_s_words_in_core_s_order() {
        let v = verdict(
            false,
            vec![
                outcome("a", None, None, false),
                outcome("b", Some(Denial::OverLimit), Some(2 * SECOND), false),
            ],
        );
        let map = decided_headers(&decided(v.clone(), None));
        let got: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        let want: Vec<(String, String)> = spillway_core::headers::fields(&v)
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got, want);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any names (quotes, backslashes, control characters, any Unicode), numbers and
        /// optional members: the fast writer's bytes are serde_json's.
        #[test]
        fn the_fast_writer_matches_serde_on_any_verdict(
            tier in "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}\u{7f}a\u{e9}\u{2028}]{0,6}",
            route in proptest::option::of("\\PC{0,12}|[\"\\\\\u{0}-\u{1f}a]{0,6}"),
            cost in proptest::num::u64::ANY,
            limits in proptest::collection::vec(
                (
                    // Also a bad byte after a long plain run: names are quoted when they
                    // are made (`LimitName`, by `spillway_core::json`, whose plain test looks
                    // at every byte at once), not by the writer under test.
                    "\\PC{0,10}|[\"\\\\\u{0}-\u{1f}a]{0,6}|[ -~]{0,40}[\"\\\\\u{0}-\u{1f}]?[ -~]{0,40}",
                    proptest::num::u64::ANY,
                    proptest::num::u64::ANY,
                    proptest::num::u64::ANY,
                    proptest::option::of(proptest::num::u64::ANY),
                    0..3u8,
                    proptest::bool::ANY,
                ),
                0..5,
            ),
            allowed in proptest::bool::ANY,
            degraded in proptest::option::of(proptest::bool::ANY),
        ) {
            let outcomes = limits
                .into_iter()
                .map(|(name, limit, remaining, reset, retry, denial, shadow)| LimitOutcome {
                    name: name.as_str().into(),
                    decision: Decision {
                        allowed: denial == 0,
                        limit,
                        remaining,
                        reset_after: reset,
                        retry_after: retry,
                        denial: [None, Some(Denial::OverLimit), Some(Denial::CostExceedsLimit)]
                            [usize::from(denial)],
                    },
                    shadow,
                    quota: limit,
                    window: SECOND,
                })
                .collect();
            let case = decided(
                Verdict {
                    allowed,
                    tier: tier.as_str().into(),
                    route: route.map(|r| r.as_str().into()),
                    failure_mode: FailureMode::Open,
                    cost,
                    outcomes,
                },
                degraded.map(|open| if open { FailureMode::Open } else { FailureMode::Degrade }),
            );
            let mut fast = Vec::new();
            write_decided_json(&case, &mut fast);
            proptest::prop_assert_eq!(fast, serde_bytes(&case));

            // A denial's document: the problem's members (its detail names the limit, so the
            // odd names reach it too), then the verdict's.
            let problem = denial_problem(&case.verdict, StatusCode::TOO_MANY_REQUESTS);
            let want = serde_json::to_vec(&problem.clone().with_verdict(decided_body(&case)))
                .expect("serializes");
            let response = denied_response(StatusCode::TOO_MANY_REQUESTS, &case);
            let got = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
                response.into_body(),
                1 << 20,
            ))
            .expect("a body in memory is ready")
            .expect("body");
            proptest::prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }
}
