//! The native Redis module (`SPILLWAY.CHECK`, crate `spillway-redis-module`) against the Lua
//! library it replaces, on real redis-server processes that load it with `--loadmodule`:
//! byte-for-byte the same replies, stored states and expiries on random calls, with keys
//! written by one read by the other; malformed calls refused without harm to the server; and a
//! store that picks the module when the server has it and falls back to Lua when it goes (how
//! it looks for the module again: `module_reprobe.rs`).

mod common;

use common::module::{
    assert_sides_agree, call, connect, load_library, numbers, pack, replicated, with_module,
    with_module_args, CALLED_WRITES, TOP,
};
use common::{check, key, redis_store, window, Backend, T0};
use redis::Value;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_testkit::redis::{calls, command, RedisServer};
use spillway_testkit::vectors::Rng;

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
    let (store, _) = redis_store(Backend::Server(server.url())).await;
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
    let (store, _) = redis_store(Backend::Server(server.url())).await;
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
    let (store, _) = redis_store(Backend::Server(server.url())).await;
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
    let (store, _) = redis_store(Backend::Server(server.url())).await;
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
