//! Tests of the policy as a whole: the shipped example, resolution of requests, and one test
//! per class of validation error. Tests of a single piece (route patterns, number parsing,
//! path finding) sit next to that piece.

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
