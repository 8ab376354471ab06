//! The conformance vectors: for each algorithm and a few parameter sets, a sequence of
//! requests `(time, cost, consume or peek)` on one key and the exact decision each must get.
//!
//! Some vectors change the limit's numbers between requests (as a reload or a tenant's
//! override does): the counter keeps its identity, and every store must read the state the
//! old numbers left exactly as `LimitParams::carry_over` does.
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
    /// The limit's numbers from this request on, when they changed just before it (same
    /// algorithm, same counter; the form of [`Vector::numbers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<[u64; 3]>,
    /// A cost reported after the fact (`Store::charge`): recorded whatever the limit says,
    /// and `expect` is the key's standing after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub charge: bool,
    /// A metered limit's admission (`Check::metered`, cost 0): admitted only with room for
    /// one unit, consuming nothing (`LimitParams::admit`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
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
    /// The limit this vector exercises, with the numbers it starts with.
    pub fn params(&self) -> LimitParams {
        self.params_with(self.numbers)
    }

    /// The limit this vector exercises, with `numbers` (see [`Event::numbers`]).
    pub fn params_with(&self, numbers: [u64; 3]) -> LimitParams {
        params_of(&self.algorithm, numbers)
    }
}

/// The limit of `algorithm` with `numbers` in a vector's form.
pub fn params_of(algorithm: &str, numbers: [u64; 3]) -> LimitParams {
    let [a, b, c] = numbers;
    let rate = || Rate::new(a, b).expect("vector rate is valid");
    let made = match algorithm {
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
    let requests: Vec<_> = requests
        .iter()
        .map(|&(at, cost, peek)| (at, cost, peek, None, false))
        .collect();
    replay_reference(params.clone(), &requests, false)
}

/// Like [`expected`] for a metered limit: `(at, cost, peek, charge)`, where a charge records
/// its cost after the fact, past the limit if need be, and a check of cost 0 is the metered
/// limit's admission (room for one unit, nothing consumed).
pub fn expected_metered(
    params: &LimitParams,
    requests: &[(Micros, u64, bool, bool)],
) -> Vec<Event> {
    let requests: Vec<_> = requests
        .iter()
        .map(|&(at, cost, peek, charge)| (at, cost, peek && !charge, None, charge))
        .collect();
    replay_reference(params.clone(), &requests, true)
}

/// Random requests for a metered limit of `params`: zero-cost admissions (as a metered
/// limit is checked), looks, and reported costs from nothing to three times the quota, so
/// keys go into debt and are repaid by refill or the passing window.
pub fn random_metered_requests(
    rng: &mut Rng,
    params: &LimitParams,
    n: usize,
) -> Vec<(Micros, u64, bool, bool)> {
    let quota = params.quota();
    let requests = random_requests(rng, params, n);
    // No gap longer than two days, so times stay far below 2^53 however long the window (a
    // debt on a slow bucket is repaid over years; the clock need not get there).
    let (mut at, mut prev) = (requests[0].0, requests[0].0);
    requests
        .into_iter()
        .map(|(when, cost, peek)| {
            at += (when - prev).min(2 * DAY);
            prev = when;
            match rng.below(3) {
                0 => (at, rng.below(3 * quota.min(1_000_000) + 2), false, true),
                1 => (at, 0, peek, false),
                _ => (at, cost, peek, false),
            }
        })
        .collect()
}

/// The scenario on every algorithm that records costs after the fact: a budget of
/// 1,000 an hour; admitted, 900 reported, admitted, 400 reported (300 in debt), denied, and
/// admitted again once the debt is repaid; then reports far beyond any limit, up to
/// `u64::MAX` (capped, never wrapped).
fn overdrawn(algorithm: &str) -> Vector {
    let numbers = match algorithm {
        "token_bucket" | "gcra" | "leaky_bucket" => [1000, HOUR, 1000],
        _ => [1000, HOUR, 0],
    };
    let params = params_of(algorithm, numbers);
    let t = 1_700_000_000_000_000 + HOUR / 4;
    let requests = [
        (t, 0, false, false),
        (t + SECOND, 900, false, true),
        (t + 2 * SECOND, 0, false, false),
        (t + 3 * SECOND, 400, false, true),
        (t + 4 * SECOND, 0, false, false),
        (t + 4 * SECOND, 1, true, false),
        (t + 20 * MINUTE, 0, false, false),
        (t + HOUR, 0, false, false),
        (t + 2 * HOUR, 0, false, false),
        (t + 2 * HOUR, 5, false, true),
        (t + 2 * HOUR, u64::MAX >> 11, false, true),
        (t + 2 * HOUR, u64::MAX, false, true),
        (t + 3 * HOUR, 0, true, false),
    ];
    Vector {
        name: format!("{algorithm}-overdrawn"),
        algorithm: algorithm.into(),
        numbers,
        events: expected_metered(&params, &requests),
    }
}

/// A metered limit of 1,000 an hour reported at exactly its budget: nothing is owed, but
/// nothing is left either, so the next admission is denied until one unit is free again
/// (3.6 s for the buckets; the next window for the windows), and admitted then; a report of 0
/// changes nothing.
fn exact_budget(algorithm: &str) -> Vector {
    let numbers = match algorithm {
        "token_bucket" | "gcra" | "leaky_bucket" => [1000, HOUR, 1000],
        _ => [1000, HOUR, 0],
    };
    let params = params_of(algorithm, numbers);
    // Ten minutes into an aligned hour, so the windows' next unit comes with the next hour.
    let t = 1_700_002_800_000_000 + 10 * MINUTE;
    let unit = 3_600_000;
    let requests = [
        (t, 0, false, false),
        (t + SECOND, 1000, false, true),
        (t + SECOND, 0, false, false),
        (t + SECOND, 0, true, false),
        (t + SECOND, 0, false, true),
        (t + SECOND + unit - 1, 0, false, false),
        (t + SECOND + unit, 0, false, false),
        (t + 50 * MINUTE - 1, 0, false, false),
        (t + 50 * MINUTE, 0, false, false),
        (t + 50 * MINUTE, 1000, false, true),
        (t + 50 * MINUTE + unit, 0, false, false),
    ];
    Vector {
        name: format!("{algorithm}-exact-budget"),
        algorithm: algorithm.into(),
        numbers,
        events: expected_metered(&params, &requests),
    }
}

/// A bucket key 500 in debt after a charge after the fact, read under other numbers (a
/// smaller rate and burst, a larger burst still below what was used, a faster rate, a
/// smaller burst): the debt is carried, never forgiven, and repaid by the refill.
fn renumbered_in_debt(algorithm: &str) -> Vector {
    let old = [1000, HOUR, 1000];
    let t = 1_700_000_000_000_000 + HOUR / 4;
    let mut requests = vec![(t, 1500, false, None, true)];
    let sets = [
        [900, HOUR, 900],
        [1000, HOUR, 1200],
        [1200, HOUR, 1000],
        [1000, HOUR, 500],
    ];
    for (k, n) in sets.into_iter().enumerate() {
        let at = t + (k as u64 + 1) * SECOND;
        requests.push((at, 0, false, Some(n), false));
        requests.push((at, 1, true, None, false));
        requests.push((at + 40 * MINUTE, 0, true, None, false));
        requests.push((at + 90 * MINUTE, 0, true, None, false));
        requests.push((at + 90 * MINUTE, 0, true, Some(old), false));
    }
    requests.push((t + 2 * HOUR, 0, false, None, false));
    Vector {
        name: format!("{algorithm}-renumbered-in-debt"),
        algorithm: algorithm.into(),
        numbers: old,
        events: expected_renumbered_metered(algorithm, old, &requests),
    }
}

/// A charge of 0 on a full bucket leaves the key fresh, and every store drops it (Redis
/// deletes the key). Found by the differential test: the in-memory store kept the state from
/// before the charge, which the limit's earlier, slower numbers then read as a debt. 8 of 10
/// used at 10/s, full again 2 s later and charged 0, then read under 1 an hour with a burst
/// of 4: a fresh key, so 4 pass.
fn charged_nothing_then_renumbered(algorithm: &str) -> Vector {
    let (fast, slow) = ([10, SECOND, 10], [1, HOUR, 4]);
    let t = 1_700_000_000_000_000 + HOUR / 4;
    let requests = [
        (t, 8, false, None, false),
        (t + 2 * SECOND, 0, false, None, true),
        (t + 2 * SECOND, 4, false, Some(slow), false),
        (t + 2 * SECOND, 1, true, None, false),
        (t + 3 * SECOND, 0, false, Some(fast), true),
        (t + 3 * SECOND, 10, false, None, false),
    ];
    Vector {
        name: format!("{algorithm}-charged-nothing-then-renumbered"),
        algorithm: algorithm.into(),
        numbers: fast,
        events: expected_renumbered_metered(algorithm, fast, &requests),
    }
}

/// A bucket charged to the most it may owe (exactly 2^53 scaled units) and read at once
/// under numbers of other units. Found by the differential test: the Lua rescaling read its
/// bits from 2^52 down, so 2^53 came out as 2^53 - 1 and the converted level or debt one unit
/// low; the charges of 3 and then 51 make that unit show in the reset and then the retry time.
fn saturated_then_renumbered(algorithm: &str) -> Vector {
    let (from, to) = ([118, 86_400_000_002, 30_139], [472, 86_400_000_000, 42_944]);
    let t = 1_700_000_000_000_000 + HOUR / 4;
    let requests = [
        (t, u64::MAX >> 11, false, None, true),
        (t, 3, false, Some(to), true),
        (t, 0, true, None, false),
        (t, 51, false, None, true),
        (t + DAY, 1, true, None, false),
    ];
    Vector {
        name: format!("{algorithm}-saturated-then-renumbered"),
        algorithm: algorithm.into(),
        numbers: from,
        events: expected_renumbered_metered(algorithm, from, &requests),
    }
}

/// Like [`expected`] for requests that may change the limit's numbers before they are
/// evaluated: `(at, cost, peek, new numbers)` for a limit of `algorithm` starting with
/// `numbers`.
pub fn expected_renumbered(
    algorithm: &str,
    numbers: [u64; 3],
    requests: &[(Micros, u64, bool, Option<[u64; 3]>)],
) -> Vec<Event> {
    let requests: Vec<_> = requests
        .iter()
        .map(|&(at, cost, peek, n)| {
            let n = n.map(|n| (n, params_of(algorithm, n)));
            (at, cost, peek, n, false)
        })
        .collect();
    replay_reference(params_of(algorithm, numbers), &requests, false)
}

/// A request that may change the numbers and may be a charge.
pub type MeteredChange = (Micros, u64, bool, Option<[u64; 3]>, bool);

/// Like [`expected_renumbered`] where a request may also be a charge after the fact:
/// `(at, cost, peek, new numbers, charge)`; a check of cost 0 is the metered limit's
/// admission, as in [`expected_metered`].
pub fn expected_renumbered_metered(
    algorithm: &str,
    numbers: [u64; 3],
    requests: &[MeteredChange],
) -> Vec<Event> {
    let requests: Vec<_> = requests
        .iter()
        .map(|&(at, cost, peek, n, charge)| {
            let n = n.map(|n| (n, params_of(algorithm, n)));
            (at, cost, peek && !charge, n, charge)
        })
        .collect();
    replay_reference(params_of(algorithm, numbers), &requests, true)
}

/// A request of the reference replay: time, cost, peek, the numbers (with their
/// parameters) the limit changes to just before it, and whether it is a charge after the fact.
type ReferenceRequest = (Micros, u64, bool, Option<([u64; 3], LimitParams)>, bool);

/// The reference replay: the state is kept with the parameters that wrote it, and read under
/// the current ones through `carry_over`; a state that is fresh-equivalent is dropped, as the
/// stores drop it. With `admissions`, a check of cost 0 is a metered limit's admission.
fn replay_reference(
    mut params: LimitParams,
    requests: &[ReferenceRequest],
    admissions: bool,
) -> Vec<Event> {
    let mut state: Option<(State, LimitParams)> = None;
    requests
        .iter()
        .map(|(at, cost, peek, change, charge)| {
            let (at, cost, peek) = (*at, *cost, *peek);
            if let Some((_, p)) = change {
                params = p.clone();
            }
            let read = state.as_ref().map(|(s, writer)| {
                params
                    .carry_over(writer, s.as_ref(), at)
                    .unwrap_or_else(|| s.clone())
            });
            let charge = *charge;
            let metered = admissions && !charge && cost == 0;
            let read = read.as_ref().map(State::as_ref);
            let e = if charge {
                params.charge(read, at, cost)
            } else if metered {
                params.admit(read, at)
            } else {
                params.evaluate(read, at, cost)
            };
            // Stores write only what charges something: a zero-cost check is a look (under
            // other numbers, writing its conversion back would erase usage). A charge after
            // the fact is always written.
            let writes = charge || (e.decision.allowed && !peek && cost > 0);
            if writes && e.expires_at > at {
                state = Some((e.state, params.clone()));
            } else if writes {
                state = None;
            }
            Event {
                at,
                cost,
                peek,
                expect: flatten(&e.decision),
                numbers: change.as_ref().map(|(n, _)| *n),
                charge,
                metered,
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
            // No gap longer than a year: a bucket's window can be decades, and times must
            // stay below 2^53 (every store keeps them exact there; the clock is years from it).
            at += match rng.below(10) {
                0..=3 => 0,
                4..=6 => rng.below(window / (quota.min(1000) + 1) + 2),
                7 | 8 => rng.below(window + 1),
                _ => rng.below(3 * window + 1),
            }
            .min(365 * DAY);
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

/// Numbers each algorithm's "numbers changed" vectors move between: tighter and looser
/// amounts, rates whose reduced units differ (so bucket states must be rescaled, up to 2^53),
/// and longer and shorter windows.
pub fn renumbering_sets() -> Vec<(&'static str, Vec<[u64; 3]>)> {
    vec![
        (
            "token_bucket",
            vec![
                [10, SECOND, 5],
                [3, SECOND, 1],
                [7, 3 * SECOND, 20],
                [1, HOUR, 2_000_000],
            ],
        ),
        (
            "gcra",
            vec![
                [3, SECOND, 2],
                [7, MINUTE, 20],
                [10, SECOND, 5],
                [1, HOUR, 2_000_000],
            ],
        ),
        (
            "leaky_bucket",
            vec![
                [10, SECOND, 5],
                [7, 3 * SECOND, 4],
                [3, SECOND, 12],
                [1, HOUR, 2_000_000],
            ],
        ),
        (
            "fixed_window",
            vec![
                [5, MINUTE, 0],
                [3, 10 * SECOND, 0],
                [8, 2 * MINUTE, 0],
                [1, SECOND, 0],
            ],
        ),
        (
            "sliding_window",
            vec![
                [10, MINUTE, 0],
                [3, 7 * SECOND, 0],
                [4_000_000, DAY, 0],
                [6, 2 * MINUTE, 0],
            ],
        ),
        (
            "sliding_log",
            vec![
                [5, 10 * SECOND, 0],
                [1, SECOND, 0],
                [9, MINUTE, 0],
                [3, 4 * SECOND, 0],
            ],
        ),
    ]
}

/// The case for every algorithm: 950 used of 1,000 a day, the limit becomes 900 a
/// day, and the next request is denied; later the limit is loosened to 2,000.
fn tightened(algorithm: &str) -> Vector {
    let (old, new, loose) = match algorithm {
        "token_bucket" | "gcra" | "leaky_bucket" => {
            ([1000, DAY, 1000], [900, DAY, 900], [2000, DAY, 2000])
        }
        _ => ([1000, DAY, 0], [900, DAY, 0], [2000, DAY, 0]),
    };
    let t = 1_700_000_000_000_000 + DAY / 3;
    let requests = [
        (t, 950, false, None),
        (t + SECOND, 1, false, Some(new)),
        (t + SECOND, 0, true, None),
        (t + MINUTE, 1, false, Some(loose)),
        (t + MINUTE, 2000, false, None),
        (t + 2 * MINUTE, 1, false, Some(old)),
    ];
    Vector {
        name: format!("{algorithm}-tightened"),
        algorithm: algorithm.into(),
        numbers: old,
        events: expected_renumbered(algorithm, old, &requests),
    }
}

/// Random requests on a limit whose numbers change every few requests, among `sets`.
pub fn renumbered_requests(
    rng: &mut Rng,
    algorithm: &str,
    sets: &[[u64; 3]],
    n: usize,
) -> Vec<(Micros, u64, bool, Option<[u64; 3]>)> {
    let mut current = 0;
    let mut out: Vec<(Micros, u64, bool, Option<[u64; 3]>)> = Vec::with_capacity(n);
    while out.len() < n {
        let params = params_of(algorithm, sets[current]);
        let run = 3 + rng.below(12) as usize;
        let mut requests = random_requests(rng, &params, run);
        // Continue a little after the last request's time (the change lands within the old
        // numbers' window, where it matters), keeping each run's own spacing; no gap is
        // longer than two days, so times stay far below 2^53 however long the windows.
        let gap = rng.below(params.window().clamp(1, DAY) / 2 + 1);
        let mut at = out.last().map_or(requests[0].0, |&(last, ..)| last + gap);
        let mut prev = requests[0].0;
        for (i, (when, cost, peek)) in requests.drain(..).enumerate() {
            at += (when - prev).min(2 * DAY);
            prev = when;
            let change = (i == 0 && !out.is_empty()).then_some(sets[current]);
            out.push((at, cost, peek, change));
        }
        let next = rng.below(sets.len() as u64 - 1) as usize;
        current = if next >= current { next + 1 } else { next };
    }
    out.truncate(n);
    out
}

/// Builds the whole table from the pure functions.
pub fn generate() -> Vec<Vector> {
    let fixed = parameter_sets()
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
        });
    let renumbered =
        renumbering_sets()
            .into_iter()
            .enumerate()
            .flat_map(|(i, (algorithm, sets))| {
                let mut rng = Rng::new(0xC4A1 + i as u64);
                let requests = renumbered_requests(&mut rng, algorithm, &sets, 160);
                let random = Vector {
                    name: format!("{algorithm}-renumbered"),
                    algorithm: algorithm.into(),
                    numbers: sets[0],
                    events: expected_renumbered(algorithm, sets[0], &requests),
                };
                [tightened(algorithm), random]
            });
    let metered = parameter_sets()
        .into_iter()
        .enumerate()
        .filter(|(_, (algorithm, _))| *algorithm != "sliding_log")
        .map(|(i, (algorithm, numbers))| {
            let params = params_of(algorithm, numbers);
            let mut rng = Rng::new(0xDEB7 + i as u64);
            let requests = random_metered_requests(&mut rng, &params, 120);
            Vector {
                name: format!("{algorithm}-metered-{i}"),
                algorithm: algorithm.into(),
                numbers,
                events: expected_metered(&params, &requests),
            }
        });
    let overdrawn = METERED.iter().map(|a| overdrawn(a));
    let exact = METERED.iter().map(|a| exact_budget(a));
    let in_debt = ["token_bucket", "gcra", "leaky_bucket"]
        .into_iter()
        .map(renumbered_in_debt);
    let charged_nothing = ["token_bucket", "gcra", "leaky_bucket"]
        .into_iter()
        .map(charged_nothing_then_renumbered);
    let saturated = ["token_bucket", "gcra", "leaky_bucket"]
        .into_iter()
        .map(saturated_then_renumbered);
    fixed
        .chain(renumbered)
        .chain(overdrawn)
        .chain(exact)
        .chain(in_debt)
        .chain(charged_nothing)
        .chain(saturated)
        .chain(metered)
        .collect()
}

/// The algorithms that record costs after the fact (all but the sliding log).
pub const METERED: [&str; 5] = [
    "token_bucket",
    "gcra",
    "leaky_bucket",
    "fixed_window",
    "sliding_window",
];
