//! Error responses as RFC 9457 problem documents (`application/problem+json`).
//!
//! Every error the server returns, from a malformed body to an unknown path, has the same
//! shape, so clients need one parser. Generic HTTP failures use the `about:blank` type with the
//! status phrase as title, as the RFC recommends; failures specific to Spillway get their own
//! `urn:spillway:problem:*` type so clients can branch on it without parsing prose.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem type of a request refused by a rate limit that will admit it later.
pub const RATE_LIMITED: &str = "urn:spillway:problem:rate-limited";
/// Problem type of a request whose cost exceeds what a limit can ever admit at once.
pub const COST_EXCEEDS_LIMIT: &str = "urn:spillway:problem:cost-exceeds-limit";
/// Problem type of a request whose body or headers could not be understood.
pub const INVALID_REQUEST: &str = "urn:spillway:problem:invalid-request";
/// Problem type of a verdict that could not be reached because the store failed.
pub const STORE_UNAVAILABLE: &str = "urn:spillway:problem:store-unavailable";

/// One problem document, built up and then turned into a response.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    members: Map<String, Value>,
}

impl Problem {
    /// A problem of a Spillway-specific `kind` (one of the `urn:spillway:problem:*` constants).
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        let mut members = Map::new();
        members.insert("type".into(), kind.into());
        members.insert("title".into(), title.into());
        members.insert("status".into(), status.as_u16().into());
        members.insert("detail".into(), detail.into().into());
        Self { status, members }
    }

    /// A plain HTTP failure: type `about:blank`, titled with the status's reason phrase.
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Self::new(status, "about:blank", title, detail)
    }

    /// 400 for a request Spillway could not understand; `field` names the culprit when known.
    pub fn invalid(detail: impl Into<String>, field: Option<String>) -> Self {
        let problem = Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid request",
            detail,
        );
        match field {
            Some(field) => problem.with("field", field),
            None => problem,
        }
    }

    /// Adds an extension member (RFC 9457 section 3.2), e.g. the verdict of a denial.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.members.insert(name.to_owned(), value.into());
        self
    }

    /// Merges every member of a JSON object into the document, keeping the standard members
    /// (`type`, `title`, `status`, `detail`) if the object also has them.
    pub fn with_all(mut self, extra: Map<String, Value>) -> Self {
        for (name, value) in extra {
            self.members.entry(name).or_insert(value);
        }
        self
    }

    /// The HTTP status this problem is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The document's members, for tests and for callers that want to inspect it.
    pub fn members(&self) -> &Map<String, Value> {
        &self.members
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Value::Object(self.members).to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_JSON),
        );
        response
    }
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
    fn problems_carry_the_standard_members() {
        let p = Problem::invalid("field `cost`: expected a number", Some("cost".into()));
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        let m = p.members();
        assert_eq!(m["type"], INVALID_REQUEST);
        assert_eq!(m["status"], 400);
        assert_eq!(m["field"], "cost");
    }

    #[test]
    fn extensions_never_overwrite_standard_members() {
        let mut extra = Map::new();
        extra.insert("status".into(), "bogus".into());
        extra.insert("allowed".into(), false.into());
        let p = Problem::http(StatusCode::TOO_MANY_REQUESTS, "slow down").with_all(extra);
        assert_eq!(p.members()["status"], 429);
        assert_eq!(p.members()["allowed"], false);
        assert_eq!(p.members()["title"], "Too Many Requests");
    }

    #[test]
    fn responses_use_the_problem_media_type() {
        let response = Problem::http(StatusCode::NOT_FOUND, "nothing here").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
