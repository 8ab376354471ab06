//! The two forms of the Lua code on real servers: the Functions library is what a store
//! calls, is loaded again after Redis loses it, and gives way to plain scripts on a server
//! without Functions; states written in the text form of earlier versions read the same.

mod common;

use common::{check, key, redis_store, replay, Backend};
use spillway_core::algorithm::{LimitParams, TokenBucket};
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Store};
use spillway_core::time::HOUR;
use spillway_testkit::redis::{calls, command, RedisServer};
use spillway_testkit::vectors::{self, flatten};

fn bucket(burst: u64) -> LimitParams {
    LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), burst).unwrap())
}

#[tokio::test]
async fn checks_call_the_library_and_survive_a_function_flush() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(1_700_000_000_000_000);
    let (k, p) = (key("l", &["flush"]), bucket(3));
    let first = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(first.unwrap()[0].remaining, 2);
    assert!(calls(server.port(), "fcall") >= 1, "the check ran as FCALL");
    assert_eq!(calls(server.port(), "evalsha"), 0, "and never as a script");

    let flushed = command(server.port(), "FUNCTION FLUSH").unwrap_or_default();
    assert!(flushed.starts_with("+OK"), "{flushed}");
    let list = command(server.port(), "FUNCTION LIST").unwrap_or_default();
    assert!(!list.contains("spillway_"), "the library is gone: {list}");

    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect("the library is loaded again and the call retried");
    assert_eq!(
        d[0].remaining, 1,
        "state kept across the flush, charged once"
    );
    let list = command(server.port(), "FUNCTION LIST").unwrap_or_default();
    assert!(list.contains("spillway_"), "the library is back: {list}");
}

#[tokio::test]
async fn a_server_without_functions_gets_plain_scripts_and_the_same_answers() {
    // Renaming the commands away makes the server answer as one from before Redis 7 does.
    let server = RedisServer::start_with(&[
        "--rename-command",
        "FUNCTION",
        "spw-no-function",
        "--rename-command",
        "FCALL",
        "spw-no-fcall",
    ]);
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    for (i, v) in vectors::conformance().iter().enumerate() {
        replay(&store, &clock, v, &format!("s{i}")).await;
    }
    assert!(
        calls(server.port(), "evalsha") > 0,
        "the checks ran as scripts"
    );
    assert_eq!(calls(server.port(), "spw-no-fcall"), 0);

    // A lost script is loaded again as before.
    assert!(command(server.port(), "SCRIPT FLUSH").is_some_and(|r| r.starts_with("+OK")));
    clock.set(1_700_000_000_000_000);
    let (k, p) = (key("l", &["script"]), bucket(2));
    for remaining in [1, 0] {
        let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
        assert_eq!(d.expect("reloaded")[0].remaining, remaining);
    }
}

#[tokio::test]
async fn an_acl_refusing_functions_gets_plain_scripts() {
    // A user who may run scripts but not Functions, as some managed Redis offerings set up.
    let server = RedisServer::start();
    let acl = command(
        server.port(),
        "ACL SETUSER default on nopass ~* &* +@all -function -fcall -fcall_ro",
    )
    .unwrap_or_default();
    assert!(acl.starts_with("+OK"), "{acl}");
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(1_700_000_000_000_000);
    let (k, p) = (key("l", &["acl"]), bucket(2));
    for remaining in [1, 0] {
        let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
        assert_eq!(
            d.expect("answered by a plain script")[0].remaining,
            remaining
        );
    }
    assert!(
        calls(server.port(), "evalsha") > 0,
        "the checks ran as scripts"
    );
}

/// Two versions of Spillway on one Redis during a rolling upgrade: each loads its own
/// library, named by the digest of its code, and calls its own functions. An older node's
/// library (here a stand-in whose check counts its calls) stays loaded beside this one's;
/// the older node's calls reach its code, this node's checks never do, and the older node
/// loading its library again (a restart mid-upgrade) leaves this one's in place, so this
/// node's next check needs no reload. Real redis-server.
#[tokio::test]
async fn two_library_versions_on_one_redis_each_call_their_own() {
    let server = RedisServer::start();
    let port = server.port();
    let ours = spillway_redis::script::library();
    let old = "0123456789ab";
    assert!(!ours.name.ends_with(old));
    let old_source = format!(
        "#!lua name=spillway_{old}\n\
         redis.register_function('spillway_check_{old}', function(keys, args) \
         return redis.call('INCR', 'old-code-calls') end)\n\
         redis.register_function('spillway_refund_{old}', function(keys, args) return 0 end)\n"
    );
    let client = redis::Client::open(server.url()).expect("a URL");
    let mut old_node = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let load_old = || {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&old_source);
        cmd
    };
    let loaded: String = load_old().query_async(&mut old_node).await.expect("loads");
    assert_eq!(loaded, format!("spillway_{old}"));

    // This version starts beside it and loads its own library.
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(1_700_000_000_000_000);
    let (k, p) = (key("l", &["upgrade"]), bucket(3));
    let first = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(first.expect("checked")[0].remaining, 2);
    let list = command(port, "FUNCTION LIST").unwrap_or_default();
    assert!(
        list.contains(&ours.name) && list.contains(&format!("spillway_{old}")),
        "both libraries loaded: {list}"
    );

    // The older node calls its own code, and only it does.
    let old_call = || {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("spillway_check_{old}")).arg(0);
        cmd
    };
    let n: u64 = old_call()
        .query_async(&mut old_node)
        .await
        .expect("old call");
    assert_eq!(n, 1);
    let loads = calls(port, "function|load");
    let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(d.expect("checked")[0].remaining, 1);
    let old_calls = command(port, "GET old-code-calls").unwrap_or_default();
    assert!(old_calls.contains("\r\n1\r\n"), "{old_calls:?}");

    // The older node restarts and loads its library again: this one's stays.
    let _: String = load_old()
        .query_async(&mut old_node)
        .await
        .expect("reloads");
    let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(d.expect("checked")[0].remaining, 0);
    assert_eq!(
        calls(port, "function|load"),
        loads + 1,
        "only the older node's reload: this node's library was not lost"
    );
    let n: u64 = old_call()
        .query_async(&mut old_node)
        .await
        .expect("old call");
    assert_eq!(n, 2, "this node's checks never ran the older code");
}

/// Rewrites the packed state at `key` in the text form earlier versions wrote (without the
/// deadline the packed form carries after the state), keeping its expiry. Missing keys are
/// left alone.
async fn to_text(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .ok()
        .flatten();
    let Some(raw) = raw else { return };
    let (tag, n) = match raw.first() {
        Some(b't') => ("T", 4),
        Some(b'g') => ("G", 4),
        Some(b'f') => ("F", 2),
        Some(b'w') => ("W", 3),
        Some(b'b') => ("B", 3),
        // Already text: nothing was written since the last rewrite.
        Some(c) if c.is_ascii_uppercase() => return,
        _ => panic!("{key} holds {raw:?}, not a packed state"),
    };
    assert_eq!(
        raw.len(),
        1 + 8 * (n + 1),
        "{key}: state and deadline: {raw:?}"
    );
    let mut text = tag.to_owned();
    for chunk in raw[1..1 + 8 * n].chunks_exact(8) {
        let x = f64::from_le_bytes(chunk.try_into().unwrap());
        text.push_str(&format!(":{x:.0}"));
    }
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(text)
        .arg("KEEPTTL")
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn states_in_the_text_form_of_earlier_versions_read_the_same() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut rewritten = 0;
    for (i, v) in vectors::conformance().iter().enumerate() {
        if v.algorithm == "sliding_log" {
            continue;
        }
        // Every event reads the state the one before it wrote, turned into text.
        let k = key(&v.name, &[&format!("t{i}")]);
        let redis_key = store.redis_key(&k);
        let mut params = v.params();
        for (n, e) in v.events.iter().enumerate() {
            if let Some(numbers) = e.numbers {
                params = v.params_with(numbers);
            }
            clock.set(e.at);
            let mode = if e.peek {
                CheckMode::Peek
            } else {
                CheckMode::Consume
            };
            let got = if e.charge {
                let charges = [check(&k, &params, e.cost)];
                store.charge(&charges, None).await.unwrap().decisions
            } else {
                let c = Check {
                    metered: e.metered,
                    ..check(&k, &params, e.cost)
                };
                store.check(&[c], mode).await.unwrap()
            };
            assert_eq!(flatten(&got[0]), e.expect, "{} event {n}", v.name);
            to_text(&mut conn, &redis_key).await;
            rewritten += 1;
        }
    }
    assert!(rewritten > 50, "the vectors exercised the text form");
}

#[tokio::test]
async fn states_written_at_redis_time_expire_when_they_would_read_as_fresh() {
    // Production stores take the time from Redis TIME, and expiries follow it.
    let server = RedisServer::start();
    let mut config = spillway_redis::RedisConfig::new(
        spillway_redis::Target::Server(server.url()),
        "the test's URL",
    );
    config.local_cache_keys = 0;
    let store = spillway_redis::RedisStore::connect(&config).await.unwrap();
    let (k, p) = (key("l", &["expiry"]), bucket(3));
    // One token of three at one per hour: full again one hour after the charge.
    let d = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(d.unwrap()[0].remaining, 2);
    let pttl = command(server.port(), &format!("PTTL {}", store.redis_key(&k))).unwrap_or_default();
    let ms: i64 = pttl.trim_start_matches(':').trim().parse().unwrap();
    // The deadline gets a quarter of slack (see lua/check.lua).
    let hour = HOUR as i64 / 1000;
    assert!(
        (hour - 5_000..=hour + hour / 4 + 1).contains(&ms),
        "expires in about an hour and a quarter, never before the hour: {ms} ms"
    );
    let again = store.check(&[check(&k, &p, 1)], CheckMode::Consume).await;
    assert_eq!(again.unwrap()[0].remaining, 1, "and reads back as written");
}
