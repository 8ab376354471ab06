//! Concurrent requests to one server, or to one slot of a cluster, share calls (see
//! `spillway_redis::batch`) and stay exact: each request is all-or-nothing on its own, and a
//! request later in a call sees what the ones before it wrote, including keys listed by
//! several requests of the same call.

mod common;

use common::{check, key, redis_store, window, Backend};
use spillway_core::algorithm::{LimitParams, TokenBucket};
use spillway_core::key::StateKey;
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_core::time::HOUR;
use spillway_redis::RedisStore;
use spillway_testkit::redis::{RedisCluster, RedisServer};
use std::sync::Arc;

/// How many `fcall` calls the Redis servers on `ports` have served, together.
fn fcalls(ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|&port| {
            let stats =
                spillway_testkit::redis::command(port, "INFO commandstats").unwrap_or_default();
            stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// What `k` has used of `params` (a peek of cost 1 reports `remaining` after it).
async fn used(store: &RedisStore, k: &StateKey, params: &LimitParams, limit: u64) -> u64 {
    let d = store
        .check(&[check(k, params, 1)], CheckMode::Peek)
        .await
        .unwrap();
    limit - (d[0].remaining + u64::from(d[0].allowed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_key_admits_exactly_its_burst_across_shared_calls() {
    let server = RedisServer::start();
    let (store, _) = redis_store(Backend::Server(server.url())).await;
    one_hot_key(store, &[server.port()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_key_on_a_cluster_admits_exactly_its_burst_across_shared_calls() {
    let cluster = RedisCluster::start();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    one_hot_key(store, &cluster.ports()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_keys_in_one_call_are_each_all_or_nothing() {
    let server = RedisServer::start();
    let (store, _) = redis_store(Backend::Server(server.url())).await;
    shared_keys(store, &[server.port()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_cluster_slot_in_one_call_are_each_all_or_nothing() {
    let cluster = RedisCluster::start();
    let (store, _) = redis_store(Backend::Cluster(cluster.urls())).await;
    shared_keys(store, &cluster.ports()).await;
}

/// 300 concurrent requests on one token bucket of burst 100 (on the servers at `ports`):
/// exactly 100 admitted, in fewer calls than requests.
async fn one_hot_key(store: RedisStore, ports: &[u16]) {
    let store = Arc::new(store);
    let hot = key("hot", &["everyone"]);
    let bucket =
        LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), 100).unwrap());
    let before = fcalls(ports);
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let (store, hot, bucket) = (store.clone(), hot.clone(), bucket.clone());
            tokio::spawn(async move {
                let d = store
                    .check(&[check(&hot, &bucket, 1)], CheckMode::Consume)
                    .await
                    .expect("answers");
                d[0].allowed
            })
        })
        .collect();
    let mut admitted = 0;
    for call in calls {
        admitted += u64::from(call.await.expect("no task panicked"));
    }
    let sent = fcalls(ports) - before;
    assert_eq!(admitted, 100, "exactly the burst");
    assert!(
        (1..300).contains(&sent),
        "300 concurrent requests went out in fewer calls, through FCALL ({sent})"
    );
    assert_eq!(used(&store, &hot, &bucket, 100).await, 100);
}

/// Every request: a tenant limit of 40 shared by all, and a per-user limit of 2 shared by the
/// four requests of each of 50 users. Whatever the order, exactly 40 are admitted, and a
/// denied request charges neither limit. Every key starts with the tenant, so on a cluster
/// they all share one slot, and the requests share calls (fewer calls than requests).
async fn shared_keys(store: RedisStore, ports: &[u16]) {
    let store = Arc::new(store);
    let (tenant, tenant_limit) = (key("tenant", &["acme"]), window(40));
    let user_limit = window(2);
    let users: Vec<StateKey> = (0..50)
        .map(|u| key("per-user", &["acme", &format!("u{u}")]))
        .collect();
    let before = fcalls(ports);
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let (store, tenant, tl, ul) = (
                store.clone(),
                tenant.clone(),
                tenant_limit.clone(),
                user_limit.clone(),
            );
            let user = users[i % 50].clone();
            tokio::spawn(async move {
                // Half list the tenant first, half the user first.
                let (a, b) = (check(&tenant, &tl, 1), check(&user, &ul, 1));
                let checks = if i % 2 == 0 { [a, b] } else { [b, a] };
                let d = store
                    .check(&checks, CheckMode::Consume)
                    .await
                    .expect("answers");
                (i % 50, d.iter().all(|d| d.allowed))
            })
        })
        .collect();
    let mut per_user = [0u64; 50];
    for call in calls {
        let (u, ok) = call.await.expect("no task panicked");
        per_user[u] += u64::from(ok);
    }
    let sent = fcalls(ports) - before;
    let admitted: u64 = per_user.iter().sum();
    assert_eq!(admitted, 40, "exactly the tenant's limit");
    assert!(
        (1..200).contains(&sent),
        "200 concurrent requests of one slot went out in fewer calls ({sent})"
    );
    assert_eq!(used(&store, &tenant, &tenant_limit, 40).await, 40);
    for (u, user) in users.iter().enumerate() {
        assert!(per_user[u] <= 2, "user {u} admitted {}", per_user[u]);
        assert_eq!(
            used(&store, user, &user_limit, 2).await,
            per_user[u],
            "user {u}: charged exactly for its admitted requests"
        );
    }
}
