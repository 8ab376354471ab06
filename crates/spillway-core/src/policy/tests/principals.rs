//! The `principals:` section: defaults, every setting read, and each mistake reported at its
//! line with its path.

use super::{expect, load};
use crate::policy::principal::{
    JwtAlgorithm, KeySource, Missing, Source, TokenPlace, DEFAULT_CACHE_SIZE, DEFAULT_LEEWAY,
};

const HEAD: &str = "default_tier: free
limits:
  per-ip: {algorithm: fixed_window, limit: 5, window: 1m, key: [ip]}
  per-tenant: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}
tiers:
  free: {limits: [per-tenant]}
  paid: {limits: [per-tenant]}
  anonymous: {limits: [per-ip]}
";

fn with(section: &str) -> String {
    format!("{HEAD}principals:\n{section}")
}

#[test]
fn no_section_means_no_principals() {
    assert!(load(HEAD).principals().is_none());
}

#[test]
fn a_minimal_jwt_section_takes_secure_defaults() {
    let policy = load(&with(
        "  jwt:\n    jwks_file: /etc/keys.json\n    claims: {tenant: org.id}\n",
    ));
    let p = policy.principals().expect("configured");
    assert_eq!(p.sources, vec![Source::Jwt]);
    assert_eq!(p.request_may_name, Default::default());
    assert_eq!(p.missing, Missing::Reject);
    assert_eq!(p.invalid_status, 401);
    let jwt = p.jwt.as_deref().expect("jwt");
    assert_eq!(jwt.place, TokenPlace::Header("authorization".into()));
    assert_eq!(jwt.keys, KeySource::File("/etc/keys.json".into()));
    assert_eq!(
        jwt.algorithms,
        vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA
        ]
    );
    assert_eq!(jwt.leeway, DEFAULT_LEEWAY);
    assert_eq!(jwt.cache_size, DEFAULT_CACHE_SIZE);
    assert_eq!(jwt.tenant_claim, Some(vec!["org".into(), "id".into()]));
}

#[test]
fn every_setting_is_read() {
    let policy = load(&with(
        "  sources: [api_key, jwt, subdomain]
  request_may_name: [user]
  missing: anonymous
  invalid_status: 403
  jwt:
    cookie: session
    jwks_url: https://auth.example.com/jwks.json
    refresh: 1m
    algorithms: [HS256, EdDSA]
    leeway: 5s
    issuer: https://auth.example.com
    audience: api
    claims: {tenant: org.id, user: sub, tier: plan}
    tiers: {pro: paid}
    cache_size: 10
  api_key: {header: X-Api-Key}
  subdomain: {base: .Example.com, header: x-original-host}
",
    ));
    let p = policy.principals().expect("configured");
    assert_eq!(
        p.sources,
        vec![Source::ApiKey, Source::Jwt, Source::Subdomain]
    );
    assert!(p.request_may_name.user && !p.request_may_name.tenant && !p.request_may_name.tier);
    assert_eq!(p.missing, Missing::Anonymous("anonymous".into()));
    assert_eq!(p.invalid_status, 403);
    let jwt = p.jwt.as_deref().expect("jwt");
    assert_eq!(jwt.place, TokenPlace::Cookie("session".into()));
    assert_eq!(
        jwt.keys,
        KeySource::Url {
            url: "https://auth.example.com/jwks.json".into(),
            refresh: 60_000_000
        }
    );
    assert_eq!(
        jwt.algorithms,
        vec![JwtAlgorithm::HS256, JwtAlgorithm::EdDSA]
    );
    assert_eq!(jwt.leeway, 5_000_000);
    assert_eq!(jwt.audience, vec!["api".to_owned()]);
    assert_eq!(jwt.tiers.get("pro").map(|t| &**t), Some("paid"));
    assert_eq!(jwt.cache_size, 10);
    assert_eq!(
        p.api_key.as_ref().map(|k| k.header.as_str()),
        Some("x-api-key")
    );
    let sub = p.subdomain.as_ref().expect("subdomain");
    assert_eq!(
        (sub.base.as_str(), sub.header.as_str()),
        ("example.com", "x-original-host")
    );
}

#[test]
fn none_is_never_an_algorithm() {
    let text = with(
        "  jwt:\n    jwks_file: k.json\n    claims: {tenant: t}\n    algorithms: [RS256, none]\n",
    );
    expect(&text, 13, "principals.jwt.algorithms[1]", "never accepted");
    let text =
        with("  jwt:\n    jwks_file: k.json\n    claims: {tenant: t}\n    algorithms: [PS512]\n");
    expect(
        &text,
        13,
        "principals.jwt.algorithms[0]",
        "unknown algorithm `PS512`",
    );
}

#[test]
fn keys_are_required_from_exactly_one_place() {
    let text = with("  jwt:\n    claims: {tenant: t}\n");
    expect(
        &text,
        11,
        "principals.jwt",
        "`jwks_file` or `jwks_url` is required",
    );
    let text =
        with("  jwt:\n    jwks_file: a\n    jwks_url: https://x/\n    claims: {tenant: t}\n");
    expect(&text, 12, "principals.jwt.jwks_url", "not both");
    let text = with("  jwt:\n    jwks_url: ftp://x/\n    claims: {tenant: t}\n");
    expect(&text, 11, "principals.jwt.jwks_url", "not an http");
    let text = with("  jwt:\n    jwks_file: a\n    refresh: 1m\n    claims: {tenant: t}\n");
    expect(&text, 12, "principals.jwt.refresh", "only to `jwks_url`");
}

#[test]
fn claims_and_tier_mappings_are_checked() {
    let text = with("  jwt:\n    jwks_file: a\n");
    expect(&text, 11, "principals.jwt.claims", "map at least one claim");
    let text = with("  jwt:\n    jwks_file: a\n    claims: {tenant: org..id}\n");
    expect(
        &text,
        12,
        "principals.jwt.claims.tenant",
        "dotted claim path",
    );
    let text = with("  jwt:\n    jwks_file: a\n    claims: {tier: plan}\n    tiers: {pro: gold}\n");
    expect(
        &text,
        13,
        "principals.jwt.tiers.pro",
        "no tier named `gold`",
    );
}

#[test]
fn sources_must_be_known_configured_and_once() {
    let text = with("  sources: [jwt]\n  api_key: {}\n");
    expect(
        &text,
        10,
        "principals.sources[0]",
        "`principals.jwt` is not configured",
    );
    let text = with("  sources: [api_key, api_key]\n  api_key: {}\n");
    expect(&text, 10, "principals.sources[1]", "listed twice");
    let text = with("  sources: [oauth]\n  api_key: {}\n");
    expect(&text, 10, "principals.sources[0]", "unknown source `oauth`");
    let text = with("  missing: reject\n");
    expect(&text, 10, "principals", "at least one of");
}

#[test]
fn the_anonymous_tier_must_exist_and_count_by_ip() {
    let text = with("  missing: anonymous\n  anonymous_tier: free\n  api_key: {}\n");
    expect(
        &text,
        11,
        "principals.anonymous_tier",
        "no limit keyed by `ip`",
    );
    let keyed_by_tenant = HEAD.replace(
        "anonymous: {limits: [per-ip]}",
        "anonymous: {limits: [per-ip, per-tenant]}",
    );
    let text = format!("{keyed_by_tenant}principals:\n  missing: anonymous\n  api_key: {{}}\n");
    expect(
        &text,
        10,
        "principals.anonymous_tier",
        "keyed only by `ip` and `route`",
    );
    // A per-IP limit anonymous requests may not meet, or that does not deny at the check.
    for per_ip in [
        "key: [ip, route]}",
        "key: [ip], shadow: true}",
        "key: [ip], charge: after}",
    ] {
        let head = HEAD.replace("key: [ip]}", per_ip);
        let text = format!("{head}principals:\n  missing: anonymous\n  api_key: {{}}\n");
        expect(
            &text,
            10,
            "principals.anonymous_tier",
            "no limit keyed by `ip` alone",
        );
    }
    // Nor a global one keyed by what an anonymous request never has.
    let head = HEAD
        .replace("key: [ip]}", "key: [tenant, ip]}")
        .replace("tiers:", "global: [per-ip]\ntiers:")
        .replace("anonymous: {limits: [per-ip]}", "anonymous: {limits: []}");
    let text = format!("{head}principals:\n  missing: anonymous\n  api_key: {{}}\n");
    expect(
        &text,
        11,
        "principals.anonymous_tier",
        "no limit keyed by `ip` alone",
    );
    let text = with("  missing: anonymous\n  anonymous_tier: guests\n  api_key: {}\n");
    expect(
        &text,
        11,
        "principals.anonymous_tier",
        "no tier named `guests`",
    );
    let text = with("  missing: maybe\n  api_key: {}\n");
    expect(&text, 10, "principals.missing", "use reject or anonymous");
    let text = with("  anonymous_tier: anonymous\n  api_key: {}\n");
    expect(
        &text,
        10,
        "principals.anonymous_tier",
        "only with `missing: anonymous`",
    );
}

#[test]
fn other_fields_are_checked_where_they_are() {
    let text = with("  invalid_status: 500\n  api_key: {}\n");
    expect(&text, 10, "principals.invalid_status", "must be 401 or 403");
    let text = with("  request_may_name: [tenant, route]\n  api_key: {}\n");
    expect(
        &text,
        10,
        "principals.request_may_name[1]",
        "unknown field `route`",
    );
    let text = with("  api_key: {header: \"x api key\"}\n");
    expect(&text, 10, "principals.api_key.header", "not a header name");
    let text = with("  subdomain: {base: \"exa mple.com\"}\n");
    expect(&text, 10, "principals.subdomain.base", "not a domain name");
    let text = with("  subdomain:\n    base: example.com\n    must_match: true\n");
    let err = expect(
        &text,
        12,
        "principals.subdomain.must_match",
        "configure `principals.jwt` or `principals.api_key`",
    );
    assert!(err.to_string().contains("test.yaml:12:17: "), "{err}");

    let text =
        with("  jwt:\n    jwks_file: a\n    header: h\n    cookie: c\n    claims: {user: sub}\n");
    expect(&text, 13, "principals.jwt.cookie", "not both");
    let text = with("  jwt:\n    jwks_file: a\n    leeway: soon\n    claims: {user: sub}\n");
    expect(&text, 12, "principals.jwt.leeway", "soon");
    let text = with("  api_key: {headr: x}\n");
    expect(&text, 10, "principals.api_key.headr", "unknown field");
}

#[test]
fn leeway_refresh_and_invalid_status_are_bounded() {
    let jwt = |extra: &str| {
        with(&format!(
            "  jwt:\n    jwks_url: https://auth.example.com/k\n    claims: {{tenant: org}}\n{extra}"
        ))
    };
    let p = load(&jwt("    leeway: 0\n"));
    assert_eq!(
        p.principals()
            .and_then(|p| p.jwt.as_deref())
            .map(|j| j.leeway),
        Some(0)
    );
    expect(
        &jwt("    leeway: 6m\n"),
        13,
        "principals.jwt.leeway",
        "at most 300s",
    );
    expect(
        &jwt("    refresh: 1s\n"),
        13,
        "principals.jwt.refresh",
        "at least 10s",
    );
    let text = with("  invalid_status: 429\n  api_key: {}\n");
    expect(&text, 10, "principals.invalid_status", "must be 401 or 403");
}

#[test]
fn a_jwks_url_is_https_unless_it_is_loopback() {
    let jwt = |url: &str| {
        with(&format!(
            "  jwt:\n    jwks_url: {url}\n    claims: {{tenant: org}}\n"
        ))
    };
    for ok in [
        "https://auth.example.com/k",
        "http://127.0.0.1:8080/k",
        "http://[::1]/k",
        "http://localhost/k",
    ] {
        load(&jwt(ok));
    }
    for bad in [
        "http://auth.example.com/k",
        "http://127.0.0.1.evil.com/k",
        "http://127.0.0.1@evil.com/k",
    ] {
        expect(
            &jwt(bad),
            11,
            "principals.jwt.jwks_url",
            "not an https:// URL",
        );
    }
    // The refusal quotes the URL without its user information, mistyped or not.
    expect(
        &jwt("issuer:s3cret@auth.example.com/k"),
        11,
        "principals.jwt.jwks_url",
        "`issuer:****@auth.example.com/k` is not an https:// URL",
    );
    expect(
        &jwt("http://issuer:s3cret@auth.example.com/k"),
        11,
        "principals.jwt.jwks_url",
        "`http://****@auth.example.com/k` is not an https:// URL",
    );
}
