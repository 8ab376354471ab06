//! The HTTP side of principals: read the credentials a request presents (headers, and on
//! `/v1/check` the body's `token`, `api_key` and `host`), identify the caller, and lay the
//! verified principal over the request's attributes; or refuse it with a 401 problem whose
//! `reason` names what was wrong (a 403 `tenant_mismatch` for a credential used on another
//! tenant's host; `/v1/authorize` answers the policy's `invalid_status`).

use crate::http::problem::{Problem, FORBIDDEN, TOO_MANY_FAILURES, UNAUTHENTICATED};
use crate::principal::{self, Lookup, Presented, Reason};
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::HOST;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use spillway_core::host::Host;
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use std::convert::Infallible;
use std::sync::Arc;

/// The header a refusal names its reason in (as the problem's `reason` does), for proxies
/// that read headers only; the gRPC service sends the same.
pub const REASON_HEADER: &str = "x-spillway-unauthenticated";

/// The policy in force when the request arrived, and the request's headers for [`identify`]:
/// copied out of the request only when that policy has a `principals:` section (axum's own
/// `HeaderMap` extractor copies them on every request). Empty otherwise, which `identify`
/// never reads: it returns at once without the section. The handler decides with this very
/// policy, so a reload between extraction and decision cannot judge a request by a section
/// its headers were not copied for.
#[derive(Debug)]
pub struct CredentialHeaders {
    /// The policy the request is decided with.
    pub policy: Arc<Policy>,
    /// The request's headers, when `policy` identifies callers.
    pub headers: HeaderMap,
}

impl FromRequestParts<Arc<AppState>> for CredentialHeaders {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let policy = state.engine.policy();
        let headers = if policy.principals().is_some() {
            parts.headers.clone()
        } else {
            HeaderMap::new()
        };
        Ok(Self { policy, headers })
    }
}

/// Over HTTP/2 a request's host is its `:authority`, which hyper keeps in the URI, not among
/// the headers: `/v1/authorize` puts it there as `host`, so the subdomain rules read it as
/// they read an HTTP/1 `Host` (without this, `must_match` on the default `host` header saw no
/// host over HTTP/2, and passed every credential). A request carrying both (HTTP/1 in
/// absolute form, or an HTTP/2 client sending `host` too) whose values differ keeps both,
/// which reads as a host sent twice.
pub fn with_authority(headers: &mut HeaderMap, uri: &Uri) {
    let Some(authority) = uri.authority().map(|a| a.as_str()) else {
        return;
    };
    let same = (headers.get(HOST)).map(|host| host.to_str().is_ok_and(|h| same_host(h, authority)));
    if same == Some(true) {
        return;
    }
    let Ok(value) = HeaderValue::from_str(authority) else {
        return;
    };
    if same.is_none() {
        headers.insert(HOST, value);
    } else {
        headers.append(HOST, value);
    }
}

/// Whether two host values name the same host, read as the subdomain rules read them (case,
/// port and a trailing dot aside); two values that are no host are the same only as text.
fn same_host(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    match (Host::read(a), Host::read(b)) {
        (Ok(Some(a)), Ok(Some(b))) => a.same(&b),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Identifies the caller of a request with `policy`'s `principals:` section and applies the
/// result to `attrs`. `own` are credentials from the request body, which win over headers.
/// `host_from_headers` is false on `/v1/check`, whose own `Host` header names Spillway, not
/// the site the caller used: there the host comes from the body only. Nothing happens
/// without the section.
pub async fn identify(
    app: &AppState,
    policy: &Policy,
    headers: &impl Lookup,
    own: Presented<'_>,
    host_from_headers: bool,
    attrs: &mut RequestAttrs,
) -> Result<(), Problem> {
    let Some(config) = policy.principals() else {
        return Ok(());
    };
    let found = principal::presented(headers, config);
    let presented = Presented {
        token: own.token.or(found.token),
        second_token: found.second_token.filter(|_| own.token.is_none()),
        api_key: own.api_key.or(found.api_key),
        host: own.host.or(found.host.filter(|_| host_from_headers)),
        malformed: principal::Malformed {
            token: own.token.is_none() && found.malformed.token,
            api_key: own.api_key.is_none() && found.malformed.api_key,
            host: own.host.is_none() && host_from_headers && found.malformed.host,
        },
        ip: attrs.ip.is_some(),
        address: attrs.ip,
        grace: own.grace,
    };
    let now = app.clock.now();
    // Boxed so that the credential checks' state (a JWKS fetch among them) does not
    // enlarge the future of every check, which is copied whole into its box per request.
    match Box::pin(app.principals.identify(policy, &presented, now)).await {
        None => Ok(()),
        Some(Ok(identity)) => {
            principal::apply(&identity, config, attrs);
            Ok(())
        }
        Some(Err(reason)) => Err(refusal(reason)),
    }
}

/// The problem for `reason`: 401, or 403 for a valid credential used on another tenant's host
/// (`tenant_mismatch`). `/v1/authorize` answers either with the policy's `invalid_status`.
fn refusal(reason: Reason) -> Problem {
    let problem = match reason {
        // Not a verdict on the credential: the address may try again shortly.
        Reason::TooManyFailures => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            TOO_MANY_FAILURES,
            "Too many failed credentials",
            reason.describe(),
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        Reason::TenantMismatch => Problem::new(
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "Forbidden",
            reason.describe(),
        ),
        _ => Problem::new(
            StatusCode::UNAUTHORIZED,
            UNAUTHENTICATED,
            "Unauthenticated",
            reason.describe(),
        ),
    };
    problem.with_reason(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(headers: &HeaderMap) -> Vec<&str> {
        (headers.get_all(HOST).iter())
            .map(|v| v.to_str().expect("text"))
            .collect()
    }

    #[test]
    fn the_authority_is_the_host_and_a_different_one_is_a_second_host() {
        let uri: Uri = "http://initech.example.com/v1/authorize"
            .parse()
            .expect("uri");
        let mut headers = HeaderMap::new();
        with_authority(&mut headers, &uri);
        assert_eq!(hosts(&headers), ["initech.example.com"], "HTTP/2");
        for same in [
            "INITECH.example.com",
            "initech.example.com:80",
            "initech.example.com.",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static(same));
            with_authority(&mut headers, &uri);
            assert_eq!(hosts(&headers), [same], "the same host");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("acme.example.com"));
        with_authority(&mut headers, &uri);
        assert_eq!(hosts(&headers), ["acme.example.com", "initech.example.com"]);
        let origin: Uri = "/v1/authorize".parse().expect("uri");
        with_authority(&mut headers, &origin);
        assert_eq!(hosts(&headers).len(), 2, "an origin-form URL adds nothing");
    }
}
