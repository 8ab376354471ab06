//! Which IP address a proxied request really came from.
//!
//! Forwarding headers are only as honest as whoever wrote them: any client can send
//! `X-Forwarded-For: 1.2.3.4`. So they are read only when the TCP peer is one of the operator's
//! trusted proxies, and even then the forwarded-for chain is walked from the right, skipping
//! hops that are themselves trusted proxies, so the first address a trusted proxy vouches for
//! wins and anything the client wrote further left is ignored.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` falls inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `ADDR/PREFIX`, or a bare address meaning a single host.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}`: `{addr}` is not an IP address"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{text}`: prefix must be a number from 0 to {max}")),
            },
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose forwarding headers are believed. Empty means "believe no one".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Whether `ip` belongs to a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// Parses a comma-separated list of CIDRs; `none` (or an empty string) trusts no one.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            return Ok(Self::default());
        }
        text.split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// The headers [`client_ip`] consults, by name.
#[derive(Debug, Clone)]
pub struct ForwardingHeaders {
    /// A single address set by the nearest proxy (`X-Real-IP`).
    /// `None` when the operator's proxy does not overwrite it (a client could set it).
    pub real_ip: Option<HeaderName>,
    /// The comma-separated chain of hops (`X-Forwarded-For`).
    pub forwarded_for: HeaderName,
}

/// The client address of a request that reached us from `peer`.
///
/// When `peer` is not trusted, it is the answer: headers are ignored. Otherwise the real-IP
/// header wins when it holds an address that is not itself a trusted proxy's; then the
/// forwarded-for chain (all its header lines, in order) is walked from the right past trusted
/// hops. A hop that does not parse ends the walk, since nothing to its left can be vouched
/// for, and the last address that could be vouched for is returned. (A real-IP header naming
/// a trusted proxy is a proxy behind another, setting it to the address it was reached from:
/// taken at its word, every client behind the load balancer would count as the balancer.)
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    names: &ForwardingHeaders,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut vouched = peer;
    // Several real-IP lines that disagree: a proxy that appends its own (HAProxy
    // `add-header`, Caddy `header_up +X-Real-IP`) leaves the client's first. None is believed.
    if let Some(ip) = (names.real_ip.as_ref())
        .and_then(|name| agreed(headers, name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
    {
        if !trusted.contains(ip) {
            return ip;
        }
        vouched = ip;
    }
    // The hops from the right: the last line first, each line from its end, split as bytes:
    // a client's bytes that are not text, at the start of a line a proxy appended to, stop
    // the walk only where they are.
    for line in headers.get_all(&names.forwarded_for).iter().rev() {
        for hop in line.as_bytes().rsplit(|&b| b == b',') {
            let parsed = std::str::from_utf8(hop.trim_ascii()).map(str::parse::<IpAddr>);
            let Ok(Ok(ip)) = parsed else {
                return vouched;
            };
            let ip = ip.to_canonical();
            if !trusted.contains(ip) {
                return ip;
            }
            vouched = ip;
        }
    }
    vouched
}

/// The value of header `name` if every line of it gives the same one.
fn agreed<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    lines.all(|line| line == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn names() -> ForwardingHeaders {
        ForwardingHeaders {
            real_ip: Some(HeaderName::from_static("x-real-ip")),
            forwarded_for: HeaderName::from_static("x-forwarded-for"),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// The client of a request with `h` from 10.0.0.5, with 10.0.0.0/8 trusted.
    fn from_proxy(h: &HeaderMap) -> IpAddr {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("valid");
        client_ip(ip("10.0.0.5"), h, &names(), &trusted)
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.1.0.0/16".parse().expect("valid");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("8.8.8.8")));
        let host: Cidr = "::1".parse().expect("valid");
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().is_err());
        assert_eq!(net.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn trusted_lists_parse() {
        let list: TrustedProxies = "127.0.0.0/8, ::1/128".parse().expect("valid");
        assert!(list.contains(ip("127.0.0.1")) && list.contains(ip("::1")));
        let none: TrustedProxies = "none".parse().expect("valid");
        assert!(!none.contains(ip("127.0.0.1")));
    }

    #[test]
    fn untrusted_peers_are_taken_at_their_word_not_their_headers() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("valid");
        let h = headers(&[("x-real-ip", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(
            client_ip(ip("8.8.8.8"), &h, &names(), &trusted),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn trusted_peers_pass_on_real_ip_first() {
        let h = headers(&[("x-real-ip", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(from_proxy(&h), ip("1.1.1.1"));
    }

    #[test]
    fn a_real_ip_naming_a_trusted_proxy_gives_way_to_the_chain() {
        // nginx behind a load balancer sets X-Real-IP to the balancer's address, and appends
        // it to the chain the balancer wrote.
        let h = headers(&[
            ("x-real-ip", "10.0.0.9"),
            ("x-forwarded-for", "6.6.6.6, 3.3.3.3, 10.0.0.9"),
        ]);
        assert_eq!(from_proxy(&h), ip("3.3.3.3"));
        // No chain: the farthest proxy named is all that can be vouched for.
        let h = headers(&[("x-real-ip", "10.0.0.9")]);
        assert_eq!(from_proxy(&h), ip("10.0.0.9"));
    }

    #[test]
    fn real_ip_lines_that_disagree_give_way_to_the_chain() {
        // A proxy that appends its X-Real-IP behind the client's own.
        let h = headers(&[
            ("x-real-ip", "1.1.1.1"),
            ("x-real-ip", "3.3.3.3"),
            ("x-forwarded-for", "5.5.5.5"),
        ]);
        assert_eq!(from_proxy(&h), ip("5.5.5.5"));
        // Lines that agree are one value.
        let h = headers(&[("x-real-ip", "3.3.3.3"), ("x-real-ip", "3.3.3.3")]);
        assert_eq!(from_proxy(&h), ip("3.3.3.3"));
    }

    #[test]
    fn without_a_real_ip_header_only_the_chain_counts() {
        // A proxy that appends to X-Forwarded-For but passes the client's X-Real-IP along.
        let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("valid");
        let h = headers(&[("x-real-ip", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        let chain_only = ForwardingHeaders {
            real_ip: None,
            ..names()
        };
        assert_eq!(
            client_ip(ip("10.0.0.5"), &h, &chain_only, &trusted),
            ip("2.2.2.2")
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 3.3.3.3"),
            ("x-forwarded-for", "10.0.0.7"),
        ]);
        assert_eq!(from_proxy(&h), ip("3.3.3.3"));
    }

    #[test]
    fn a_chain_of_only_trusted_hops_yields_the_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.7")]);
        assert_eq!(from_proxy(&h), ip("10.0.0.9"));
    }

    #[test]
    fn garbage_hops_stop_the_walk() {
        let h = headers(&[("x-forwarded-for", "4.4.4.4, not-an-ip, 10.0.0.7")]);
        assert_eq!(from_proxy(&h), ip("10.0.0.7"));
        let h = headers(&[("x-real-ip", "garbage")]);
        assert_eq!(from_proxy(&h), ip("10.0.0.5"));
        // A hop that is not text stops it too, where it stands: a proxy appending to the
        // client's line still names the client.
        let mut h = headers(&[("x-forwarded-for", "4.4.4.4")]);
        let bytes = HeaderValue::from_bytes(b"5.5.5.5\xff").expect("a header value");
        h.append("x-forwarded-for", bytes);
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        assert_eq!(from_proxy(&h), ip("10.0.0.7"));
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"\x80, 6.6.6.6, 10.0.0.7").expect("a header value");
        h.append("x-forwarded-for", line);
        assert_eq!(from_proxy(&h), ip("6.6.6.6"));
    }
}
