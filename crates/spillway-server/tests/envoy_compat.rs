//! envoyproxy/ratelimit compatibility: a file in upstream's style loads unchanged and is
//! enforced, and the shipped `deploy/envoy/` bootstrap and config agree with each other.

mod common;

use common::grpc::{descriptor, envoy_file, limit, overall, request, start};
use common::Server;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::Value;
use std::path::Path;

const POLICY: &str = "default_tier: free\ntiers:\n  free: {}\n";

/// Upstream's style: upper-case units, nested keys, a value beating a bare key, `unlimited`,
/// `shadow_mode`, `detailed_metric` and `replaces`.
const UPSTREAM_STYLE: &str = r#"---
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: DAY
          requests_per_unit: 2
  - key: to_number
    rate_limit:
      unit: SECOND
      requests_per_unit: 3
  - key: to_number
    value: "+1555*"
    detailed_metric: true
    rate_limit:
      name: test-numbers
      unit: MINUTE
      requests_per_unit: 1
  - key: to_number
    value: operator
    rate_limit:
      unlimited: true
  - key: sender
    shadow_mode: true
    rate_limit:
      unit: hour
      requests_per_unit: 1
  - key: priority
    value: high
    rate_limit:
      unit: second
      requests_per_unit: 100
      replaces:
        - name: messaging.to_number
"#;

#[tokio::test]
async fn an_upstream_style_file_loads_unchanged_and_is_enforced() {
    let (_dir, path) = envoy_file("messaging.yaml", UPSTREAM_STYLE);
    let mut rls = start(Server::with_policy(POLICY), &[&path]).await;
    let marketing = [("message_type", "marketing"), ("to_number", "2061234567")];
    for _ in 0..2 {
        assert_eq!(overall(&rls.one("messaging", &marketing).await), Code::Ok);
    }
    let denied = rls.one("messaging", &marketing).await;
    assert_eq!(overall(&denied), Code::OverLimit);
    assert_eq!(
        limit(&denied.statuses[0]),
        Some(("messaging.message_type_marketing.to_number".into(), 2, 0))
    );
    // Another number is counted apart; the prefix node wins over the bare key.
    let prefixed = rls.one("messaging", &[("to_number", "+15550001")]).await;
    assert_eq!(
        limit(&prefixed.statuses[0]),
        Some(("test-numbers".into(), 1, 0))
    );
    for _ in 0..5 {
        let op = rls.one("messaging", &[("to_number", "operator")]).await;
        assert_eq!((overall(&op), limit(&op.statuses[0])), (Code::Ok, None));
    }
    // Shadow mode never denies.
    for _ in 0..3 {
        let shadow = rls.one("messaging", &[("sender", "s")]).await;
        assert_eq!(overall(&shadow), Code::Ok);
    }
    // `replaces`: with a high-priority descriptor, the per-number limit steps aside.
    let number = || descriptor(&[("to_number", "999")]);
    for _ in 0..3 {
        assert_eq!(
            overall(&rls.ask(request("messaging", vec![number()], 0)).await),
            Code::Ok
        );
    }
    assert_eq!(
        overall(&rls.ask(request("messaging", vec![number()], 0)).await),
        Code::OverLimit
    );
    let both = request(
        "messaging",
        vec![number(), descriptor(&[("priority", "high")])],
        0,
    );
    let answer = rls.ask(both).await;
    assert_eq!(overall(&answer), Code::Ok);
    assert_eq!(limit(&answer.statuses[0]), None);
}

fn repo_file(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The bootstrap's HTTP filters, in order, by name.
fn http_filter<'b>(bootstrap: &'b Value, name: &str) -> (usize, &'b Value) {
    let filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array()
        .expect("http_filters");
    let at = filters.iter().position(|f| f["name"] == name);
    let at = at.unwrap_or_else(|| panic!("the bootstrap has no {name}"));
    (at, &filters[at]["typed_config"])
}

/// The headers the rate-limit filter sees for a request the client sent with `headers` and,
/// if any, a valid token with `claims`: those the bootstrap's `header_mutation` removes are
/// gone, and `jwt_authn`'s `claim_to_headers` set from the claims. Both filters must run
/// before the rate-limit filter.
fn as_envoy_passes(
    bootstrap: &Value,
    headers: &[(&str, &str)],
    claims: &[(&str, &str)],
) -> Vec<(String, String)> {
    let (limiter, _) = http_filter(bootstrap, "envoy.filters.http.ratelimit");
    let (mutation, mutation_config) = http_filter(bootstrap, "envoy.filters.http.header_mutation");
    let (jwt, jwt_config) = http_filter(bootstrap, "envoy.filters.http.jwt_authn");
    assert!(mutation < jwt && jwt < limiter, "filter order");
    let removed: Vec<&str> = mutation_config["mutations"]["request_mutations"]
        .as_array()
        .expect("request_mutations")
        .iter()
        .filter_map(|m| m["remove"].as_str())
        .collect();
    let mut passed: Vec<(String, String)> = (headers.iter())
        .filter(|(name, _)| !removed.contains(name))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let to_headers = jwt_config["providers"]["idp"]["claim_to_headers"]
        .as_array()
        .expect("claim_to_headers");
    for mapping in to_headers {
        let claim = mapping["claim_name"].as_str().expect("claim_name");
        if let Some((_, value)) = claims.iter().find(|(c, _)| *c == claim) {
            let header = mapping["header_name"].as_str().expect("header_name");
            passed.push((header.to_owned(), value.to_string()));
        }
    }
    passed
}

/// The descriptors the bootstrap's `rate_limits` would produce for a request with these
/// headers (as the rate-limit filter sees them) from `ip`: one per entry whose actions all
/// found their value.
fn bootstrap_descriptors(
    bootstrap: &Value,
    headers: &[(String, String)],
    ip: &str,
) -> Vec<Vec<(String, String)>> {
    let vhost = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0];
    let entries = vhost["rate_limits"].as_array().expect("rate_limits");
    let mut out = Vec::new();
    'entry: for entry in entries {
        let mut built = Vec::new();
        for action in entry["actions"].as_array().expect("actions") {
            if let Some(h) = action.get("request_headers") {
                let name = h["header_name"].as_str().expect("header_name");
                let Some((_, value)) = headers.iter().find(|(n, _)| n == name) else {
                    continue 'entry;
                };
                built.push((
                    h["descriptor_key"].as_str().expect("key").to_owned(),
                    value.to_string(),
                ));
            } else if let Some(mask) = action.get("masked_remote_address") {
                // Envoy sends `<network>/<length>`; the test's address is IPv4.
                let bits = mask["v4_prefix_mask_len"].as_u64().unwrap_or(32);
                assert_eq!(bits, 32, "the test masks IPv4 addresses only at /32");
                let v6 = mask["v6_prefix_mask_len"].as_u64();
                assert_eq!(v6, Some(64), "IPv6 clients are counted by /64");
                built.push(("masked_remote_address".to_owned(), format!("{ip}/{bits}")));
            } else {
                panic!("the test does not know action {action}");
            }
        }
        out.push(built);
    }
    out
}

#[tokio::test]
async fn the_shipped_envoy_bootstrap_matches_the_shipped_config() {
    let text = std::fs::read_to_string(repo_file("deploy/envoy/envoy.yaml")).expect("bootstrap");
    let bootstrap: Value = serde_saphyr::from_str(&text).expect("the bootstrap is valid YAML");
    let manager = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    // Without it Envoy believes the client's own X-Forwarded-For for `masked_remote_address`,
    // and the per-IP limit counts under whatever address the client names.
    assert_eq!(manager["use_remote_address"], true, "use_remote_address");
    let (_, limiter) = http_filter(&bootstrap, "envoy.filters.http.ratelimit");
    let domain = limiter["domain"].as_str().expect("a domain").to_owned();
    let cluster = &limiter["rate_limit_service"]["grpc_service"]["envoy_grpc"];
    assert_eq!(cluster["cluster_name"], "spillway");

    let config = repo_file("deploy/envoy/ratelimit-config.yaml");
    let mut rls = start(Server::with_policy(POLICY), &[&config]).await;
    // A token's claims name the tenant and user, whatever headers the client adds.
    let forged = [("x-tenant-id", "internal"), ("x-user-id", "root")];
    let headers = as_envoy_passes(&bootstrap, &forged, &[("org", "acme"), ("sub", "ada")]);
    let sent = bootstrap_descriptors(&bootstrap, &headers, "203.0.113.9");
    assert_eq!(sent.len(), 3);
    let ds = sent.iter().map(|d| {
        let pairs: Vec<(&str, &str)> = d.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        descriptor(&pairs)
    });
    let answer = rls.ask(request(&domain, ds.collect(), 0)).await;
    let names: Vec<Option<String>> = answer
        .statuses
        .iter()
        .map(|s| limit(s).map(|l| l.0))
        .collect();
    assert_eq!(
        names,
        [
            Some("edge.tenant".into()),
            Some("user-burst".into()),
            Some("edge.masked_remote_address".into())
        ]
    );
    assert_eq!(
        sent[1],
        [
            ("tenant".to_owned(), "acme".to_owned()),
            ("user".to_owned(), "ada".to_owned())
        ]
    );
    // Without a token, a client naming the internal tenant itself is counted by its
    // address alone: its headers never reach the descriptors.
    let headers = as_envoy_passes(&bootstrap, &forged, &[]);
    assert!(headers.is_empty(), "{headers:?}");
    let sent = bootstrap_descriptors(&bootstrap, &headers, "203.0.113.9");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0].0, "masked_remote_address");
    // A token without a `sub`: only the tenant and IP descriptors are sent, and the
    // internal tenant (a verified claim) is unlimited.
    let headers = as_envoy_passes(&bootstrap, &[], &[("org", "internal")]);
    let sent = bootstrap_descriptors(&bootstrap, &headers, "203.0.113.9");
    assert_eq!(sent.len(), 2);
    let answer = rls.one(&domain, &[("tenant", "internal")]).await;
    assert_eq!(
        (overall(&answer), limit(&answer.statuses[0])),
        (Code::Ok, None)
    );
}
