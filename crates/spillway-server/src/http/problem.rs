//! Error responses as RFC 9457 problem documents (`application/problem+json`).
//!
//! Every error the server returns, from a malformed body to an unknown path, has the same
//! shape, so clients need one parser. Generic HTTP failures use the `about:blank` type with the
//! status phrase as title, as the RFC recommends; failures specific to Spillway get their own
//! `urn:spillway:problem:*` type so clients can branch on it without parsing prose.

use crate::http::verdict::VerdictBody;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use spillway_core::json;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem type of a request refused by a rate limit that will admit it later.
pub const RATE_LIMITED: &str = "urn:spillway:problem:rate-limited";
/// Problem type of a request whose cost exceeds what a limit can ever admit at once.
pub const COST_EXCEEDS_LIMIT: &str = "urn:spillway:problem:cost-exceeds-limit";
/// Problem type of a request whose body or headers could not be understood.
pub const INVALID_REQUEST: &str = "urn:spillway:problem:invalid-request";
/// Problem type of a request whose credential is missing or was refused (`reason` says which).
pub const UNAUTHENTICATED: &str = "urn:spillway:problem:unauthenticated";
/// Problem type of a valid credential used where it does not belong: a host naming another
/// tenant (`reason: tenant_mismatch`).
pub const FORBIDDEN: &str = "urn:spillway:problem:forbidden";
/// Problem type of a request whose token was not checked because too many credentials from
/// its address failed verification lately (`reason: too_many_failures`); retry shortly.
pub const TOO_MANY_FAILURES: &str = "urn:spillway:problem:too-many-failed-credentials";
/// Problem type of a tenant the admin API would not delete: it still has users or API keys
/// (delete them first, or ask with `?cascade=true`).
pub const TENANT_HOLDS: &str = "urn:spillway:problem:tenant-holds";
/// Problem type of a verdict that could not be reached because the store failed.
pub const STORE_UNAVAILABLE: &str = "urn:spillway:problem:store-unavailable";

/// One problem document. The standard members come first; the extensions (RFC 9457 section
/// 3.2) are `field`, naming what was wrong in a 400, and on a denial the verdict's members.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// Why a credential was refused (`expired`, `bad_signature`, ...), on a 401.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<crate::principal::Reason>,
    /// Every field at fault, when there are several (`[{field, message}]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Box<Value>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    verdict: Option<Box<VerdictBody>>,
    /// Sent as `Retry-After` (whole seconds), not in the body.
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem of a Spillway-specific `kind` (one of the `urn:spillway:problem:*` constants).
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: bounded(detail.into()),
            field: None,
            reason: None,
            errors: None,
            verdict: None,
            retry_after: None,
        }
    }

    /// A plain HTTP failure: type `about:blank`, titled with the status's reason phrase.
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Self::new(status, "about:blank", title, detail)
    }

    /// 400 for a request Spillway could not understand; `field` names the culprit when known.
    pub fn invalid(detail: impl Into<String>, field: Option<String>) -> Self {
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid request",
            detail,
        );
        problem.field = field.map(bounded);
        problem
    }

    /// Lists every field at fault (each `{field, message}`), beside the first one in `field`.
    pub fn with_errors(mut self, errors: Vec<Value>) -> Self {
        self.errors = Some(Box::new(Value::Array(errors)));
        self
    }

    /// Names why a credential was refused (the `reason` member).
    pub fn with_reason(mut self, reason: crate::principal::Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Attaches a verdict, so a denial reads like an allowance plus the problem members.
    pub fn with_verdict(mut self, verdict: VerdictBody) -> Self {
        self.verdict = Some(Box::new(verdict));
        self
    }

    /// Advises the client to retry after `wait` (rounded up to whole seconds, at least 1),
    /// sent as `Retry-After`.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_millis().div_ceil(1_000).max(1);
        self.retry_after = Some(u64::try_from(secs).unwrap_or(u64::MAX));
        self
    }

    /// The same problem answered with `status` instead (its type and detail stand).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status.as_u16();
        self
    }

    /// The HTTP status this problem is answered with.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Why a credential was refused, on a 401 from the principal check.
    pub fn reason(&self) -> Option<crate::principal::Reason> {
        self.reason
    }

    /// The human-readable explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The field or header at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Writes `{` and the standard members (`type`, `title`, `status`, `detail`) as serde_json
    /// would, for a writer that appends extension members and the closing `}` itself. Only for
    /// a problem made by [`Problem::new`] alone (a denial's, see
    /// `verdict::denied_response`): anything more is for the serde path to place.
    pub(crate) fn write_standard_members(&self, out: &mut Vec<u8>) {
        debug_assert!(
            self.field.is_none()
                && self.reason.is_none()
                && self.errors.is_none()
                && self.verdict.is_none()
                && self.retry_after.is_none(),
            "a problem with more than the standard members"
        );
        out.extend_from_slice(b"{\"type\":");
        json::push_str(out, self.kind);
        out.extend_from_slice(b",\"title\":");
        json::push_str(out, self.title);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"detail\":");
        json::push_str(out, &self.detail);
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self).unwrap_or_else(|_| {
            // Nothing in a problem can fail to serialize; keep a valid document regardless.
            format!(r#"{{"type":"about:blank","status":{}}}"#, self.status)
        });
        let mut response = (self.status(), body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // A refused credential answered 401 names the scheme, as RFC 6750 asks.
        if let (Some(reason), StatusCode::UNAUTHORIZED) = (self.reason, self.status()) {
            let value = match reason {
                crate::principal::Reason::Missing => "Bearer",
                _ => r#"Bearer error="invalid_token""#,
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        response
    }
}

/// The longest `detail` (and `field`) a problem carries, in bytes of text before JSON escapes
/// it (so at most about six times that on the wire). Details quote what the client sent (a
/// path, a header's value); echoed whole, a client could make each answer, and the write
/// buffer its connection keeps at its largest answer's size, as large as its request.
pub const MAX_DETAIL: usize = 1024;

/// `text` cut to [`MAX_DETAIL`] bytes at a character boundary, marked with `…` when cut.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Fallback for paths no route matches.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::http(
        StatusCode::NOT_FOUND,
        format!("no endpoint at `{}`", uri.path()),
    )
}

/// Fallback for a known path asked with a method it does not support. The router adds the
/// `Allow` header listing the methods that would work.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::http(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("`{}` does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_bounded_at_a_character_boundary() {
        let long = "é".repeat(MAX_DETAIL);
        let p = Problem::invalid(long.clone(), Some(long));
        let json = p.to_json();
        for member in ["detail", "field"] {
            let text = json[member].as_str().expect("text");
            assert!(text.len() <= MAX_DETAIL, "{member}: {}", text.len());
            assert!(text.ends_with("é…"), "{member}");
        }
        let short = Problem::invalid("fine", None);
        assert_eq!(short.to_json()["detail"], "fine");
    }

    #[test]
    fn problems_carry_the_standard_members() {
        let p = Problem::invalid("field `cost`: expected a number", Some("cost".into()));
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        assert_eq!(p.field(), Some("cost"));
        let json = p.to_json();
        assert_eq!(json["type"], INVALID_REQUEST);
        assert_eq!(json["status"], 400);
        assert_eq!(json["field"], "cost");
    }

    #[test]
    fn standard_members_come_first() {
        let text = serde_json::to_string(&Problem::http(StatusCode::NOT_FOUND, "gone"))
            .expect("serializes");
        assert_eq!(
            text,
            r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"gone"}"#
        );
    }

    #[test]
    fn responses_use_the_problem_media_type() {
        let response = Problem::http(StatusCode::NOT_FOUND, "nothing here").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
