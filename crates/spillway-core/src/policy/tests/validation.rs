//! One test per class of semantic error: the file is well-formed YAML of the right shape,
//! but says something invalid. Each asserts the field path, the line and the source name,
//! through both the structured issues and the displayed report.
//!
//! The YAML starts right after `r#"`, so the first line of each text is line 1.

use super::{expect, reject};

#[test]
fn unknown_algorithm() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: token-bucket
    rate: 10/s
    key: [ip]
tiers:
  t: {limits: [a]}
"#,
        4,
        "limits.a.algorithm",
        "unknown algorithm `token-bucket`",
    );
}

#[test]
fn fields_of_another_algorithm_are_refused() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: token_bucket
    rate: 10/s
    window: 1m
    key: [ip]
tiers:
  t: {limits: [a]}
"#,
        6,
        "limits.a.window",
        "`window` does not apply to token_bucket (it takes rate and burst)",
    );
}

#[test]
fn required_fields_are_demanded() {
    let text = r#"default_tier: t
limits:
  a:
    algorithm: gcra
    burst: 5
    key: [ip]
  b:
    algorithm: sliding_log
    limit: 10
    key: [ip]
tiers:
  t: {limits: [a, b]}
"#;
    expect(text, 3, "limits.a.rate", "gcra needs `rate`");
    let err = expect(text, 7, "limits.b.window", "sliding_log needs `window`");
    assert_eq!(err.errors().len(), 2, "{err}");
}

#[test]
fn zero_rate() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: gcra
    rate: 0/min
    key: [ip]
tiers:
  t: {limits: [a]}
"#,
        5,
        "limits.a.rate",
        "a rate must allow at least 1 request per period (got 0)",
    );
}

#[test]
fn bad_numbers_are_each_reported() {
    let text = r#"default_tier: t
limits:
  zero-limit:
    algorithm: fixed_window
    limit: 0
    window: 1m
    key: [ip]
  negative-burst:
    algorithm: token_bucket
    rate: 5/s
    burst: -3
    key: [ip]
  fractional-capacity:
    algorithm: leaky_bucket
    rate: 5/s
    capacity: 2.5
    key: [ip]
  zero-window:
    algorithm: sliding_window
    limit: 10
    window: 0s
    key: [ip]
  bad-rate:
    algorithm: gcra
    rate: fast
    key: [ip]
  endless-log:
    algorithm: sliding_log
    limit: 10
    window: 106751992d
    key: [ip]
  endless-window:
    algorithm: sliding_window
    limit: 10
    window: 18446744073709551615us
    key: [ip]
  long-log:
    algorithm: sliding_log
    limit: 1000000
    window: 1h
    key: [ip]
tiers:
  t: {limits: [zero-limit]}
"#;
    expect(text, 5, "limits.zero-limit.limit", "at least 1 (got 0)");
    expect(
        text,
        11,
        "limits.negative-burst.burst",
        "at least 1 (got -3)",
    );
    expect(
        text,
        16,
        "limits.fractional-capacity.capacity",
        "whole number (got 2.5)",
    );
    expect(text, 21, "limits.zero-window.window", "longer than zero");
    expect(text, 25, "limits.bad-rate.rate", "count/period");
    // Windows long enough to overflow expiry times would make a limit that never limits.
    expect(
        text,
        30,
        "limits.endless-log.window",
        "too long (at most 3650d",
    );
    expect(
        text,
        35,
        "limits.endless-window.window",
        "too long (at most 3650d",
    );
    let err = expect(
        text,
        39,
        "limits.long-log.limit",
        "too large for sliding_log (at most 10000)",
    );
    assert_eq!(err.errors().len(), 8, "{err}");
}

#[test]
fn route_costs_must_be_positive() {
    let text = r#"default_tier: t
tiers:
  t: {}
routes:
  - match: "GET /a"
    cost: 0
  - match: "GET /b"
    cost: -2
  - match: "GET /c"
    cost: 1.5
"#;
    expect(text, 6, "routes[0].cost", "cost must be at least 1 (got 0)");
    expect(
        text,
        8,
        "routes[1].cost",
        "cost must be at least 1 (got -2)",
    );
    expect(text, 10, "routes[2].cost", "whole number");
}

#[test]
fn undefined_limits_are_reported_where_named() {
    let text = r#"default_tier: t
limits:
  a: {algorithm: gcra, rate: 10/s, key: [ip]}
global: [a, b]
tiers:
  t:
    limits: [c]
routes:
  - match: "GET /a"
    limits: [a, d]
"#;
    expect(text, 4, "global[1]", "no limit named `b`");
    expect(text, 7, "tiers.t.limits[0]", "no limit named `c`");
    expect(text, 10, "routes[0].limits[1]", "no limit named `d`");
}

#[test]
fn undefined_tiers_are_reported() {
    let text = r#"default_tier: basic
tiers:
  free: {}
  paid: {}
tenants:
  acme:
    tier: gold
"#;
    expect(
        text,
        1,
        "default_tier",
        "no tier named `basic` (defined: free, paid)",
    );
    expect(text, 7, "tenants.acme.tier", "no tier named `gold`");
}

/// The `tenants:` section takes the ids the catalog takes: an id with white space around it
/// (which no request's header keeps), an invisible character or an empty one is refused.
#[test]
fn tenant_ids_are_checked_as_the_catalog_checks_them() {
    let text = "default_tier: free\ntiers:\n  free: {}\ntenants:\n  \"acme \": {}\n  \"ac\\u200bme\": {}\n  \"\": {}\n  fine: {}\n";
    expect(text, 5, "tenants.acme ", "starts or ends with white space");
    expect(
        text,
        6,
        "tenants.ac\u{200b}me",
        "invisible formatting character",
    );
    expect(text, 7, "tenants.", "must not be empty");
    let err = reject(text);
    assert_eq!(err.errors().len(), 3, "{err}");
}

#[test]
fn key_dimensions_are_checked() {
    let text = r#"default_tier: t
descriptors: [region]
limits:
  undeclared: {algorithm: gcra, rate: 1/s, key: [ip, api_key]}
  empty: {algorithm: gcra, rate: 1/s, key: []}
  keyless: {algorithm: gcra, rate: 1/s}
  twice:
    algorithm: gcra
    rate: 1/s
    key: [region, ip, region]
tiers:
  t: {}
"#;
    expect(
        text,
        4,
        "limits.undeclared.key[1]",
        "unknown dimension `api_key`",
    );
    expect(text, 5, "limits.empty.key", "at least one dimension");
    expect(text, 6, "limits.keyless.key", "a limit needs `key`");
    expect(text, 10, "limits.twice.key[2]", "`region` is listed twice");
}

#[test]
fn descriptors_must_be_new_distinct_names() {
    let text = r#"default_tier: t
descriptors:
  - user
  - api_key
  - api_key
  - "api key"
  - Api-Key
tiers:
  t: {}
"#;
    expect(text, 3, "descriptors[0]", "`user` is a built-in dimension");
    expect(text, 5, "descriptors[2]", "declared twice");
    expect(text, 6, "descriptors[3]", "contains ` `");
    // Proxy headers could not tell these two apart.
    expect(
        text,
        7,
        "descriptors[4]",
        "`Api-Key` differs from `api_key` only in case, `-` or `_`",
    );
}

#[test]
fn route_patterns_are_checked_and_unique() {
    let text = r#"default_tier: t
tiers:
  t: {}
routes:
  - match: "POST /v1/generate"
  - match: "/v1/meta/**"
  - match: "post  /v1/generate"
  - match: "GET /v1/**/x"
"#;
    expect(text, 6, "routes[1].match", "method and a path");
    expect(
        text,
        7,
        "routes[2].match",
        "already matched by the route on line 5",
    );
    expect(
        text,
        8,
        "routes[3].match",
        "`**` may only be the last segment",
    );
}

#[test]
fn failure_modes_must_be_known() {
    let text = r#"default_tier: t
failure_mode: fail-open
tiers:
  t: {}
routes:
  - match: "GET /a"
    failure_mode: Closed
"#;
    expect(text, 2, "failure_mode", "unknown failure mode `fail-open`");
    expect(
        text,
        7,
        "routes[0].failure_mode",
        "use open, closed or degrade",
    );
}

#[test]
fn overrides_must_target_a_reachable_limit_with_valid_numbers() {
    let text = r#"default_tier: free
limits:
  free-minute: {algorithm: gcra, rate: 60/min, burst: 10, key: [user]}
  paid-minute: {algorithm: token_bucket, rate: 600/min, key: [user]}
  paid-daily: {algorithm: fixed_window, limit: 10000, window: 1d, key: [user]}
tiers:
  free: {limits: [free-minute]}
  paid: {limits: [paid-minute, paid-daily]}
tenants:
  acme:
    tier: paid
    overrides:
      free-minute: {rate: 100/min}
      nonexistent: {rate: 1/s}
      paid-minute: {window: 1h}
      paid-daily:
        limit: 0
"#;
    expect(
        text,
        13,
        "tenants.acme.overrides.free-minute",
        "never applies to this tenant",
    );
    expect(
        text,
        14,
        "tenants.acme.overrides.nonexistent",
        "no limit named `nonexistent`",
    );
    expect(
        text,
        15,
        "tenants.acme.overrides.paid-minute.window",
        "does not apply to token_bucket",
    );
    expect(
        text,
        17,
        "tenants.acme.overrides.paid-daily.limit",
        "at least 1 (got 0)",
    );
}

#[test]
fn names_and_duplicates() {
    expect(
        r#"default_tier: t
limits:
  "per user":
    algorithm: gcra
    rate: 1/s
    key: [user]
tiers:
  t: {}
"#,
        3,
        "limits.per user",
        "contains ` `",
    );
    let err = reject(
        r#"default_tier: t
limits:
  a: {algorithm: gcra, rate: 1/s, key: [user]}
  a: {algorithm: gcra, rate: 2/s, key: [user]}
"#,
    );
    assert_eq!(err.errors()[0].line, 4, "{err}");
    let message = &err.errors()[0].message;
    assert!(message.contains("`a` is given twice"), "{err}");
    assert!(
        !message.contains("DuplicateKeyPolicy"),
        "the library's advice: {err}"
    );
    // An empty file (or one of comments only) is said to be empty.
    for text in ["", "# nothing yet\n\n"] {
        let err = reject(text);
        assert!(
            err.errors()[0].message.contains("the file is empty"),
            "{err}"
        );
    }
}

#[test]
fn every_semantic_error_is_reported_in_file_order() {
    let err = reject(
        r#"default_tier: missing
limits:
  a: {algorithm: gcra, rate: 0/s, key: [ip]}
global: [nope]
tiers:
  t: {}
"#,
    );
    let lines: Vec<u64> = err.errors().iter().map(|i| i.line).collect();
    assert_eq!(lines, [1, 3, 4], "{err}");
    let report = err.to_string();
    assert_eq!(report.lines().count(), 3, "{report}");
    assert!(
        report.lines().all(|l| l.starts_with("test.yaml:")),
        "{report}"
    );
}

#[test]
fn a_defaulted_burst_is_named_as_such() {
    expect(
        r#"default_tier: t
limits:
  odd:
    algorithm: token_bucket
    rate: 999983/d
    key: [ip]
tiers:
  t: {limits: [odd]}
"#,
        3,
        "limits.odd",
        "no `burst` was written, so it defaulted to the rate's count (999983)",
    );
}
