//! A counter survives a change of its limit's numbers: the real binary, its policy file
//! rewritten on disk, the reload observed, and the state the old numbers left read under the
//! new ones. In memory (on the manual clock) and on a real Redis (whose clock is real: the
//! limits here refill less than a token over the test).

mod common;

use common::Server;
use serde_json::Value;
use spillway_testkit::redis::RedisServer;

/// One daily limit per user (`free-user-daily`), of `algorithm` with `numbers` (YAML fields),
/// after `store` (a `store:` line or nothing).
fn policy(store: &str, algorithm: &str, numbers: &str) -> String {
    format!(
        "{store}default_tier: free\nfailure_mode: closed\nlimits:\n  free-user-daily:\n    \
         algorithm: {algorithm}\n    {numbers}\n    key: [user]\ntiers:\n  free:\n    \
         limits: [free-user-daily]\n"
    )
}

/// Spends `used` for the abuser under `before`, rewrites the policy to `after` and waits for
/// it, then sends one more request: its status and the limit's remaining count.
async fn used_then_reloaded(server: &Server, after: &str, new_limit: u64, used: u64) -> (u16, u64) {
    if used > 0 {
        let spend = format!(r#"{{"user":"abuser","cost":{used}}}"#);
        let response = server.post("/v1/check", &spend).await;
        assert_eq!(response.status(), 200, "{used} fit the old limit");
    }
    server.rewrite_policy(after);
    server.wait_for_limit("other", new_limit).await;
    let response = server.post("/v1/check", r#"{"user":"abuser"}"#).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    let remaining = body["limits"][0]["remaining"].as_u64().expect("remaining");
    (status, remaining)
}

const ALGORITHMS: [(&str, &str, &str, &str); 4] = [
    (
        "fixed_window",
        "limit: 1000\n    window: 1d",
        "limit: 900\n    window: 1d",
        "limit: 2000\n    window: 1d",
    ),
    (
        "token_bucket",
        "rate: 1000/d\n    burst: 1000",
        "rate: 900/d\n    burst: 900",
        "rate: 2000/d\n    burst: 2000",
    ),
    (
        "gcra",
        "rate: 1000/d\n    burst: 1000",
        "rate: 900/d\n    burst: 900",
        "rate: 2000/d\n    burst: 2000",
    ),
    (
        "leaky_bucket",
        "rate: 1000/d\n    capacity: 1000",
        "rate: 900/d\n    capacity: 900",
        "rate: 2000/d\n    capacity: 2000",
    ),
];

#[tokio::test]
async fn tightening_a_limit_on_reload_denies_what_it_used_to_allow_in_memory() {
    for (algorithm, old, tight, loose) in ALGORITHMS {
        let server = Server::with_policy(&policy("", algorithm, old)).start();
        let got = used_then_reloaded(&server, &policy("", algorithm, tight), 900, 950).await;
        assert_eq!(
            got,
            (429, 0),
            "{algorithm}: 950 used of 1000, reloaded to 900"
        );
        // Loosened again: the 950 still count, so 1049 are left of 2000 (one was just spent).
        let got = used_then_reloaded(&server, &policy("", algorithm, loose), 2000, 0).await;
        assert_eq!(got, (200, 1049), "{algorithm}: reloaded to 2000");
    }
}

#[tokio::test]
async fn tightening_a_limit_on_reload_denies_what_it_used_to_allow_on_redis() {
    let redis = RedisServer::start();
    let store = format!(
        "store: {{type: redis, url: \"{}\", prefix: rn, timeout: 5s}}\n",
        redis.url()
    );
    // The buckets only: a day-long fixed window on Redis's real clock could roll over at
    // midnight mid-test, and the in-memory test above covers windows on a manual clock.
    for (algorithm, old, tight, loose) in &ALGORITHMS[1..] {
        let server = Server::with_policy(&policy(&store, algorithm, old)).start();
        let got = used_then_reloaded(&server, &policy(&store, algorithm, tight), 900, 950).await;
        assert_eq!(
            got,
            (429, 0),
            "{algorithm}: 950 used of 1000, reloaded to 900"
        );
        let got = used_then_reloaded(&server, &policy(&store, algorithm, loose), 2000, 0).await;
        assert_eq!(got, (200, 1049), "{algorithm}: reloaded to 2000");
    }
}
