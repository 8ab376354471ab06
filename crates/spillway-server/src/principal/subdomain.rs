//! The tenant from the host name: `acme.example.com` under base `example.com` is tenant
//! `acme`. A port is ignored, letters compare without case, and only a single label directly
//! under the base names a tenant: the base itself, deeper names (`a.b.example.com`) and
//! other domains name none. The label must also be a tenant the catalog holds: a host name is
//! not a secret, so an unknown label is no principal at all (and cannot open fresh counters).

use super::Principal;
use spillway_core::catalog::Catalog;
use spillway_core::policy::principal::SubdomainSettings;

/// The principal a host name gives: `None` when it names no tenant the catalog holds, which
/// counts as no host presented at all.
pub fn identify(host: &str, settings: &SubdomainSettings, catalog: &Catalog) -> Option<Principal> {
    let tenant = label(host, settings)?;
    catalog.has_tenant(&tenant).then(|| Principal {
        tenant: Some(tenant.into()),
        user: None,
        tier: None,
    })
}

/// The single label directly under the base, lower-cased.
fn label(host: &str, settings: &SubdomainSettings) -> Option<String> {
    let host = host.trim();
    // `host:port`, but not the colons of a bracketed IPv6 literal (which names no tenant).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.strip_suffix(settings.base.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_label_under_the_base_is_a_tenant() {
        let s = SubdomainSettings {
            base: "example.com".into(),
            header: "host".into(),
            must_match: false,
        };
        let tenant = |host| label(host, &s);
        assert_eq!(tenant("acme.example.com").as_deref(), Some("acme"));
        assert_eq!(tenant("ACME.Example.com:8443").as_deref(), Some("acme"));
        assert_eq!(tenant("acme.example.com.").as_deref(), Some("acme"));
        for other in [
            "example.com",
            "a.b.example.com",
            "acme.example.org",
            "acmeexample.com",
            "[::1]:80",
            "",
            "x_y.example.com",
        ] {
            assert_eq!(tenant(other), None, "{other}");
        }
    }
}
