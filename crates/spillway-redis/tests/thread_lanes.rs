//! A serving thread's own lane (see `spillway_redis::thread_lane`): once a thread has
//! attached, its checks go out on a connection of its own, which reconnects on its own and
//! closes when the store is dropped. Each test runs the store's "serving thread" as a plain
//! thread with a single-threaded runtime, as the server does, and reads which connection
//! did what from Redis's `CLIENT LIST`.

mod common;

use common::{check, key, window};
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The clients connected to the server on `port` (other than the one asking), as their
/// `id` and the last command each ran.
fn clients(port: u16) -> Vec<(u64, String)> {
    let list = spillway_testkit::redis::command(port, "CLIENT LIST").unwrap_or_default();
    list.lines()
        .filter(|line| line.contains("id="))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            let id = field("id=")?.parse().ok()?;
            let cmd = field("cmd=")?;
            Some((id, cmd))
        })
        .filter(|(_, cmd)| cmd != "client|list")
        .collect()
}

/// Polls `what` every 10 ms until it holds, for at most 5 s (waiting on another process:
/// a connection being made or closed).
async fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !what() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn store(url: String, timeout: Duration) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(Target::Server(url));
    config.timeout = timeout;
    config.local_cache_keys = 0;
    Arc::new(RedisStore::connect(&config).await.expect("connects"))
}

/// One allowed check of a large window.
async fn one_check(store: &RedisStore) -> Result<(), StoreError> {
    let k = key("lanes", &["u"]);
    let params = window(1_000_000);
    let d = store
        .check(&[check(&k, &params, 1)], CheckMode::Consume)
        .await?;
    assert!(d[0].allowed);
    Ok(())
}

/// Runs `work` on a new thread's single-threaded runtime after the thread attached to
/// `store` and its lane came up; the thread's runtime keeps running (its lane with it) until
/// `stop` fires, then the thread ends.
fn serving_thread<F, Fut>(
    store: Arc<RedisStore>,
    stop: oneshot::Receiver<()>,
    work: F,
) -> std::thread::JoinHandle<()>
where
    F: FnOnce(Arc<RedisStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            store.attach_thread();
            assert!(
                eventually(|| store.served_on_this_thread(&[])).await,
                "the thread's lane comes up"
            );
            work(store).await;
            let _ = stop.await;
        });
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_thread_checks_on_its_own_connection() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store(server.url(), Duration::from_secs(2)).await;
    let shared = clients(port);
    assert_eq!(shared.len(), 1, "one shared connection: {shared:?}");
    let shared = shared[0].0;
    // Not attached (the main runtime): the shared connection.
    assert!(!store.served_on_this_thread(&[]));
    one_check(&store).await.expect("answered");
    assert!(clients(port).contains(&(shared, "fcall".into())));

    let (stop, stopped) = oneshot::channel();
    let (seen, saw) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        // Something else last on the shared connection, so the check's `fcall` shows where
        // it went.
        store.ping().await.expect("ping");
        for _ in 0..3 {
            one_check(&store).await.expect("answered on the lane");
        }
        let _ = seen.send(clients(port));
    });
    let after = saw.await.expect("the thread reports");
    assert_eq!(
        after.len(),
        2,
        "the shared connection and the lane's: {after:?}"
    );
    for (id, cmd) in &after {
        if *id == shared {
            assert_eq!(cmd, "ping", "the check did not take the shared connection");
        } else {
            assert_eq!(cmd, "fcall", "the check took the thread's own connection");
        }
    }
    let _ = stop.send(());
    thread.join().expect("thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_its_thread_lanes() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store(server.url(), Duration::from_secs(2)).await;
    let mut threads = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..3 {
        let (stop, stopped) = oneshot::channel();
        let (ready, up) = oneshot::channel();
        threads.push(serving_thread(store.clone(), stopped, |store| async move {
            one_check(&store).await.expect("answered");
            drop(store);
            let _ = ready.send(());
        }));
        up.await.expect("lane up");
        stops.push(stop);
    }
    assert_eq!(
        clients(port).len(),
        4,
        "the shared connection and three lanes"
    );
    // The threads keep running; only the store goes.
    drop(store);
    assert!(
        eventually(|| clients(port).is_empty()).await,
        "every connection closed with the store: {:?}",
        clients(port)
    );
    for (stop, thread) in stops.into_iter().zip(threads) {
        let _ = stop.send(());
        thread.join().expect("thread");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_redis_goes_away_fails_in_time_and_recovers() {
    let mut server = RedisServer::start();
    let port = server.port();
    let timeout = Duration::from_millis(300);
    let store = store(server.url(), timeout).await;
    let (stop, stopped) = oneshot::channel();
    let (down, went_down) = oneshot::channel::<()>();
    let (back, came_back) = oneshot::channel::<()>();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        one_check(&store).await.expect("answered");
        let _ = went_down.await;
        let started = Instant::now();
        let failed = one_check(&store).await.is_err();
        let took = started.elapsed();
        let _ = came_back.await;
        // The lane's connection reconnects on its own (the restarted server is empty: the
        // Functions library is loaded again on the way).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answered = false;
        while !answered && Instant::now() < deadline {
            answered = one_check(&store).await.is_ok();
            if !answered {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let on_lane = store.served_on_this_thread(&[]);
        let _ = result.send((failed, took, answered, on_lane));
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.kill();
    let _ = down.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.restart();
    let _ = back.send(());
    let (failed, took, recovered, on_lane) = outcome.await.expect("the thread reports");
    assert!(failed, "a check with Redis gone fails");
    assert!(
        took < timeout + Duration::from_millis(200),
        "and within the store's timeout: {took:?}"
    );
    assert!(recovered, "checks are answered again once Redis is back");
    assert!(on_lane, "on the thread's own lane");
    assert!(
        clients(port).iter().any(|(_, cmd)| cmd == "fcall"),
        "the lane's connection came back: {:?}",
        clients(port)
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}
