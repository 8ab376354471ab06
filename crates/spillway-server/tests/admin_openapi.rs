//! `docs/admin-openapi.yaml` cannot drift from the admin API: every route and method
//! registered in `src/admin/mod.rs` is described, nothing else is, every operation answers
//! 401, and every `$ref` resolves.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const METHODS: [&str; 5] = ["get", "put", "patch", "delete", "post"];

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn openapi() -> Value {
    let path = root().join("docs/admin-openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("read docs/admin-openapi.yaml");
    serde_saphyr::from_str(&text).expect("docs/admin-openapi.yaml is valid YAML")
}

/// The routes `admin::routes` registers, read from its source: each `.route(` call's path
/// (`format!("{PREFIX}/...")` with `{{x}}` for a parameter) and the handler methods chained on
/// it (`get(entries::...)`, `.put(entries::...)`...).
fn registered() -> BTreeMap<String, BTreeSet<String>> {
    let source = std::fs::read_to_string(root().join("crates/spillway-server/src/admin/mod.rs"))
        .expect("read src/admin/mod.rs");
    let prefix = source
        .split_once("pub const PREFIX: &str = \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(prefix, _)| prefix.to_owned())
        .expect("admin::PREFIX");
    let body = source
        .split_once("pub fn routes(")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .map(|(body, _)| body)
        .expect("admin::routes");
    let mut routes = BTreeMap::new();
    for call in body.split(".route(").skip(1) {
        let path = call
            .split_once("format!(\"")
            .and_then(|(_, rest)| rest.split_once("\")"))
            .map(|(path, _)| {
                path.replace("{PREFIX}", &prefix)
                    .replace("{{", "{")
                    .replace("}}", "}")
            })
            .expect("a route path in format!(\"{PREFIX}...\")");
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| call.contains(&format!("{m}(entries::")))
            .map(|m| m.to_string())
            .collect();
        assert!(!methods.is_empty(), "no handler found for {path}");
        routes.insert(path, methods);
    }
    assert!(
        routes.len() >= 7,
        "only {} routes read from the source",
        routes.len()
    );
    routes
}

#[test]
fn every_admin_route_is_described_and_nothing_else() {
    let doc = openapi();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let paths = doc["paths"].as_object().expect("paths");
    let routes = registered();
    for (path, methods) in &routes {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is served but not in docs/admin-openapi.yaml"));
        let described: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_string())
            .collect();
        assert_eq!(&described, methods, "methods of {path}");
        for method in methods {
            let responses = &item[method.as_str()]["responses"];
            assert!(
                responses.get("401").is_some(),
                "{method} {path} does not answer 401"
            );
        }
    }
    let served: BTreeSet<&String> = routes.keys().collect();
    let documented: BTreeSet<&String> = paths.keys().collect();
    assert_eq!(
        documented, served,
        "docs/admin-openapi.yaml describes paths not served"
    );
}

#[test]
fn the_document_is_self_consistent() {
    let doc = openapi();
    assert_eq!(
        doc["components"]["securitySchemes"]["adminToken"]["scheme"],
        "bearer"
    );
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not a local reference"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, value) in map {
                match (name.as_str(), value) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
