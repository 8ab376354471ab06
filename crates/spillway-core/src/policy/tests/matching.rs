//! The settings that decide how requests are matched and counted: `route_matching` and
//! `ip_prefix`, each rejected with its position when wrong.

use super::{expect, load};

#[test]
fn routes_that_differ_only_in_case_are_duplicates_unless_matching_is_case_sensitive() {
    let routes = r#"tiers:
  t: {}
routes:
  - match: "POST /v1/generate"
  - match: "POST /V1/Generate"
"#;
    expect(
        &format!("default_tier: t\n{routes}"),
        6,
        "routes[1].match",
        "already matched by the route on line 5",
    );
    let sensitive = format!("default_tier: t\nroute_matching: {{case_sensitive: true}}\n{routes}");
    assert_eq!(load(&sensitive).routes().count(), 2);
}

/// A `GET` route matches `HEAD` requests too, so a `HEAD` route on the same path after it is
/// never reached and is refused; before it, it takes the `HEAD` requests.
#[test]
fn a_head_route_after_the_same_get_route_is_refused() {
    let routes = r#"tiers:
  t: {}
routes:
  - match: "GET /v1/export"
  - match: "head /V1/export"
"#;
    expect(
        &format!("default_tier: t\n{routes}"),
        6,
        "routes[1].match",
        "`HEAD /V1/export` is already matched by the route on line 5",
    );
    let before = r#"default_tier: t
tiers:
  t: {}
routes:
  - match: "HEAD /v1/export"
  - match: "GET /v1/export"
"#;
    assert_eq!(load(before).routes().count(), 2);
}

#[test]
fn ip_prefixes_must_fit_their_address_family() {
    let text = r#"default_tier: t
tiers:
  t: {}
ip_prefix:
  v4: 33
  v6: 0
"#;
    expect(
        text,
        5,
        "ip_prefix.v4",
        "the IPv4 prefix length must be from 1 to 32 bits (got 33)",
    );
    expect(
        text,
        6,
        "ip_prefix.v6",
        "the IPv6 prefix length must be at least 1 (got 0)",
    );
    expect(
        r#"default_tier: t
tiers:
  t: {}
ip_prefix: {v6: "wide"}
"#,
        4,
        "ip_prefix.v6",
        "must be a whole number (got `wide`)",
    );
    expect(
        r#"default_tier: t
tiers:
  t: {}
ip_prefix: {v6: 129, v5: 1}
"#,
        4,
        "ip_prefix.v5",
        "unknown field `v5`",
    );
}

#[test]
fn route_matching_takes_a_boolean() {
    expect(
        r#"default_tier: t
tiers:
  t: {}
route_matching:
  case_sensitive: sometimes
"#,
        5,
        "route_matching.case_sensitive",
        "bool",
    );
    expect(
        r#"default_tier: t
tiers:
  t: {}
route_matching:
  case_insensitive: true
"#,
        5,
        "route_matching.case_insensitive",
        "unknown field `case_insensitive`",
    );
}
