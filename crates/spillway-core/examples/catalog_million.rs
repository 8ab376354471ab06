//! How long a node takes to compile a catalog of a million tenants (no overrides) and how much
//! memory it holds: the bytes still allocated once the input records are gone, counted by a
//! wrapper around the system allocator (exact, unlike the resident set).
//!
//! `cargo run --release -p spillway-core --example catalog_million [-- COUNT]`

use spillway_core::catalog::{Catalog, Entry, EntryKey, TenantRecord};
use spillway_core::policy::Policy;
use spillway_testkit::alloc::{live_bytes, Counting};
use std::time::Instant;

// Keeps count of the bytes allocated and not yet freed.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    live_bytes()
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let text = include_str!("../../../examples/spillway.yaml");
    let policy = Policy::from_yaml_str(text, "examples/spillway.yaml").expect("the example policy");
    let base = live();
    let tiers = ["free", "paid", "enterprise"];
    let entries: Vec<(EntryKey, Entry)> = (0..count)
        .map(|i| {
            let key = EntryKey::Tenant {
                tenant: format!("tenant-{i:07}"),
            };
            let record = TenantRecord {
                tier: Some(tiers[i % 3].to_owned()),
                overrides: Default::default(),
                home_region: None,
            };
            (key, Entry::Tenant(record))
        })
        .collect();
    let input = live() - base;
    #[allow(clippy::disallowed_methods)] // a benchmark's stopwatch, not a limiter's clock
    let started = Instant::now();
    let (catalog, skipped) = Catalog::build(&policy, 1, entries);
    let took = started.elapsed();
    assert!(skipped.is_empty());
    // The records were consumed by the build; what is left allocated is the catalog.
    let held = live() - base;
    println!(
        "{count} tenants: compiled in {:.2} s; the catalog holds {:.1} MB, {:.0} bytes per \
         tenant (the input records took {:.1} MB)",
        took.as_secs_f64(),
        held as f64 / 1e6,
        held as f64 / count as f64,
        input as f64 / 1e6,
    );
    std::hint::black_box(&catalog);
}
