//! Every class of client error is an RFC 9457 problem document with the right status:
//! 400 naming the field, 413, 405 with `Allow`, 404, and the test-only clock route's absence.

mod common;

use common::{header, Server};
use serde_json::Value;

const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 3
    window: 1m
    key: [user]
tiers:
  free:
    limits: [user-minute]
"#;

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

#[tokio::test]
async fn malformed_bodies_are_400_and_name_the_field() {
    let server = Server::with_policy(POLICY).start();

    let body = problem(
        server
            .post("/v1/check", r#"{"user":"u","cost":"lots"}"#)
            .await,
        400,
    )
    .await;
    assert_eq!(body["type"], "urn:spillway:problem:invalid-request");
    assert_eq!(body["field"], "cost");
    assert!(body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("field `cost`"));

    let body = problem(
        server
            .post("/v1/check", r#"{"descriptors":{"region":1}}"#)
            .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "descriptors.region");

    let body = problem(server.post("/v1/check", r#"{"usr":"u"}"#).await, 400).await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("usr"),
        "{body}"
    );

    let body = problem(server.post("/v1/check", r#"{"user":"#).await, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{body}"
    );

    let body = problem(server.post("/v1/check", r#"["t","u"]"#).await, 400).await;
    assert!(body.get("field").is_none(), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("JSON object"),
        "{body}"
    );

    let body = problem(server.post("/v1/check", "17").await, 400).await;
    assert!(body.get("field").is_none(), "{body}");
}

#[tokio::test]
async fn bodies_over_16_kib_are_413() {
    let server = Server::with_policy(POLICY).start();
    let big = format!(r#"{{"user":"{}"}}"#, "x".repeat(17 * 1024));
    let body = problem(server.post("/v1/check", &big).await, 413).await;
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["title"], "Payload Too Large");

    // Just under the bound is fine.
    let fits = format!(r#"{{"user":"{}"}}"#, "x".repeat(16 * 1024 - 20));
    assert_eq!(server.post("/v1/check", &fits).await.status(), 200);

    // A report's body is refused alike.
    let big = format!(
        r#"{{"request_id":"r","cost":1,"user":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let body = problem(server.post("/v1/report", &big).await, 413).await;
    assert_eq!(body["title"], "Payload Too Large");
    assert_eq!(body["detail"], "the body is larger than 16384 bytes");
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let server = Server::with_policy(POLICY).start();
    let response = server.get("/v1/check").await;
    assert_eq!(header(&response, "allow").as_deref(), Some("POST"));
    let body = problem(response, 405).await;
    assert_eq!(body["title"], "Method Not Allowed");

    let response = server
        .http
        .delete(server.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert!(header(&response, "allow")
        .unwrap_or_default()
        .contains("GET"));
    problem(response, 405).await;
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let server = Server::with_policy(POLICY).start();
    let body = problem(server.get("/v2/check").await, 404).await;
    assert!(body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("/v2/check"));
}

#[tokio::test]
async fn the_clock_route_exists_only_on_a_manual_clock() {
    let real = Server::with_policy(POLICY).system_clock().start();
    problem(
        real.post("/debug/clock", r#"{"advance_ms":1000}"#).await,
        404,
    )
    .await;

    let manual = Server::with_policy(POLICY).start();
    let response = manual
        .post("/debug/clock", r#"{"set_ms":1900000000000}"#)
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["now_ms"], 1_900_000_000_000u64);
    problem(
        manual
            .post("/debug/clock", r#"{"advance_ms":1,"set_ms":2}"#)
            .await,
        400,
    )
    .await;
}
