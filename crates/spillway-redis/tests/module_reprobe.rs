//! When a store whose checks go to the Lua library looks for the native module again, on real
//! redis-server processes: at most once every `REPROBE` of its clock after the module went or
//! was never there, sooner after a probe the server could not answer (still loading its data),
//! never inside a check, and never on a cluster.

mod common;

use common::module::{probe_gate, with_module};
use common::{check, key, redis_store, window, Backend};
use spillway_core::algorithm::LimitParams;
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_redis::RedisStore;
use spillway_testkit::redis::{calls, command, module_path, RedisCluster, RedisServer};
use std::io::Write;
use std::time::Duration;

/// How long a store in Lua waits between probes for the module (`module::REPROBE`).
const REPROBE: u64 = 30 * spillway_core::time::SECOND;

/// How long a store waits to probe again after a probe the server could not answer
/// (`module::RETRY`).
const RETRY: u64 = spillway_core::time::SECOND;

/// A store that starts while Redis is still loading its data (here `DEBUG RELOAD`, slowed
/// down key by key) meets `LOADING` in its start's probe: that says nothing of the module, so
/// once Redis serves, the store probes again at its first answered check [`RETRY`] after
/// that probe rather than [`REPROBE`], and its checks go to the module from then on. While Redis loads, checks fail as the store being
/// unavailable.
#[tokio::test]
async fn a_store_started_while_redis_loads_takes_the_module_once_it_serves() {
    let server = with_module(&["--enable-debug-command", "yes"]);
    let port = server.port();
    for setup in [
        "DEBUG POPULATE 20000",
        "CONFIG SET key-load-delay 300",
        "CONFIG SET loading-process-events-interval-bytes 1024",
    ] {
        let said = command(port, setup).unwrap_or_default();
        assert!(said.starts_with("+OK"), "{setup}: {said}");
    }
    // About 6 s of loading (20,000 keys at 300 µs each), answering others meanwhile.
    let mut reloading = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    reloading.write_all(b"DEBUG RELOAD\r\n").expect("sent");
    // No reply (a connection refused, a read given up) tells neither.
    let reply = || command(port, "GET spillway:test:loading");
    let loading = || reply().is_some_and(|r| r.starts_with("-LOADING"));
    let serving = || reply().is_some_and(|r| !r.starts_with("-LOADING"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !loading() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis starts loading"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let (k, p) = (key("l", &["loading"]), window(100));
    let consume = || async {
        let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
        d.map(|d| d[0].remaining)
    };
    if let Err(err) = consume().await {
        assert!(
            matches!(&err, spillway_core::store::StoreError::Unavailable(why) if why.contains("is loading")),
            "a check while Redis loads: {err:?}"
        );
    } else {
        assert!(serving(), "a check answered while Redis loads");
    }
    let stats = command(port, "INFO commandstats").unwrap_or_default();
    let probes = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_spillway.version:"))
        .unwrap_or_default();
    assert!(
        probes.contains(":calls=0,") && probes.contains(",rejected_calls=1,"),
        "the start's probe met LOADING: {probes:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !serving() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis finishes loading"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(reloading);

    let before = consume().await.expect("answered once Redis serves");
    assert_eq!(calls(port, "spillway.check"), 0, "in Lua");
    clock.advance(RETRY - 1);
    assert_eq!(consume().await.expect("answered"), before - 1);
    assert_eq!(
        calls(port, "spillway.version"),
        0,
        "no probe within the wait"
    );
    clock.advance(1);
    assert_eq!(consume().await.expect("answered"), before - 2);
    until_the_probe_switches(&store, &k, &p, port, 0, 0).await;
    assert_eq!(
        consume().await.expect("answered"),
        before - 3,
        "the count carries over"
    );
    assert!(calls(port, "spillway.check") >= 2, "in the module");
}

/// After falling back to Lua (the module unloaded), a store probes again at most once every
/// [`REPROBE`] on its clock, after the check that found the probe due (which runs in Lua): a
/// module loaded since takes the checks once the probe answers, and none before; the count
/// carries over each switch.
#[tokio::test]
async fn a_store_takes_a_module_loaded_after_it_fell_back() {
    let server = with_module(&["--enable-module-command", "yes"]);
    let port = server.port();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let (k, p) = (key("l", &["back"]), window(100));
    let (shared, k, p) = (&store, &k, &p);
    let mut expected = 100;
    let mut consume = move || {
        expected -= 1;
        let (store, expected) = (shared, expected);
        async move {
            let d = store
                .check(&[check(k, p, 1)], CheckMode::Consume)
                .await
                .expect("answered");
            assert_eq!(d[0].remaining, expected, "one count, module or Lua");
        }
    };
    consume().await;
    assert_eq!(calls(port, "spillway.check"), 1);
    let unloaded = command(port, "MODULE UNLOAD spillway").unwrap_or_default();
    assert!(unloaded.starts_with("+OK"), "{unloaded}");
    consume().await; // falls back to Lua within the call
    let loaded = command(port, &format!("MODULE LOAD {}", module_path())).unwrap_or_default();
    assert!(loaded.starts_with("+OK"), "{loaded}");
    let (probes, checks) = (
        calls(port, "spillway.version"),
        calls(port, "spillway.check"),
    );
    // The wait started at the fall-back; nothing probes within it.
    for _ in 0..3 {
        consume().await;
    }
    clock.advance(REPROBE - 1);
    consume().await;
    assert_eq!(
        calls(port, "spillway.version"),
        probes,
        "no probe within the wait"
    );
    assert_eq!(
        calls(port, "spillway.check"),
        checks,
        "checks stayed in Lua"
    );
    let lua = calls(port, "fcall");
    clock.advance(1);
    consume().await;
    assert_eq!(
        calls(port, "fcall"),
        lua + 1,
        "the check that made the probe due ran in Lua"
    );
    // The probe goes after that check, in a task of its own; checks switch once it answers.
    until_the_probe_switches(shared, k, p, port, probes, checks).await;
    assert_eq!(calls(port, "spillway.version"), probes + 1, "one probe");
    let (checks, lua) = (calls(port, "spillway.check"), calls(port, "fcall"));
    consume().await;
    consume().await;
    assert_eq!(
        calls(port, "spillway.check"),
        checks + 2,
        "the module is used again"
    );
    assert_eq!(calls(port, "fcall"), lua, "and Lua no more");
}

/// A store that started on a server without the module times its wait from the start's probe,
/// on the clock it was given at connect: a module loaded later is probed for once [`REPROBE`]
/// of that clock has passed, not before, and takes the checks once the probe answers.
#[tokio::test]
async fn a_store_started_without_the_module_probes_on_the_clock_it_was_given() {
    let server = RedisServer::start_with(&["--enable-module-command", "yes"]);
    let port = server.port();
    // Its clock reads T0 from the start.
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let (k, p) = (key("l", &["later"]), window(100));
    let consume = || async {
        let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
        d.expect("answered")[0].remaining
    };
    assert_eq!(consume().await, 99);
    let loaded = command(port, &format!("MODULE LOAD {}", module_path())).unwrap_or_default();
    assert!(loaded.starts_with("+OK"), "{loaded}");
    clock.advance(REPROBE - 1);
    assert_eq!(consume().await, 98);
    // The start's probe met "unknown command", which `INFO commandstats` does not count, so
    // the count is of later probes only.
    assert_eq!(
        calls(port, "spillway.version"),
        0,
        "no probe within the wait"
    );
    clock.advance(1);
    assert_eq!(consume().await, 97, "the check that made the probe due");
    assert_eq!(calls(port, "spillway.check"), 0, "ran in Lua");
    until_the_probe_switches(&store, &k, &p, port, 0, 0).await;
    assert_eq!(calls(port, "spillway.version"), 1, "one probe");
    assert_eq!(consume().await, 96, "the count carries over");
}

/// The check that finds a probe due does not wait for it: with the probe held at a proxy (and
/// whatever its connection sends after it), that check is answered in Lua within its budget,
/// and the store switches to the module once the probe is let through.
#[tokio::test]
async fn a_probe_that_cannot_answer_does_not_hold_the_check_that_made_it_due() {
    let server = with_module(&["--enable-module-command", "yes"]);
    let port = server.port();
    let (url, hold) = probe_gate(port).await;
    let (store, clock) = redis_store(Backend::Server(url)).await;
    let (k, p) = (key("l", &["held"]), window(100));
    let consume = || async {
        let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
        d.map(|d| d[0].remaining)
    };
    assert_eq!(consume().await.expect("answered"), 99);
    let unloaded = command(port, "MODULE UNLOAD spillway").unwrap_or_default();
    assert!(unloaded.starts_with("+OK"), "{unloaded}");
    assert_eq!(
        consume().await.expect("answered"),
        98,
        "fell back to Lua; the wait starts"
    );
    let loaded = command(port, &format!("MODULE LOAD {}", module_path())).unwrap_or_default();
    assert!(loaded.starts_with("+OK"), "{loaded}");
    let (probes, checks) = (
        calls(port, "spillway.version"),
        calls(port, "spillway.check"),
    );
    hold.send_replace(true);
    clock.advance(REPROBE);
    let answered = consume().await;
    assert_eq!(
        answered.expect("the check that made the probe due is answered within its budget"),
        97,
        "in Lua"
    );
    assert_eq!(calls(port, "spillway.version"), probes, "the probe is held");
    assert_eq!(
        calls(port, "spillway.check"),
        checks,
        "none since the module came back"
    );
    hold.send_replace(false);
    until_the_probe_switches(&store, &k, &p, port, probes, checks).await;
    assert_eq!(calls(port, "spillway.version"), probes + 1, "one probe");
    assert_eq!(
        consume().await.expect("answered"),
        96,
        "the count carries over"
    );
}

/// How long a test waits for a probe sent aside to reach the server and for its answer to
/// switch the checks: generous, since two shared cores may answer one late.
const SWITCH_WITHIN: Duration = Duration::from_secs(10);

/// Waits, within [`SWITCH_WITHIN`], for a probe sent aside to reach the server at `port`
/// (`spillway.version` past `probes`) and then for its answer to switch the checks: peeks of
/// `k` under `p`, which charge nothing and so cannot use up the window, until one runs in the
/// module (`spillway.check` past `checks`).
async fn until_the_probe_switches(
    store: &RedisStore,
    k: &StateKey,
    p: &LimitParams,
    port: u16,
    probes: u64,
    checks: u64,
) {
    let deadline = tokio::time::Instant::now() + SWITCH_WITHIN;
    while calls(port, "spillway.version") == probes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe reaches the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let peeked = store.check(&[check(k, p, 1)], CheckMode::Peek).await;
        peeked.expect("answered");
        if calls(port, "spillway.check") > checks {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe's answer switches the checks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Unknown commands the cluster's nodes answered so far (`errorstat_ERR`, which counts them;
/// `INFO commandstats` counts only commands the server knows).
fn refused(cluster: &RedisCluster) -> u64 {
    cluster
        .ports()
        .into_iter()
        .map(|port| {
            let stats = command(port, "INFO errorstats").unwrap_or_default();
            stats
                .lines()
                .find_map(|l| l.strip_prefix("errorstat_ERR:count="))
                .map_or(0, |n| n.trim().parse().expect("a count"))
        })
        .sum()
}

/// On a cluster a store in Lua does not probe again: the probe names no key, so it would reach
/// any one node, and a cluster where only some nodes have the module would switch back and
/// forth every [`REPROBE`].
#[tokio::test]
async fn a_cluster_store_in_lua_does_not_probe_again() {
    let cluster = RedisCluster::start();
    let (store, clock) = redis_store(Backend::Cluster(cluster.urls())).await;
    let (k, p) = (key("l", &["cluster"]), window(100));
    let consume = || async {
        let d = store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .expect("answered");
        d[0].remaining
    };
    assert_eq!(consume().await, 99, "the start's probe started the wait");
    let before = refused(&cluster);
    for _ in 0..3 {
        // Two waits: a whole minute, so each check is the first of its window.
        clock.advance(2 * REPROBE);
        assert_eq!(consume().await, 99, "the first check of a new window");
    }
    assert!(calls_on(&cluster, "fcall") >= 4, "the checks ran in Lua");
    assert_eq!(refused(&cluster), before, "no probe reached a node");
}

/// `command_name`'s calls over every node of `cluster`.
fn calls_on(cluster: &RedisCluster, command_name: &str) -> u64 {
    cluster
        .ports()
        .into_iter()
        .map(|port| calls(port, command_name))
        .sum()
}
