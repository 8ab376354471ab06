//! How many credentials from one address may fail verification.
//!
//! A token the cache does not hold costs a signature check (an RSA or elliptic-curve
//! verification: several times a whole decision), and one that fails is refused before any
//! limit counts it. So a client sending forged tokens, each a little different, could spend
//! the node's CPU at no cost to itself. Each address (an IPv4 address, an IPv6 `/64`) may
//! fail [`PER_SECOND`] a second, with a burst of [`BURST`]; past that, a token the cache does
//! not hold is refused as [`Reason::TooManyFailures`](super::Reason::TooManyFailures) without
//! being checked, until the address's budget refills. Tokens that verify cost nothing here,
//! and cached ones are never refused by it. The addresses are held in a bounded cache
//! ([`ADDRESSES`]), so a flood from many addresses cannot grow it; one evicted starts again
//! with a full budget.

use spillway_core::policy::carried_v4;
use spillway_core::time::{Micros, SECOND};
use std::net::IpAddr;

/// Failed verifications an address may make per second, once its burst is spent.
pub const PER_SECOND: u64 = 10;

/// Failed verifications an address may make at once.
pub const BURST: u64 = 50;

/// The most addresses whose failures are remembered.
pub const ADDRESSES: usize = 65_536;

/// The time one failure takes to be forgiven.
const INTERVAL: Micros = SECOND / PER_SECOND;

/// Failures by address: for each, the instant its budget is whole again (GCRA's theoretical
/// arrival time).
pub struct FailureBudget {
    whole_at: quick_cache::sync::Cache<u128, Micros>,
}

impl Default for FailureBudget {
    fn default() -> Self {
        Self {
            whole_at: quick_cache::sync::Cache::new(ADDRESSES),
        }
    }
}

impl FailureBudget {
    /// Whether `address` may still fail at `now` (one more failure would not push it past a
    /// full burst ahead of now).
    pub fn admits(&self, address: IpAddr, now: Micros) -> bool {
        let Some(whole_at) = self.whole_at.get(&subject(address)) else {
            return true;
        };
        (whole_at + INTERVAL).saturating_sub(BURST * INTERVAL) <= now
    }

    /// Counts a failed verification from `address` at `now`.
    pub fn charge(&self, address: IpAddr, now: Micros) {
        let key = subject(address);
        let whole_at = self.whole_at.get(&key).unwrap_or(now).max(now) + INTERVAL;
        self.whole_at.insert(key, whole_at);
    }
}

/// The budget's subject, as the policy's `ip` dimension counts an address: an IPv4 address
/// (IPv4-mapped IPv6, and a 6to4, Teredo or NAT64 address standing for one, included: else
/// the holder of one IPv4 address would have 65,536 6to4 `/64`s to fail from, and every
/// NAT64 client would share one budget) or an IPv6 `/64`, the least one holder of IPv6 space
/// has.
fn subject(address: IpAddr) -> u128 {
    let address = match address.to_canonical() {
        IpAddr::V6(v6) => carried_v4(v6, 128).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        // Its low 64 bits cleared and bit 32 set: no IPv4 address (below 2^32) reads the same.
        IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_fails_its_burst_then_its_rate() {
        let budget = FailureBudget::default();
        let (a, b) = (ip("203.0.113.7"), ip("203.0.113.8"));
        let now = 1_000 * SECOND;
        for _ in 0..BURST {
            assert!(budget.admits(a, now));
            budget.charge(a, now);
        }
        assert!(!budget.admits(a, now), "the burst is spent");
        assert!(budget.admits(b, now), "another address's is not");
        // One more a tenth of a second later, and no sooner.
        assert!(!budget.admits(a, now + INTERVAL - 1));
        assert!(budget.admits(a, now + INTERVAL));
        budget.charge(a, now + INTERVAL);
        assert!(!budget.admits(a, now + INTERVAL));
        // Whole again once every failure is forgiven.
        let later = now + (BURST + 1) * INTERVAL;
        for _ in 0..BURST {
            assert!(budget.admits(a, later));
            budget.charge(a, later);
        }
        assert!(!budget.admits(a, later));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_subject_and_a_mapped_ipv4_its_address() {
        assert_eq!(
            subject(ip("2001:db8:1:2::1")),
            subject(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            subject(ip("2001:db8:1:2::1")),
            subject(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            subject(ip("::ffff:203.0.113.7")),
            subject(ip("203.0.113.7"))
        );
        // 6to4, Teredo and NAT64 addresses are the IPv4 address they stand for.
        let v4 = subject(ip("192.0.2.1"));
        assert_eq!(subject(ip("2002:c000:201:1::1")), v4);
        assert_eq!(subject(ip("2002:c000:201:ffff::1")), v4);
        assert_eq!(subject(ip("64:ff9b::c000:201")), v4);
        assert_ne!(subject(ip("64:ff9b::c000:202")), v4);
        // No IPv6 network reads as an IPv4 address.
        assert_ne!(subject(ip("::")), subject(ip("0.0.0.0")));
    }
}
