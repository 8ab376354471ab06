//! Fixed cases of one key written both as a sliding log (a sorted set) and as a string state,
//! each run on two copies of the keys, one through the Lua library and one through the module,
//! with the replies, values and expiries compared: the random calls of `tests/module.rs` meet
//! these only now and then, and no assertion there names them.
//!
//! - A string state written over a log: the module's write replaces a key of another type
//!   (`Held::Other` in `write::set_with_px`), as the Lua's `SET ... PX` does.
//! - A string state whose expiry would be kept (`SET ... XX KEEPTTL`) on a key that a log
//!   limit of the same request deleted first (the log's upgrade of a string it cannot read):
//!   the write finds no key and sets a new expiry instead, and the undo record reads the key as
//!   it is when written, not as it was read.
//!
//! A kept expiry never meets a sorted set (`Held::Other` in `write::in_place`): keeping needs a
//! deadline read from the key's string state, and before the write the request can only write
//! that key as a string (a log limit's write waits for a later limit on its key) or delete it
//! (a log's upgrade: no state is tagged as an older log, so none becomes a sorted set).

mod common;

use common::module::{
    assert_sides_agree, call, connect, load_library, pack, snapshot, with_module_args,
    CALLED_WRITES,
};
use common::T0;
use redis::aio::MultiplexedConnection;
use redis::Value;
use spillway_testkit::redis::RedisServer;

/// Request flags: consume, and also return undo records.
const CONSUME: f64 = 1.0;
const CONSUME_UNDO: f64 = 3.0;

/// A token bucket of a million (one unit per call is always admitted), enforced.
fn bucket(cost: f64) -> [f64; 6] {
    [1.0, 1.0, 1000.0, 1_000_000.0, cost, 1.0]
}

/// A sliding log of ten units over a second, with the limit's flags `lflags` (1: enforced, 2:
/// a metered admission, consuming nothing and not enforced).
fn log(cost: f64, lflags: f64) -> [f64; 6] {
    [5.0, 10.0, 1_000_000.0, 0.0, cost, lflags]
}

/// One request of `flags` over `limits`.
fn request(flags: f64, limits: &[[f64; 6]]) -> Vec<f64> {
    let mut numbers = vec![flags, limits.len() as f64];
    for l in limits {
        numbers.extend(l);
    }
    numbers
}

/// Runs one call on keys `a:<name>` through the Lua library `lua` and on `b:<name>` through
/// the module, at `now`: the two replies agree, and so does every key named (type, contents
/// and PTTL). The module's reply and the type its key `names[0]` then has.
async fn agree(
    conn: &mut MultiplexedConnection,
    lua: &str,
    numbers: &[f64],
    names: &[&str],
    now: u64,
) -> (Value, String) {
    let blob = pack(numbers);
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let keys =
        |side: &str| -> Vec<String> { names.iter().map(|n| format!("{side}:{n}")).collect() };
    let now = now.to_string();
    let a = call(conn, Some(lua), &keys("a"), &now, &blob).await;
    let b = call(conn, None, &keys("b"), &now, &blob).await;
    let what = format!("{numbers:?} on {names:?}");
    let b = assert_sides_agree(conn, a, b, &names, &what).await;
    let (kind, _, _) = snapshot(conn, &format!("b:{}", names[0])).await;
    (b, kind)
}

/// The undo records of a reply (old value, its PTTL, new value per limit), as text.
fn undo_records(reply: &Value) -> Vec<String> {
    match reply {
        Value::Array(items) => items[1..]
            .iter()
            .map(|v| match v {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("an undo record is {other:?}"),
            })
            .collect(),
        other => panic!("no undo records: {other:?}"),
    }
}

/// A server with the module loaded with `module_args`, the Lua library loaded, and a
/// connection to it.
async fn setup(module_args: &[&str]) -> (RedisServer, MultiplexedConnection, String) {
    let server = with_module_args(module_args, &[]);
    let mut conn = connect(&server).await;
    let lua = load_library(&mut conn).await;
    (server, conn, lua)
}

/// A log, then a string state on the same key, consumed with and without undo records: the
/// string replaces the sorted set and gets its own expiry, as the Lua's `SET ... PX` does.
async fn string_over_log(module_args: &[&str]) {
    let (_server, mut conn, lua) = setup(module_args).await;
    for (key, flags) in [("plain", CONSUME), ("undone", CONSUME_UNDO)] {
        let (_, kind) = agree(
            &mut conn,
            &lua,
            &request(CONSUME, &[log(1.0, 1.0)]),
            &[key],
            T0,
        )
        .await;
        assert_eq!(kind, "zset", "{key}: the log was written");
        let (reply, kind) = agree(
            &mut conn,
            &lua,
            &request(flags, &[bucket(1.0)]),
            &[key],
            T0 + 1_000,
        )
        .await;
        assert_eq!(kind, "string", "{key}: the state replaced the log");
        if flags == CONSUME_UNDO {
            let undo = undo_records(&reply);
            assert_eq!(undo[0], "", "a sorted set is no old string");
            assert!(
                undo[1].parse::<i64>().unwrap() > 0,
                "the log's PTTL: {undo:?}"
            );
        }
    }
}

/// A string state, then one request over the same key as that state and as a sliding log's
/// metered admission: the log reads the string as an older log's text, which it is not, and
/// deletes it; the state's write, which would keep the expiry it read, finds no key and sets
/// a new one. The undo record holds the key as the write found it (none), not as it was read.
async fn kept_expiry_after_the_log_deleted_the_key(module_args: &[&str]) {
    let (_server, mut conn, lua) = setup(module_args).await;
    let (_, kind) = agree(
        &mut conn,
        &lua,
        &request(CONSUME, &[bucket(1.0)]),
        &["k"],
        T0,
    )
    .await;
    assert_eq!(kind, "string");
    // At the same time, a second unit's state needs no longer than the expiry the key holds.
    let both = request(CONSUME_UNDO, &[bucket(1.0), log(1.0, 2.0)]);
    let (reply, kind) = agree(&mut conn, &lua, &both, &["k", "k"], T0).await;
    assert_eq!(
        kind, "string",
        "the state was written after the log's delete"
    );
    let undo = undo_records(&reply);
    assert_eq!(
        (undo[0].as_str(), undo[1].as_str()),
        ("", "-2"),
        "the state's undo record: no key when written ({undo:?})"
    );
}

#[tokio::test]
async fn a_string_state_written_over_a_sliding_log_replaces_it() {
    string_over_log(&[]).await;
}

#[tokio::test]
async fn a_kept_expiry_on_a_key_a_log_deleted_becomes_a_new_expiry() {
    kept_expiry_after_the_log_deleted_the_key(&[]).await;
}

/// The same with the module's string writes through called commands (as before Redis 7.0):
/// the string state's called `SET ... PX` replaces the log.
#[tokio::test]
async fn a_string_state_written_over_a_sliding_log_replaces_it_with_called_writes() {
    string_over_log(&[CALLED_WRITES]).await;
}

/// The same with the module's string writes through called commands (as before Redis 7.0):
/// the kept expiry is the called `SET ... XX KEEPTTL`, answered "not written".
#[tokio::test]
async fn a_kept_expiry_on_a_key_a_log_deleted_becomes_a_new_expiry_with_called_writes() {
    kept_expiry_after_the_log_deleted_the_key(&[CALLED_WRITES]).await;
}
