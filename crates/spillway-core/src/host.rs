//! A host as HTTP carries it (a `Host` header, an HTTP/2 `:authority`, a URL's authority),
//! read one strict way wherever Spillway reads one: `name[:port]` or `[address][:port]`.
//!
//! Proxies read junk in a host each their own way (nginx routes `victim.example.com:x` to
//! `victim`), so anything else is [`NotAHost`] rather than a best guess: the tenant a host
//! names (`principals.subdomain`), whether a dashboard caller is local, and whether a key
//! set's URL is on loopback are all decided on the same reading.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A value that cannot be read as `name[:port]` or `[address][:port]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAHost;

/// What a host names, its port aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A name (a dotted IPv4 address is one too) without its one trailing dot, its letters
    /// as written. Each label is 1 to 63 letters, digits, `-` or `_`.
    Name(&'a str),
    /// An IPv6 address, written in brackets.
    Address(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Reads `text` as it stands (white space is not a host's): `Ok(None)` when it is empty,
    /// [`NotAHost`] when it is no `name[:port]` or `[address][:port]`. A port is digits
    /// (possibly none, as `host:` is allowed).
    pub fn read(text: &'a str) -> Result<Option<Self>, NotAHost> {
        if text.is_empty() {
            return Ok(None);
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(literal) => {
                let (address, after) = literal.split_once(']').ok_or(NotAHost)?;
                let address = address.parse::<Ipv6Addr>().map_err(|_| NotAHost)?;
                let port = match after {
                    "" => "",
                    after => after.strip_prefix(':').ok_or(NotAHost)?,
                };
                (Host::Address(address), port)
            }
            None => {
                let (name, port) = text.split_once(':').unwrap_or((text, ""));
                let name = name.strip_suffix('.').unwrap_or(name);
                let is_label = |l: &str| {
                    (1..=63).contains(&l.len())
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                if !name.split('.').all(is_label) {
                    return Err(NotAHost);
                }
                (Host::Name(name), port)
            }
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotAHost);
        }
        Ok(Some(host))
    }

    /// Whether this host is this machine: `localhost`, `127.x.y.z`, `[::1]` or an
    /// IPv4-mapped loopback address.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Name(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
            }
            Host::Address(address) => address.to_canonical().is_loopback(),
        }
    }

    /// Whether `text` reads as a host ([`Host::read`]) that is this machine
    /// ([`Host::is_loopback`]).
    pub fn names_loopback(text: &str) -> bool {
        Host::read(text).is_ok_and(|host| host.is_some_and(|h| h.is_loopback()))
    }

    /// Whether two hosts are one: names compared without regard to ASCII case.
    pub fn same(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (Host::Address(a), Host::Address(b)) => a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Host, NotAHost};

    #[test]
    fn names_and_addresses_are_read_with_their_port_aside() {
        let name = |text| {
            Host::read(text).map(|h| h.and_then(|h| matches!(h, Host::Name(_)).then_some(h)))
        };
        assert_eq!(
            name("Acme.Example.com"),
            Ok(Some(Host::Name("Acme.Example.com")))
        );
        assert_eq!(
            name("acme.example.com.:8443"),
            Ok(Some(Host::Name("acme.example.com")))
        );
        assert_eq!(
            name("acme.example.com:"),
            Ok(Some(Host::Name("acme.example.com")))
        );
        assert_eq!(name("under_score-1"), Ok(Some(Host::Name("under_score-1"))));
        let v6 = Host::read("[2001:DB8::1]:443")
            .expect("a host")
            .expect("one");
        assert_eq!(v6, Host::Address("2001:db8::1".parse().expect("address")));
        assert_eq!(Host::read(""), Ok(None));
    }

    #[test]
    fn anything_else_is_no_host() {
        for junk in [
            " acme.example.com",
            "acme.example.com ",
            "acme.example.com:x",
            "acme.example.com:80:80",
            "a..example.com",
            ".",
            "a@b",
            "a/b",
            "a%2eb",
            "*.example.com",
            "a.example.com,b.example.com",
            "[::1",
            "[::1]x",
            "[v1.x]",
            "[not-an-address]",
            &"a".repeat(64),
        ] {
            assert_eq!(Host::read(junk), Err(NotAHost), "{junk}");
        }
    }

    #[test]
    fn loopback_is_localhost_127_and_colon_colon_1() {
        for text in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9000",
            "[::ffff:127.0.0.1]",
        ] {
            let host = Host::read(text).expect("a host").expect("one");
            assert!(host.is_loopback(), "{text}");
        }
        for text in [
            "example.com",
            "localhost.example.com",
            "10.0.0.1",
            "[::2]",
            "127.0.0.1.nip.io",
        ] {
            let host = Host::read(text).expect("a host").expect("one");
            assert!(!host.is_loopback(), "{text}");
        }
    }

    #[test]
    fn hosts_are_the_same_whatever_their_case() {
        let read = |text| Host::read(text).expect("a host").expect("one");
        assert!(read("Acme.example.COM:443").same(&read("acme.example.com.")));
        assert!(!read("acme.example.com").same(&read("initech.example.com")));
        assert!(read("[::1]").same(&read("[0:0::1]:80")));
        assert!(!read("[::1]").same(&read("[::2]")));
        assert!(!read("localhost").same(&read("[::1]")));
    }
}
