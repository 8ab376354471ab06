//! Deterministic streams for the sketch's tests: a Zipf sampler over a fixed seed.

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
