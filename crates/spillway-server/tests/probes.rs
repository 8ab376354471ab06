//! `/healthz`, `/readyz` and `/metrics`: what they report, that counters move, and that no
//! rate-limit key ever becomes a metric label.

mod common;

use common::{header, metric, Server, START_MS};
use serde_json::Value;

const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [tenant, user]
  audit-user:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [user]
    shadow: true
global: [audit-user]
tiers:
  free:
    limits: [user-minute]
"#;

#[tokio::test]
async fn healthz_is_plain_ok() {
    let server = Server::with_policy(POLICY).start();
    let response = server.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "ok\n");
}

#[tokio::test]
async fn readyz_reports_the_policy_and_the_store() {
    let server = Server::with_policy(POLICY).start();
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["ready"], true);
    assert_eq!(body["policy"]["loaded"], true);
    let config = server.config.as_ref().expect("policy file");
    assert_eq!(body["policy"]["source"], config.display().to_string());
    assert_eq!(body["policy"]["limits"], 2);
    assert_eq!(body["policy"]["loaded_at_ms"], START_MS);
    assert_eq!(body["store"]["ok"], true);
    assert_eq!(body["store"]["status"], "ok");
}

#[tokio::test]
async fn the_builtin_policy_serves_without_a_config_file() {
    let server = Server::with_policy("").builtin_policy().start();
    let body: Value = server.get("/readyz").await.json().await.expect("json");
    assert_eq!(body["policy"]["source"], "builtin:examples/spillway.yaml");
    let response = server
        .post("/v1/check", r#"{"tenant":"t","user":"u","ip":"192.0.2.1"}"#)
        .await;
    assert_eq!(response.status(), 200);
    let verdict: Value = response.json().await.expect("json");
    assert_eq!(verdict["tier"], "free");
}

/// A shadow limit keyed by route, reached under two routes by one oddly spelled path, counts
/// each request it would have denied once.
#[tokio::test]
async fn a_shadow_limit_under_two_routes_counts_a_request_once() {
    let policy = r#"
default_tier: free
limits:
  per-route:
    algorithm: fixed_window
    limit: 1
    window: 1m
    key: [user, route]
    shadow: true
global: [per-route]
tiers:
  free: {}
routes:
  - {match: "DELETE /v1/items/*"}
  - {match: "* /v1/**"}
"#;
    let server = Server::with_policy(policy).start();
    // A strict server keeps the `.` (`* /v1/**`); a lenient one serves the item.
    let check = r#"{"tenant":"t","user":"u","method":"DELETE","path":"/v1/items/7/."}"#;
    for _ in 0..3 {
        let response = server.post("/v1/check", check).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        let counted = (body["limits"].as_array().expect("limits").iter())
            .filter(|l| l["name"] == "per-route")
            .count();
        assert_eq!(counted, 2, "one counter per route: {body}");
    }
    let text = server
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    let would_deny = metric(
        &text,
        "spillway_shadow_would_deny_total",
        &[("limit", "per-route")],
    );
    assert_eq!(would_deny, Some(2.0), "{text}");
}

#[tokio::test]
async fn metrics_count_decisions_by_limit_never_by_key() {
    // Every decision counted, so `spillway_top_blocked` is exact.
    let server = Server::with_policy(POLICY)
        .args(&["--top-k-sample", "1"])
        .start();
    let check = r#"{"tenant":"tenant-secret","user":"user-secret"}"#;
    for _ in 0..3 {
        server.post("/v1/check", check).await;
    }
    // Peeks are not decisions.
    server.post("/v1/check?peek=true", check).await;

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    let text = response.text().await.expect("metrics text");

    let decisions = |outcome, limit| {
        metric(
            &text,
            "spillway_decisions_total",
            &[("outcome", outcome), ("limit", limit)],
        )
    };
    assert_eq!(decisions("allowed", "user-minute"), Some(2.0), "{text}");
    assert_eq!(decisions("denied", "user-minute"), Some(1.0), "{text}");
    // The shadow limit allowed the first request and would have denied the other two.
    assert_eq!(
        metric(
            &text,
            "spillway_shadow_would_deny_total",
            &[("limit", "audit-user")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "spillway_check_duration_seconds_count", &[]),
        Some(4.0),
        "{text}"
    );
    assert!(
        text.contains("spillway_check_duration_seconds_bucket{le=\"0.00005\"}"),
        "{text}"
    );
    assert!(
        text.contains("spillway_check_duration_seconds_bucket{le=\"0.1\"}"),
        "{text}"
    );
    for outcome in ["success", "rejected"] {
        assert_eq!(
            metric(
                &text,
                "spillway_config_reloads_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "{text}"
        );
    }
    // One user-minute key and one audit-user key.
    assert_eq!(
        metric(&text, "spillway_store_keys", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "spillway_store_evictions_total", &[]),
        Some(0.0),
        "{text}"
    );
    // The one place a tenant may appear is the bounded top-10 of the most denied tenants
    // (`spillway_top_blocked`); users, IPs and keys never do.
    let leaks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("secret") && !l.starts_with("spillway_top_blocked{tenant="))
        .collect();
    assert!(
        leaks.is_empty(),
        "a rate-limit key leaked into the metrics: {leaks:?}"
    );
    assert_eq!(
        metric(
            &text,
            "spillway_top_blocked",
            &[("tenant", "tenant-secret")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn expired_keys_are_swept_by_the_clock() {
    let server = Server::with_policy(POLICY).start();
    server
        .post("/v1/check", r#"{"tenant":"t","user":"u"}"#)
        .await;
    let keys = |text: String| metric(&text, "spillway_store_keys", &[]);
    assert_eq!(keys(server.metrics().await), Some(2.0));
    // Past the window both keys are as good as fresh; the next sweep drops them.
    server.advance_ms(60_000).await;
    let swept = common::wait_until_async(common::PATIENCE, || async {
        (keys(server.metrics().await) == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        swept.is_some(),
        "keys were not swept:\n{}",
        server.metrics().await
    );
}

#[tokio::test]
async fn evictions_keep_the_store_within_max_keys() {
    let server = Server::with_policy(POLICY)
        // Two slots per shard (64 shards), as many as a request here has keys.
        .args(&["--max-keys", "128"])
        .start();
    for i in 0..400 {
        server
            .post("/v1/check", &format!(r#"{{"tenant":"t","user":"u{i}"}}"#))
            .await;
    }
    let text = server.metrics().await;
    let keys = metric(&text, "spillway_store_keys", &[]).expect("keys gauge");
    let evictions = metric(&text, "spillway_store_evictions_total", &[]).expect("evictions");
    assert!(keys <= 128.0, "{text}");
    assert!(evictions > 0.0, "{text}");
}
