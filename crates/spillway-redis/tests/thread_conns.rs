//! A serving thread's own connection (see `spillway_redis::thread_conn`): once a thread has
//! attached, its checks go out on a connection of its own, which steps aside after a failure until
//! it answers again, and closes when the store is dropped. Each test runs the store's "serving
//! thread" as a plain thread with a single-threaded runtime, as the server does, and reads which
//! connection did what from Redis's `CLIENT LIST`.

mod common;

use common::thread_conns::{
    checks_go_out_on_own_conn, clients, dropping_the_store_closes_its_conns, eventually,
    kill_the_thread_conn, serving_thread,
};
use common::{check, key, window};
use spillway_core::request::CheckMode;
use spillway_core::store::{Store, StoreError};
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

async fn store(url: String, timeout: Duration) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(Target::Server(url), "the test's URL");
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

    checks_go_out_on_own_conn(store, port, shared, |store| async move {
        one_check(&store)
            .await
            .expect("answered on the thread connection");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_its_thread_conns() {
    let server = RedisServer::start();
    let store = store(server.url(), Duration::from_secs(2)).await;
    dropping_the_store_closes_its_conns(store, server.port(), |store| async move {
        one_check(&store).await.expect("answered");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_conn_whose_redis_goes_away_fails_in_time_and_recovers() {
    let mut server = RedisServer::start();
    let port = server.port();
    // A second, so that a late wake-up on a loaded machine fits under the bound below, which
    // still tells a check that waited its timeout twice.
    let timeout = Duration::from_secs(1);
    let store = store(server.url(), timeout).await;
    let (stop, stopped) = oneshot::channel();
    let (down, went_down) = oneshot::channel::<()>();
    let (back, came_back) = oneshot::channel::<()>();
    let (result, outcome) = oneshot::channel();
    // Each step waits for the one before it, not for a guessed time: the thread connection is up
    // and has answered before Redis is killed, and the failed check is over before Redis returns.
    let (ready, is_ready) = oneshot::channel::<()>();
    let (met, met_outage) = oneshot::channel::<()>();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        one_check(&store).await.expect("answered");
        let _ = ready.send(());
        let _ = went_down.await;
        let started = Instant::now();
        let failed = one_check(&store).await.is_err();
        let took = started.elapsed();
        let _ = met.send(());
        let _ = came_back.await;
        // The thread connection stepped aside after the failure and is up again once its
        // connection answers a ping.
        let up_again = eventually(|| store.served_on_this_thread(&[])).await;
        // Its first check then is answered (the restarted server is empty: the Functions
        // library is loaded again on the way). Which connection took it: the shared one pings
        // after it, so a check sent there would leave both connections on `ping` (the thread
        // connection's last command is its own repair ping then).
        let answered = up_again && one_check(&store).await.is_ok();
        store.ping().await.expect("ping");
        let _ = result.send((failed, took, answered, clients(port)));
    });
    is_ready
        .await
        .expect("the thread's own connection answered");
    server.kill();
    let _ = down.send(());
    met_outage.await.expect("the thread met the outage");
    server.restart();
    let _ = back.send(());
    let (failed, took, recovered, after) = outcome.await.expect("the thread reports");
    assert!(failed, "a check with Redis gone fails");
    assert!(
        took < timeout + Duration::from_millis(800),
        "and within the store's timeout: {took:?}"
    );
    assert!(
        recovered,
        "the thread connection is up again once Redis is back, and its first check answered"
    );
    // Two connections, the shared one (which pinged after the check) and the thread connection's
    // (which checked last): the check went out on the thread's own connection again.
    assert_eq!(after.len(), 2, "{after:?}");
    let pinged: Vec<_> = after.iter().filter(|(_, cmd)| cmd == "ping").collect();
    let checked: Vec<_> = after.iter().filter(|(_, cmd)| cmd == "fcall").collect();
    assert!(
        pinged.len() == 1 && checked.len() == 1 && pinged[0].0 != checked[0].0,
        "the check went out on the thread's own connection: {after:?}"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_threaded_runtime_gets_no_thread_conn() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store(server.url(), Duration::from_secs(2)).await;
    store.attach_thread();
    one_check(&store).await.expect("answered");
    // Give a thread connection (were one made) the time to connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!store.served_on_this_thread(&[]));
    assert_eq!(clients(port).len(), 1, "the shared connection only");
}

/// After one thread's check fails with Redis gone, every thread connection of the store is marked
/// down, including one whose thread sent nothing during the outage (its connection is as dead, and
/// the client only notices on a call), and each comes back once its own connection answers: the
/// first check on it after Redis returns is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thread_conn_steps_aside_after_a_failure_and_comes_back_answering() {
    let mut server = RedisServer::start();
    let store = store(server.url(), Duration::from_millis(300)).await;
    // A quiet thread: attached, one check, then only watches its thread connection.
    let (stop, stopped) = oneshot::channel();
    let (down, went_down) = oneshot::channel::<()>();
    let (back, came_back) = oneshot::channel::<()>();
    let (result, outcome) = oneshot::channel();
    // Steps wait for each other, not for guessed times: both thread connections are up before Redis
    // is killed, and the quiet thread connection has stepped aside (or given up looking) before it
    // returns.
    let (quiet_ready, quiet_is_ready) = oneshot::channel::<()>();
    let (looked, quiet_looked) = oneshot::channel::<()>();
    let quiet = serving_thread(store.clone(), stopped, move |store| async move {
        one_check(&store).await.expect("answered");
        let _ = quiet_ready.send(());
        let _ = went_down.await;
        let stepped_aside = eventually(|| !store.served_on_this_thread(&[])).await;
        let _ = looked.send(());
        let _ = came_back.await;
        let up_again = eventually(|| store.served_on_this_thread(&[])).await;
        // The thread connection is used again only once its connection answered, so its first check
        // after the outage does not fail.
        let first = one_check(&store).await;
        let _ = result.send((stepped_aside, up_again, first));
    });
    // A busy thread, whose check meets the outage.
    let (stop_busy, stopped_busy) = oneshot::channel();
    let (failed, fails) = oneshot::channel::<bool>();
    let (killed, was_killed) = oneshot::channel::<()>();
    let (busy_ready, busy_is_ready) = oneshot::channel::<()>();
    let busy = serving_thread(store.clone(), stopped_busy, move |store| async move {
        let _ = busy_ready.send(());
        let _ = was_killed.await;
        let _ = failed.send(one_check(&store).await.is_err());
    });
    quiet_is_ready
        .await
        .expect("the quiet thread's own connection answered");
    busy_is_ready
        .await
        .expect("the busy thread's own connection is up");
    server.kill();
    let _ = killed.send(());
    assert!(
        fails.await.expect("busy reports"),
        "a check with Redis gone fails"
    );
    let _ = down.send(());
    quiet_looked
        .await
        .expect("the quiet thread looked at its thread connection");
    server.restart();
    let _ = back.send(());
    let (stepped_aside, up_again, first) = outcome.await.expect("the quiet thread reports");
    assert!(
        stepped_aside,
        "the quiet thread's own connection was marked down"
    );
    assert!(up_again, "and came back once Redis did");
    assert!(first.is_ok(), "its first check after the outage: {first:?}");
    let _ = stop.send(());
    let _ = stop_busy.send(());
    quiet.join().expect("quiet");
    busy.join().expect("busy");
}

/// A thread connection the server closed while it was idle (`CLIENT KILL`, or the server's
/// `timeout` setting) is made again by the next check, which is answered (no request fails
/// for it), on the thread's new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_conn_killed_while_idle_is_made_again_by_the_next_check() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store(server.url(), Duration::from_secs(2)).await;
    let shared = clients(port)[0].0;
    let (stop, stopped) = oneshot::channel();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        one_check(&store).await.expect("answered");
        let killed = kill_the_thread_conn(port, shared).await;
        let first = one_check(&store).await;
        let _ = result.send((first, killed, clients(port)));
    });
    let (first, killed, after) = outcome.await.expect("the thread reports");
    assert!(first.is_ok(), "the first check after the kill: {first:?}");
    let remade: Vec<_> = after
        .iter()
        .filter(|(id, cmd)| *id != shared && *id != killed && cmd == "fcall")
        .collect();
    assert_eq!(
        remade.len(),
        1,
        "a new thread connection checked: {after:?}"
    );
    let _ = stop.send(());
    thread.join().expect("thread");
}

/// A server that lost the Functions library (`FUNCTION FLUSH`, a restart without persistence)
/// answers a thread connection's check with "Function not found": the check loads the
/// library again on that connection and is answered, as on the shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_conn_loads_a_lost_library_again_and_answers() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store(server.url(), Duration::from_secs(2)).await;
    let shared = clients(port)[0].0;
    let (stop, stopped) = oneshot::channel();
    let (result, outcome) = oneshot::channel();
    let thread = serving_thread(store.clone(), stopped, move |store| async move {
        one_check(&store).await.expect("answered");
        let flushed = spillway_testkit::redis::command(port, "FUNCTION FLUSH");
        assert_eq!(flushed.as_deref().map(str::trim), Some("+OK"));
        let again = one_check(&store).await;
        let _ = result.send((again, store.served_on_this_thread(&[]), clients(port)));
    });
    let (again, still_own, after) = outcome.await.expect("the thread reports");
    assert!(again.is_ok(), "the check after the flush: {again:?}");
    assert!(still_own, "and the thread connection stays up");
    let own: Vec<_> = after.iter().filter(|(id, _)| *id != shared).collect();
    assert_eq!(own.len(), 1, "{after:?}");
    assert_eq!(
        own[0].1, "fcall",
        "the retried check went out on it: {after:?}"
    );
    let library = spillway_testkit::redis::command(port, "FUNCTION LIST").unwrap_or_default();
    assert!(library.contains("spillway_"), "loaded again: {library}");
    let _ = stop.send(());
    thread.join().expect("thread");
}
