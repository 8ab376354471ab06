//! Keyed checks on the in-memory store, beside `governor`'s keyed GCRA limiter in the same
//! run, plus bytes of memory per idle key for both.
//!
//! Run: `cargo bench -p spillway-core --bench check`
//! (memory figures are printed first unless SPILLWAY_BENCH_NO_MEMORY is set).

use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use governor::{Quota, RateLimiter};
use spillway_core::algorithm::{
    FixedWindow, Gcra, LeakyBucket, LimitParams, SlidingLog, SlidingWindow, TokenBucket,
};
use spillway_core::key::StateKey;
use spillway_core::rate::Rate;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, MemoryStore, Store};
use spillway_core::time::{SystemClock, SECOND};
use spillway_testkit::alloc::{live_bytes, Counting};
use std::num::NonZeroU32;
use std::sync::Arc;

// Counts live heap bytes so the memory report can attribute them to keys.
#[global_allocator]
static ALLOC: Counting = Counting;

/// Mostly-allowed parameters for each algorithm: a limit far above what a run can use.
fn algorithms() -> Vec<(&'static str, LimitParams)> {
    let rate = Rate::new(1_000_000_000, SECOND).unwrap();
    let big = 1_000_000_000;
    vec![
        (
            "token_bucket",
            LimitParams::TokenBucket(TokenBucket::new(rate, big).unwrap()),
        ),
        ("gcra", LimitParams::Gcra(Gcra::new(rate, big).unwrap())),
        (
            "fixed_window",
            LimitParams::FixedWindow(FixedWindow::new(1 << 53, SECOND).unwrap()),
        ),
        (
            "sliding_window",
            LimitParams::SlidingWindow(SlidingWindow::new(u32::MAX as u64, SECOND).unwrap()),
        ),
        (
            "sliding_log",
            LimitParams::SlidingLog(SlidingLog::new(16, 1000).unwrap()),
        ),
        (
            "leaky_bucket",
            LimitParams::LeakyBucket(LeakyBucket::new(rate, big).unwrap()),
        ),
    ]
}

/// Counter keys for one limit, as the engine builds them: every key shares the limit's name
/// (one `Arc<str>` per limit definition) and carries its own value.
fn keys(n: usize) -> Vec<StateKey> {
    let limit: std::sync::Arc<str> = "per-user".into();
    (0..n)
        .map(|i| StateKey {
            limit: limit.clone(),
            fingerprint: 1,
            values: vec![format!("user-{i}")].into(),
        })
        .collect()
}

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

fn bench_checks(c: &mut Criterion) {
    for n in [1usize, 10_000] {
        let mut group = c.benchmark_group(format!("keyed_check/{n}_keys"));
        group.throughput(Throughput::Elements(1));
        let ks = keys(n);
        let names: Vec<String> = ks.iter().map(|k| k.values[0].to_string()).collect();

        let gov = RateLimiter::keyed(governor_quota());
        let mut i = 0;
        group.bench_function(BenchmarkId::new("governor", "gcra"), |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(gov.check_key(&names[i]).is_ok())
            })
        });

        for (name, params) in algorithms() {
            let store = MemoryStore::new(1_000_000, Arc::new(SystemClock));
            let mut i = 0;
            group.bench_function(BenchmarkId::new("spillway", name), |b| {
                b.iter(|| {
                    i = (i + 1) % n;
                    let check = Check {
                        key: &ks[i],
                        params: &params,
                        cost: 1,
                        enforced: true,
                        metered: false,
                    };
                    black_box(store.check_key(&check, CheckMode::Consume).allowed)
                })
            });
        }
        group.finish();
    }
}

/// Prints live heap bytes per key after filling each limiter with `n` idle keys.
fn memory_report() {
    println!("bytes of heap per idle key (keys, spillway token_bucket, spillway gcra, governor keyed gcra)");
    for n in [10_000usize, 100_000, 1_000_000] {
        let ks = keys(n);
        let names: Vec<String> = ks.iter().map(|k| k.values[0].to_string()).collect();
        let mut row = vec![n.to_string()];
        for (_, params) in algorithms().into_iter().take(2) {
            let before = live_bytes();
            let store = MemoryStore::new(2_000_000, Arc::new(SystemClock));
            for k in &ks {
                let check = [Check {
                    key: k,
                    params: &params,
                    cost: 1,
                    enforced: true,
                    metered: false,
                }];
                store.check_blocking(&check, CheckMode::Consume);
            }
            assert_eq!(store.key_count(), n as u64);
            row.push(format!("{:.1}", (live_bytes() - before) as f64 / n as f64));
            drop(store);
        }
        // governor stores its keys (the strings) in the map too; subtract their heap part so
        // both sides count only the limiter's own memory.
        let key_heap: usize = names.iter().map(|s| s.capacity()).sum();
        let before = live_bytes();
        let gov = RateLimiter::keyed(governor_quota());
        for name in &names {
            let _ = gov.check_key(name);
        }
        let used = live_bytes() - before;
        row.push(format!(
            "{:.1}",
            used.saturating_sub(key_heap) as f64 / n as f64
        ));
        drop(gov);
        println!("{}", row.join("\t"));
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: criterion then runs each
    // benchmark once as a smoke test, and the slow memory report is skipped.
    let benching = std::env::args().any(|a| a == "--bench");
    if benching && std::env::var_os("SPILLWAY_BENCH_NO_MEMORY").is_none() {
        memory_report();
    }
    let mut c = Criterion::default().configure_from_args();
    bench_checks(&mut c);
    c.final_summary();
}
