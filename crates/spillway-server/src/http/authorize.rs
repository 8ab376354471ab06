//! `/v1/authorize`: the decision endpoint for reverse proxies that ask "may this request pass?"
//! with a subrequest: nginx `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz` (HTTP).
//!
//! The request's attributes come from headers whose names are configurable (see
//! [`HeaderMapping`]); the client IP comes from the TCP peer, or from forwarding headers when
//! the peer is a trusted proxy (see [`crate::http::client_ip`]). The body is never read.
//!
//! Any method is accepted, because nginx and Envoy send the subrequest with the client's own
//! method. Two forms exist:
//! - `/v1/authorize`: attributes only from headers (nginx, Traefik). Its query is never read
//!   either: some proxies write the client's own query onto the URL they ask (Caddy's
//!   `forward_auth` keeps it through its `uri` rewrite), and a client that could add `?peek`
//!   would be answered without being counted. A dry run is `/v1/check?peek`.
//! - `/v1/authorize/<original path>`: for Envoy's `path_prefix: /v1/authorize`. The
//!   subrequest's own method and the path after the prefix are the original request's, and
//!   they win over the method and path headers, which are ignored in this form: those headers
//!   may come from the client (a proxy that passes them through), and a client that could
//!   name its own path could pick the cheapest route. The query string belongs to the client
//!   here too: it never turns counting off, and is read only for `_method` parameters (a
//!   `POST` with one is served as that method, so the route matched under it applies too).
//!
//! Answers: the allow status (200, or 204) with the rate-limit headers; on deny the deny status
//! (429 unless configured otherwise: nginx needs 401 or 403, see `NGINX.md`) with the headers
//! and the same problem document as `/v1/check`. A header that cannot be understood (a cost
//! that is not a number, bytes that are not UTF-8, a second value for one attribute) is a
//! problem naming the header, with `--invalid-status` (400 unless set). With a
//! `principals:` section, a missing or refused credential is answered with the policy's
//! `invalid_status` (401 by default, which nginx passes on) and a problem naming the reason.

use crate::http::client_ip::client_ip;
use crate::http::decide;
use crate::http::principal;
use crate::http::problem::Problem;
use crate::http::settings::HeaderMapping;
use crate::http::verdict::{decided_headers, denied_response};
use crate::principal::Presented;
use crate::state::AppState;
use crate::telemetry::decision_log::RequestIds;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use spillway_core::policy::Policy;
use spillway_core::request::{CheckMode, RequestAttrs};
use std::net::SocketAddr;
use std::sync::Arc;

/// The path both forms of the endpoint start with.
pub const PREFIX: &str = "/v1/authorize";

/// The plain form, `/v1/authorize`.
pub async fn authorize(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    answer(&app, peer, &uri, headers, None).await
}

/// The prefixed form, `/v1/authorize/<original path>`, for Envoy.
pub async fn authorize_prefixed(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    // The query comes along for its `_method` parameters (frameworks serve a `POST` with one
    // as that method); the engine reads nothing else from it.
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = target.strip_prefix(PREFIX).unwrap_or("/");
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let own = (method.as_str().to_owned(), path);
    answer(&app, peer, &uri, headers, Some(own)).await
}

async fn answer(
    app: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    mut headers: HeaderMap,
    own: Option<(String, String)>,
) -> Response {
    // Always counted: see the module docs on the query.
    let mode = CheckMode::Consume;
    let settings = &app.authorize;
    // One policy snapshot maps the descriptor headers and decides.
    let policy = app.engine.policy();
    // Only where the host is read from `Host` itself (a proxy's own header, such as
    // `X-Original-Host`, is never the authority).
    let host_header = policy.principals().and_then(|p| p.subdomain.as_ref());
    if host_header.is_some_and(|s| s.header == "host") {
        principal::with_authority(&mut headers, uri);
    }
    let headers = &headers;
    // The prefixed form's own method and path win; their headers are not even read.
    let route_headers = own.is_none();
    let mut attrs = match attrs_from_headers(headers, &settings.headers, route_headers, &policy) {
        Ok(attrs) => attrs,
        Err(problem) => return problem.with_status(settings.invalid_status).into_response(),
    };
    if let Some((method, path)) = own {
        attrs.method = Some(method);
        attrs.path = Some(path);
    }
    // The client's address first: an anonymous caller is counted (and only admitted) by it.
    let ip = client_ip(
        peer.ip(),
        headers,
        &settings.forwarding,
        &settings.trusted_proxies,
    );
    attrs.ip = Some(ip);
    let nobody = Presented::default();
    if let Err(problem) = principal::identify(app, &policy, headers, nobody, true, &mut attrs).await
    {
        // Throttled credential checks are answered as a denial (the proxy's 429 page, with
        // its Retry-After); a refused credential with the policy's `invalid_status`.
        let status = match problem.reason() {
            Some(crate::principal::Reason::TooManyFailures) => settings.deny_status,
            _ => (policy.principals())
                .and_then(|p| StatusCode::from_u16(p.invalid_status).ok())
                .unwrap_or(StatusCode::UNAUTHORIZED),
        };
        // The reason in a header too: nginx's `auth_request_set` can read headers, not bodies.
        let reason = problem.reason().map_or("", |r| r.as_str());
        let named = [(principal::REASON_HEADER, reason)];
        return (named, problem.with_status(status)).into_response();
    }
    let ids = RequestIds::read(app, headers);
    let decided = match decide(app, &policy, &attrs, &ids, mode).await {
        Ok(decided) => decided,
        Err(problem) => return problem.into_response(),
    };
    if decided.verdict.allowed {
        (settings.allow_status, decided_headers(&decided)).into_response()
    } else {
        denied_response(settings.deny_status, &decided)
    }
}

/// Reads every attribute except the IP from the mapped headers (the method and path only if
/// `route_headers`); descriptor headers are matched to `policy`'s declared descriptors.
pub fn attrs_from_headers(
    headers: &HeaderMap,
    mapping: &HeaderMapping,
    route_headers: bool,
    policy: &Policy,
) -> Result<RequestAttrs, Problem> {
    let route = |names| {
        if route_headers {
            first(headers, names)
        } else {
            Ok(None)
        }
    };
    let mut attrs = RequestAttrs {
        method: route(&mapping.method)?,
        path: route(&mapping.path)?,
        tenant: first(headers, &mapping.tenant)?,
        user: first(headers, &mapping.user)?,
        tier: first(headers, &mapping.tier)?,
        method_override: overrides(headers)?,
        ..RequestAttrs::default()
    };
    if let Some((name, text)) = first_named(headers, &mapping.cost)? {
        let cost = text.parse::<u64>().map_err(|_| {
            Problem::invalid(
                format!("header `{name}`: `{text}` is not a whole, non-negative number"),
                Some(name.to_string()),
            )
        })?;
        attrs.cost = Some(cost);
    }
    for (name, value) in headers {
        let Some(descriptor) = name.as_str().strip_prefix(&mapping.descriptor_prefix) else {
            continue;
        };
        if descriptor.is_empty() {
            continue;
        }
        let value = utf8(name, value.as_bytes())?.trim().to_owned();
        let declared = policy
            .descriptor_for_header(descriptor)
            .map_or_else(|| descriptor.to_owned(), |d| d.to_string());
        // Several spellings (or repeats) of one descriptor must agree: otherwise a client could
        // add its own spelling next to the one its proxy sets and pick the key it is counted
        // under.
        match attrs.descriptors.get(&declared) {
            Some(earlier) if *earlier != value => {
                return Err(Problem::invalid(
                    format!(
                        "header `{name}` gives descriptor `{declared}` a second, different value \
                         (`{value}`, not `{earlier}`)"
                    ),
                    Some(name.to_string()),
                ));
            }
            Some(_) => {}
            None => {
                attrs.descriptors.insert(declared, value);
            }
        }
    }
    Ok(attrs)
}

/// The headers through which a client asks the server behind the proxy for another method
/// than the one it sent (Express's `method-override`, Rack, Symfony, Laravel, ASP.NET).
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Every method the override headers name, joined with commas (the resolver matches each
/// part): unlike the attributes, two of them are not refused, since an override can only add
/// routes to what a request pays.
fn overrides(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut joined = String::new();
    for name in &METHOD_OVERRIDES {
        for value in headers.get_all(name) {
            let value = utf8(name, value.as_bytes())?.trim();
            if !value.is_empty() {
                if !joined.is_empty() {
                    joined.push_str(", ");
                }
                joined.push_str(value);
            }
        }
    }
    Ok((!joined.is_empty()).then_some(joined))
}

fn first(headers: &HeaderMap, names: &[HeaderName]) -> Result<Option<String>, Problem> {
    Ok(first_named(headers, names)?.map(|(_, value)| value))
}

/// The value the first of `names` present (and not blank) gives, with its name. Every other
/// of `names`, and every repeat, must give the same value or none: a proxy sets one of them
/// and passes the rest from the client, so a second value could be the client's own choice
/// of path, method or tenant, read ahead of the proxy's (Traefik sets `X-Forwarded-Uri` and
/// passes a client's `X-Original-URI` along). The repeat is refused, naming it.
fn first_named<'a>(
    headers: &HeaderMap,
    names: &'a [HeaderName],
) -> Result<Option<(&'a HeaderName, String)>, Problem> {
    let mut found: Option<(&'a HeaderName, &str)> = None;
    for name in names {
        for value in headers.get_all(name) {
            let value = utf8(name, value.as_bytes())?.trim();
            if value.is_empty() {
                continue;
            }
            match found {
                None => found = Some((name, value)),
                Some((_, earlier)) if earlier == value => {}
                Some((first, earlier)) => {
                    return Err(Problem::invalid(
                        format!(
                            "header `{name}` (`{value}`) disagrees with `{first}` (`{earlier}`): \
                             one request has one value"
                        ),
                        Some(name.to_string()),
                    ))
                }
            }
        }
    }
    Ok(found.map(|(name, value)| (name, value.to_owned())))
}

fn utf8<'v>(name: &HeaderName, bytes: &'v [u8]) -> Result<&'v str, Problem> {
    std::str::from_utf8(bytes).map_err(|_| {
        Problem::invalid(
            format!("header `{name}` is not valid UTF-8"),
            Some(name.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn mapping() -> HeaderMapping {
        let names =
            |list: &[&'static str]| list.iter().map(|n| HeaderName::from_static(n)).collect();
        HeaderMapping {
            method: names(&["x-original-method", "x-forwarded-method"]),
            path: names(&["x-original-uri", "x-forwarded-uri"]),
            tenant: names(&["x-tenant-id"]),
            user: names(&["x-user-id"]),
            tier: names(&["x-tier"]),
            cost: names(&["x-ratelimit-cost"]),
            descriptor_prefix: "x-descriptor-".into(),
        }
    }

    /// A policy declaring two descriptors, spelled as a policy author might.
    fn policy() -> Policy {
        Policy::from_yaml_str(
            "default_tier: t\ndescriptors: [apiKey, data_center]\ntiers: {t: {}}\n",
            "test",
        )
        .expect("valid policy")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn conflicting_spellings_of_one_descriptor_are_refused() {
        let agree = headers(&[
            ("x-descriptor-api-key", "k1"),
            ("x-descriptor-apikey", "k1"),
        ]);
        let attrs = attrs_from_headers(&agree, &mapping(), true, &policy()).expect("they agree");
        assert_eq!(
            attrs.descriptors.get("apiKey").map(String::as_str),
            Some("k1")
        );
        let clash = headers(&[
            ("x-descriptor-api-key", "k1"),
            ("x-descriptor-api_key", "mine"),
        ]);
        let problem =
            attrs_from_headers(&clash, &mapping(), true, &policy()).expect_err("conflict");
        assert_eq!(problem.status(), axum::http::StatusCode::BAD_REQUEST);
        let detail = problem.detail();
        assert!(
            detail.contains("`apiKey`") && detail.contains("mine"),
            "{detail}"
        );
    }

    #[test]
    fn headers_map_onto_attributes_with_fallbacks() {
        let h = headers(&[
            ("x-original-method", ""),
            ("x-forwarded-method", "DELETE"),
            ("x-original-uri", "/v1/items/7?x=1"),
            ("x-tenant-id", " acme "),
            ("x-user-id", "u1"),
            ("x-tier", "pro"),
            ("x-ratelimit-cost", "3"),
            ("x-descriptor-api-key", "k1"),
            ("x-descriptor-data-center", "fra"),
            ("x-descriptor-region", "eu"),
        ]);
        let attrs = attrs_from_headers(&h, &mapping(), true, &policy()).expect("valid");
        assert_eq!(attrs.method.as_deref(), Some("DELETE"));
        assert_eq!(attrs.path.as_deref(), Some("/v1/items/7?x=1"));
        assert_eq!(attrs.tenant.as_deref(), Some("acme"));
        assert_eq!(attrs.user.as_deref(), Some("u1"));
        assert_eq!(attrs.tier.as_deref(), Some("pro"));
        assert_eq!(attrs.cost, Some(3));
        // Each header reaches the descriptor as declared, whatever its case and dashes.
        assert_eq!(
            attrs.descriptors.get("apiKey").map(String::as_str),
            Some("k1")
        );
        assert_eq!(
            attrs.descriptors.get("data_center").map(String::as_str),
            Some("fra")
        );
        // Undeclared names are kept as sent.
        assert_eq!(
            attrs.descriptors.get("region").map(String::as_str),
            Some("eu")
        );
        assert_eq!(attrs.descriptors.len(), 3);
        assert_eq!(attrs.ip, None);
    }

    #[test]
    fn a_second_value_for_one_attribute_is_refused() {
        // Traefik sets `X-Forwarded-Uri`; a client's own `X-Original-URI` comes along.
        let clash = headers(&[
            ("x-original-uri", "/v1/cheap"),
            ("x-forwarded-uri", "/v1/generate"),
        ]);
        let problem =
            attrs_from_headers(&clash, &mapping(), true, &policy()).expect_err("two paths");
        assert_eq!(problem.status(), axum::http::StatusCode::BAD_REQUEST);
        let detail = problem.detail();
        assert!(
            detail.contains("x-forwarded-uri") && detail.contains("/v1/cheap"),
            "{detail}"
        );
        // A repeat of one header, and a second override, are refused the same way.
        for clash in [
            headers(&[("x-tenant-id", "acme"), ("x-tenant-id", "initech")]),
            headers(&[("x-original-method", "GET"), ("x-forwarded-method", "POST")]),
        ] {
            assert!(attrs_from_headers(&clash, &mapping(), true, &policy()).is_err());
        }
        // Values that agree (white space aside), and blank ones, are one value.
        let agree = headers(&[
            ("x-original-uri", "/v1/generate"),
            ("x-forwarded-uri", " /v1/generate"),
            ("x-tenant-id", ""),
            ("x-tenant-id", "acme"),
        ]);
        let attrs = attrs_from_headers(&agree, &mapping(), true, &policy()).expect("they agree");
        assert_eq!(attrs.path.as_deref(), Some("/v1/generate"));
        assert_eq!(attrs.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn a_method_override_is_read() {
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            let h = headers(&[("x-original-method", "POST"), (name, "DELETE")]);
            let attrs = attrs_from_headers(&h, &mapping(), true, &policy()).expect("valid");
            assert_eq!(attrs.method.as_deref(), Some("POST"));
            assert_eq!(attrs.method_override.as_deref(), Some("DELETE"), "{name}");
        }
        // Several are all read: an override can only add routes.
        let h = headers(&[
            ("x-http-method-override", "GET"),
            ("x-method-override", "DELETE"),
            ("x-http-method-override", "PUT"),
        ]);
        let attrs = attrs_from_headers(&h, &mapping(), true, &policy()).expect("valid");
        assert_eq!(attrs.method_override.as_deref(), Some("GET, PUT, DELETE"));
    }

    #[test]
    fn absent_headers_leave_attributes_unset() {
        let attrs =
            attrs_from_headers(&HeaderMap::new(), &mapping(), true, &policy()).expect("valid");
        assert_eq!(attrs, RequestAttrs::default());
    }

    #[test]
    fn bad_costs_name_the_header() {
        let h = headers(&[("x-ratelimit-cost", "many")]);
        let problem = attrs_from_headers(&h, &mapping(), true, &policy()).expect_err("invalid");
        assert_eq!(problem.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(problem.field(), Some("x-ratelimit-cost"));
    }

    #[test]
    fn non_utf8_values_name_the_header() {
        let mut h = HeaderMap::new();
        let value = HeaderValue::from_bytes(&[0xff, 0xfe]).expect("opaque bytes are allowed");
        h.insert("x-tenant-id", value);
        let problem = attrs_from_headers(&h, &mapping(), true, &policy()).expect_err("invalid");
        assert_eq!(problem.field(), Some("x-tenant-id"));
    }
}
