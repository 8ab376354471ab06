//! Skewed streams with known truth, for the heavy-hitter sketch's accuracy tests and
//! benchmarks (issue 15's bar: the true top ten recovered with precision >= 0.9, each count
//! within 5%).

use std::fmt::Debug;

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`, as the sketch expects.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `len` items drawn from `0..keys` with Zipf exponent `s` (item 0 the most frequent),
/// reproducibly from `seed`.
pub fn zipf_stream(keys: usize, s: f64, len: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut cdf = Vec::with_capacity(keys);
    let mut total = 0.0;
    for k in 1..=keys {
        total += 1.0 / (k as f64).powf(s);
        cdf.push(total);
    }
    let mut state = seed;
    (0..len).map(move |_| {
        state = state.wrapping_add(1);
        let u = (mix(state) >> 11) as f64 / (1u64 << 53) as f64 * total;
        cdf.partition_point(|&c| c < u).min(keys - 1) as u64
    })
}

/// The `n` heaviest of `counts`, heaviest first.
pub fn heaviest<K>(counts: impl IntoIterator<Item = (K, u64)>, n: usize) -> Vec<(K, u64)> {
    let mut all: Vec<(K, u64)> = counts.into_iter().collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.1));
    all.truncate(n);
    all
}

/// Issue 15's bar: `got` (a sketch's top ten) holds at least 9 of the true top ten
/// (`truth_top`, from [`heaviest`]), and each of its counts is within 5% of the exact count
/// `exact` gives for it.
pub fn assert_top_ten<K: PartialEq + Debug>(
    what: &str,
    got: &[(K, u64)],
    truth_top: &[(K, u64)],
    exact: impl Fn(&K) -> u64,
) {
    let top = &truth_top[..10.min(truth_top.len())];
    let hits = got
        .iter()
        .filter(|(k, _)| top.iter().any(|(t, _)| t == k))
        .count();
    assert!(hits >= 9, "{what}: precision {hits}/10: {got:?} vs {top:?}");
    for (item, count) in got {
        let exact = exact(item);
        let off = count.abs_diff(exact) as f64 / exact as f64;
        assert!(
            off <= 0.05,
            "{what} {item:?}: {count} vs {exact} ({off:.3})"
        );
    }
}
