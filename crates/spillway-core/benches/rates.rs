//! The dashboard's decisions-per-second count, the cost `/ui`'s chart adds to every decision.
//!
//! Run: `cargo bench -p spillway-core --bench rates`
//!
//! `record/one_thread` times `Rates::record` alone, the clock advancing a millisecond per call
//! so a new second's cell is started every thousand calls, as in a server. `record/two_threads`
//! times the same call while a second thread records without pause, as a second serving
//! thread would (each thread has its own shard, so they should not slow each other).

use criterion::{black_box, Criterion, Throughput};
use spillway_core::rates::{Rates, Tally};
use spillway_core::time::SECOND;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rates");
    group.throughput(Throughput::Elements(1));
    let tallies = [
        Tally::Allowed,
        Tally::Allowed,
        Tally::Denied,
        Tally::Allowed,
    ];
    let rates = Arc::new(Rates::default());
    let mut now = 1_800_000_000 * SECOND;
    let mut i = 0usize;
    group.bench_function("record/one_thread", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now += 1_000;
            rates.record(black_box(now), tallies[i & 3], black_box(150));
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (rates, stop) = (rates.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut now = 1_800_000_000 * SECOND;
            while !stop.load(Ordering::Relaxed) {
                now += 1_000;
                rates.record(now, Tally::Allowed, 150);
            }
        })
    };
    group.bench_function("record/two_threads", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now += 1_000;
            rates.record(black_box(now), tallies[i & 3], black_box(150));
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
