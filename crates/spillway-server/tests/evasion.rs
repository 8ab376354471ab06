//! Requests spelled to slip past a limit, end to end against the real binary: paths a lenient
//! backend reads as a costly route, and client addresses rotated within one network.

mod common;

use common::{header, Server};
use serde_json::{json, Value};

/// The shipped example policy: `POST /v1/generate` costs 5 and adds `generate-user` (a leaky
/// bucket holding 20).
const EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/spillway.yaml"
));

/// Paths that Tomcat, Jetty or Spring (which drop `;` parameters) or ASP.NET and IIS (which
/// route without regard to case) serve as `/v1/generate`.
const SPELLINGS: [&str; 3] = ["/V1/Generate", "/v1/generate;x=1", "/v1;a/generate"];

/// `generate-user`'s entry in a `RateLimit` header, e.g. `"generate-user";r=15;t=5`.
fn generate_user_entry(response: &reqwest::Response) -> Option<String> {
    header(response, "ratelimit")?
        .split(", ")
        .find(|entry| entry.starts_with("\"generate-user\""))
        .map(str::to_owned)
}

#[tokio::test]
async fn every_spelling_of_the_generate_route_pays_its_cost_on_check() {
    let server = Server::with_policy(EXAMPLE).start();
    for (i, path) in SPELLINGS.iter().enumerate() {
        let body = json!({"tenant": "t", "user": format!("check-{i}"), "method": "POST",
                          "path": path});
        let response = server.post("/v1/check", &body.to_string()).await;
        assert_eq!(response.status(), 200, "{path}");
        let verdict: Value = response.json().await.expect("verdict");
        assert_eq!(verdict["route"], "POST /v1/generate", "{path}");
        assert_eq!(verdict["cost"], 5, "{path}");
        let limits = verdict["limits"].as_array().cloned().unwrap_or_default();
        let generate = limits.iter().find(|l| l["name"] == "generate-user");
        let remaining = generate.map(|l| l["remaining"].clone());
        // 20 minus this request's 5.
        assert_eq!(remaining, Some(json!(15)), "{path}: {verdict}");
    }
}

#[tokio::test]
async fn every_spelling_of_the_generate_route_pays_its_cost_on_authorize() {
    let server = Server::with_policy(EXAMPLE).start();
    for (i, path) in SPELLINGS.iter().enumerate() {
        // The plain form, with the original request in headers (nginx, Traefik).
        let response = server
            .http
            .get(server.url("/v1/authorize"))
            .header("X-Tenant-Id", "t")
            .header("X-User-Id", format!("plain-{i}"))
            .header("X-Original-Method", "POST")
            .header("X-Original-URI", *path)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
        let entry = generate_user_entry(&response);
        assert!(
            entry.as_deref().is_some_and(|e| e.contains(";r=15;")),
            "{path}: {entry:?}"
        );

        // The prefixed form, with the original path in the URL (Envoy's `path_prefix`).
        let response = server
            .http
            .post(server.url(&format!("/v1/authorize{path}")))
            .header("X-Tenant-Id", "t")
            .header("X-User-Id", format!("prefixed-{i}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
        let entry = generate_user_entry(&response);
        assert!(
            entry.as_deref().is_some_and(|e| e.contains(";r=15;")),
            "{path}: {entry:?}"
        );
    }
}
