//! `POST /v1/check`: ask for a verdict by describing the request in JSON.
//!
//! Request body (every field optional, unknown fields refused so typos are caught rather than
//! silently ignored; an empty body means `{}`; the `Content-Type` is not checked, so plain
//! `curl -d` works):
//! ```json
//! {"tenant": "acme", "user": "u1", "ip": "203.0.113.7", "method": "POST",
//!  "path": "/v1/generate", "tier": "pro", "cost": 5, "descriptors": {"region": "eu"}}
//! ```
//! Answers:
//! - 200 with the verdict as JSON (see [`crate::http::verdict`]) when allowed;
//! - 429 with an `application/problem+json` document that also carries the verdict when
//!   denied. A denial because the cost can never fit is 429 too (its problem type is
//!   `urn:spillway:problem:cost-exceeds-limit` and it has no `Retry-After`), since what the
//!   client must do is the same (stop sending this) and the detail says retrying cannot help;
//! - both with the rate-limit headers;
//! - 400 naming the offending field for a malformed body (including an `ip` that is not an
//!   IP address: per-IP limits count by network, and free text would let a client pick a
//!   fresh counter for every request), 413 over 16 KiB, 408 for a body still arriving after
//!   `--body-timeout`, 503 when the store fails.
//!
//! `?peek=true` (or `?dry_run`) evaluates without consuming anything.
//!
//! With a `principals:` section in the policy, the caller is identified first (the body's
//! `token`, `api_key` and `host`, else the configured headers; see [`crate::http::principal`]):
//! a refused or missing credential is a 401 problem naming the `reason`.

use crate::http::principal;
use crate::http::problem::Problem;
use crate::http::verdict::{decided_response, denied_response};
use crate::http::{check_mode, decide};
use crate::principal::Presented;
use crate::serving::{self, BodyMemoryFull, BodyTimeout};
use crate::state::AppState;
use crate::telemetry::decision_log::RequestIds;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::BoxError;
use http_body::Body as HttpBody;
use http_body_util::LengthLimitError;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The largest body `/v1/check` reads; a request description has no business being bigger.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The JSON a client sends: [`RequestAttrs`] in wire form.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// See [`RequestAttrs::tenant`].
    pub tenant: Option<String>,
    /// See [`RequestAttrs::user`].
    pub user: Option<String>,
    /// See [`RequestAttrs::ip`]; must be an IPv4 or IPv6 address.
    #[serde(default, deserialize_with = "ip_address")]
    pub ip: Option<IpAddr>,
    /// See [`RequestAttrs::method`].
    pub method: Option<String>,
    /// See [`RequestAttrs::method_override`]: the client's `X-HTTP-Method-Override` (or its
    /// kin), when the caller passes it on.
    pub method_override: Option<String>,
    /// See [`RequestAttrs::path`].
    pub path: Option<String>,
    /// See [`RequestAttrs::tier`].
    pub tier: Option<String>,
    /// See [`RequestAttrs::cost`].
    pub cost: Option<u64>,
    /// See [`RequestAttrs::descriptors`].
    pub descriptors: Option<BTreeMap<String, String>>,
    /// A bearer token, when the policy identifies callers (`principals:`); wins over the
    /// configured header.
    pub token: Option<String>,
    /// An API key, likewise.
    pub api_key: Option<String>,
    /// The host name the caller used, for `principals.subdomain`.
    pub host: Option<String>,
}

impl From<CheckRequest> for RequestAttrs {
    fn from(r: CheckRequest) -> Self {
        RequestAttrs {
            tenant: r.tenant,
            user: r.user,
            ip: r.ip,
            method: r.method,
            method_override: r.method_override,
            path: r.path,
            tier: r.tier,
            cost: r.cost,
            descriptors: r.descriptors.unwrap_or_default(),
        }
    }
}

/// Reads the `ip` field as an address (surrounding spaces ignored), saying what was sent when
/// it is not one.
pub(crate) fn ip_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    struct Address;

    impl<'de> Visitor<'de> for Address {
        type Value = Option<IpAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address such as 203.0.113.7 or 2001:db8::1")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text.trim().parse() {
                Ok(ip) => Ok(Some(ip)),
                Err(_) => Err(E::custom(format!(
                    "`{text}` is not an IP address (per-IP limits count clients by network, \
                     so `ip` must be an IPv4 or IPv6 address, or be left out)"
                ))),
            }
        }
    }

    deserializer.deserialize_option(Address)
}

/// Parses a body, naming the field at fault when it does not fit.
pub fn parse_body(body: &[u8]) -> Result<CheckRequest, Problem> {
    // JSON's whitespace only: a form feed, say, is not an empty body but a broken one.
    match body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        None => return Ok(CheckRequest::default()),
        // serde would also read a struct from an array of its fields, in order; a caller who
        // sends one has made a mistake worth naming.
        Some(b'[') => {
            return Err(Problem::invalid(
                "the body must be a JSON object, not an array",
                None,
            ))
        }
        Some(_) => {}
    }
    // The plain body nearly every client sends is read directly ([`plain`]), with the same
    // result serde_json would give; any other body goes to serde_json.
    let request = match plain::read(body) {
        Some(request) => request,
        None => parse_with_serde(body)?,
    };
    checked_path(request.path.as_deref())?;
    Ok(request)
}

/// Refuses a `path` no route could match however the policy is written: one that is not an
/// origin-form path (`/...`), an absolute URL (`https://host/...`) or `*`. `v1/generate`
/// without its slash matched no route, so its route's limits went uncounted.
pub(crate) fn checked_path(path: Option<&str>) -> Result<(), Problem> {
    let Some(path) = path.filter(|p| !p.starts_with('/')) else {
        return Ok(());
    };
    let absolute = path.starts_with(|c: char| c.is_ascii_alphabetic()) && path.contains("://");
    if absolute || path == "*" {
        return Ok(());
    }
    Err(Problem::invalid(
        format!(
            "field `path`: `{path}` must start with `/` (or be an absolute URL, or `*`): as \
             given, no route can match it"
        ),
        Some("path".into()),
    ))
}

/// [`parse_body`] for a body that is not plain (and, in tests, for any body, to show that
/// the plain reading changes nothing).
fn parse_with_serde(body: &[u8]) -> Result<CheckRequest, Problem> {
    // A well-formed body parses once without tracking paths; only a body
    // that fails is read again to name the field at fault. Its UTF-8 is checked once for the
    // whole body, which lets serde_json skip checking each string again (from bytes it checks
    // every key and value on its own, a sixth of the parse). A body that is not UTF-8 cannot
    // be valid and goes straight to the path that words the error, as before.
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(request) = serde_json::from_str(text) {
            return Ok(request);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: CheckRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            Problem::invalid(format!("the body does not fit: {inner}"), None)
        } else {
            Problem::invalid(format!("field `{path}`: {inner}"), Some(path))
        }
    })?;
    de.end()
        .map_err(|err| Problem::invalid(format!("the body is not valid JSON: {err}"), None))?;
    Ok(request)
}

/// The handler, as the router calls it: see [`answer`].
pub async fn check(State(app): State<Arc<AppState>>, request: Request) -> Response {
    answer(&app, request).await
}

/// Answers one `/v1/check` request, `Content-Length` included. The router's handler ends
/// here, and so does the serving thread's shortcut (`crate::http::entry`), which hands a
/// request over before the router sees it; either way the request is read and answered alike.
///
/// The policy is loaded once, before the body is read, and the request is decided with it
/// from its headers' credentials to a store failure's fallback, so a reload part way cannot
/// judge it by two policies.
pub async fn answer<B>(app: &AppState, request: http::Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let ids = RequestIds::read(app, &parts.headers);
    let policy = app.engine.policy();
    let body = read_body(body).await;
    let query = parts.uri.query();
    match respond(app, policy, query, &ids, &parts.headers, body).await {
        // A decided answer carries its own length.
        Ok(response) => response,
        Err(response) => with_length(response),
    }
}

/// `response` with a `Content-Length` when its body's size is known: what the router adds to
/// each answer, added here to the problem answers too (the decided ones add their own), so
/// headers come out in the same order whichever way the request went (hyper writes
/// `Connection` between the handler's headers and the length it adds itself).
pub(crate) fn with_length(mut response: Response) -> Response {
    if !response.headers().contains_key(CONTENT_LENGTH) {
        if let Some(size) = HttpBody::size_hint(response.body()).exact() {
            let value = HeaderValue::from(size);
            response.headers_mut().insert(CONTENT_LENGTH, value);
        }
    }
    response
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`] ([`crate::serving::read_body`]), or
/// the problem that stopped it. `/v1/report` reads its body with it too.
pub(crate) async fn read_body<B>(body: B) -> Result<Bytes, Problem>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    serving::read_body(body, MAX_BODY_BYTES)
        .await
        .map_err(|err| body_problem(&*err))
}

async fn respond(
    app: &AppState,
    policy: Arc<Policy>,
    query: Option<&str>,
    ids: &RequestIds,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Response> {
    let mode = check_mode(query).map_err(IntoResponse::into_response)?;
    let body = body.map_err(IntoResponse::into_response)?;
    let mut request = parse_body(&body).map_err(IntoResponse::into_response)?;
    let (token, api_key, host) = (
        request.token.take(),
        request.api_key.take(),
        request.host.take(),
    );
    let mut attrs: RequestAttrs = request.into();
    let own = Presented {
        token: token.as_deref(),
        api_key: api_key.as_deref(),
        host: host.as_deref(),
        ..Presented::default()
    };
    principal::identify(app, &policy, headers, own, false, &mut attrs)
        .await
        .map_err(IntoResponse::into_response)?;
    let decided = decide(app, &policy, &attrs, ids, mode)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(if decided.verdict.allowed {
        decided_response(StatusCode::OK, &decided)
    } else {
        denied_response(StatusCode::TOO_MANY_REQUESTS, &decided)
    })
}

/// The problem for a body the API's limited read ([`read_body`]) could not read: 413 when it
/// is too long, 408 when it did not arrive in time (`--body-timeout`),
/// 503 when the bodies still arriving held all the server would hold (`--max-body-memory`),
/// else 400.
fn body_problem(err: &(dyn std::error::Error + 'static)) -> Problem {
    if let Some(late) = BodyTimeout::find(err) {
        return Problem::http(StatusCode::REQUEST_TIMEOUT, late.to_string());
    }
    if let Some(full) = BodyMemoryFull::find(err) {
        return Problem::http(StatusCode::SERVICE_UNAVAILABLE, full.to_string());
    }
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return too_large();
        }
        cause = e.source();
    }
    // Worded as axum's reader words it, which `/v1/report` used before it read bodies here.
    Problem::invalid(
        format!("the body could not be read: Failed to buffer the request body: {err}"),
        None,
    )
}

fn too_large() -> Problem {
    Problem::http(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

mod plain;
#[cfg(test)]
mod tests;
