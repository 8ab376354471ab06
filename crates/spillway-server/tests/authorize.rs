//! `/v1/authorize` end to end: attributes from proxy headers, client IPs from trusted
//! proxies only, the configurable allow and deny statuses, and Envoy's path-prefix form.

mod common;

use common::{header, Server};
use serde_json::Value;

/// Two requests a minute per user (more for `pro`), one delete per item path a minute, two
/// requests a minute per region.
const POLICY: &str = r#"
default_tier: free
descriptors: [region]
limits:
  user-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [tenant, user]
  pro-user-minute:
    algorithm: fixed_window
    limit: 50
    window: 1m
    key: [tenant, user]
  region-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [region]
  delete-once:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [user, route]
global: [region-minute]
tiers:
  free:
    limits: [user-minute]
  pro:
    limits: [pro-user-minute]
routes:
  - match: "DELETE /items/*"
    limits: [delete-once]
"#;

/// One request a minute per client IP.
const IP_POLICY: &str = r#"
default_tier: free
limits:
  ip-minute:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [ip]
global: [ip-minute]
tiers:
  free:
    limits: []
"#;

fn authorize(server: &Server, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    server.http.request(method, server.url(path))
}

#[tokio::test]
async fn headers_map_to_attributes_and_denials_use_429_by_default() {
    let server = Server::with_policy(POLICY).start();
    let ask = || {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Tenant-Id", "acme")
            .header("X-User-Id", "alice")
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", "/v1/things?page=2")
            .send()
    };
    for remaining in ["1", "0"] {
        let allowed = ask().await.expect("sent");
        assert_eq!(allowed.status(), 200);
        assert_eq!(header(&allowed, "x-ratelimit-limit").as_deref(), Some("2"));
        assert_eq!(
            header(&allowed, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert_eq!(allowed.text().await.expect("body"), "");
    }
    let denied = ask().await.expect("sent");
    assert_eq!(denied.status(), 429);
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("60"));
    assert_eq!(
        header(&denied, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let problem: Value = denied.json().await.expect("problem");
    assert_eq!(problem["type"], "urn:spillway:problem:rate-limited");
    assert_eq!(problem["status"], 429);

    // A client cannot name its own tier or cost: those headers are off unless configured.
    let claims = authorize(&server, reqwest::Method::POST, "/v1/authorize")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "alice")
        .header("X-Tier", "pro")
        .header("X-RateLimit-Cost", "0")
        .send()
        .await
        .expect("sent");
    assert_eq!(claims.status(), 429);
    assert_eq!(header(&claims, "x-ratelimit-limit").as_deref(), Some("2"));
}

#[tokio::test]
async fn a_configured_tier_header_switches_limits() {
    let server = Server::with_policy(POLICY)
        .args(&["--tier-header", "X-Tier"])
        .start();
    // POST works as well as GET.
    let pro = authorize(&server, reqwest::Method::POST, "/v1/authorize")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "alice")
        .header("X-Tier", "pro")
        .send()
        .await
        .expect("sent");
    assert_eq!(pro.status(), 200);
    assert_eq!(header(&pro, "x-ratelimit-limit").as_deref(), Some("50"));
}

#[tokio::test]
async fn descriptor_and_configured_cost_headers_are_read() {
    let server = Server::with_policy(POLICY)
        .env("SPILLWAY_COST_HEADER", "X-RateLimit-Cost")
        .start();
    let by_region = |cost: &'static str| {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Descriptor-Region", "eu")
            .header("X-RateLimit-Cost", cost)
            .send()
    };
    let first = by_region("2").await.expect("sent");
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(by_region("1").await.expect("sent").status(), 429);

    let bad = by_region("two").await.expect("sent");
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.expect("problem");
    assert_eq!(problem["field"], "x-ratelimit-cost");
}

#[tokio::test]
async fn unreadable_headers_can_answer_a_status_nginx_passes_on() {
    // nginx's auth_request turns a 400 into its own 500, which a fail-open error_page would
    // let through unlimited; 401 it passes on as a denial.
    let server = Server::with_policy(POLICY)
        .args(&["--invalid-status", "401"])
        .start();
    let bad = authorize(&server, reqwest::Method::GET, "/v1/authorize")
        .header("X-Descriptor-Region", "eu")
        .header("X-Descriptor-region", "us")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 401);
    let problem: Value = bad.json().await.expect("problem");
    assert_eq!(problem["status"], 401);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("second, different value")),
        "{problem}"
    );
}

#[tokio::test]
async fn descriptor_headers_reach_descriptors_declared_in_any_case() {
    let policy = r#"
default_tier: free
descriptors: [apiKey]
limits:
  per-key:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [apiKey]
global: [per-key]
tiers:
  free: {}
"#;
    let server = Server::with_policy(policy).start();
    let ask = || {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Descriptor-Api-Key", "k-1")
            .send()
    };
    let first = ask().await.expect("sent");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(ask().await.expect("sent").status(), 429);
}

#[tokio::test]
async fn deny_and_allow_statuses_are_configurable_also_from_the_environment() {
    let server = Server::with_policy(POLICY)
        .env("SPILLWAY_DENY_STATUS", "403")
        .args(&["--allow-status", "204"])
        .start();
    let ask = || {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Tenant-Id", "acme")
            .header("X-User-Id", "bob")
            .send()
    };
    assert_eq!(ask().await.expect("sent").status(), 204);
    assert_eq!(ask().await.expect("sent").status(), 204);
    let denied = ask().await.expect("sent");
    assert_eq!(denied.status(), 403);
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("60"));
    let problem: Value = denied.json().await.expect("problem");
    assert_eq!(problem["status"], 403);
}

#[tokio::test]
async fn forwarded_addresses_are_believed_from_trusted_proxies() {
    // The test client connects from 127.0.0.1, which is trusted by default.
    let server = Server::with_policy(IP_POLICY).start();
    let from = |xff: &'static str| {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Forwarded-For", xff)
            .send()
    };
    // The rightmost untrusted hop is the client; what it claims further left is ignored.
    assert_eq!(
        from("198.51.100.1, 203.0.113.5")
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        from("192.0.2.99, 203.0.113.5")
            .await
            .expect("sent")
            .status(),
        429
    );
    // Trusted hops on the right are skipped.
    assert_eq!(
        from("203.0.113.5, 127.0.0.2").await.expect("sent").status(),
        429
    );
    assert_eq!(from("203.0.113.6").await.expect("sent").status(), 200);

    // X-Real-IP wins over the chain.
    let real = authorize(&server, reqwest::Method::GET, "/v1/authorize")
        .header("X-Real-IP", "203.0.113.7")
        .header("X-Forwarded-For", "203.0.113.5")
        .send()
        .await
        .expect("sent");
    assert_eq!(real.status(), 200);
}

#[tokio::test]
async fn forwarded_addresses_are_ignored_from_untrusted_peers() {
    let server = Server::with_policy(IP_POLICY)
        .args(&["--trusted-proxies", "10.0.0.0/8"])
        .start();
    let from = |xff: &'static str| {
        authorize(&server, reqwest::Method::GET, "/v1/authorize")
            .header("X-Forwarded-For", xff)
            .header("X-Real-IP", xff)
            .send()
    };
    // Both requests count against 127.0.0.1, whatever they claim.
    assert_eq!(from("203.0.113.5").await.expect("sent").status(), 200);
    assert_eq!(from("203.0.113.6").await.expect("sent").status(), 429);
}

#[tokio::test]
async fn the_envoy_prefix_form_takes_method_and_path_from_the_request() {
    let server = Server::with_policy(POLICY).start();
    let delete = |path: &str| {
        authorize(
            &server,
            reqwest::Method::DELETE,
            &format!("/v1/authorize{path}"),
        )
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "carol")
        .send()
    };
    let first = delete("/items/7").await.expect("sent");
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let second = delete("/items/8").await.expect("sent");
    assert_eq!(second.status(), 429);
    let problem: Value = second.json().await.expect("problem");
    assert_eq!(problem["route"], "DELETE /items/*");
    let names: Vec<&str> = problem["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["user-minute", "delete-once"]);

    // In this form the URL is the original request: method and path headers, which a client
    // could send through a proxy, cannot move it to a cheaper route.
    let spoofed = authorize(&server, reqwest::Method::DELETE, "/v1/authorize/items/9")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "dave")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/healthz")
        .send()
        .await
        .expect("sent");
    assert_eq!(spoofed.status(), 200);
    let again = authorize(&server, reqwest::Method::DELETE, "/v1/authorize/items/10")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "dave")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/healthz")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        again.status(),
        429,
        "the headers dodged the route's `delete-once` limit"
    );
    let problem: Value = again.json().await.expect("problem");
    assert_eq!(problem["route"], "DELETE /items/*");

    // The site's root comes as the prefix and a slash (with or without a query), and is
    // judged, counted under its user like any other path.
    for (target, status) in [
        ("/v1/authorize/", 200),
        ("/v1/authorize/?q=1", 200),
        ("/v1/authorize/", 429),
    ] {
        let answer = authorize(&server, reqwest::Method::GET, target)
            .header("X-Tenant-Id", "acme")
            .header("X-User-Id", "erin")
            .send()
            .await
            .expect("sent");
        assert_eq!(answer.status(), status, "{target}");
    }
}

/// The query of `/v1/authorize` is never read: a proxy that writes the client's own query onto
/// the URL it asks (Caddy's `forward_auth`) would otherwise let `?peek` through, and the client
/// would be answered without being counted.
#[tokio::test]
async fn a_query_on_authorize_cannot_turn_counting_off() {
    let server = Server::with_policy(IP_POLICY).start();
    for (i, query) in ["?peek=true", "?peek", "?dry_run=1"].iter().enumerate() {
        let path = format!("/v1/authorize{query}");
        let ip = format!("192.0.2.{}", i + 1);
        let ask = || async {
            let answer = authorize(&server, reqwest::Method::GET, &path)
                .header("X-Real-IP", &ip)
                .send()
                .await
                .expect("sent");
            answer.status()
        };
        assert_eq!(ask().await, 200, "{query}");
        assert_eq!(ask().await, 429, "{query}: the first was counted");
    }
}
