//! `GET /v1/top` and `spillway_top_blocked` on real `spillway serve` processes: a burst's
//! denied tenant shows up, windows expire on the manual clock, the Prometheus list stays at
//! ten, three nodes sharing a real `redis-server`, or a real Redis Cluster, each answer for
//! the fleet, and a node's publication carries a cold limit's keys beside more than 100
//! hotter keys of another limit.

mod common;

use common::{metric, wait_until_async, Server, PATIENCE};
use serde_json::Value;
use spillway_testkit::redis::{RedisCluster, RedisServer};

/// Five requests per tenant and user, then denials; per-tenant hot keys.
const POLICY: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 5
    window: 1h
    key: [tenant, user]
tiers:
  free:
    limits: [per-user]
"#;

async fn burst(server: &Server, tenant: &str, user: &str, n: usize) -> usize {
    let body = format!(r#"{{"tenant":"{tenant}","user":"{user}"}}"#);
    let mut denied = 0;
    for _ in 0..n {
        if server.post("/v1/check", &body).await.status() == 429 {
            denied += 1;
        }
    }
    denied
}

async fn top(server: &Server, query: &str) -> Value {
    let response = server.get(&format!("/v1/top{query}")).await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.expect("json")
}

fn tenants(body: &Value) -> Vec<(String, u64)> {
    body["blocked_tenants"]
        .as_array()
        .expect("blocked_tenants")
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap_or_default().to_owned(),
                r["denied"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_burst_shows_its_tenant_until_the_window_passes() {
    let server = Server::with_policy(POLICY)
        .args(&["--node-name", "edge-1", "--top-k-sample", "1"])
        .start();
    assert_eq!(burst(&server, "acme", "alice", 12).await, 7);
    assert_eq!(burst(&server, "globex", "bob", 3).await, 0);

    let body = top(&server, "?window=1m&limit=20").await;
    assert_eq!(body["window"], "1m");
    assert_eq!(body["scope"], "local");
    assert_eq!(body["nodes"], serde_json::json!(["edge-1"]));
    // Every decision counted: the counts are exact, and the answer says so.
    assert_eq!(body["sample"], 1);
    assert_eq!(body["samples"], serde_json::json!({"edge-1": 1}));
    assert_eq!(tenants(&body), vec![("acme".to_owned(), 7)]);
    assert_eq!(body["blocked_users"][0]["user"], "alice");
    let hot = &body["hot_keys"][0];
    assert_eq!(
        (hot["limit"].as_str(), hot["count"].as_u64()),
        (Some("per-user"), Some(12))
    );
    assert_eq!(hot["key"], serde_json::json!(["acme", "alice"]));

    // The memory store has no fleet: cluster scope answers locally and says so.
    let body = top(&server, "?scope=cluster").await;
    assert_eq!(body["scope"], "local");
    assert!(body["note"].is_string());

    // A bad parameter is a 400 problem naming it.
    let response = server.get("/v1/top?window=2h").await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["field"], "window");

    // On the manual clock: after a minute only the ten-minute window remembers.
    server.advance_ms(61_000).await;
    assert!(tenants(&top(&server, "?window=1m").await).is_empty());
    assert_eq!(tenants(&top(&server, "?window=10m").await).len(), 1);
    server.advance_ms(600_000).await;
    assert!(tenants(&top(&server, "?window=10m").await).is_empty());
}

#[tokio::test]
async fn prometheus_shows_at_most_the_ten_most_denied_and_the_new_metrics() {
    let server = Server::with_policy(POLICY)
        .args(&["--top-k-sample", "1"])
        .start();
    // Tenant i is denied i + 1 times; 14 tenants, and one with a name to escape.
    for i in 0..14 {
        burst(&server, &format!("t{i:02}"), "u", 6 + i).await;
    }
    burst(&server, r#"q\"uote"#, "u", 6 + 20).await;
    let text = server.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("spillway_top_blocked{"))
        .collect();
    assert_eq!(series.len(), 10, "{series:#?}");
    assert!(
        text.contains(r#"spillway_top_blocked{tenant="q\"uote"} 21"#),
        "{series:#?}"
    );
    assert_eq!(
        metric(&text, "spillway_top_blocked", &[("tenant", "t13")]),
        Some(14.0)
    );
    assert_eq!(
        metric(&text, "spillway_top_blocked", &[("tenant", "t04")]),
        None
    );

    // Decisions by route and outcome (no route matched: `(none)`).
    let allowed = metric(
        &text,
        "spillway_route_decisions_total",
        &[("route", "(none)"), ("outcome", "allowed")],
    );
    let denied = metric(
        &text,
        "spillway_route_decisions_total",
        &[("route", "(none)"), ("outcome", "denied")],
    );
    assert_eq!(allowed, Some(75.0));
    assert_eq!(denied, Some((1..=14).sum::<u64>() as f64 + 21.0));
}

/// [`POLICY`] plus a limit keyed by the user's name alone, never denying: every request of
/// the fleet tests names user `u`, so its one key is the hottest of all (39 checks in all),
/// and `limit_name=per-user` must pick `per-user`'s rows from every node to answer.
const FLEET: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 5
    window: 1h
    key: [tenant, user]
  per-name:
    algorithm: fixed_window
    limit: 1000
    window: 1h
    key: [user]
tiers:
  free:
    limits: [per-user, per-name]
"#;

/// Three nodes on [`FLEET`], node `i` on the store section `store(i)`, publishing every
/// 100 ms.
fn fleet(store: impl Fn(usize) -> String) -> Vec<Server> {
    fleet_of(FLEET, &["a", "b", "c"], store)
}

/// Nodes named `names` on `policy`, node `i` on the store section `store(i)` (a Redis one),
/// publishing every 100 ms and counting every decision. The scripts run at the manual clock's
/// time: on Redis's own clock an hour's window could roll over mid-test and start the denial
/// counts over.
fn fleet_of(policy: &str, names: &[&str], store: impl Fn(usize) -> String) -> Vec<Server> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Server::with_policy(&format!("{policy}{}", store(i)))
                .args(&[
                    "--node-name",
                    name,
                    "--top-publish-every",
                    "100ms",
                    "--top-k-sample",
                    "1",
                    "--manual-clock-in-store",
                ])
                .start()
        })
        .collect()
}

/// Each node of `nodes` denies its own tenant and a shared one; every node's cluster-scope
/// answer then holds all four, merged from the three nodes, while its local view holds only
/// its own.
async fn each_node_answers_for_the_fleet(nodes: &[Server]) {
    // Each node sees its own tenant, and all three see `shared` (same counter in Redis).
    for (i, node) in nodes.iter().enumerate() {
        burst(node, &format!("only-{i}"), "u", 5 + (i + 1) * 2).await;
    }
    for node in nodes {
        burst(node, "shared", "u", 4).await; // 12 in all: 7 denied, spread over the nodes
    }
    let want = vec![
        ("shared".to_owned(), 7),
        ("only-2".to_owned(), 6),
        ("only-1".to_owned(), 4),
        ("only-0".to_owned(), 2),
    ];
    for (i, node) in nodes.iter().enumerate() {
        let merged = wait_until_async(PATIENCE, || async {
            let body = top(node, "?scope=cluster&window=10m").await;
            (tenants(&body) == want).then_some(body)
        })
        .await;
        let Some(body) = merged else {
            let body = top(node, "?scope=cluster&window=10m").await;
            panic!("no merged answer from {}: {body}", node.addr());
        };
        assert_eq!(body["scope"], "cluster");
        assert_eq!(body["nodes"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(body["samples"], serde_json::json!({"a": 1, "b": 1, "c": 1}));
        assert_eq!(body["sample"], 1);
        // One limit's keys, picked from every node's summary before ranking: `shared/u` was
        // checked 4 times on each node, 12 in all, more than any node's own tenant. (Waited
        // for too: the denials above being complete does not make a node that denied nothing
        // of `shared` have published its checks of it yet.)
        let query = "?scope=cluster&window=10m&limit_name=per-user&limit=1";
        let want_hot =
            serde_json::json!([{"limit": "per-user", "key": ["shared", "u"], "count": 12}]);
        let one = wait_until_async(PATIENCE, || async {
            let body = top(node, query).await;
            (body["hot_keys"] == want_hot).then_some(body)
        })
        .await;
        if one.is_none() {
            panic!("{query} on {}: {}", node.addr(), top(node, query).await);
        }
        // Unfiltered, the name-keyed counter leads: 39 checks of user `u` over the fleet.
        let hottest = serde_json::json!([{"limit": "per-name", "key": ["u"], "count": 39}]);
        let all = wait_until_async(PATIENCE, || async {
            let body = top(node, "?scope=cluster&window=10m&limit=1").await;
            (body["hot_keys"] == hottest).then_some(body)
        })
        .await;
        if all.is_none() {
            panic!("no fleet-wide hottest key on {}", node.addr());
        }
        // Waited for too: a node whose publisher ran late may have let its summary lapse.
        let query = "?scope=cluster&window=10m&limit_name=per-ip";
        let none = wait_until_async(PATIENCE, || async {
            let body = top(node, query).await;
            (tenants(&body) == want).then_some(body)
        })
        .await;
        let Some(none) = none else {
            panic!("{query} on {}: {}", node.addr(), top(node, query).await);
        };
        assert_eq!(none["hot_keys"], serde_json::json!([]), "{none}");
        // Its local view holds only what it saw itself.
        let local = tenants(&top(node, "?scope=local").await);
        assert!(
            local
                .iter()
                .all(|(t, _)| t == "shared" || *t == format!("only-{i}")),
            "{local:?}"
        );
        assert!(
            local.iter().any(|(t, _)| *t == format!("only-{i}")),
            "{local:?}"
        );
    }
}

#[tokio::test]
async fn three_nodes_on_one_redis_each_answer_for_the_fleet() {
    let redis = RedisServer::start();
    let nodes = fleet(|_| {
        format!(
            "store: {{type: redis, url: \"{}\", prefix: top3, timeout: 5s}}\n",
            redis.url()
        )
    });
    each_node_answers_for_the_fleet(&nodes).await;
    // Redis forgets the Functions library: the next call loads it again, recovers, and the
    // lost library is counted as a NOSCRIPT.
    let noscript = |text: &str| {
        metric(
            text,
            "spillway_script_errors_total",
            &[("kind", "noscript")],
        )
    };
    let before = noscript(&nodes[0].metrics().await).unwrap_or(0.0);
    spillway_testkit::redis::command(redis.port(), "FUNCTION FLUSH").expect("flush");
    burst(&nodes[0], "after-flush", "u", 1).await;
    let text = nodes[0].metrics().await;
    assert_eq!(noscript(&text), Some(before + 1.0));
    let latencies = metric(&text, "spillway_store_roundtrip_seconds_count", &[]).unwrap_or(0.0);
    // Node a's 10 admissions all went to Redis (a repeated denial may come from the cache).
    assert!(
        latencies >= 10.0,
        "store latency histogram counts: {latencies}"
    );
}

/// The same on a real three-master Redis Cluster: the board's keys share one hash tag, so
/// publishing and the merge's `SMEMBERS` and `MGET` go to the one node owning that slot,
/// whichever seed node a server was given first (each is given a different one first).
#[tokio::test]
async fn three_nodes_on_a_redis_cluster_each_answer_for_the_fleet() {
    let cluster = RedisCluster::start();
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let nodes = fleet(|i| {
        let mut seeds = seeds.clone();
        let n = seeds.len();
        seeds.rotate_left(i % n);
        format!(
            "store: {{type: redis_cluster, nodes: [{}], prefix: top3c, timeout: 5s}}\n",
            seeds.join(", ")
        )
    });
    each_node_answers_for_the_fleet(&nodes).await;
    // A node that stops leaves the merge once its summary expires (three periods).
    let mut nodes = nodes;
    let mut stopped = nodes.pop().expect("node c");
    stopped.signal("TERM");
    assert!(stopped.wait_exit(PATIENCE).is_some());
    let merged = wait_until_async(PATIENCE, || async {
        let body = top(&nodes[0], "?scope=cluster&window=10m").await;
        (body["nodes"] == serde_json::json!(["a", "b"])).then_some(body)
    })
    .await;
    let body = merged.expect("node c leaves the merge");
    assert!(!tenants(&body).iter().any(|(t, _)| t == "only-2"), "{body}");
}

/// A limit with many hot keys beside one whose keys are all colder: a request naming a user
/// checks `busy`'s key, one naming a tenant `quiet`'s.
const BUSY_AND_QUIET: &str = r#"
default_tier: free
limits:
  busy:
    algorithm: fixed_window
    limit: 1000
    window: 1h
    key: [user]
  quiet:
    algorithm: fixed_window
    limit: 1000
    window: 1h
    key: [tenant]
tiers:
  free:
    limits: [busy, quiet]
"#;

/// How many of `busy`'s keys the hot node sees: more than a node publishes of one limit.
const BUSY_KEYS: usize = 105;

/// A node publishes each limit's heaviest, not the heaviest overall: node `hot` sees 105 keys
/// of `busy` (3 checks each), then only colder keys of `quiet` (tenant `rare` twice, three
/// others once), so from then on its 100 heaviest keys overall are all `busy`'s. Node
/// `reader` sees no traffic and still finds `rare` for `limit_name=quiet`, which it can only
/// have read from `hot`'s publication on Redis. (109 keys in all: within one sketch shard's
/// 128 rows, so the counts are exact.)
#[tokio::test]
async fn a_cold_limits_keys_reach_the_fleet_beside_a_limit_of_many_hot_keys() {
    let redis = RedisServer::start();
    let nodes = fleet_of(BUSY_AND_QUIET, &["hot", "reader"], |_| {
        format!(
            "store: {{type: redis, url: \"{}\", prefix: topq, timeout: 5s}}\n",
            redis.url()
        )
    });
    let (hot, reader) = (&nodes[0], &nodes[1]);
    // `busy`'s keys first, so that any publication holding `rare`'s two checks was made
    // once `busy`'s 105 keys had outranked it.
    let users = (0..BUSY_KEYS * 3).map(|i| format!(r#"{{"user":"u{:03}"}}"#, i / 3));
    let tenants = ["rare", "rare", "t1", "t2", "t3"].map(|t| format!(r#"{{"tenant":"{t}"}}"#));
    for body in users.chain(tenants) {
        assert_eq!(hot.post("/v1/check", &body).await.status(), 200, "{body}");
    }
    let query = "?scope=cluster&window=10m&limit_name=quiet&limit=1";
    let want = serde_json::json!([{"limit": "quiet", "key": ["rare"], "count": 2}]);
    let found = wait_until_async(PATIENCE, || async {
        let body = top(reader, query).await;
        (body["hot_keys"] == want).then_some(body)
    })
    .await;
    if found.is_none() {
        panic!("{query} on the reader: {}", top(reader, query).await);
    }
    assert_eq!(
        found.expect("found")["nodes"],
        serde_json::json!(["hot", "reader"])
    );
    // What a plain top 100 would have published: `busy`'s keys only. Asked until the hot
    // node's summary is there (a summary lives a few publishing periods, which a loaded
    // machine can stretch between two queries).
    let overall_query = "?scope=cluster&window=10m&limit=100";
    let overall = wait_until_async(PATIENCE, || async {
        let body = top(reader, overall_query).await;
        (body["hot_keys"].as_array().map(Vec::len) == Some(100)).then_some(body)
    })
    .await;
    let Some(overall) = overall else {
        panic!(
            "{overall_query} on the reader: {}",
            top(reader, overall_query).await
        );
    };
    let rows = overall["hot_keys"].as_array().expect("hot_keys");
    assert!(
        rows.iter().all(|r| r["limit"] == "busy" && r["count"] == 3),
        "{overall}"
    );
    // The reader saw nothing itself.
    let local = top(reader, "?scope=local&window=10m").await;
    assert_eq!(local["hot_keys"], serde_json::json!([]), "{local}");
}

/// Two limits whose keys rank apart: each tenant's per-tenant key counts every request of
/// its users, each per-user key only that user's.
const TWO_LIMITS: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 5
    window: 1h
    key: [tenant, user]
  per-tenant:
    algorithm: fixed_window
    limit: 1000
    window: 1h
    key: [tenant]
tiers:
  free:
    limits: [per-user, per-tenant]
"#;

#[tokio::test]
async fn limit_name_ranks_one_limits_hot_keys() {
    let server = Server::with_policy(TWO_LIMITS)
        .args(&["--node-name", "edge-1", "--top-k-sample", "1"])
        .start();
    // acme: alice 4 requests, bob 2; globex: carol 3, dave 2. No two keys tie.
    for (tenant, user, n) in [
        ("acme", "alice", 4),
        ("acme", "bob", 2),
        ("globex", "carol", 3),
        ("globex", "dave", 2),
    ] {
        burst(&server, tenant, user, n).await;
    }
    let hot = |body: &Value| -> Vec<(String, String, u64)> {
        body["hot_keys"]
            .as_array()
            .expect("hot_keys")
            .iter()
            .map(|r| {
                let key: Vec<&str> = r["key"]
                    .as_array()
                    .expect("key")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                (
                    r["limit"].as_str().unwrap_or_default().to_owned(),
                    key.join("/"),
                    r["count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let row = |limit: &str, key: &str, count| (limit.to_owned(), key.to_owned(), count);

    // Unfiltered, the two heaviest are both per-tenant keys.
    let all = top(&server, "?limit=2").await;
    assert_eq!(
        hot(&all),
        [row("per-tenant", "acme", 6), row("per-tenant", "globex", 5)]
    );
    assert!(all.get("limit_name").is_none(), "{all}");
    // Filtered before ranking: per-user's two heaviest, though they rank below per-tenant's.
    let users = top(&server, "?limit=2&limit_name=per-user").await;
    assert_eq!(
        hot(&users),
        [
            row("per-user", "acme/alice", 4),
            row("per-user", "globex/carol", 3)
        ]
    );
    assert_eq!(users["limit_name"], "per-user");
    // Percent-encoded names are decoded.
    let encoded = top(&server, "?limit_name=per%2Duser").await;
    assert_eq!(hot(&encoded).len(), 4);
    // A name no limit has: an empty list, not an error.
    let unknown = top(&server, "?limit_name=no-such-limit").await;
    assert_eq!(unknown["hot_keys"], serde_json::json!([]));

    // An empty, over-long or malformed name is a 400 problem naming the parameter.
    let long = "x".repeat(1025);
    for query in [
        "limit_name=".to_owned(),
        format!("limit_name={long}"),
        "limit_name=a%00b".to_owned(),
        "limit_name=%C3".to_owned(),
    ] {
        let response = server.get(&format!("/v1/top?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["field"], "limit_name", "{query}");
    }
}

#[tokio::test]
async fn the_answer_says_the_nodes_sample() {
    // No `--top-k-sample`: the default, one decision in 8.
    let server = Server::with_policy(POLICY)
        .args(&["--node-name", "n"])
        .start();
    let body = top(&server, "").await;
    assert_eq!(body["sample"], 8);
    assert_eq!(body["samples"], serde_json::json!({"n": 8}));
    let server = Server::with_policy(POLICY)
        .args(&["--node-name", "m", "--top-k-sample", "64"])
        .start();
    assert_eq!(
        top(&server, "?scope=cluster").await["samples"],
        serde_json::json!({"m": 64})
    );
}

#[tokio::test]
async fn with_no_top_k_nothing_is_counted_and_the_endpoint_says_so() {
    let server = Server::with_policy(POLICY).args(&["--no-top-k"]).start();
    assert!(burst(&server, "noisy", "u1", 30).await > 0);
    let response = server.get("/v1/top").await;
    assert_eq!(response.status(), 404);
    let text = server.metrics().await;
    assert!(!text.contains("spillway_top_blocked{"), "{text}");
}
