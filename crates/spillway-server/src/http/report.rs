//! `POST /v1/report`: the real cost of a request, known only after its response (for example
//! the tokens a model generated), recorded against the limits metered after the fact
//! (`charge: after` in the policy).
//!
//! Request body: the attributes `/v1/check` takes, plus the cost and the caller's id for the
//! request (required; unknown fields refused):
//! ```json
//! {"tenant": "acme", "user": "u1", "method": "POST", "path": "/v1/generate",
//!  "cost": 900, "request_id": "9f1c2a..."}
//! ```
//! The cost is recorded on every metered limit the request reaches, even past the limit: the
//! key then owes the excess and its checks are denied, with a `Retry-After` for the debt and
//! one unit more, until refill or the window has repaid it and freed a unit (a metered
//! request is admitted only with room for one). Limits that are not metered were charged when the
//! request was checked and are left alone.
//!
//! Idempotent: a report is recorded at most once per `request_id` and counters it reaches,
//! for an hour (`REPORT_TTL`), on every node sharing a Redis store; a retry answers
//! `"recorded": false` and charges nothing. The id must come from the trusted side (the
//! gateway's request id, or one the application makes per request): a caller that reused
//! one id for two requests within the hour would have the second report dropped.
//!
//! With a `principals:` section the report is charged to the caller it verifies, exactly as
//! `/v1/check` identifies one (the body's `token`, `api_key` and `host`, else the configured
//! headers): a caller cannot report costs against another tenant, and a report without a
//! valid credential is refused with the same 401. A token is taken up to
//! [`REPORT_GRACE`](crate::principal::REPORT_GRACE) (15 minutes) past its expiry: the request
//! was checked while it was valid, and its cost must not go free because the response outlasted
//! it.
//!
//! Answers:
//! - 200 with `{"recorded": true|false, "request_id": ..., "allowed": ..., "limits": [...]}`:
//!   the verdict's shape (see [`crate::http::verdict`]) telling each metered limit's standing
//!   after the charge, and the rate-limit headers for it (`Retry-After` while in debt);
//!   `"recorded": false` and no limits when the request reaches no metered limit;
//! - 400 naming the field for a malformed body (a missing or negative `cost`, or one above
//!   [`MAX_REPORTED_COST`] (2^53, beyond which a cost could not be recorded exactly), a
//!   missing, empty or over-long `request_id`, an `ip` that is not an address), 413 over
//!   16 KiB;
//! - 503 when the store could not record it (the report is lost unless retried, with the
//!   same id; see `docs/FAILURE.md`).

use crate::decision::{self, Decided, Report, Reported};
use crate::http::principal::CredentialHeaders;
use crate::http::problem::{self, Problem};
use crate::http::verdict::{decided_body, decided_headers, VerdictBody};
use crate::principal::Presented;
use crate::state::AppState;
use crate::telemetry::decision_log::{RequestIds, Subject};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use spillway_core::store::MAX_REPORTED_COST;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The longest `request_id` accepted, in bytes (a UUID is 36; a trace id 32 to 55).
pub const MAX_REQUEST_ID: usize = 200;

/// The JSON a caller sends.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// See [`RequestAttrs::tenant`].
    pub tenant: Option<String>,
    /// See [`RequestAttrs::user`].
    pub user: Option<String>,
    /// See [`RequestAttrs::ip`]; must be an IPv4 or IPv6 address.
    #[serde(default, deserialize_with = "crate::http::check::ip_address")]
    pub ip: Option<IpAddr>,
    /// See [`RequestAttrs::method`].
    pub method: Option<String>,
    /// See [`RequestAttrs::method_override`]; as the check had it, so that the report
    /// charges the same routes' limits.
    pub method_override: Option<String>,
    /// See [`RequestAttrs::path`].
    pub path: Option<String>,
    /// See [`RequestAttrs::tier`].
    pub tier: Option<String>,
    /// See [`RequestAttrs::descriptors`].
    pub descriptors: Option<BTreeMap<String, String>>,
    /// The real cost, recorded on every metered limit the request reaches.
    pub cost: u64,
    /// The caller's id for the request: a report is recorded once per id.
    pub request_id: String,
    /// A bearer token, when the policy identifies callers (`principals:`).
    pub token: Option<String>,
    /// An API key, when the policy identifies callers by key.
    pub api_key: Option<String>,
    /// The host name the caller used, for `principals.subdomain`.
    pub host: Option<String>,
}

/// The answer's body: the standing, and whether this call recorded the cost.
#[derive(Debug, Serialize)]
struct ReportBody<'a> {
    recorded: bool,
    request_id: &'a str,
    #[serde(flatten)]
    standing: VerdictBody,
}

/// Parses a body, naming the field at fault when it does not fit.
pub fn parse_body(body: &[u8]) -> Result<ReportRequest, Problem> {
    // JSON's whitespace only, as for `/v1/check`.
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if body.iter().all(space) {
        return Err(Problem::invalid(
            "the body must be a JSON object with at least `cost` and `request_id`",
            None,
        ));
    }
    if body.iter().find(|b| !space(b)) == Some(&b'[') {
        return Err(Problem::invalid(
            "the body must be a JSON object, not an array",
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: ReportRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            Problem::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            // A missing field is reported at the top; name it as the field at fault.
            let field = ["cost", "request_id"]
                .into_iter()
                .find(|f| message.contains(&format!("`{f}`")));
            Problem::invalid(
                format!("the body does not fit: {message}"),
                field.map(str::to_owned),
            )
        } else if path == "cost" {
            Problem::invalid(
                format!("field `cost`: must be a whole number from 0 to {MAX_REPORTED_COST} (2^53): {message}"),
                Some(path),
            )
        } else {
            Problem::invalid(format!("field `{path}`: {message}"), Some(path))
        }
    })?;
    de.end()
        .map_err(|err| Problem::invalid(format!("the body is not valid JSON: {err}"), None))?;
    super::check::checked_path(request.path.as_deref())?;
    let id = &request.request_id;
    if id.trim().is_empty() || id.len() > MAX_REQUEST_ID {
        return Err(Problem::invalid(
            format!(
                "field `request_id`: must be 1 to {MAX_REQUEST_ID} bytes and not blank, \
                 got {} bytes",
                id.len()
            ),
            Some("request_id".into()),
        ));
    }
    if request.cost > MAX_REPORTED_COST {
        // Above 2^53 the Redis store could not record the cost exactly: refused, not rounded.
        return Err(Problem::invalid(
            format!(
                "field `cost`: must be at most {MAX_REPORTED_COST} (2^53, the largest cost \
                 every store records exactly), got {}",
                request.cost
            ),
            Some("cost".into()),
        ));
    }
    Ok(request)
}

/// The handler. The body is read as `/v1/check`'s is (`check::read_body`): a first frame
/// the body then waits with is copied out of the connection's read buffer, so a report that
/// trickles in keeps no more memory than its charge on `--max-body-memory`.
pub async fn report(
    State(app): State<Arc<AppState>>,
    CredentialHeaders { policy, headers }: CredentialHeaders,
    body: Body,
) -> Response {
    let body = crate::http::check::read_body(body).await;
    match respond(&app, policy, &headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn respond(
    app: &AppState,
    policy: Arc<Policy>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Response> {
    let body = body.map_err(IntoResponse::into_response)?;
    let request = parse_body(&body).map_err(IntoResponse::into_response)?;
    let mut attrs = RequestAttrs {
        tenant: request.tenant,
        user: request.user,
        ip: request.ip,
        method: request.method,
        method_override: request.method_override,
        path: request.path,
        tier: request.tier,
        cost: Some(request.cost),
        descriptors: request.descriptors.unwrap_or_default(),
    };
    let own = Presented {
        token: request.token.as_deref(),
        api_key: request.api_key.as_deref(),
        host: request.host.as_deref(),
        grace: crate::principal::REPORT_GRACE,
        ..Presented::default()
    };
    crate::http::principal::identify(app, &policy, headers, own, false, &mut attrs)
        .await
        .map_err(IntoResponse::into_response)?;
    let resolved = policy.resolve(&attrs);
    let planned = resolved.metered(request.cost);
    // The request id is the body's; the log writes it in place of `x-request-id`.
    let ids = RequestIds::default();
    let report = Report {
        planned: &planned,
        request_id: Some(&request.request_id),
        tier: resolved.tier.clone(),
        route: resolved.route.as_ref().map(|r| r.name.clone()),
        cost: request.cost,
        via: "http",
        tenant: attrs.tenant.as_deref(),
        subject: Subject::http(&attrs, &ids),
    };
    match decision::report(app, &policy, &report).await {
        Reported::Answered { recorded, standing } => {
            let decided = Decided {
                verdict: standing,
                degraded: None,
                home_region: None,
            };
            let mut headers = decided_headers(&decided);
            let body = ReportBody {
                recorded,
                request_id: &request.request_id,
                standing: decided_body(&decided),
            };
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            Ok((StatusCode::OK, headers, bytes).into_response())
        }
        Reported::Failed(error) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            problem::STORE_UNAVAILABLE,
            "Rate-limit store unavailable",
            format!(
                "the rate-limit store could not record the cost; retry the report with the \
                 same request_id (it is counted once): {error}"
            ),
        )
        .with_retry_after(std::time::Duration::from_secs(1))
        .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_needs_a_cost_and_an_id() {
        let p = parse_body(br#"{"request_id":"r1"}"#).expect_err("no cost");
        assert_eq!(p.field(), Some("cost"));
        let p = parse_body(br#"{"cost":3}"#).expect_err("no id");
        assert_eq!(p.field(), Some("request_id"));
        let p = parse_body(b"").expect_err("empty");
        assert!(p.detail().contains("request_id"), "{}", p.detail());
        let p = parse_body(b" \r\n").expect_err("blank");
        assert!(p.detail().contains("request_id"), "{}", p.detail());
        // A form feed is not JSON's whitespace: a broken body, as `/v1/check` says.
        let p = parse_body(b"\x0c").expect_err("not JSON");
        assert!(p.detail().contains("not valid JSON"), "{}", p.detail());
        let p = parse_body(br#"{"cost":-3,"request_id":"r"}"#).expect_err("negative");
        assert_eq!(p.field(), Some("cost"));
        let p = parse_body(br#"{"cost":3,"request_id":"  "}"#).expect_err("blank");
        assert_eq!(p.field(), Some("request_id"));
        let long = format!(r#"{{"cost":3,"request_id":"{}"}}"#, "x".repeat(201));
        let p = parse_body(long.as_bytes()).expect_err("long");
        assert_eq!(p.field(), Some("request_id"));
        let p = parse_body(br#"{"cost":3,"request_id":"r","tennant":"t"}"#).expect_err("typo");
        assert!(p.detail().contains("tennant"), "{}", p.detail());
        let p = parse_body(br#"{"cost":3,"request_id":"r","ip":"nope"}"#).expect_err("ip");
        assert_eq!(p.field(), Some("ip"));
    }

    #[test]
    fn a_cost_no_store_records_exactly_is_refused_with_the_bound() {
        let ok = parse_body(br#"{"cost":9007199254740992,"request_id":"r"}"#).expect("2^53");
        assert_eq!(ok.cost, MAX_REPORTED_COST);
        assert_eq!(
            parse_body(br#"{"cost":0,"request_id":"r"}"#)
                .expect("0")
                .cost,
            0
        );
        for cost in [
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "1e30",
            "3.5",
        ] {
            let body = format!(r#"{{"cost":{cost},"request_id":"r"}}"#);
            let p = parse_body(body.as_bytes()).expect_err(cost);
            assert_eq!(p.field(), Some("cost"), "{cost}");
            assert!(
                p.detail().contains("9007199254740992"),
                "{cost}: {}",
                p.detail()
            );
        }
    }

    #[test]
    fn every_field_is_read() {
        let r = parse_body(
            br#"{"tenant":"t","user":"u","ip":"1.2.3.4","method":"POST","path":"/g",
                 "tier":"pro","descriptors":{"m":"x"},"cost":900,"request_id":"abc"}"#,
        )
        .expect("valid");
        assert_eq!((r.cost, r.request_id.as_str()), (900, "abc"));
        assert_eq!(r.tenant.as_deref(), Some("t"));
    }
}
