//! Errors found while reading the file, before its meaning is checked: YAML syntax, unknown
//! or missing fields, values of the wrong type, and files that cannot be read. These stop at
//! the first problem, but still name the file, line, column and field path.
//!
//! The YAML starts right after `r#"`, so the first line of each text is line 1.

use super::{expect, reject};
use crate::policy::Policy;

#[test]
fn yaml_syntax_errors_give_a_position() {
    let err = reject(
        r#"default_tier: t
limits:
  a: {algorithm: gcra, rate: 10/s, key: [ip}
"#,
    );
    assert_eq!(err.errors().len(), 1);
    assert_eq!(err.errors()[0].line, 3, "{err}");
    assert!(err.to_string().starts_with("test.yaml:3:"), "{err}");
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: gcra
    rate: 10/s
    windw: 1m
    key: [ip]
tiers:
  t: {limits: [a]}
"#,
        6,
        "limits.a.windw",
        "unknown field `windw`",
    );
    expect(
        "default_tier: t\ntier: [a]\n",
        2,
        "tier",
        "unknown field `tier`",
    );
    expect(
        r#"default_tier: t
limits:
  a: {algorithm: gcra, rate: 10/s, key: [ip]}
tiers:
  t: {limits: [a]}
tenants:
  acme:
    overrides:
      a: {rate: 20/s, key: [user]}
"#,
        9,
        "tenants.acme.overrides.a.key",
        "unknown field `key`",
    );
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    expect(
        r#"default_tier: t
limits:
  a:
    rate: 10/s
    key: [ip]
"#,
        3,
        "limits.a.algorithm",
        "missing field `algorithm`",
    );
    expect(
        r#"default_tier: t
limits:
  a:
    algorithm: gcra
    rate: 10/s
    key: [ip]
    shadow: sometimes
"#,
        7,
        "limits.a.shadow",
        "bool",
    );
    expect(
        "limits: {}\n",
        1,
        "default_tier",
        "missing field `default_tier`",
    );
    expect(
        r#"default_tier: t
tiers:
  t: {}
routes:
  - match: "GET /a"
  - cost: 5
    limits: []
"#,
        6,
        "routes[1].match",
        "missing field `match`",
    );
}

#[test]
fn files_name_their_path_in_errors() {
    let dir = std::env::temp_dir().join(format!("spillway-policy-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("bad.yaml");
    let written = std::fs::write(
        &path,
        "default_tier: t\ntiers:\n  t:\n    limits: [ghost]\n",
    );
    assert!(written.is_ok(), "cannot write {}", path.display());
    let err = match Policy::from_file(&path) {
        Ok(_) => panic!("should be rejected"),
        Err(e) => e,
    };
    let expected = format!(
        "{}:4:14: tiers.t.limits[0]: no limit named `ghost`",
        path.display()
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
    assert_eq!(err.source_name(), path.display().to_string());
    let _ = std::fs::remove_dir_all(&dir);

    let missing = dir.join("absent.yaml");
    let err = match Policy::from_file(&missing) {
        Ok(_) => panic!("a missing file cannot load"),
        Err(e) => e,
    };
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", missing.display())),
        "{err}"
    );
}

#[test]
fn blank_sections_read_as_empty() {
    // Every entry commented out leaves a key with nothing after it; that means "none".
    let policy = super::load(
        r#"default_tier: free
descriptors:
limits:
global:
tiers:
  free:
  paid:
    limits:
routes:
tenants:
  acme:
"#,
    );
    assert_eq!(policy.tiers().collect::<Vec<_>>(), ["free", "paid"]);
    assert_eq!(policy.limits().count(), 0);
}
