//! The hash of the dispatcher's lane map: a lane is a `u16` (a cluster slot, or 0), so the
//! standard library's SipHash, built to resist chosen keys, is far more than it needs. A
//! slot is taken from a key's CRC16, which a client picks no more freely than the keys
//! themselves, and at most 16,384 lanes exist, so a multiplicative hash spreads them well
//! enough. Every request looks its lane up twice and every call twice more, so this is on
//! the path of each request (see docs/BENCHMARKS.md, session 20).

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`LaneHasher`]s for the dispatcher's `HashMap<u16, Lane>`.
pub(super) type LaneHash = BuildHasherDefault<LaneHasher>;

/// Fibonacci hashing: the lane times 2^64 / φ, whose high bits are well mixed, folded onto
/// the low bits too (the map picks its bucket from the low bits, its control byte from the
/// top seven; the product's low bits alone depend only on the lane's low bits).
#[derive(Default)]
pub(super) struct LaneHasher(u64);

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for LaneHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write_u16(&mut self, lane: u16) {
        self.0 = (self.0 ^ u64::from(lane)).wrapping_mul(PHI);
    }

    /// Not used by a `u16` key; kept correct for any other.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PHI);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn slots_spread_over_buckets_and_control_bytes() {
        // hashbrown takes a slot's bucket from the hash's low bits and its control byte from
        // the top seven: both should spread, or lookups walk long probe chains. Slots that
        // share their low bits (every 1,024th, say) must not share a bucket.
        let hashes: Vec<u64> = (0..16_384u16)
            .map(|slot| LaneHash::default().hash_one(slot))
            .collect();
        let distinct: HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        let tops: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tops.len(), 128, "every control byte is used");
        let mut load = [0u32; 1024];
        for h in &hashes {
            load[usize::try_from(h & 1023).unwrap()] += 1;
        }
        // 16 a bucket on average.
        assert!(load.iter().all(|&n| n <= 48), "{:?}", load.iter().max());
        let strided: HashSet<u64> = (0..16u16)
            .map(|i| LaneHash::default().hash_one(i * 1024 + 7) & 1023)
            .collect();
        assert!(strided.len() >= 12, "{strided:?}");
    }
}
