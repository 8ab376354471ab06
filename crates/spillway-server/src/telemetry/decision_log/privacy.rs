//! How a client's address is written into a record: as is, as its network, or as a keyed hash.
//!
//! - `full`: the address (canonical text; an IPv4-mapped IPv6 address as IPv4).
//! - `truncate`: the network the policy's `ip_prefix` counts it by, but never finer than /24
//!   for IPv4 and /64 for IPv6, so the host part is always gone (the default `ip_prefix` for
//!   IPv4 is /32, the address itself). Written like `203.0.113.0/24`.
//! - `hash`: `h:` and 32 hex digits of SipHash-2-4 (128-bit output) of the canonical address,
//!   keyed by a 128-bit key derived from the deployment's secret (`--decision-log-ip-key` /
//!   `SPILLWAY_DECISION_LOG_IP_KEY`). The same client hashes alike on every node that shares
//!   the secret, so its records can be followed; without the secret the hash cannot be turned
//!   back into an address, even by trying all 2^32 IPv4 addresses.

use clap::ValueEnum;
use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};
use spillway_core::policy::IpPrefix;
use std::hash::Hasher;
use std::net::IpAddr;

/// The shortest secret `hash` accepts.
pub const MIN_KEY_LEN: usize = 16;

/// `--decision-log-ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpMode {
    /// The address as is.
    Full,
    /// The address's network (the policy's `ip_prefix`, at most /24 or /64).
    Truncate,
    /// A keyed hash of the address.
    Hash,
}

/// The chosen mode with its key.
#[derive(Clone, PartialEq, Eq)]
pub struct IpPrivacy {
    mode: IpMode,
    key: (u64, u64),
}

impl std::fmt::Debug for IpPrivacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IpPrivacy")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl IpPrivacy {
    /// `mode`, with `secret` required (and only used) for `hash`.
    pub fn new(mode: IpMode, secret: Option<&str>) -> Result<Self, String> {
        let key = match (mode, secret) {
            (IpMode::Hash, None) => {
                return Err("--decision-log-ip hash needs a secret key: set \
                            --decision-log-ip-key or SPILLWAY_DECISION_LOG_IP_KEY"
                    .into())
            }
            (IpMode::Hash, Some(secret)) if secret.len() < MIN_KEY_LEN => {
                return Err(format!(
                    "--decision-log-ip-key must be at least {MIN_KEY_LEN} characters"
                ))
            }
            (IpMode::Hash, Some(secret)) => derive_key(secret),
            _ => (0, 0),
        };
        Ok(Self { mode, key })
    }

    /// The mode.
    pub fn mode(&self) -> IpMode {
        self.mode
    }

    /// `ip` as this setting writes it; `prefix` is the policy's `ip_prefix`.
    pub fn show(&self, ip: IpAddr, prefix: IpPrefix) -> String {
        let ip = ip.to_canonical();
        match self.mode {
            IpMode::Full => ip.to_string(),
            IpMode::Truncate => IpPrefix {
                v4: prefix.v4.min(24),
                v6: prefix.v6.min(64),
            }
            .key(ip),
            IpMode::Hash => self.hash(ip.to_string().as_bytes()),
        }
    }

    /// A value that should be an address but may not be (a gRPC descriptor entry): shown as
    /// an address when it is one; otherwise kept for `full`, hashed for `hash`, and withheld
    /// for `truncate` (there is no network to cut it to).
    pub fn show_text(&self, text: &str, prefix: IpPrefix) -> String {
        // A network (Envoy's `masked_remote_address`, `address/length`) as its address cut
        // to the narrower of its own length and the truncation's (a `/32` is one host), or
        // hashed whole.
        let trimmed = text.trim();
        let (address, bits) = match trimmed.split_once('/') {
            Some((address, bits)) => (address, bits.parse::<u8>().ok()),
            None => (trimmed, None),
        };
        match (address.parse::<IpAddr>(), bits) {
            (Ok(_), Some(_)) if self.mode == IpMode::Full => trimmed.to_owned(),
            (Ok(_), Some(_)) if self.mode == IpMode::Hash => self.hash(trimmed.as_bytes()),
            (Ok(ip), Some(bits)) => {
                let narrower = IpPrefix {
                    v4: prefix.v4.min(bits.max(1)),
                    v6: prefix.v6.min(bits.max(1)),
                };
                self.show(ip, narrower)
            }
            (Ok(ip), _) => self.show(ip, prefix),
            (Err(_), _) => match self.mode {
                IpMode::Full => text.to_owned(),
                IpMode::Truncate => "(not an address)".to_owned(),
                IpMode::Hash => self.hash(text.as_bytes()),
            },
        }
    }

    fn hash(&self, bytes: &[u8]) -> String {
        let mut hasher = SipHasher128::new_with_keys(self.key.0, self.key.1);
        hasher.write(bytes);
        format!("h:{:032x}", hasher.finish128().as_u128())
    }
}

/// Spreads a secret of any length over SipHash's 128-bit key (two passes with different fixed
/// keys).
fn derive_key(secret: &str) -> (u64, u64) {
    let half = |k0: u64, k1: u64| {
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(secret.as_bytes());
        h.finish()
    };
    (
        half(0x7370_696c_6c77_6179, 0x6970_2d6b_6579_2d30),
        half(0x6465_6369_7369_6f6e, 0x6970_2d6b_6579_2d31),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a deployment secret";

    #[test]
    fn truncate_and_hash_never_show_the_address() {
        let prefix = IpPrefix::default();
        for text in [
            "203.0.113.77",
            "2001:db8:1:2:3:4:5:6",
            "::ffff:203.0.113.77",
        ] {
            let ip: IpAddr = text.parse().expect("address");
            let full = IpPrivacy::new(IpMode::Full, None).expect("full");
            let shown = full.show(ip, prefix);
            assert!(shown == "203.0.113.77" || shown == "2001:db8:1:2:3:4:5:6");
            let truncated = IpPrivacy::new(IpMode::Truncate, None).expect("truncate");
            let t = truncated.show(ip, prefix);
            assert!(t == "203.0.113.0/24" || t == "2001:db8:1:2::/64", "{t}");
            let hashed = IpPrivacy::new(IpMode::Hash, Some(SECRET)).expect("hash");
            let h = hashed.show(ip, prefix);
            assert!(h.starts_with("h:") && h.len() == 34, "{h}");
            assert!(!h.contains("203") && !h.contains("2001:db8"), "{h}");
        }
        // A 6to4 address's /64 would hold its IPv4 address whole: cut as that address is.
        let six_to_four: IpAddr = "2002:cb00:714d:1::1".parse().expect("address");
        let truncated = IpPrivacy::new(IpMode::Truncate, None).expect("truncate");
        assert_eq!(truncated.show(six_to_four, prefix), "203.0.113.0/24");
    }

    #[test]
    fn a_coarser_policy_prefix_wins_and_hashes_depend_on_the_key() {
        let ip: IpAddr = "198.51.100.9".parse().expect("address");
        let truncated = IpPrivacy::new(IpMode::Truncate, None).expect("truncate");
        assert_eq!(
            truncated.show(ip, IpPrefix { v4: 16, v6: 48 }),
            "198.51.0.0/16"
        );
        let a = IpPrivacy::new(IpMode::Hash, Some(SECRET)).expect("hash");
        let b = IpPrivacy::new(IpMode::Hash, Some("another deployment")).expect("hash");
        let prefix = IpPrefix::default();
        assert_eq!(a.show(ip, prefix), a.show(ip, prefix), "stable");
        assert_ne!(a.show(ip, prefix), b.show(ip, prefix), "keyed");
        assert_eq!(truncated.show_text("office", prefix), "(not an address)");
    }

    #[test]
    fn hash_needs_a_long_enough_secret() {
        assert!(IpPrivacy::new(IpMode::Hash, None).is_err());
        assert!(IpPrivacy::new(IpMode::Hash, Some("short")).is_err());
        let debug = format!("{:?}", IpPrivacy::new(IpMode::Hash, Some(SECRET)));
        assert!(!debug.contains("key:"), "{debug}");
    }
}
