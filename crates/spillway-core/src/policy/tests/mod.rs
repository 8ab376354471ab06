//! Tests of the policy as a whole: the shipped example, resolution of requests, and one test
//! per class of validation error. Tests of a single piece (route patterns, number parsing,
//! path finding) sit next to that piece.

mod failure;
mod matching;
mod principals;
mod reading;
mod regions;
mod resolution;
mod validation;

use super::{Policy, PolicyError};

/// The server's embedded default policy.
const EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/spillway.yaml"
));

/// Loads `text`, failing the test with the full error report if it does not validate.
fn load(text: &str) -> Policy {
    match Policy::from_yaml_str(text, "test.yaml") {
        Ok(policy) => policy,
        Err(e) => panic!("policy should load, but:\n{e}"),
    }
}

/// Loads `text`, expecting it to be rejected.
fn reject(text: &str) -> PolicyError {
    match Policy::from_yaml_str(text, "test.yaml") {
        Ok(policy) => panic!("policy should be rejected, but loaded: {policy:?}"),
        Err(e) => e,
    }
}

/// Asserts that `text` is rejected with an issue at `path` on `line` whose message contains
/// `fragment`, and that the report shows it as `test.yaml:{line}:{column}: {path}: ...`.
fn expect(text: &str, line: u64, path: &str, fragment: &str) -> PolicyError {
    let err = reject(text);
    let Some(issue) = err.errors().iter().find(|i| i.path == path) else {
        panic!("no issue for `{path}`; got:\n{err}");
    };
    assert_eq!(issue.line, line, "wrong line for `{path}`; got:\n{err}");
    assert!(
        issue.message.contains(fragment),
        "`{fragment}` not in:\n{err}"
    );
    let prefix = format!("test.yaml:{line}:{}: {path}: ", issue.column);
    let report = err.to_string();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(fragment)),
        "no line starting `{prefix}` in:\n{report}"
    );
    err
}
