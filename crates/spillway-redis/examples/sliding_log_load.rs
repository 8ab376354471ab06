//! Latency of one sliding-log check on Redis with a long log: fills one key with `--entries`
//! admissions (default 10,000, the largest sliding-log limit), then times `--calls` rounds of
//! three checks each at a full, steady log: an admission (one entry ages out, one comes in), a
//! denial, and a peek; plus, as a reference for the machine's noise, one admission by a token
//! bucket on another key. Prints the median and p99 of each kind.
//!
//! ```sh
//! cargo run -p spillway-redis --release --example sliding_log_load -- --entries 10000 --calls 2000
//! ```
//!
//! It starts its own `redis-server` on a free port (or uses `--url redis://...`). Scripts run
//! at an injected time, so the log's shape is exact and no call waits for time to pass. Two
//! views of each call: the client's (one whole `RedisStore::check`, round trip included, so it
//! also carries the client's and the scheduler's delays on a busy machine) and Redis's own
//! (the script's execution time from `SLOWLOG`, every call logged for the measured phase).

// A latency timer: elapsed real time is what is measured, not limit time.
#![allow(clippy::disallowed_methods)]

use spillway_core::algorithm::{LimitParams, SlidingLog, TokenBucket};
use spillway_core::key::StateKey;
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Store};
use spillway_core::time::ManualClock;
use spillway_redis::{RedisConfig, RedisStore, Target};
use spillway_testkit::redis::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    entries: u64,
    calls: usize,
    url: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        entries: 10_000,
        calls: 2_000,
        url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--entries" => out.entries = value.parse().map_err(|e| format!("--entries: {e}"))?,
            "--calls" => out.calls = value.parse().map_err(|e| format!("--calls: {e}"))?,
            "--url" => out.url = Some(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if out.entries == 0 || out.calls == 0 {
        return Err("--entries and --calls must be at least 1".into());
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{name:>8}: median {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  ({} calls)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        times.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = args()?;
    let server = args.url.is_none().then(RedisServer::start);
    let url = args
        .url
        .clone()
        .or_else(|| server.as_ref().map(RedisServer::url))
        .ok_or("no redis")?;
    let mut config = RedisConfig::new(
        Target::Server(url),
        "the username/password in the URL given",
    );
    config.timeout = Duration::from_secs(10);
    config.local_cache_keys = 0;
    let clock = Arc::new(ManualClock::new(0));
    let store = RedisStore::connect_with_injected_time(&config, clock.clone())
        .await
        .map_err(|e| e.to_string())?;

    // One admission per millisecond; the window holds exactly `entries` of them.
    let n = args.entries;
    let step = 1_000; // one millisecond, in microseconds
    let params = LimitParams::SlidingLog(SlidingLog::new(n, n * step)?);
    let key = StateKey {
        limit: "load".into(),
        fingerprint: 7,
        values: vec![format!("run-{}", std::process::id())].into(),
    };
    let check = |cost| Check {
        key: &key,
        params: &params,
        cost,
        enforced: true,
        metered: false,
    };
    let bucket = LimitParams::TokenBucket(TokenBucket::new(
        Rate::new(1, 1).map_err(|e| e.to_string())?,
        1_000_000,
    )?);
    let bucket_key = StateKey {
        limit: "reference".into(),
        fingerprint: 8,
        values: vec![format!("run-{}", std::process::id())].into(),
    };
    let reference = [Check {
        key: &bucket_key,
        params: &bucket,
        cost: 1,
        enforced: true,
        metered: false,
    }];
    let start = 1_700_000_000_000_000;
    for i in 0..n {
        clock.set(start + i * step);
        let d = store
            .check(&[check(1)], CheckMode::Consume)
            .await
            .map_err(|e| e.to_string())?;
        if !d[0].allowed {
            return Err(format!("fill call {i} was denied"));
        }
    }
    let mut admin = redis::Client::open(config_url(&config))
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| e.to_string())?;
    // Redis 7 also logs the commands a script runs, so the log is read after every round.
    let slowlog_len = "4096";
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", slowlog_len),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
    }
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    let (mut admit, mut deny, mut peek, mut other) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut log: Vec<u64> = Vec::new();
    for j in 0..args.calls as u64 {
        clock.set(start + (n + j) * step);
        let one = [check(1)];
        for (checks, mode, times, want) in [
            (&one, CheckMode::Consume, &mut admit, true),
            (&one, CheckMode::Consume, &mut deny, false),
            (&one, CheckMode::Peek, &mut peek, false),
            (&reference, CheckMode::Consume, &mut other, true),
        ] {
            let began = Instant::now();
            let d = store.check(checks, mode).await.map_err(|e| e.to_string())?;
            times.push(began.elapsed());
            if d[0].allowed != want {
                return Err(format!(
                    "round {j}: expected allowed = {want}, got {:?}",
                    d[0]
                ));
            }
        }
        log.extend(script_micros(&mut admin, slowlog_len).await?);
    }
    println!("sliding log, {n} entries in the window, one Redis on loopback");
    println!("client (RedisStore::check, round trip included):");
    report("admit", admit);
    report("deny", deny);
    report("peek", peek);
    report("bucket", other);
    println!("redis (script execution, SLOWLOG):");
    let kind = |k: usize| {
        log.iter()
            .skip(k)
            .step_by(4)
            .map(|micros| Duration::from_micros(*micros))
            .collect::<Vec<_>>()
    };
    if log.len() == args.calls * 4 {
        report("admit", kind(0));
        report("deny", kind(1));
        report("peek", kind(2));
        report("bucket", kind(3));
    } else {
        println!(
            "  (slowlog held {} script calls, not {})",
            log.len(),
            args.calls * 4
        );
    }
    Ok(())
}

/// The execution times (µs) of the check calls (`FCALL`, or `EVALSHA` on a server without
/// Functions) in Redis's slow log, oldest first; empties the log.
async fn script_micros(
    admin: &mut redis::aio::MultiplexedConnection,
    count: &str,
) -> Result<Vec<u64>, String> {
    // Each entry: id, time, duration (µs), arguments, client address, client name.
    let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(count)
        .query_async(&mut *admin)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut *admin)
        .await
        .map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .rev()
        .filter_map(|e| match (e.get(2), e.get(3)) {
            (Some(redis::Value::Int(micros)), Some(redis::Value::Array(argv))) => {
                let script = matches!(
                    argv.first(),
                    Some(redis::Value::BulkString(c))
                        if c.eq_ignore_ascii_case(b"fcall") || c.eq_ignore_ascii_case(b"evalsha")
                );
                script.then_some(u64::try_from(*micros).unwrap_or(0))
            }
            _ => None,
        })
        .collect())
}

fn config_url(config: &RedisConfig) -> String {
    match &config.target {
        Target::Server(url) => url.clone(),
        Target::Cluster(urls) => urls.first().cloned().unwrap_or_default(),
        // The example starts its own server; it never builds a Sentinel target.
        Target::Sentinel { .. } => String::new(),
    }
}
