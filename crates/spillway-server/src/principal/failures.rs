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
    /// `Err(wait)` while `address` has spent its budget at `now`: how long until one more
    /// failure fits.
    pub fn admits(&self, address: IpAddr, now: Micros) -> Result<(), Micros> {
        let Some(whole_at) = self.whole_at.get(&subject(address)) else {
            return Ok(());
        };
        // One more failure would push it past a full burst ahead of now.
        let allowed_at = (whole_at + INTERVAL).saturating_sub(BURST * INTERVAL);
        match allowed_at > now {
            true => Err(allowed_at - now),
            false => Ok(()),
        }
    }

    /// Counts a failed verification from `address` at `now`.
    pub fn charge(&self, address: IpAddr, now: Micros) {
        let key = subject(address);
        let whole_at = self.whole_at.get(&key).unwrap_or(now).max(now) + INTERVAL;
        self.whole_at.insert(key, whole_at);
    }
}

/// The budget's subject: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 `/64`, the
/// least one holder of IPv6 space has.
fn subject(address: IpAddr) -> u128 {
    match address.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
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
            assert_eq!(budget.admits(a, now), Ok(()));
            budget.charge(a, now);
        }
        assert_eq!(budget.admits(a, now), Err(INTERVAL), "the burst is spent");
        assert_eq!(budget.admits(b, now), Ok(()), "another address is not");
        // One more a tenth of a second later, and no sooner.
        assert_eq!(budget.admits(a, now + INTERVAL - 1), Err(1));
        assert_eq!(budget.admits(a, now + INTERVAL), Ok(()));
        budget.charge(a, now + INTERVAL);
        assert!(budget.admits(a, now + INTERVAL).is_err());
        // Whole again once every failure is forgiven.
        let later = now + (BURST + 1) * INTERVAL;
        for _ in 0..BURST {
            assert_eq!(budget.admits(a, later), Ok(()));
            budget.charge(a, later);
        }
        assert!(budget.admits(a, later).is_err());
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
        // No IPv6 network reads as an IPv4 address.
        assert_ne!(subject(ip("::")), subject(ip("0.0.0.0")));
    }
}
