//! How much memory a node's top-k sketches (`Top::new`, the server's shapes) hold when every
//! row is filled: the bytes allocated and not yet freed, counted by a wrapper around the
//! system allocator (exact, unlike the resident set, which is printed beside as a check).
//!
//! `cargo run -p spillway-server --example top_memory [-- [cap] [old]]`
//!
//! Eight threads (one per shard, as eight serving threads would be) each feed 200 fresh
//! denied decisions into each of the ring's 60 intervals, more than a shard's 128 rows, so
//! every table of the three sketches ends full: [`Top::max_rows`] rows. Each decision checks
//! one counter whose key is the tenant and the user, so a hot key holds two values. With
//! short names (`t3-41-77`), or with `cap` every name past [`MAX_LABEL`], so each value is
//! kept at the cap. The figure is the allocator's bytes for the sketches, labels, bucket
//! links and gate counters included; the allocator's own rounding and bookkeeping is not in
//! it (the resident set's growth is, for the system allocator). With `old`, the tenant and
//! user tables have the 256 rows per interval they had before issue 15's last change.

use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use spillway_core::time::SECOND;
use spillway_core::topk::Shape;
use spillway_server::decision::Who;
use spillway_server::telemetry::top::{Top, MAX_LABEL};
use spillway_testkit::alloc::{live_bytes, Counting};

// Keeps count of the bytes allocated and not yet freed.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

const POLICY: &str = r#"
default_tier: free
limits:
  per-user:
    algorithm: token_bucket
    rate: 10/min
    burst: 10
    key: [tenant, user]
tiers:
  free:
    limits: [per-user]
"#;

/// Serving threads, one per shard of the default shape.
const THREADS: usize = 8;
/// Fresh decisions per thread and interval: more than a shard's rows.
const PER_INTERVAL: usize = 200;
/// The ring's intervals (ten minutes of 10 s).
const INTERVALS: u64 = 60;

/// The resident set, in bytes, from `/proc/self/status` (0 where there is none).
fn resident() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Fills `make()`'s fresh sketches with names `pad` long or more and prints what they hold.
fn fill(policy: &Policy, what: &str, pad: usize, make: impl Fn() -> Top) {
    let (base, base_rss) = (live_bytes(), resident());
    let top = make();
    let empty = live_bytes() - base;
    let start = 1_800_000_000 * SECOND;
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let top = &top;
            s.spawn(move || {
                let padding = "x".repeat(pad);
                for interval in 0..INTERVALS {
                    let now = start + interval * 10 * SECOND;
                    for i in 0..PER_INTERVAL {
                        let tenant = format!("{padding}t{thread}-{interval}-{i}");
                        let user = format!("{padding}u{thread}-{interval}-{i}");
                        let attrs = RequestAttrs {
                            tenant: Some(tenant.clone()),
                            user: Some(user.clone()),
                            ..RequestAttrs::default()
                        };
                        let planned = policy.resolve(&attrs).limits;
                        let who = Who {
                            tenant: Some(&tenant),
                            user: Some(&user),
                        };
                        top.record(now, &planned, &who, true);
                    }
                }
            });
        }
    });
    let held = live_bytes() - base;
    let rss = resident().saturating_sub(base_rss);
    assert_eq!(top.rows(), top.max_rows(), "every row filled");
    std::hint::black_box(&top);
    println!(
        "{what}: {} rows; {:.1} MB allocated ({:.0} bytes a row; {:.2} MB of it before the \
         first decision), resident set grew {:.1} MB",
        top.rows(),
        held as f64 / 1e6,
        held as f64 / top.rows() as f64,
        empty as f64 / 1e6,
        rss as f64 / 1e6,
    );
}

fn main() {
    let policy = Policy::from_yaml_str(POLICY, "top_memory").expect("the policy");
    // One case per process, so the resident set starts from the same place.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |word: &str| args.iter().any(|a| a == word);
    let make = || {
        if has("old") {
            let denials = Shape {
                capacity: 256,
                ..Shape::DEFAULT
            };
            Top::with_shapes("memory", Shape::DEFAULT, denials)
        } else {
            Top::new("memory")
        }
    };
    if has("cap") {
        fill(&policy, "names at the cap", MAX_LABEL, make);
    } else {
        fill(&policy, "short names", 0, make);
    }
}
