//! How the `ip` dimension turns a client address into a counter: by network, not by address.
//!
//! One IPv6 client is usually handed a whole /64 and can pick a fresh address from it for every
//! request; counted per address, each would get its own counter, and a flood of such counters
//! would also push other clients' counters out of a bounded store. So an address is masked to
//! its network (`ip_prefix`, by default /32 for IPv4, i.e. the address itself, and /64 for IPv6)
//! and counted under the network's canonical text: the masked address as RFC 5952 writes it
//! (lower case, longest zero run compressed, no leading zeros), then `/` and the prefix length,
//! e.g. `2001:db8:1:2::/64`. Every spelling of one network therefore shares one counter. A
//! full-length prefix is written as the bare address (`203.0.113.7`), as counters were named
//! before networks were. An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) counts as the IPv4
//! address it carries.
//!
//! So do IPv6 addresses whose network is an IPv4 address's ([`carried_v4`]): the holder of one
//! IPv4 address owns all of its 6to4 network `2002:V4::/48`, 65,536 /64s, and would otherwise
//! take a fresh counter with each; a Teredo address (`2001:0::/32`) carries its client's
//! public IPv4 address and port beside a server address the client picks; and the NAT64
//! well-known prefix `64:ff9b::/96` carries the IPv4 host it stands for, whom a /64 would make
//! share one counter with every other.

use super::error::Issues;
use super::raw::{Number, RawIpPrefix};
use serde_saphyr::Spanned;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The network prefix lengths the `ip` dimension counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    /// Bits of an IPv4 address that name its network, 1 to 32.
    pub v4: u8,
    /// Bits of an IPv6 address that name its network, 1 to 128.
    pub v6: u8,
}

impl Default for IpPrefix {
    /// /32 for IPv4 (one address, since IPv4 addresses are scarce and shared behind NAT) and
    /// /64 for IPv6 (the smallest network one subscriber is normally given).
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl IpPrefix {
    /// The counter value of `ip`: its network's canonical text (see the module docs).
    pub fn key(&self, ip: IpAddr) -> String {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => carried_v4(v6, 128).map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(addr) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
                let mut text = String::with_capacity(18);
                push_v4(&mut text, u32::from(addr) & mask);
                if self.v4 != 32 {
                    text.push('/');
                    text.push_str(itoa::Buffer::new().format(self.v4));
                }
                text
            }
            IpAddr::V6(addr) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
                let network = Ipv6Addr::from(u128::from(addr) & mask);
                match self.v6 {
                    128 => network.to_string(),
                    bits => format!("{network}/{bits}"),
                }
            }
        }
    }
}

/// The IPv4 address an IPv6 address of a 6to4 network (`2002::/16`, the IPv4 address in the
/// next 32 bits), of Teredo (`2001:0::/32`, the client's public address in the last 32 bits,
/// inverted) or of the NAT64 well-known prefix (`64:ff9b::/96`, the last 32 bits) stands for,
/// if its first `bits` hold it: a network masked to /64 (as Envoy's `masked_remote_address`
/// sends one) still carries a 6to4 address, not a Teredo or NAT64 one.
pub fn carried_v4(addr: Ipv6Addr, bits: u8) -> Option<Ipv4Addr> {
    let whole = u128::from(addr);
    let low = whole as u32;
    match addr.segments() {
        [0x2002, ..] if bits >= 48 => Some(Ipv4Addr::from((whole >> 80) as u32)),
        [0x2001, 0, ..] if bits >= 128 => Some(Ipv4Addr::from(!low)),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] if bits >= 128 => Some(Ipv4Addr::from(low)),
        _ => None,
    }
}

/// Appends an IPv4 address as `Ipv4Addr`'s `Display` writes it (dotted decimal), without
/// the formatting machinery: this runs for every request a per-IP limit counts.
fn push_v4(out: &mut String, addr: u32) {
    for (i, octet) in addr.to_be_bytes().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(itoa::Buffer::new().format(octet));
    }
}

/// Reads the `ip_prefix:` section; absent lengths keep their defaults, bad ones are reported.
pub(crate) fn compile(raw: Option<&RawIpPrefix>, issues: &mut Issues) -> IpPrefix {
    let mut prefix = IpPrefix::default();
    if let Some(raw) = raw {
        if let Some(v4) = bits(raw.v4.as_ref(), "v4", "IPv4", 32, issues) {
            prefix.v4 = v4;
        }
        if let Some(v6) = bits(raw.v6.as_ref(), "v6", "IPv6", 128, issues) {
            prefix.v6 = v6;
        }
    }
    prefix
}

/// One prefix length, checked to lie in `1..=max`.
fn bits(
    raw: Option<&Spanned<Number>>,
    field: &str,
    family: &str,
    max: u8,
    issues: &mut Issues,
) -> Option<u8> {
    let raw = raw?;
    let checked = raw
        .value
        .positive()
        .map_err(|why| format!("the {family} prefix length {why}"))
        .and_then(|n| match u8::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!(
                "the {family} prefix length must be from 1 to {max} bits (got {n})"
            )),
        });
    checked
        .map_err(|message| issues.push(raw.referenced, format!("ip_prefix.{field}"), message))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::IpPrefix;
    use std::net::IpAddr;

    fn key(prefix: IpPrefix, text: &str) -> String {
        match text.parse::<IpAddr>() {
            Ok(ip) => prefix.key(ip),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn ipv4_text_is_display_s() {
        let p = IpPrefix::default();
        for n in (0..=u32::MAX)
            .step_by(99_991)
            .chain([0, 1, 255, 256, u32::MAX])
        {
            let addr = std::net::Ipv4Addr::from(n);
            assert_eq!(p.key(IpAddr::V4(addr)), addr.to_string());
        }
    }

    #[test]
    fn ipv6_counts_by_its_64_bit_network_in_canonical_form() {
        let p = IpPrefix::default();
        for spelling in [
            "2001:db8:1:2::1",
            "2001:0DB8:0001:0002:0000:0000:0000:0001",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:DB8:1:2:a:b:c:d",
        ] {
            assert_eq!(key(p, spelling), "2001:db8:1:2::/64", "{spelling}");
        }
        assert_eq!(key(p, "2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(key(p, "::1"), "::/64");
    }

    #[test]
    fn ipv4_counts_by_address_unless_told_otherwise() {
        let p = IpPrefix::default();
        assert_eq!(key(p, "203.0.113.7"), "203.0.113.7");
        // An IPv4-mapped IPv6 address is the IPv4 address it carries.
        assert_eq!(key(p, "::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key(p, "::FFFF:cb00:7107"), "203.0.113.7");
        let p = IpPrefix { v4: 24, v6: 48 };
        assert_eq!(key(p, "203.0.113.7"), "203.0.113.0/24");
        assert_eq!(key(p, "::ffff:203.0.113.200"), "203.0.113.0/24");
        assert_eq!(key(p, "2001:db8:1:2::1"), "2001:db8:1::/48");
    }

    #[test]
    fn addresses_carrying_an_ipv4_address_count_as_it() {
        let p = IpPrefix::default();
        // Every /64 of 203.0.113.7's 6to4 network is that address.
        for spelling in [
            "2002:cb00:7107::1",
            "2002:cb00:7107:1::1",
            "2002:CB00:7107:ffff:1:2:3:4",
        ] {
            assert_eq!(key(p, spelling), "203.0.113.7", "{spelling}");
        }
        // Teredo: whatever the server, flags and port, the client's address (inverted).
        for spelling in [
            "2001:0:4136:e378:8000:63bf:34ff:8ef8",
            "2001:0:5ef5:79fd:0:1:34ff:8ef8",
        ] {
            assert_eq!(key(p, spelling), "203.0.113.7", "{spelling}");
        }
        assert_eq!(key(p, "64:ff9b::203.0.113.7"), "203.0.113.7");
        assert_eq!(key(p, "64:ff9b::198.51.100.1"), "198.51.100.1");
        // The IPv4 prefix applies to them.
        let p = IpPrefix { v4: 24, v6: 64 };
        assert_eq!(key(p, "2002:cb00:7107:1::1"), "203.0.113.0/24");
        // Neighbours of these prefixes are plain IPv6 networks.
        let p = IpPrefix::default();
        assert_eq!(key(p, "2003:cb00:7107:1::1"), "2003:cb00:7107:1::/64");
        assert_eq!(key(p, "2001:1::1"), "2001:1::/64");
        assert_eq!(key(p, "2001:db8::1"), "2001:db8::/64");
        assert_eq!(key(p, "64:ff9b:1::1"), "64:ff9b:1::/64");
        assert_eq!(key(p, "64:ff9b::1:0:0:1"), "64:ff9b::/64");
    }

    #[test]
    fn extreme_lengths_mask_everything_or_nothing() {
        let p = IpPrefix { v4: 1, v6: 128 };
        assert_eq!(key(p, "203.0.113.7"), "128.0.0.0/1");
        assert_eq!(key(p, "2001:db8::1"), "2001:db8::1");
        let p = IpPrefix { v4: 32, v6: 1 };
        assert_eq!(key(p, "2001:db8::1"), "::/1");
        assert_eq!(key(p, "fe80::1"), "8000::/1");
    }
}
