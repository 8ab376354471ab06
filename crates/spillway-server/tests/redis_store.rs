//! Several `spillway serve` processes sharing one Redis (or one Redis Cluster) admit exactly
//! what the policy allows between them, and every denial says correctly when to come back.

mod common;

use common::{metric, wait_until_async, Server};
use spillway_testkit::redis::{RedisCluster, RedisServer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 500 at once and one more per hour: no refill to speak of while the test runs.
const HOT_KEY: &str = r#"
default_tier: free
failure_mode: closed
limits:
  hot:
    algorithm: token_bucket
    rate: 1/h
    burst: 500
    key: [user]
tiers:
  free:
    limits: [hot]
"#;

/// A tenant cap that binds, with per-user and per-IP limits that never do.
const THREE_LIMITS: &str = r#"
default_tier: free
failure_mode: closed
limits:
  per-tenant:
    algorithm: token_bucket
    rate: 1/h
    burst: 500
    key: [tenant]
  per-user:
    algorithm: sliding_log
    limit: 1000
    window: 1h
    key: [tenant, user]
  per-ip:
    algorithm: fixed_window
    limit: 100000
    window: 1d
    key: [ip]
tiers:
  free:
    limits: [per-tenant, per-user, per-ip]
"#;

/// The policy's `store:` section for one server, with a timeout generous enough for a
/// loaded two-core machine (the policies fail closed, so a timeout would show as a 503).
fn on_server(redis: &RedisServer) -> String {
    format!(
        "store: {{type: redis, url: \"{}\", prefix: t1, timeout: 5s}}\n",
        redis.url()
    )
}

/// The same for a cluster, by its seed nodes.
fn on_cluster(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "store: {{type: redis_cluster, nodes: [{}], timeout: 5s}}\n",
        nodes.join(", ")
    )
}

/// Starts three servers on `policy` followed by the `store` section.
fn nodes(policy: &str, store: &str) -> Vec<Server> {
    let policy = format!("{policy}{store}");
    (0..3)
        .map(|_| Server::with_policy(&policy).system_clock().start())
        .collect()
}

/// 30 clients, 40 requests each, spread over the nodes; returns (admitted, denied).
async fn hammer(servers: &[Server], body: impl Fn(usize, usize) -> String) -> (u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for client in 0..30 {
        let url = servers[client % servers.len()].url("/v1/check");
        let bodies: Vec<String> = (0..40).map(|i| body(client, i)).collect();
        let (http, admitted, denied) = (http.clone(), admitted.clone(), denied.clone());
        tasks.push(tokio::spawn(async move {
            for b in bodies {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .expect("the node answers");
                match r.status().as_u16() {
                    200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        // Empty bucket, one token per hour: the next one is at most an hour away,
                        // and the test has not run long enough to refill a noticeable part of it.
                        let retry: u64 = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .expect("a denial carries Retry-After");
                        assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected status {other}: {:?}", r.text().await),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    (
        admitted.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let servers = nodes(HOT_KEY, &on_server(&redis));
    let (admitted, denied) = hammer(&servers, |_, _| r#"{"user":"hot-user"}"#.into()).await;
    assert_eq!((admitted, denied), (500, 700));
    let ready = servers[0].get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let metrics = servers[0].metrics().await;
    assert_roundtrip_buckets(&metrics);
}

/// The store call latency histogram is exported with its explicit buckets (not the
/// exporter's default summary or buckets): one `le` per boundary of
/// `spillway_server::store::ROUNDTRIP_BUCKETS`, in order, then `+Inf`; the counts are
/// cumulative and `+Inf` holds every call.
fn assert_roundtrip_buckets(metrics: &str) {
    let prefix = "spillway_store_roundtrip_seconds_bucket{le=\"";
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.parse().ok()?))
        })
        .collect();
    let bounds: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    let (last, finite) = bounds.split_last().expect("bucket lines");
    assert_eq!(*last, "+Inf", "{metrics}");
    let finite: Vec<f64> = finite
        .iter()
        .map(|le| le.parse().expect("a numeric bound"))
        .collect();
    assert_eq!(
        finite,
        spillway_server::store::ROUNDTRIP_BUCKETS,
        "{metrics}"
    );
    let counts: Vec<f64> = buckets.iter().map(|(_, c)| *c).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let total = common::metric(metrics, "spillway_store_roundtrip_seconds_count", &[]);
    assert_eq!(counts.last().copied(), total, "{metrics}");
    assert!(total >= Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start();
    let servers = nodes(HOT_KEY, &on_cluster(&cluster));
    let (admitted, denied) = hammer(&servers, |_, _| r#"{"user":"hot-user"}"#.into()).await;
    assert_eq!((admitted, denied), (500, 700));
}

fn three_limit_body(client: usize, _: usize) -> String {
    format!(r#"{{"tenant":"acme","user":"u{client}","ip":"192.0.2.7"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_tenant_and_ip_limits_stay_exact_on_one_redis() {
    let redis = RedisServer::start();
    let servers = nodes(THREE_LIMITS, &on_server(&redis));
    let (admitted, denied) = hammer(&servers, three_limit_body).await;
    assert_eq!((admitted, denied), (500, 700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_tenant_and_ip_limits_stay_exact_across_cluster_slots() {
    let cluster = RedisCluster::start();
    let servers = nodes(THREE_LIMITS, &on_cluster(&cluster));
    let (admitted, denied) = hammer(&servers, three_limit_body).await;
    assert_eq!((admitted, denied), (500, 700));
}

/// Every serving thread, HTTP and gRPC, attaches to a single server's store: with one of each,
/// two lanes come up, each on a connection of its own (so leaving out either port's
/// `attach_thread` fails this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_serving_thread_opens_its_own_redis_connection() {
    let redis = RedisServer::start();
    let policy = format!("{HOT_KEY}{}", on_server(&redis));
    let server = Server::with_policy(&policy)
        .system_clock()
        .args(&[
            "--http-threads",
            "1",
            "--grpc-threads",
            "1",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .start();
    let lanes = || async {
        metric(&server.metrics().await, "spillway_redis_thread_lanes", &[]).unwrap_or(0.0)
    };
    let up = wait_until_async(Duration::from_secs(10), || async {
        (lanes().await >= 2.0).then_some(())
    })
    .await;
    assert!(up.is_some(), "thread lanes up: {}", lanes().await);
    assert_eq!(lanes().await, 2.0, "one lane per serving thread");
}
