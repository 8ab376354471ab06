//! The sketch work of one whole decision: `Top::record`, what `/v1/top` adds to every
//! consuming decision (issue 15's target: under 50 ns per decision).
//!
//! Run: `cargo bench -p spillway-server --bench top`
//!
//! The plans are the example policy's (`examples/spillway.yaml`, the server's built-in policy)
//! for a free-tier `POST /v1/generate` with tenant, user and IP: five counters (`ip-burst`,
//! `ip-daily-candidate`, `free-user-minute`, `free-user-daily`, `generate-user`), so an
//! allowed decision is five sketch updates and a denied one seven (its tenant and its user
//! too). Requests are drawn from a Zipf(1.0) stream over 1,000,000 users in 1,000 tenants
//! (hot users repeat, the tail is far larger than the tables) and resolved beforehand, so only
//! `Top::record` is timed: hashing each counter's key, the updates, and building a label
//! whenever an item enters a table (a copy of the client's text, as in the server). Each
//! decision's plan is copied afresh, untimed, in batches of 64 just before they are timed, so
//! it is in cache as in the server (where resolving the request has just written it); reading
//! the plans straight from the 32,768 resolved ones missed the cache on every decision, a cost
//! of the bench, not of the server. The clock
//! advances 10 µs per decision, so the ring rolls over to a new 10-second interval every
//! million decisions. One thread, the server's default shapes (`Top::new`), counting every
//! decision (`exact/...`, `--top-k-sample 1`) and one in [`DEFAULT_SAMPLE`] (`sampled/...`,
//! the server's default), whose figure is the expected cost per decision.

use criterion::{black_box, BatchSize, Criterion, Throughput};
use spillway_core::policy::{Planned, Policy};
use spillway_core::request::RequestAttrs;
use spillway_core::time::SECOND;
use spillway_server::decision::Who;
use spillway_server::telemetry::top::{Top, DEFAULT_SAMPLE};
use spillway_testkit::zipf::{mix, zipf_stream};
use std::net::{IpAddr, Ipv4Addr};

/// Distinct requests resolved ahead (a power of two).
const REQUESTS: usize = 1 << 15;
/// Users drawn from, in [`TENANTS`] tenants.
const USERS: usize = 1_000_000;
const TENANTS: usize = 1_000;

/// One decision's inputs, resolved: its counters and who asked.
struct Request {
    planned: Vec<Planned>,
    tenant: String,
    user: String,
}

fn requests(policy: &Policy) -> Vec<Request> {
    zipf_stream(USERS, 1.0, REQUESTS, 0)
        .map(|k| {
            // Scatter ranks over the tenants and the address space.
            let id = mix(k);
            let attrs = RequestAttrs {
                tenant: Some(format!("tenant-{}", id % TENANTS as u64)),
                user: Some(format!("user-{k}")),
                ip: Some(IpAddr::V4(Ipv4Addr::from((id >> 32) as u32))),
                method: Some("POST".into()),
                path: Some("/v1/generate".into()),
                ..RequestAttrs::default()
            };
            let planned = policy.resolve(&attrs).limits;
            Request {
                planned,
                tenant: attrs.tenant.unwrap_or_default(),
                user: attrs.user.unwrap_or_default(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let policy = Policy::from_yaml_str(
        include_str!("../../../examples/spillway.yaml"),
        "examples/spillway.yaml",
    )
    .expect("the example policy loads");
    let requests = requests(&policy);
    let counters = requests[0].planned.len();
    assert_eq!(counters, 5, "the plan this bench describes");
    let mut group = c.benchmark_group("top");
    group.throughput(Throughput::Elements(1));
    for (name, sample, denied) in [
        ("exact/allowed", 1, false),
        ("exact/denied", 1, true),
        ("sampled/allowed", DEFAULT_SAMPLE, false),
        ("sampled/denied", DEFAULT_SAMPLE, true),
    ] {
        let top = Top::new("bench").sampled(sample);
        let mut i = 0usize;
        let mut now = 1_800_000_000 * SECOND;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    i = (i + 1) & (REQUESTS - 1);
                    now += 10;
                    let r = &requests[i];
                    // A fresh copy, untimed, as the server's resolve has just written it: the
                    // decision's own plan is in cache, the sketch's tables are not.
                    (now, r.planned.clone(), r.tenant.clone(), r.user.clone())
                },
                |(now, planned, tenant, user)| {
                    let who = Who {
                        tenant: Some(tenant),
                        user: Some(user),
                    };
                    top.record(*now, black_box(planned), &who, denied);
                },
                BatchSize::NumIterations(64),
            )
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
