//! What report ids cost the store: a report of cost 0 leaves nothing behind on Redis (no
//! marker, no state), so a caller cannot fill Redis with markers for free; a report that
//! charges something leaves one marker.

mod common;

use common::Server;
use serde_json::Value;
use spillway_testkit::redis::{command, RedisServer};

const POLICY: &str = r#"
default_tier: free
limits:
  generation-tokens:
    algorithm: token_bucket
    rate: 1000/h
    burst: 1000
    key: [tenant]
    charge: after
routes:
  - match: "POST /v1/generate"
    limits: [generation-tokens]
tiers:
  free: {limits: []}
"#;

fn report(cost: u64, id: &str) -> String {
    format!(
        r#"{{"tenant":"acme","method":"POST","path":"/v1/generate","cost":{cost},"request_id":"{id}"}}"#
    )
}

/// How many keys match `pattern` (the store's own keys, not the top-k board's).
fn keys(redis: &RedisServer, pattern: &str) -> usize {
    let reply = command(redis.port(), &format!("KEYS {pattern}")).expect("Redis answers");
    let count = reply.lines().next().and_then(|l| l.strip_prefix('*'));
    count
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an array reply: {reply:?}"))
}

#[tokio::test]
async fn a_zero_cost_report_leaves_no_marker_on_redis() {
    let redis = RedisServer::start();
    let policy = format!(
        "{POLICY}store: {{type: redis, url: \"{}\", prefix: z, timeout: 5s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&policy)
        .args(&["--manual-clock-in-store"])
        .start();
    for n in 0..50 {
        let r = server
            .post("/v1/report", &report(0, &format!("zero-{n}")))
            .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["recorded"], true, "{body}");
        assert_eq!(body["limits"][0]["remaining"], 1000, "{body}");
    }
    assert_eq!(keys(&redis, "z:*"), 0, "cost 0 wrote keys");

    let r = server.post("/v1/report", &report(5, "five")).await;
    assert_eq!(r.status(), 200);
    // The state key and one marker.
    assert_eq!(keys(&redis, "z:*"), 2);
    assert_eq!(keys(&redis, "z:*~report:*"), 1);
    let again: Value = server
        .post("/v1/report", &report(5, "five"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["recorded"], false, "{again}");
    assert_eq!(again["limits"][0]["remaining"], 995, "{again}");
}
