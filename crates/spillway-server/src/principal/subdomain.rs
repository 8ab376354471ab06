//! The tenant from the host name: `acme.example.com` under base `example.com` is tenant
//! `acme`. A port is ignored, letters compare without case, and only a single label directly
//! under the base names a tenant: the base itself, deeper names (`a.b.example.com`) and
//! other domains name none. The label must also be a tenant the catalog holds: a host name is
//! not a secret, so an unknown label is no principal at all (and cannot open fresh counters).
//!
//! `must_match` ([`claimed`]) reads the label directly above the base at any depth, since
//! proxies commonly route a tenant's deeper names to it (`www.initech.example.com` is
//! initech's there). A value that is no host at all ([`NotAHost`]: two hosts joined by a
//! comma, a port that is not a number, characters no host name has) names no tenant either,
//! but it is told apart: proxies read such values each their own way (nginx routes
//! `victim.example.com:x` to `victim`), so `must_match` refuses the credential beside one
//! rather than let it pass as naming nothing.

use super::Principal;
use spillway_core::catalog::Catalog;
use spillway_core::host::Host;
pub use spillway_core::host::NotAHost;
use spillway_core::policy::principal::SubdomainSettings;

/// The principal a host name gives: `None` when it names no tenant the catalog holds (or is
/// no host), which counts as no host presented at all. Only a single label directly under the
/// base names one here.
pub fn identify(host: &str, settings: &SubdomainSettings, catalog: &Catalog) -> Option<Principal> {
    let Ok(Some(Under {
        label,
        deeper: false,
    })) = under_base(host, settings)
    else {
        return None;
    };
    catalog.has_tenant(&label).then(|| Principal {
        tenant: Some(label.into()),
        user: None,
        tier: None,
    })
}

/// For `must_match`: the catalog tenant whose name the host is under (the label directly above
/// the base, at any depth), if any; `Err` if it is no host.
pub fn claimed(
    host: &str,
    settings: &SubdomainSettings,
    catalog: &Catalog,
) -> Result<Option<String>, NotAHost> {
    Ok(under_base(host, settings)?
        .map(|under| under.label)
        .filter(|tenant| catalog.has_tenant(tenant)))
}

/// Where a host stands under the base.
#[derive(Debug, PartialEq, Eq)]
struct Under {
    /// The label directly above the base, lower-cased.
    label: String,
    /// Whether more labels come before it (`www.acme.example.com`).
    deeper: bool,
}

/// The label directly above the base, if the host is under it; `Err` if it is no host. The
/// header's value is read as [`Host::read`] reads it, white space around it aside.
fn under_base(host: &str, settings: &SubdomainSettings) -> Result<Option<Under>, NotAHost> {
    let Some(Host::Name(name)) = Host::read(host.trim())? else {
        return Ok(None);
    };
    // A name is ASCII (`Host::read`), so any byte offset is a character boundary.
    let base = settings.base.as_str();
    let Some(dot) = name.len().checked_sub(base.len() + 1) else {
        return Ok(None);
    };
    if name.as_bytes()[dot] != b'.' || !name[dot + 1..].eq_ignore_ascii_case(base) {
        return Ok(None);
    }
    let rest = &name[..dot];
    let (label, deeper) = match rest.rsplit_once('.') {
        Some((_, label)) => (label, true),
        None => (rest, false),
    };
    Ok(Some(Under {
        label: label.to_ascii_lowercase(),
        deeper,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SubdomainSettings {
        SubdomainSettings {
            base: "example.com".into(),
            header: "host".into(),
            must_match: true,
        }
    }

    #[test]
    fn the_label_above_the_base_is_read_at_any_depth() {
        let s = settings();
        let under = |host| under_base(host, &s);
        let at = |label: &str, deeper| {
            Ok(Some(Under {
                label: label.into(),
                deeper,
            }))
        };
        assert_eq!(under("acme.example.com"), at("acme", false));
        assert_eq!(under("ACME.Example.com:8443"), at("acme", false));
        assert_eq!(under("acme.example.com."), at("acme", false));
        assert_eq!(under("acme.example.com:"), at("acme", false));
        assert_eq!(under("x_y.example.com"), at("x_y", false));
        assert_eq!(under("www.acme.example.com"), at("acme", true));
        assert_eq!(under("a.b.Acme.example.com"), at("acme", true));
        for other in [
            "example.com",
            "acme.example.org",
            "acmeexample.com",
            "acme.example.com.evil.org",
            "[::1]:80",
            "[::1]",
            "",
            "localhost",
        ] {
            assert_eq!(under(other), Ok(None), "{other}");
        }
    }

    /// What proxies may read each their own way is no host: nginx takes the name before the
    /// first colon (`victim.example.com:x` is `victim`'s), others the whole value or its last
    /// part.
    #[test]
    fn a_value_no_host_has_is_told_apart() {
        let s = settings();
        for junk in [
            "victim.example.com:x",
            "victim.example.com:80:90",
            "acme.example.com,victim.example.com",
            "victim.example.com acme.example.com",
            "victim..example.com",
            ".victim.example.com",
            "victim.example.com..",
            "user@victim.example.com",
            "victim.example.com/x",
            "victim%2eexample.com",
            "*.example.com",
            "[::1",
            "[::1]x",
            "[victim.example.com]",
            "[]",
            &format!("{}.example.com", "a".repeat(64)),
        ] {
            assert_eq!(under_base(junk, &s), Err(NotAHost), "{junk}");
        }
    }
}
