//! The native Redis module (`SPILLWAY.CHECK`, crate `spillway-redis-module`) against the Lua
//! library it replaces, on real redis-server processes that load it with `--loadmodule`:
//! byte-for-byte the same replies, stored states and expiries on random calls, with keys
//! written by one read by the other; malformed calls refused without harm to the server; and a
//! store that picks the module when the server has it and falls back to Lua when it goes.

mod common;

use common::module::{
    assert_sides_agree, call, connect, load_library, numbers, pack, probe_gate, replicated,
    same_reply, snapshot, ttl_close, with_module, with_module_args, CALLED_WRITES, TOP,
};
use common::{check, key, redis_store, window, Backend, T0};
use redis::Value;
use spillway_core::algorithm::LimitParams;
use spillway_core::key::StateKey;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_redis::RedisStore;
use spillway_testkit::redis::{calls, command, module_path, RedisCluster, RedisServer};
use spillway_testkit::vectors::Rng;
use std::time::Duration;

/// Random calls over a small pool of keys, on two copies of the same keys: side `a` always
/// through the Lua library, side `b` through the module or the Lua at random, call by call.
/// Every reply, stored value and expiry must agree, so the module's replies equal the Lua's
/// and each reads what the other wrote (every algorithm, the charges, report markers, undo
/// records, metered admissions, limits whose numbers change and keys holding another
/// algorithm's state or the text forms of earlier versions).
#[tokio::test]
async fn module_and_lua_agree_byte_for_byte_and_read_each_others_keys() {
    agree_byte_for_byte(&[]).await;
}

/// The same, with the module's string writes through called commands (as before Redis 7.0).
#[tokio::test]
async fn module_and_lua_agree_byte_for_byte_with_called_writes() {
    agree_byte_for_byte(&[CALLED_WRITES]).await;
}

async fn agree_byte_for_byte(module_args: &[&str]) {
    let server = with_module_args(module_args, &[]);
    let mut conn = connect(&server).await;
    let lua = load_library(&mut conn).await;
    let mut rng = Rng::new(
        std::env::var("SPILLWAY_DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_261_218),
    );
    const KEYS: u64 = 6;
    const MARKERS: u64 = 3;
    // Each key's usual algorithm and numbers.
    let mut usual: Vec<(u64, [f64; 3])> = (0..KEYS)
        .map(|i| {
            let code = 1 + i % 6;
            (code, numbers(&mut rng, code))
        })
        .collect();
    let mut now = T0 as f64;
    // States in the text forms of earlier versions, on both sides.
    for side in ["a", "b"] {
        let _: () = redis::cmd("SET")
            .arg(format!("{side}:k2"))
            .arg(format!("F:{}:3", now as u64 - 1_000))
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{side}:k4"))
            .arg(format!(
                "L;{},1;{},2",
                now as u64 - 5_000,
                now as u64 - 2_000
            ))
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let (mut by_module, mut by_lua) = (0, 0);
    for step in 0..1500 {
        // Time moves on, now and then back (a peek at an earlier time).
        if rng.below(10) == 0 {
            now -= rng.below(1_000_000) as f64;
        } else {
            now += rng.below(2_000_000) as f64;
        }
        let mut numbers_in_call = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let flags = [0.0, 1.0, 1.0, 3.0, 4.0, 12.0][rng.below(6) as usize];
            let n = 1 + rng.below(3);
            numbers_in_call.extend([flags, n as f64]);
            if flags >= 8.0 {
                names.push(format!("m{}", rng.below(MARKERS)));
            }
            for _ in 0..n {
                let k = rng.below(KEYS);
                if rng.below(25) == 0 {
                    // The limit's numbers change (as after a reload).
                    let code = usual[k as usize].0;
                    usual[k as usize].1 = numbers(&mut rng, code);
                }
                let (mut code, mut p) = usual[k as usize];
                if rng.below(30) == 0 {
                    // Another algorithm on the same key.
                    code = 1 + rng.below(6);
                    p = numbers(&mut rng, code);
                }
                let quota = if matches!(code, 1 | 2 | 6) {
                    p[2]
                } else {
                    p[0]
                };
                let cost = if rng.below(10) == 0 {
                    // The store's cost past the quota (`over_quota`): 2^53 + 1 is no double.
                    if quota >= TOP {
                        TOP + 2.0
                    } else {
                        quota + 1.0
                    }
                } else {
                    rng.below(1 + (quota as u64).min(20)) as f64
                };
                let lflags = [1.0, 1.0, 1.0, 0.0, 3.0][rng.below(5) as usize];
                numbers_in_call.extend([code as f64, p[0], p[1], p[2], cost, lflags]);
                names.push(format!("k{k}"));
            }
        }
        let blob = pack(&numbers_in_call);
        let at = format!("{}", now as u64);
        let keys =
            |side: &str| -> Vec<String> { names.iter().map(|n| format!("{side}:{n}")).collect() };
        let a = call(&mut conn, Some(&lua), &keys("a"), &at, &blob).await;
        let module = rng.below(2) == 0;
        if module {
            by_module += 1;
        } else {
            by_lua += 1;
        }
        let b = call(
            &mut conn,
            (!module).then_some(lua.as_str()),
            &keys("b"),
            &at,
            &blob,
        )
        .await;
        let what =
            format!("step {step} (module: {module}), call {numbers_in_call:?} keys {names:?}");
        assert_sides_agree(&mut conn, a, b, &names, &what).await;
    }
    assert!(by_module > 500 && by_lua > 500, "{by_module} / {by_lua}");
    assert!(calls(server.port(), "spillway.check") >= by_module);
}

/// Random calls on a master with a replica, both with the module, mostly at the server's own
/// clock (`now` = ""): the replica receives the effects (never the command, which it would run
/// at its own time), so every key's value, members and expiry are the master's exactly.
#[tokio::test]
async fn a_replica_holds_exactly_what_the_module_wrote_on_its_master() {
    replica_holds_what_the_master_wrote(&[]).await;
}

/// The same, with the module's string writes through called commands (as before Redis 7.0).
#[tokio::test]
async fn a_replica_holds_exactly_what_the_module_wrote_with_called_writes() {
    replica_holds_what_the_master_wrote(&[CALLED_WRITES]).await;
}

async fn replica_holds_what_the_master_wrote(module_args: &[&str]) {
    let master = with_module_args(module_args, &[]);
    let master_port = master.port().to_string();
    let replica = with_module_args(module_args, &["--replicaof", "127.0.0.1", &master_port]);
    #[allow(clippy::disallowed_methods)] // a deadline for the link to come up, not limit time
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !command(replica.port(), "INFO replication")
        .unwrap_or_default()
        .contains("master_link_status:up")
    {
        #[allow(clippy::disallowed_methods)]
        let late = std::time::Instant::now() > deadline;
        assert!(!late, "the replica never linked to its master");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut conn = connect(&master).await;
    let mut rng = Rng::new(20_261_204);
    const KEYS: u64 = 6;
    let usual: Vec<(u64, [f64; 3])> = (0..KEYS)
        .map(|i| {
            let code = 1 + i % 6;
            (code, numbers(&mut rng, code))
        })
        .collect();
    let mut names = std::collections::BTreeSet::new();
    let mut served = 0;
    for step in 0..400 {
        let mut numbers_in_call = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let flags = [1.0, 1.0, 3.0, 4.0, 12.0][rng.below(5) as usize];
            let n = 1 + rng.below(3);
            numbers_in_call.extend([flags, n as f64]);
            if flags >= 8.0 {
                keys.push(format!("r:m{}", rng.below(3)));
            }
            for _ in 0..n {
                let k = rng.below(KEYS);
                let (code, p) = usual[k as usize];
                let cost = rng.below(4) as f64;
                numbers_in_call.extend([code as f64, p[0], p[1], p[2], cost, 1.0]);
                keys.push(format!("r:k{k}"));
            }
        }
        names.extend(keys.iter().cloned());
        let now = if rng.below(5) == 0 {
            format!("{}", T0 + step * 1_000)
        } else {
            String::new()
        };
        let reply = call(&mut conn, None, &keys, &now, &pack(&numbers_in_call)).await;
        assert!(reply.is_ok(), "step {step}: {reply:?}");
        served += 1;
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica acknowledged every write");
    let mut on_replica = connect(&replica).await;
    let mut present = 0;
    for name in &names {
        let m = replicated(&mut conn, name).await;
        let r = replicated(&mut on_replica, name).await;
        assert_eq!(m, r, "{name}: master, replica");
        present += usize::from(m.0 != "none");
    }
    assert!(present >= 5, "only {present} keys were written");
    assert_eq!(calls(master.port(), "spillway.check"), served);
    assert_eq!(
        calls(replica.port(), "spillway.check"),
        0,
        "the replica never ran the command"
    );
}

/// Random bytes as the requests (and random times and key counts), and well-formed requests of
/// random doubles (NaN, infinities, negatives, fractions, 2^64): every call is answered with a
/// reply or a clear error, and the server lives on.
#[tokio::test]
async fn malformed_calls_get_an_error_and_never_crash_the_server() {
    let server = with_module(&[]);
    let mut conn = connect(&server).await;
    let mut rng = Rng::new(7);
    let odd = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        0.5,
        0.0,
        1.0,
        2.0,
        5.0,
        6.0,
        7.0,
        9_007_199_254_740_992.0,
        18_446_744_073_709_551_616.0,
        1e300,
    ];
    let (mut errors, mut replies) = (0, 0);
    for i in 0..3000 {
        let keys: Vec<String> = (0..rng.below(4)).map(|k| format!("f{k}")).collect();
        let now = match rng.below(4) {
            0 => String::new(),
            1 => format!("{}", T0 + rng.below(1_000_000_000)),
            2 => "-12.5".into(),
            _ => "soon".into(),
        };
        let blob: Vec<u8> = if i % 2 == 0 {
            (0..rng.below(120)).map(|_| rng.below(256) as u8).collect()
        } else {
            // The shape of a real call with random numbers in it.
            let mut numbers = vec![
                [0.0, 1.0, 4.0, 12.0][rng.below(4) as usize],
                keys.len() as f64,
            ];
            for _ in 0..keys.len() {
                for slot in 0..6 {
                    let n = if rng.below(3) == 0 {
                        odd[rng.below(odd.len() as u64) as usize]
                    } else if slot == 0 {
                        (1 + rng.below(6)) as f64
                    } else {
                        rng.below(1_000_000) as f64
                    };
                    numbers.push(n);
                }
            }
            pack(&numbers)
        };
        match call(&mut conn, None, &keys, &now, &blob).await {
            Ok(Value::BulkString(_) | Value::Array(_)) => replies += 1,
            Ok(other) => panic!("call {i}: unexpected reply {other:?}"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("spillway.check") || text.contains("wrong number"),
                    "call {i}: an error that does not say what was wrong: {text}"
                );
                errors += 1;
            }
        }
    }
    assert!(
        errors > 1000 && replies > 50,
        "{errors} errors, {replies} replies"
    );
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// A refused call writes nothing: the whole request blob is checked before any limit runs.
#[tokio::test]
async fn a_malformed_call_writes_nothing() {
    let server = with_module(&[]);
    let mut conn = connect(&server).await;
    // A good request, then one with an unknown algorithm code.
    let blob = pack(&[
        1.0, 1.0, 3.0, 10.0, 1e6, 0.0, 1.0, 1.0, // fixed window on k1
        1.0, 1.0, 9.0, 10.0, 1e6, 0.0, 1.0, 1.0, // code 9 on k2
    ]);
    let keys = vec!["k1".to_string(), "k2".to_string()];
    let err = call(&mut conn, None, &keys, &T0.to_string(), &blob)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("code 9"), "{err}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg("k1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the first request was not written");
}

#[tokio::test]
async fn a_store_sends_checks_to_the_module_when_the_server_has_it() {
    let server = with_module(&[]);
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(T0);
    let (k, p) = (key("l", &["module"]), window(2));
    for remaining in [1, 0] {
        let d = store
            .check(&[check(&k, &p, 1)], CheckMode::Consume)
            .await
            .unwrap();
        assert_eq!(d[0].remaining, remaining);
    }
    assert!(calls(server.port(), "spillway.check") >= 2);
    assert_eq!(calls(server.port(), "fcall"), 0, "no check went to Lua");
}

#[tokio::test]
async fn the_module_answers_the_digest_of_this_versions_lua_code() {
    // The store takes a module only when this digest is its library's (the comparison itself
    // is a unit test of `module.rs`); the module bakes it in from `lua/` at build time.
    let server = with_module(&[]);
    let reply = command(server.port(), "SPILLWAY.VERSION").unwrap_or_default();
    let digest = &spillway_redis::script::library().digest;
    assert_eq!(reply, format!("${}\r\n{digest}\r\n", digest.len()));
}

#[tokio::test]
async fn a_store_falls_back_to_lua_when_an_acl_forbids_the_module() {
    let server = with_module(&[]);
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(T0);
    let (k, p) = (key("l", &["acl"]), window(3));
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .unwrap();
    assert_eq!(d[0].remaining, 2);
    assert_eq!(calls(server.port(), "spillway.check"), 1);
    let set = command(server.port(), "ACL SETUSER default -spillway.check").unwrap_or_default();
    assert!(set.starts_with("+OK"), "{set}");
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect("the check falls back to Lua within the call");
    assert_eq!(d[0].remaining, 1, "Lua read the module's state");
    assert!(calls(server.port(), "fcall") >= 1);
}

#[tokio::test]
async fn a_store_without_the_module_calls_the_library() {
    let server = RedisServer::start();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(T0);
    let (k, p) = (key("l", &["lua"]), window(2));
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .unwrap();
    assert_eq!(d[0].remaining, 1);
    assert!(calls(server.port(), "fcall") >= 1);
    assert_eq!(calls(server.port(), "spillway.check"), 0);
}

/// The module unloaded under a running store: the next check meets "unknown command", goes
/// to the Lua library in the same call and succeeds, reading the state the module wrote.
#[tokio::test]
async fn a_store_falls_back_to_lua_when_the_module_goes() {
    let server = with_module(&["--enable-module-command", "yes"]);
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(T0);
    let (k, p) = (key("l", &["gone"]), window(3));
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .unwrap();
    assert_eq!(d[0].remaining, 2);
    let unloaded = command(server.port(), "MODULE UNLOAD spillway").unwrap_or_default();
    assert!(unloaded.starts_with("+OK"), "{unloaded}");
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .expect("the check falls back to Lua within the call");
    assert_eq!(d[0].remaining, 1, "Lua read the module's state");
    let d = store
        .check(&[check(&k, &p, 1)], CheckMode::Consume)
        .await
        .unwrap();
    assert_eq!(d[0].remaining, 0);
    assert!(calls(server.port(), "fcall") >= 2);
}

/// How long a store in Lua waits between probes for the module (`module::REPROBE`).
const REPROBE: u64 = 30 * spillway_core::time::SECOND;

/// After falling back to Lua (the module unloaded), a store probes again at most once every
/// [`REPROBE`] on its clock, after the check that found the probe due (which runs in Lua): a
/// module loaded since takes the checks once the probe answers, and none before; the count
/// carries over each switch.
#[tokio::test]
async fn a_store_takes_a_module_loaded_after_it_fell_back() {
    let server = with_module(&["--enable-module-command", "yes"]);
    let port = server.port();
    let (store, clock) = redis_store(Backend::Server(server.url())).await;
    clock.set(T0);
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
    clock.set(T0);
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
