//! Helpers of the tests of the native module (`tests/module.rs`, `tests/module_effects.rs`,
//! `tests/module_shared_keys.rs`): servers loading it, the call to it or to the Lua library,
//! random numbers and calls, what a key holds, and a proxy that holds the store's probes for it.

use redis::aio::MultiplexedConnection;
use redis::Value;
use spillway_testkit::redis::{module_path, RedisServer};
use spillway_testkit::vectors::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A redis-server loading the module, with `extra` arguments.
pub fn with_module(extra: &[&str]) -> RedisServer {
    with_module_args(&[], extra)
}

/// The module's load argument that sends its string writes through called commands, as on
/// Redis before 7.0 (`spillway_redis_module::CALLED_WRITES`; not imported, as linking the
/// module's crate into a test would bring its global allocator).
pub const CALLED_WRITES: &str = "called-writes";

/// A redis-server loading the module with `module_args` (none, or [`CALLED_WRITES`]), with
/// `extra` arguments.
pub fn with_module_args(module_args: &[&str], extra: &[&str]) -> RedisServer {
    let path = module_path();
    let mut args = vec!["--loadmodule", path.as_str()];
    args.extend(module_args);
    args.extend(extra);
    RedisServer::start_with(&args)
}

/// A connection to `server`.
pub async fn connect(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Loads the Lua library and returns its check function's name.
pub async fn load_library(conn: &mut MultiplexedConnection) -> String {
    let lib = spillway_redis::script::library();
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&lib.source)
        .query_async(conn)
        .await
        .unwrap();
    lib.check.clone()
}

/// One check call, to the module or to the Lua function `lua`; a server error as `Err`.
pub async fn call(
    conn: &mut MultiplexedConnection,
    lua: Option<&str>,
    keys: &[String],
    now: &str,
    blob: &[u8],
) -> redis::RedisResult<Value> {
    let mut cmd = match lua {
        Some(name) => {
            let mut c = redis::cmd("FCALL");
            c.arg(name).arg(keys.len());
            c
        }
        None => redis::cmd("SPILLWAY.CHECK"),
    };
    cmd.arg(keys).arg(now).arg(blob);
    match cmd.query_async(conn).await {
        Ok(Value::ServerError(e)) => Err(e.into()),
        other => other,
    }
}

pub fn pack(numbers: &[f64]) -> Vec<u8> {
    numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// Random numbers for algorithm `code`: mostly small, sometimes near 2^53.
pub fn numbers(rng: &mut Rng, code: u64) -> [f64; 3] {
    let big = |rng: &mut Rng| (1u64 << (30 + rng.below(23))) as f64 + rng.below(1000) as f64;
    let mut pick = |small: u64| {
        if rng.below(20) == 0 {
            big(rng)
        } else {
            (1 + rng.below(small)) as f64
        }
    };
    // Now and then a quota of exactly 2^53, the largest validation allows.
    let top = |rng: &mut Rng, usual: f64| {
        if rng.below(25) == 0 {
            TOP
        } else {
            usual
        }
    };
    match code {
        1 | 2 | 6 => {
            let p = [pick(1000), pick(10_000_000), pick(50)];
            [p[0], p[1], top(rng, p[2])]
        }
        _ => {
            let p = [pick(50) - 1.0, pick(100_000_000), 0.0];
            [top(rng, p[0]), p[1], p[2]]
        }
    }
}

/// 2^53: the largest quota validation allows; the store sends a cost past it as 2^53 + 2.
pub const TOP: f64 = 9_007_199_254_740_992.0;

/// PTTLs of the two sides, taken at slightly different moments, agree within this (ms).
pub const TTL_SLACK: i64 = 200;

pub fn ttl_close(a: i64, b: i64) -> bool {
    if a < 0 || b < 0 {
        a == b
    } else {
        (a - b).abs() <= TTL_SLACK
    }
}

/// The two replies agree: the packed decisions exactly, undo records exactly but for their
/// PTTLs (read at slightly different moments).
pub fn same_reply(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::BulkString(x), Value::BulkString(y)) => x == y,
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().all(|(i, (u, v))| {
                if i > 0 && i % 3 == 2 {
                    let n = |v: &Value| match v {
                        Value::BulkString(b) => String::from_utf8_lossy(b).parse::<i64>().ok(),
                        _ => None,
                    };
                    matches!((n(u), n(v)), (Some(p), Some(q)) if ttl_close(p, q))
                } else {
                    u == v
                }
            })
        }
        _ => false,
    }
}

/// One call made on two copies of the keys, through the Lua library on `a:<name>` and another
/// way on `b:<name>`: asserts that both succeeded, that the replies agree, and that so does
/// each key of `names` on the two sides (type, contents, PTTL); `what` names the call in a
/// failure. The second reply.
pub async fn assert_sides_agree(
    conn: &mut MultiplexedConnection,
    a: redis::RedisResult<Value>,
    b: redis::RedisResult<Value>,
    names: &[String],
    what: &str,
) -> Value {
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("{what}: a call failed: lua {a:?}, other {b:?}"),
    };
    assert!(
        same_reply(&a, &b),
        "{what}: replies differ\nlua:   {a:?}\nother: {b:?}"
    );
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    for name in &names {
        let (ka, va, ta) = snapshot(conn, &format!("a:{name}")).await;
        let (kb, vb, tb) = snapshot(conn, &format!("b:{name}")).await;
        assert!(
            ka == kb && va == vb && ttl_close(ta, tb),
            "{what}: key {name} differs\nlua:   {ka} {va:?} pttl {ta}\nother: {kb} {vb:?} pttl {tb}"
        );
    }
    b
}

/// A key's type, contents (string value or scored members) and PTTL.
pub async fn snapshot(conn: &mut MultiplexedConnection, key: &str) -> (String, Value, i64) {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
    let contents = match kind.as_str() {
        "string" => redis::cmd("GET").arg(key).query_async(conn).await.unwrap(),
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .unwrap(),
        _ => Value::Nil,
    };
    let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap();
    (kind, contents, ttl)
}

/// A key's type, contents and absolute expiry (`PEXPIRETIME`, which a replica holds exactly
/// as its master).
pub async fn replicated(conn: &mut MultiplexedConnection, key: &str) -> (String, Value, i64) {
    let (kind, contents, _) = snapshot(conn, key).await;
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    (kind, contents, at)
}

/// A random call over keys `<prefix>k0..k5` (algorithm `1 + i % 6` at `k<i>`, so `k4` is a
/// sliding log) and report markers `<prefix>m0..m2`: one to three requests of one to three
/// limits, with every request flag the store sends; now and then a limit of another
/// algorithm on a key, so a log and a string state meet on one key in one call. The packed
/// requests and the key names (without the prefix).
pub fn random_call(rng: &mut Rng, usual: &[(u64, [f64; 3])]) -> (Vec<u8>, Vec<String>) {
    let mut numbers_in_call = Vec::new();
    let mut names = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let flags = [0.0, 1.0, 1.0, 3.0, 4.0, 12.0][rng.below(6) as usize];
        let n = 1 + rng.below(3);
        numbers_in_call.extend([flags, n as f64]);
        if flags >= 8.0 {
            names.push(format!("m{}", rng.below(3)));
        }
        for _ in 0..n {
            let k = rng.below(usual.len() as u64);
            let (mut code, mut p) = usual[k as usize];
            if rng.below(8) == 0 {
                code = 1 + rng.below(6);
                p = numbers(rng, code);
            }
            let cost = rng.below(4) as f64;
            numbers_in_call.extend([code as f64, p[0], p[1], p[2], cost, 1.0]);
            names.push(format!("k{k}"));
        }
    }
    (pack(&numbers_in_call), names)
}

/// Each key's usual algorithm and numbers for [`random_call`].
pub fn usual_limits(rng: &mut Rng, keys: u64) -> Vec<(u64, [f64; 3])> {
    (0..keys)
        .map(|i| {
            let code = 1 + i % 6;
            (code, numbers(rng, code))
        })
        .collect()
}

/// A proxy to the server at `port` that, while the returned switch is on (`true`), holds what
/// a connection sends from the first write that carries a probe for the module
/// (`SPILLWAY.VERSION`): the probe, and whatever that connection sends after it, wait for the
/// switch to go off. Everything else passes straight through.
pub async fn probe_gate(port: u16) -> (String, watch::Sender<bool>) {
    const PROBE: &[u8] = b"SPILLWAY.VERSION";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("redis://{}", listener.local_addr().expect("address"));
    let (hold, held) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let mut held = held.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let probe = buf[..n]
                        .windows(PROBE.len())
                        .any(|w| w.eq_ignore_ascii_case(PROBE));
                    if probe && held.wait_for(|on| !*on).await.is_err() {
                        return;
                    }
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, hold)
}
