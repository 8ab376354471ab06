//! The conformance vectors: for each algorithm and a few parameter sets, a sequence of
//! requests `(time, cost, consume or peek)` on one key and the exact decision each must get.
//!
//! The expected decisions were produced once by [`generate`] from the engine's pure Rust
//! functions and checked in as `vectors/conformance.json`; every store (in-memory, Redis,
//! Redis Cluster) replays them and must agree field for field. A test in `spillway-redis`
//! fails if the checked-in file and [`generate`] ever disagree, so a change to an algorithm
//! must regenerate the file (`SPILLWAY_BLESS=1 cargo test -p spillway-redis vectors`) on purpose.

use serde::{Deserialize, Serialize};
use spillway_core::algorithm::{
    Decision, Denial, FixedWindow, Gcra, LeakyBucket, LimitParams, SlidingLog, SlidingWindow,
    State, TokenBucket,
};
use spillway_core::rate::Rate;
use spillway_core::time::{Micros, DAY, HOUR, MINUTE, SECOND};

/// The checked-in vectors.
pub const CONFORMANCE_JSON: &str = include_str!("../vectors/conformance.json");

/// Where the checked-in file lives, for regenerating it.
pub const CONFORMANCE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/conformance.json");

/// One limit and the requests replayed against a fresh key of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vector {
    /// A name for failure messages.
    pub name: String,
    /// The algorithm, as written in a policy.
    pub algorithm: String,
    /// For buckets: rate count, rate period (us), burst or capacity. For windows: limit,
    /// window (us), unused.
    pub numbers: [u64; 3],
    /// The requests, in order.
    pub events: Vec<Event>,
}

/// One request and its expected decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The time it is evaluated at, in microseconds since the epoch.
    pub at: Micros,
    /// Its cost.
    pub cost: u64,
    /// Whether it only looks (changes nothing).
    pub peek: bool,
    /// The decision: allowed (0/1), limit, remaining, reset_after, retry_after (-1 = none),
    /// denial (0 none, 1 over limit, 2 cost exceeds limit).
    pub expect: [i64; 6],
}

/// A decision in the vectors' flat form.
pub fn flatten(d: &Decision) -> [i64; 6] {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    [
        i64::from(d.allowed),
        n(d.limit),
        n(d.remaining),
        n(d.reset_after),
        d.retry_after.map_or(-1, n),
        match d.denial {
            None => 0,
            Some(Denial::OverLimit) => 1,
            Some(Denial::CostExceedsLimit) => 2,
        },
    ]
}

impl Vector {
    /// The limit this vector exercises.
    pub fn params(&self) -> LimitParams {
        let [a, b, c] = self.numbers;
        let rate = || Rate::new(a, b).expect("vector rate is valid");
        let made = match self.algorithm.as_str() {
            "token_bucket" => TokenBucket::new(rate(), c).map(LimitParams::TokenBucket),
            "gcra" => Gcra::new(rate(), c).map(LimitParams::Gcra),
            "leaky_bucket" => LeakyBucket::new(rate(), c).map(LimitParams::LeakyBucket),
            "fixed_window" => FixedWindow::new(a, b).map(LimitParams::FixedWindow),
            "sliding_window" => SlidingWindow::new(a, b).map(LimitParams::SlidingWindow),
            "sliding_log" => SlidingLog::new(a, b).map(LimitParams::SlidingLog),
            other => Err(format!("unknown algorithm {other}")),
        };
        made.expect("vector parameters are valid")
    }
}

/// The checked-in vectors, parsed.
pub fn conformance() -> Vec<Vector> {
    serde_json::from_str(CONFORMANCE_JSON).expect("vectors/conformance.json is valid")
}

/// A small deterministic generator (xorshift64*), so the vectors need no random crate.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Replays `(at, cost, peek)` requests through the pure function, the way a store must.
pub fn expected(params: &LimitParams, requests: &[(Micros, u64, bool)]) -> Vec<Event> {
    let mut state: Option<State> = None;
    requests
        .iter()
        .map(|&(at, cost, peek)| {
            let e = params.evaluate(state.as_ref().map(State::as_ref), at, cost);
            if e.decision.allowed && !peek && e.expires_at > at {
                state = Some(e.state);
            } else if e.decision.allowed && !peek {
                state = None;
            }
            Event {
                at,
                cost,
                peek,
                expect: flatten(&e.decision),
            }
        })
        .collect()
}

/// Random requests for `params`: bursts at one instant, small and large gaps, costs from 0
/// to a little over the quota, and some look-only requests.
pub fn random_requests(rng: &mut Rng, params: &LimitParams, n: usize) -> Vec<(Micros, u64, bool)> {
    let quota = params.quota();
    let window = params.window().max(1);
    let mut at = 1_700_000_000_000_000 + rng.below(DAY);
    (0..n)
        .map(|_| {
            at += match rng.below(10) {
                0..=3 => 0,
                4..=6 => rng.below(window / (quota.min(1000) + 1) + 2),
                7 | 8 => rng.below(window + 1),
                _ => rng.below(3 * window + 1),
            };
            let cost = match rng.below(12) {
                0 => 0,
                1 => quota + 1 + rng.below(3),
                _ => 1 + rng.below(quota.min(4)),
            };
            (at, cost, rng.below(8) == 0)
        })
        .collect()
}

/// The parameter sets the vectors cover, chosen for the arithmetic they stress: fractional
/// emission intervals, refills that would overflow 2^53 if formed naively, day-long windows
/// whose `limit x window` passes 2^53, and limits of one.
pub fn parameter_sets() -> Vec<(&'static str, [u64; 3])> {
    vec![
        ("token_bucket", [10, SECOND, 5]),
        ("token_bucket", [3, SECOND, 1]),
        ("token_bucket", [1, HOUR, 2_000_000]),
        ("gcra", [3, SECOND, 2]),
        ("gcra", [7, MINUTE, 20]),
        ("gcra", [1, HOUR, 2_000_000]),
        ("leaky_bucket", [10, SECOND, 5]),
        ("leaky_bucket", [7, 3 * SECOND, 4]),
        ("fixed_window", [5, MINUTE, 0]),
        ("fixed_window", [1, SECOND, 0]),
        ("sliding_window", [10, MINUTE, 0]),
        ("sliding_window", [3, 7 * SECOND, 0]),
        ("sliding_window", [4_000_000, DAY, 0]),
        ("sliding_log", [5, 10 * SECOND, 0]),
        ("sliding_log", [1, SECOND, 0]),
    ]
}

/// Builds the whole table from the pure functions.
pub fn generate() -> Vec<Vector> {
    parameter_sets()
        .into_iter()
        .enumerate()
        .map(|(i, (algorithm, numbers))| {
            let mut v = Vector {
                name: format!("{algorithm}-{i}"),
                algorithm: algorithm.into(),
                numbers,
                events: vec![],
            };
            let params = v.params();
            let mut rng = Rng::new(0x5EED + i as u64);
            let requests = random_requests(&mut rng, &params, 120);
            v.events = expected(&params, &requests);
            v
        })
        .collect()
}
