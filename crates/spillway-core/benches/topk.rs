//! The heavy-hitter sketch's update, the cost `/v1/top` adds to every decision.
//!
//! Run: `cargo bench -p spillway-core --bench topk`
//!
//! Items are drawn from a Zipf(1.0) stream over 1,000,000 keys (hot keys repeat, the tail
//! is far larger than the table), precomputed so only `TopK::add` is timed; the clock
//! advances so the ring keeps rolling over intervals as it does in a server. The label is an
//! `Arc` clone, except in `zipf_1m_keys_boxed_label`, where each label is a fresh allocation
//! as the server's are (it copies the client's text).

use criterion::{black_box, Criterion, Throughput};
use spillway_core::time::SECOND;
use spillway_core::topk::{Shape, TopK};
use spillway_testkit::zipf::{mix, zipf_stream};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let stream: Vec<u64> = zipf_stream(1_000_000, 1.0, 1 << 20, 0).map(mix).collect();
    let mut group = c.benchmark_group("topk");
    group.throughput(Throughput::Elements(1));
    let label: Arc<str> = Arc::from("tenant-label");
    for (name, hashes) in [
        ("add/zipf_1m_keys", stream.clone()),
        ("add/one_hot_key", vec![mix(7); 1 << 20]),
    ] {
        let topk: TopK<Arc<str>> = TopK::new(Shape::DEFAULT);
        let mut i = 0usize;
        let mut now = 1_800_000_000 * SECOND;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 20) - 1);
                now += 10; // 100,000 updates a second: a new interval every 1M updates
                topk.add(now, black_box(hashes[i]), 1, || label.clone());
            })
        });
    }
    // The same stream with a label that allocates, as the server's do.
    let topk: TopK<Box<str>> = TopK::new(Shape::DEFAULT);
    let mut i = 0usize;
    let mut now = 1_800_000_000 * SECOND;
    group.bench_function("add/zipf_1m_keys_boxed_label", |b| {
        b.iter(|| {
            i = (i + 1) & ((1 << 20) - 1);
            now += 10;
            topk.add(now, black_box(stream[i]), 1, || Box::from("tenant-label"));
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
