//! `POST /v1/check` end to end: allow, deny with exact headers and body, refill by moving the
//! manual clock, peeks, costs that can never fit, and tier fallback.

mod common;

use common::{header, Server};
use serde_json::{json, Value};

/// Three requests a minute per user, in one-minute windows aligned to the epoch.
const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 3
    window: 1m
    key: [tenant, user]
  pro-user-minute:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [tenant, user]
tiers:
  free:
    limits: [user-minute]
  pro:
    limits: [pro-user-minute]
"#;

const ALICE: &str = r#"{"tenant":"acme","user":"alice"}"#;

#[tokio::test]
async fn three_allowed_then_denied_with_exact_headers_then_allowed_after_the_window() {
    let server = Server::with_policy(POLICY).start();
    // 15 s into the minute: every window below resets 45 s from now.
    server.advance_ms(15_000).await;

    for remaining in [2, 1, 0] {
        let response = server.post("/v1/check", ALICE).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(remaining.to_string())
        );
        assert_eq!(
            header(&response, "x-ratelimit-reset").as_deref(),
            Some("45")
        );
        assert_eq!(
            header(&response, "ratelimit-policy").as_deref(),
            Some(r#""user-minute";q=3;w=60"#)
        );
        assert_eq!(
            header(&response, "ratelimit"),
            Some(format!(r#""user-minute";r={remaining};t=45"#))
        );
        assert_eq!(header(&response, "retry-after"), None);
        let body: Value = response.json().await.expect("json body");
        assert_eq!(
            body,
            json!({
                "allowed": true, "tier": "free", "route": null, "cost": 1,
                "limits": [{"name": "user-minute", "allowed": true, "limit": 3,
                            "remaining": remaining, "reset_ms": 45_000, "shadow": false}]
            })
        );
    }

    let denied = server.post("/v1/check", ALICE).await;
    assert_eq!(denied.status(), 429);
    assert_eq!(
        header(&denied, "content-type").as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(header(&denied, "x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&denied, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(header(&denied, "x-ratelimit-reset").as_deref(), Some("45"));
    assert_eq!(header(&denied, "retry-after").as_deref(), Some("45"));
    assert_eq!(
        header(&denied, "ratelimit").as_deref(),
        Some(r#""user-minute";r=0;t=45"#)
    );
    let problem: Value = denied.json().await.expect("problem body");
    assert_eq!(problem["type"], "urn:spillway:problem:rate-limited");
    assert_eq!(problem["title"], "Rate limit exceeded");
    assert_eq!(problem["status"], 429);
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("user-minute") && detail.contains("45000 ms"),
        "{detail}"
    );
    assert_eq!(problem["allowed"], false);
    assert_eq!(problem["tier"], "free");
    assert_eq!(
        problem["limits"],
        json!([{"name": "user-minute", "allowed": false, "limit": 3, "remaining": 0,
                "reset_ms": 45_000, "retry_after_ms": 45_000, "denial": "over_limit",
                "shadow": false}])
    );

    // Another user is not affected.
    let bob = server
        .post("/v1/check", r#"{"tenant":"acme","user":"bob"}"#)
        .await;
    assert_eq!(bob.status(), 200);

    // One millisecond short of the window's end: still denied.
    server.advance_ms(44_999).await;
    assert_eq!(server.post("/v1/check", ALICE).await.status(), 429);
    server.advance_ms(1).await;
    let again = server.post("/v1/check", ALICE).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        header(&again, "x-ratelimit-remaining").as_deref(),
        Some("2")
    );
    assert_eq!(header(&again, "x-ratelimit-reset").as_deref(), Some("60"));
}

#[tokio::test]
async fn peeks_report_without_consuming() {
    let server = Server::with_policy(POLICY).start();
    for query in ["?peek=true", "?peek", "?dry_run=1"] {
        let response = server.post(&format!("/v1/check{query}"), ALICE).await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some("2")
        );
    }
    let consumed = server.post("/v1/check", ALICE).await;
    assert_eq!(
        header(&consumed, "x-ratelimit-remaining").as_deref(),
        Some("2")
    );
    let peek = server.post("/v1/check?peek=true", ALICE).await;
    assert_eq!(header(&peek, "x-ratelimit-remaining").as_deref(), Some("1"));

    let bad = server.post("/v1/check?peek=perhaps", ALICE).await;
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.expect("problem body");
    assert_eq!(problem["field"], "peek");
}

#[tokio::test]
async fn a_cost_that_can_never_fit_is_429_without_retry_after() {
    let server = Server::with_policy(POLICY).start();
    let response = server
        .post("/v1/check", r#"{"tenant":"acme","user":"alice","cost":4}"#)
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), None);
    assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some("3"));
    let problem: Value = response.json().await.expect("problem body");
    assert_eq!(problem["type"], "urn:spillway:problem:cost-exceeds-limit");
    assert_eq!(problem["cost"], 4);
    assert_eq!(problem["limits"][0]["denial"], "cost_exceeds_limit");
    assert!(problem["limits"][0].get("retry_after_ms").is_none());
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("never fit") && detail.contains("user-minute"),
        "{detail}"
    );

    // Nothing was consumed by the refused request.
    let after = server.post("/v1/check", ALICE).await;
    assert_eq!(
        header(&after, "x-ratelimit-remaining").as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn tiers_apply_and_unknown_tiers_fall_back_to_the_default() {
    let server = Server::with_policy(POLICY).start();
    let pro = server
        .post(
            "/v1/check",
            r#"{"tenant":"acme","user":"alice","tier":"pro"}"#,
        )
        .await;
    assert_eq!(header(&pro, "x-ratelimit-limit").as_deref(), Some("100"));
    let body: Value = pro.json().await.expect("json body");
    assert_eq!(body["tier"], "pro");

    let unknown = server
        .post(
            "/v1/check",
            r#"{"tenant":"acme","user":"alice","tier":"platinum"}"#,
        )
        .await;
    assert_eq!(unknown.status(), 200);
    assert_eq!(header(&unknown, "x-ratelimit-limit").as_deref(), Some("3"));
    let body: Value = unknown.json().await.expect("json body");
    assert_eq!(body["tier"], "free");
}

#[tokio::test]
async fn requests_no_limit_applies_to_are_allowed_without_headers() {
    let server = Server::with_policy(POLICY).start();
    // Every limit is keyed by tenant and user; an anonymous request carries neither.
    let response = server.post("/v1/check", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-limit"), None);
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["limits"], json!([]));
}
