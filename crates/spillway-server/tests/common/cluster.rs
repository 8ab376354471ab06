//! What the Redis Cluster tests share: a policy over a cluster, users whose keys live on a
//! chosen master, one timed decision, and the breaker gauges per master.

use super::{metric, timed_check, Sample, Server};
use spillway_redis::keys;
use spillway_testkit::redis::RedisCluster;
use std::time::Duration;

/// The one limit of [`policy`], per user and hour: far out of reach, so the tests read the
/// budget left and never run it out.
pub const LIMIT: u64 = 1_000_000;

/// A policy over `cluster`: one limit `api` ([`LIMIT`] a fixed window of about an hour whose
/// current window has at least ten minutes left ([`super::roomy_window`]), so no test's counts
/// start over mid-run; keyed and so hash-tagged by the user) on `POST /api`, whose failure
/// mode is `failure_mode`, with the store's `budget` and `breaker_failures`; `emergency` is
/// the limit's emergency quota per node, if given.
pub fn policy(
    cluster: &RedisCluster,
    failure_mode: &str,
    budget: Duration,
    breaker_failures: u64,
    emergency: Option<u64>,
) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let emergency = emergency
        .map(|e| format!("\n    emergency: {{limit: {e}}}"))
        .unwrap_or_default();
    let (window, _) = super::roomy_window();
    format!(
        r#"
default_tier: free
failure_mode: {failure_mode}
limits:
  api:
    algorithm: fixed_window
    limit: {LIMIT}
    window: {window}
    key: [user]{emergency}
tiers:
  free:
    limits: []
routes:
  - match: "POST /api"
    limits: [api]
store: {{type: redis_cluster, nodes: [{}], timeout: {}ms, breaker_failures: {breaker_failures}}}
"#,
        nodes.join(", "),
        budget.as_millis()
    )
}

/// `per_master` users for each master of `cluster` (in the order of
/// [`RedisCluster::ports`]) whose keys under [`policy`] live on that master.
pub fn users_by_master(cluster: &RedisCluster, per_master: usize) -> Vec<Vec<String>> {
    let ports = cluster.ports();
    let mut found: Vec<Vec<String>> = vec![Vec::new(); ports.len()];
    for i in 0..10_000 {
        let user = format!("user{i}");
        if let Some(at) = cluster
            .owner(slot_of(&user))
            .and_then(|p| ports.iter().position(|&q| q == p))
        {
            if found[at].len() < per_master {
                found[at].push(user);
            }
        }
        if found.iter().all(|f| f.len() == per_master) {
            return found;
        }
    }
    panic!("not {per_master} users on every master");
}

/// One user per master of `cluster`, in the order of [`RedisCluster::ports`].
pub fn user_per_master(cluster: &RedisCluster) -> Vec<String> {
    users_by_master(cluster, 1).into_iter().flatten().collect()
}

/// The hash slot of `user`'s key under [`policy`].
pub fn slot_of(user: &str) -> u16 {
    keys::slot(&format!("rl:{{{user}}}:api"))
}

/// One decision for `user` on `POST /api`, timed.
pub async fn ask(server: &Server, user: &str) -> Sample {
    timed_check(
        &server.http,
        &format!("http://{}", server.addr()),
        "/api",
        user,
    )
    .await
}

/// The breaker gauge of the master on each of `ports` (named `127.0.0.1:port`, as Redis
/// reports it; `None` if not exported), and the store-wide one.
pub async fn gauges(server: &Server, ports: &[u16]) -> (Vec<Option<f64>>, Option<f64>) {
    let text = server.metrics().await;
    let each = ports
        .iter()
        .map(|p| {
            let name = format!("127.0.0.1:{p}");
            metric(
                &text,
                "spillway_store_domain_circuit_state",
                &[("domain", &name)],
            )
        })
        .collect();
    (each, metric(&text, "spillway_store_circuit_state", &[]))
}

/// Waits until the server names every master of `ports` in its per-domain gauge. The first
/// `CLUSTER SLOTS` is cut at the store timeout and the map is asked again every second; the
/// guard takes the names on a request, so each round sends one request per user in `users`.
pub async fn wait_named(server: &Server, users: &[String], ports: &[u16]) {
    let named = super::wait_until_async(Duration::from_secs(10), || async {
        for user in users {
            ask(server, user).await;
        }
        let (each, _) = gauges(server, ports).await;
        each.iter().all(Option::is_some).then_some(())
    })
    .await;
    assert!(named.is_some(), "the masters were never named");
}
