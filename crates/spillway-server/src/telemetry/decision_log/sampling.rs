//! Which decisions are written: a sample of the allowed ones, and every other one up to a
//! per-second cap. Both run on the request path, so neither takes a lock: the sample is a
//! thread-local xorshift draw, the cap one atomic word. The top-k sketches sample decisions with the same [`Sampler`].

use spillway_core::time::Micros;
use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps each allowed decision with a fixed probability.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Keep when a uniform 64-bit draw falls below this; unused when `all`.
    threshold: u64,
    all: bool,
}

impl Sampler {
    /// Keeps a share `rate` (0 to 1) of decisions.
    pub fn new(rate: f64) -> Self {
        let rate = rate.clamp(0.0, 1.0);
        Self {
            // The float-to-int cast saturates, and 1.0 is handled by `all`.
            threshold: (rate * 18_446_744_073_709_551_616.0) as u64,
            all: rate >= 1.0,
        }
    }

    /// Whether to keep this one.
    #[inline]
    pub fn keep(&self) -> bool {
        self.all || (self.threshold != 0 && next_random() < self.threshold)
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from the standard library's random hasher keys (never zero).
fn seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// Restarts this thread's draws from `seed` (tests that need a reproducible sample).
#[cfg(test)]
pub(crate) fn seed_this_thread(seed: u64) {
    RNG.with(|state| state.set(seed | 1));
}

/// xorshift64*: a few nanoseconds, and uniform enough for sampling.
#[inline]
fn next_random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Bits of [`RateCap`]'s word that hold the count; the second is above them.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// At most `cap` admissions per second of the server's clock, shared by every thread.
#[derive(Debug)]
pub struct RateCap {
    cap: u64,
    /// `second << COUNT_BITS | admitted in that second`.
    state: AtomicU64,
}

impl RateCap {
    /// `cap` per second; at most 2^24 - 1.
    pub fn new(cap: u32) -> Self {
        Self {
            cap: u64::from(cap).min(COUNT_MASK),
            state: AtomicU64::new(0),
        }
    }

    /// Whether one more fits in the second `now` falls in. A clock that steps back keeps
    /// counting in the later second.
    pub fn admit(&self, now: Micros) -> bool {
        let second = now / 1_000_000;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (at, count) = (current >> COUNT_BITS, current & COUNT_MASK);
            let next = if at >= second {
                if count >= self.cap {
                    return false;
                }
                current + 1
            } else {
                (second << COUNT_BITS) | 1
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Buckets [`FirstOfSecond`] sorts subjects into.
pub const FIRST_BUCKETS: usize = 4096;

/// Whether a subject (a denying counter, a tenant) is seen for the first time in a second of
/// the server's clock, within one of [`FIRST_BUCKETS`] buckets by a per-process seeded hash.
/// The cap lets such a record through even when full, so a client filling the cap with its
/// own denials in the first milliseconds of each second cannot keep everyone else's out of
/// the log: each other counter still logs its first denial of the second (unless it shares a
/// bucket with one of the flood's, as about a quarter would with a flood of 1,000 counters a
/// second). The log lets at most as many through this way a second as its cap (and never more
/// than [`FIRST_BUCKETS`]), so the sink sees at most twice the cap.
#[derive(Debug)]
pub struct FirstOfSecond {
    /// Per bucket, the last second (server clock, whole seconds, wrapping) it let one through.
    seen: Box<[std::sync::atomic::AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for FirstOfSecond {
    fn default() -> Self {
        Self {
            seen: (0..FIRST_BUCKETS)
                .map(|_| std::sync::atomic::AtomicU32::new(u32::MAX))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl FirstOfSecond {
    /// Whether `subject`'s bucket lets nothing through yet in the second `now` falls in (and
    /// now it has).
    pub fn first(&self, subject: impl std::hash::Hash, now: Micros) -> bool {
        use std::hash::BuildHasher;
        let second = (now / 1_000_000) as u32;
        let bucket = &self.seen[(self.hasher.hash_one(subject) as usize) % FIRST_BUCKETS];
        // Read first: under a flood most are taken already, and a read shares the line.
        bucket.load(Ordering::Relaxed) != second && bucket.swap(second, Ordering::Relaxed) != second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subject_passes_once_a_second() {
        let first = FirstOfSecond::default();
        let start = 1_800_000_000_000_000;
        assert!(first.first("abuser", start));
        assert!(!first.first("abuser", start + 1_000));
        assert!(first.first("victim", start + 2_000) || first.first("other", start + 2_000));
        assert!(first.first("abuser", start + 1_000_000), "a new second");
    }

    #[test]
    fn rates_zero_and_one_are_exact_and_others_close() {
        assert!((0..10_000).all(|_| Sampler::new(1.0).keep()));
        assert!((0..10_000).all(|_| !Sampler::new(0.0).keep()));
        let kept = (0..100_000).filter(|_| Sampler::new(0.1).keep()).count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
    }

    #[test]
    fn the_cap_holds_per_second_of_the_given_clock() {
        let cap = RateCap::new(3);
        let start = 1_800_000_000_000_000;
        let admitted = (0..10).filter(|i| cap.admit(start + i * 1_000)).count();
        assert_eq!(admitted, 3);
        assert!(cap.admit(start + 1_000_000), "a new second starts afresh");
        assert!(cap.admit(start + 1_999_999));
        assert!(cap.admit(start + 1_500_000));
        assert!(!cap.admit(start + 1_600_000));
        assert!(
            !cap.admit(start),
            "an earlier reading counts in the later second"
        );
    }
}
