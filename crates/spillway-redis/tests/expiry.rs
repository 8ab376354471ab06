//! Keys and their expiry on a real server, at Redis's own time: a string state carries the
//! deadline its key was last given (`lua/check.lua`), a write covered by it keeps the key's
//! expiry (`SET ... KEEPTTL`), and no key ever expires before its state would read like a
//! fresh one, which would over-admit.
//!
//! Every test runs twice: on a server without the native module (the Lua library) and on one
//! with it (`SPILLWAY.CHECK`), whose clock path (`now` = "") and expiry rules are its own code.

mod common;

use common::{check, key};
use spillway_core::algorithm::{
    FixedWindow, Gcra, LeakyBucket, LimitParams, SlidingWindow, TokenBucket,
};
use spillway_core::key::StateKey;
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::Store;
use spillway_core::time::{ManualClock, HOUR, MINUTE, SECOND};
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::redis::{calls, command, module_path, RedisServer};
use std::sync::Arc;
use std::time::Instant;

/// A server without the native module, then one with it.
fn servers() -> [RedisServer; 2] {
    [
        RedisServer::start(),
        RedisServer::start_with(&["--loadmodule", &module_path()]),
    ]
}

/// Asserts the checks ran in the module on a server that has it, else in Lua.
fn ran_where_expected(server: &RedisServer) {
    let modules = command(server.port(), "MODULE LIST").unwrap_or_default();
    let (module, fcall) = (
        calls(server.port(), "spillway.check"),
        calls(server.port(), "fcall"),
    );
    if modules.contains("spillway") {
        assert!(module > 0 && fcall == 0, "module {module}, Lua {fcall}");
    } else {
        assert!(module == 0 && fcall > 0, "module {module}, Lua {fcall}");
    }
}

/// A store on `server` that evaluates at Redis `TIME`, as in production.
async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&config(server))
        .await
        .expect("connects")
}

/// How the tests' stores connect to `server`.
fn config(server: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(Target::Server(server.url()), "the test's URL");
    config.local_cache_keys = 0;
    config
}

/// The key's remaining time to live in milliseconds (-2: no key, -1: no expiry).
fn pttl(server: &RedisServer, redis_key: &str) -> i64 {
    let reply = command(server.port(), &format!("PTTL {redis_key}")).unwrap_or_default();
    reply
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("PTTL answers an integer")
}

/// The stored value's bytes.
async fn raw(conn: &mut redis::aio::MultiplexedConnection, redis_key: &str) -> Vec<u8> {
    redis::cmd("GET")
        .arg(redis_key)
        .query_async::<Option<Vec<u8>>>(conn)
        .await
        .expect("GET answers")
        .expect("the key exists")
}

/// The deadline (microseconds) stored after a state: its last eight bytes.
fn deadline(value: &[u8]) -> f64 {
    let tail: [u8; 8] = value[value.len() - 8..].try_into().unwrap();
    f64::from_le_bytes(tail)
}

async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Redis's clock in microseconds (`TIME`).
async fn redis_now(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

/// Consumes `k` `times` times and, after each admission, checks that the key lives at least
/// until the decision's reset (when the state reads fresh) and until the deadline stored with
/// the state (which a later write trusts to keep the expiry), and, on the first write, at most
/// a quarter or one second longer than the reset.
async fn consume_and_check_expiry(
    server: &RedisServer,
    store: &RedisStore,
    k: &StateKey,
    params: &LimitParams,
    times: usize,
) {
    let redis_key = store.redis_key(k);
    let mut conn = connection(server).await;
    for n in 0..times {
        // Only to bound how long the call and the PTTL read took (Redis keeps the time).
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        let d = store
            .check(&[check(k, params, 1)], CheckMode::Consume)
            .await
            .expect("answers");
        let ttl = pttl(server, &redis_key);
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap() + 1;
        assert!(d[0].allowed, "{redis_key}: consume {n} is admitted");
        let need = i64::try_from(d[0].reset_after.div_ceil(1000)).unwrap();
        assert!(
            ttl + elapsed >= need,
            "{redis_key}: consume {n}: the key lives {ttl} ms, its state needs {need} ms"
        );
        // Read after the PTTL: Redis's clock can only have moved on, so the key lives at
        // least until `now + ttl` (whole milliseconds, truncated: one more covers it).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, in range
        let stored = deadline(&raw(&mut conn, &redis_key).await) as u64;
        let now = redis_now(&mut conn).await;
        let lives_until = now + u64::try_from(ttl).unwrap() * 1000 + 1000;
        assert!(
            stored <= lives_until,
            "{redis_key}: consume {n}: the stored deadline {stored} is past the key's expiry {lives_until}"
        );
        if n == 0 {
            // The slack, its rounding up, and the millisecond `put` adds for Redis's clock.
            let most = need + (need / 4).max(1000) + 2;
            assert!(
                ttl <= most,
                "{redis_key}: a new key's slack is bounded: {ttl} ms for {need} ms"
            );
        }
    }
}

#[tokio::test]
async fn no_key_expires_before_its_state_reads_fresh() {
    for server in servers() {
        let store = store(&server).await;
        let cases = [
            // Each admission adds 10 ms of refill: several writes fit one deadline's slack.
            (
                "bucket",
                LimitParams::TokenBucket(
                    TokenBucket::new(Rate::new(100, SECOND).unwrap(), 1000).unwrap(),
                ),
            ),
            // Each admission adds an hour: every write needs a later deadline.
            (
                "slow-bucket",
                LimitParams::TokenBucket(
                    TokenBucket::new(Rate::new(1, HOUR).unwrap(), 50).unwrap(),
                ),
            ),
            (
                "gcra",
                LimitParams::Gcra(Gcra::new(Rate::new(100, SECOND).unwrap(), 1000).unwrap()),
            ),
            // Each admission adds 100 ms: the need outgrows the first deadline (100 ms + 1 s of
            // slack) after about ten writes, so later writes cross it and set a new one.
            (
                "bucket-crossing",
                LimitParams::TokenBucket(
                    TokenBucket::new(Rate::new(10, SECOND).unwrap(), 1000).unwrap(),
                ),
            ),
            (
                "gcra-crossing",
                LimitParams::Gcra(Gcra::new(Rate::new(10, SECOND).unwrap(), 1000).unwrap()),
            ),
            (
                "leaky-crossing",
                LimitParams::LeakyBucket(
                    LeakyBucket::new(Rate::new(10, SECOND).unwrap(), 1000).unwrap(),
                ),
            ),
            (
                "window",
                LimitParams::FixedWindow(FixedWindow::new(1000, MINUTE).unwrap()),
            ),
            (
                "sliding",
                LimitParams::SlidingWindow(SlidingWindow::new(1000, MINUTE).unwrap()),
            ),
        ];
        for (name, params) in &cases {
            consume_and_check_expiry(&server, &store, &key(name, &["a"]), params, 40).await;
        }
        ran_where_expected(&server);
    }
}

#[tokio::test]
async fn a_write_covered_by_the_deadline_keeps_the_expiry() {
    for server in servers() {
        let store = store(&server).await;
        let mut conn = connection(&server).await;
        // A fixed window's state reads fresh when the window ends, whatever it counts: the first
        // write sets the deadline, later writes in the window are covered by it.
        let params = LimitParams::FixedWindow(FixedWindow::new(1000, HOUR).unwrap());
        let k = key("hourly", &["a"]);
        let redis_key = store.redis_key(&k);
        store
            .check(&[check(&k, &params, 1)], CheckMode::Consume)
            .await
            .unwrap();
        let first = raw(&mut conn, &redis_key).await;
        let first_ttl = pttl(&server, &redis_key);
        for _ in 0..5 {
            let d = store
                .check(&[check(&k, &params, 1)], CheckMode::Consume)
                .await
                .unwrap();
            assert!(d[0].allowed);
        }
        let later = raw(&mut conn, &redis_key).await;
        assert_ne!(
            first[..first.len() - 8],
            later[..later.len() - 8],
            "the count moved on"
        );
        assert_eq!(deadline(&first), deadline(&later), "the deadline was kept");
        let ttl = pttl(&server, &redis_key);
        assert!(
            ttl <= first_ttl && ttl > first_ttl - 5_000,
            "the expiry was kept, not set again: {first_ttl} ms then {ttl} ms"
        );
        ran_where_expected(&server);
    }
}

#[tokio::test]
async fn a_state_without_a_deadline_gets_a_new_expiry() {
    for server in servers() {
        let store = store(&server).await;
        let mut conn = connection(&server).await;
        let params =
            LimitParams::TokenBucket(TokenBucket::new(Rate::new(1, HOUR).unwrap(), 10).unwrap());
        let k = key("old", &["a"]);
        let redis_key = store.redis_key(&k);
        store
            .check(&[check(&k, &params, 1)], CheckMode::Consume)
            .await
            .unwrap();
        // As the previous version wrote it: the state alone, here with an expiry far too short
        // for it (which a kept expiry would carry on).
        let value = raw(&mut conn, &redis_key).await;
        let _: () = redis::cmd("SET")
            .arg(&redis_key)
            .arg(&value[..value.len() - 8])
            .arg("PX")
            .arg(2_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let d = store
            .check(&[check(&k, &params, 1)], CheckMode::Consume)
            .await
            .unwrap();
        assert_eq!(d[0].remaining, 8, "the old state was read");
        let ttl = pttl(&server, &redis_key);
        let need = i64::try_from(d[0].reset_after / 1000).unwrap();
        assert!(
            // +3: the need and its quarter each rounded, and the millisecond `put` adds.
            ttl >= need - 5_000 && ttl <= need + need / 4 + 3,
            "a new expiry for two hours of refill: {ttl} ms for {need} ms"
        );
        assert_eq!(
            raw(&mut conn, &redis_key).await.len(),
            value.len(),
            "and a deadline"
        );
        ran_where_expected(&server);
    }
}

#[tokio::test]
async fn a_key_consumed_twice_in_one_request_keeps_an_expiry() {
    // Both limits read the same deadline before either writes; the second write keeps the
    // expiry the first one set (KEEPTTL only on a key that exists, see lua/check.lua).
    for server in servers() {
        let store = store(&server).await;
        let params = LimitParams::FixedWindow(FixedWindow::new(1000, HOUR).unwrap());
        let k = key("consumed-twice", &["a"]);
        let redis_key = store.redis_key(&k);
        for _ in 0..3 {
            store
                .check(
                    &[check(&k, &params, 1), check(&k, &params, 1)],
                    CheckMode::Consume,
                )
                .await
                .unwrap();
            assert!(pttl(&server, &redis_key) > 0, "the key has an expiry");
        }
        ran_where_expected(&server);
    }
}

#[tokio::test]
async fn a_key_listed_twice_in_a_request_keeps_an_expiry() {
    // Both limits read the same deadline before either writes. Here the first write deletes
    // the key (its state reads fresh by now, inside the deadline's slack), and the second is
    // covered by the deadline read, so it is written `SET ... XX KEEPTTL`: XX refuses the
    // missing key and the write sets an expiry of its own. Without XX, KEEPTTL would create
    // the key with no expiry at all (see `put` in lua/check.lua).
    for server in servers() {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
        let store = RedisStore::connect_with_injected_time(&config(&server), clock.clone())
            .await
            .expect("connects");
        let params =
            LimitParams::TokenBucket(TokenBucket::new(Rate::new(10, SECOND).unwrap(), 10).unwrap());
        let k = key("twice", &["a"]);
        let redis_key = store.redis_key(&k);
        // One token used: full again 100 ms later; the key's deadline adds a second of slack.
        let one = [check(&k, &params, 1)];
        assert!(store.check(&one, CheckMode::Consume).await.unwrap()[0].allowed);
        clock.advance(SECOND / 2);
        assert!(pttl(&server, &redis_key) > 0, "the key is still there");
        // A charge of 0 writes the full bucket (a delete), then a charge of 1 writes a state that
        // is full again before the deadline read.
        let twice = [check(&k, &params, 0), check(&k, &params, 1)];
        store.charge(&twice, None).await.unwrap();
        assert!(
            pttl(&server, &redis_key) > 0,
            "the key written after the delete has an expiry (PTTL {})",
            pttl(&server, &redis_key)
        );
        ran_where_expected(&server);
    }
}
