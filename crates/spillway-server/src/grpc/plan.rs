//! From a `ShouldRateLimit` request to the limits the engine must check, either through an
//! Envoy-style domain or through Spillway's own policy.
//!
//! - **Envoy domain**: each descriptor walks the domain's tree; a node's limits apply with the
//!   descriptor's values as their counter key. A descriptor's own `limit` replaces the match
//!   when the domain has `allow_limit_override: true`. Limits named in another matched limit's
//!   `replaces` are dropped, as upstream does.
//! - **Policy domain** (`--grpc-policy-domain`, default `spillway`): each descriptor is one
//!   request to the main policy; its entries fill the request's attributes (`tenant`, `user`,
//!   `ip` or `remote_address`, `method`, `path`, `tier`; any other key is a custom
//!   descriptor). An `ip` or `remote_address` that is not an IP address counts under `::`,
//!   one counter for every such value ([`INVALID_IP`]): free text would let a caller pick
//!   fresh per-IP counters, and refusing the call would let Envoy admit it unlimited. Envoy's
//!   `remote_address` always is an address.
//!
//! Either way, a counter reached by several descriptors of one request is checked once (at the
//! largest of their costs), so a request never counts twice against the same limit. A
//! descriptor giving hits back (`is_negative_hits`, which nothing here does) plans no limit:
//! it is answered `OK`, the others are judged. Charging it would take the hits a second
//! time, and refusing the call would have Envoy admit the whole request with no limit.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use smallvec::SmallVec;
use spillway_core::envoy_config::{Domain, EnvoyLimit, Found, Rule, Unit};
use spillway_core::key::StateKey;
use spillway_core::policy::{carried_v4, FailureMode, LimitDef, Planned, Policy};
use spillway_core::request::RequestAttrs;
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

/// What a status reports as `current_limit`: requests per unit, and the unit when the limit's
/// period is exactly one (`None` reads as `UNKNOWN`).
pub type Report = (u64, Option<Unit>);

/// The limits of one request, de-duplicated, and which of them each descriptor answers for.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every distinct limit to check, with its key and cost.
    pub planned: Vec<Planned>,
    /// Per request descriptor, in order: indices into `planned` with their reports.
    pub descriptors: Vec<Vec<(usize, Report)>>,
    /// What to do if the store fails.
    pub failure_mode: FailureMode,
}

/// A request the service refuses to plan; becomes `INVALID_ARGUMENT`.
pub type Invalid = String;

impl Plan {
    fn add(&mut self, slot: usize, def: Arc<LimitDef>, key: StateKey, cost: u64, report: Report) {
        let index = match self.planned.iter().position(|p| p.key == key) {
            Some(i) => {
                self.planned[i].cost = self.planned[i].cost.max(cost);
                i
            }
            None => {
                self.planned.push(Planned { def, key, cost });
                self.planned.len() - 1
            }
        };
        if !self.descriptors[slot].iter().any(|(i, _)| *i == index) {
            self.descriptors[slot].push((index, report));
        }
    }
}

/// The cost of descriptor `d`: its own `hits_addend` when set, else the request's.
fn cost(d: &RateLimitDescriptor, hits: u64) -> u64 {
    own_hits(d).unwrap_or(hits)
}

/// Descriptor `d`'s own `hits_addend`, if it sets one above 0. A 0 counts as not set, as the
/// request's own 0 does: a cost of 0 fits any limit, even one used up, so a caller able to
/// write it would pass every limit.
fn own_hits(d: &RateLimitDescriptor) -> Option<u64> {
    d.hits_addend
        .as_ref()
        .map(|h| h.value)
        .filter(|&hits| hits > 0)
}

/// Plans a request against an Envoy-style domain.
pub fn envoy(
    domain: &Domain,
    descriptors: &[RateLimitDescriptor],
    hits: u64,
) -> Result<Plan, Invalid> {
    // Per descriptor, the limits it matched (the domain's own, borrowed, or an override's)
    // and its counter key's values, once for all of them.
    let mut matched: Vec<(Cow<'_, [EnvoyLimit]>, Vec<String>)> =
        Vec::with_capacity(descriptors.len());
    for (i, d) in descriptors.iter().enumerate() {
        // An empty descriptor (every action of its entry skipped) matches nothing.
        if d.is_negative_hits || d.entries.is_empty() {
            matched.push((Cow::Borrowed(&[][..]), Vec::new()));
            continue;
        }
        // An address standing for an IPv4 host counts as that host (see `carried`).
        let carried: SmallVec<[Option<String>; 4]> = (d.entries.iter())
            .map(|e| carried(&e.key, &e.value))
            .collect();
        let entries = (d.entries.iter().zip(&carried))
            .map(|(e, v4)| (e.key.as_str(), v4.as_deref().unwrap_or(&e.value)));
        // An override's unit this build cannot read (`UNKNOWN`, or one newer than its proto)
        // leaves the domain's own limits in force: refusing the call would have Envoy admit
        // the request unjudged.
        let over = (d.limit.as_ref())
            .filter(|_| domain.allow_limit_override)
            .and_then(|over| match unit(over.unit) {
                Some(unit) => Some((over.requests_per_unit, unit)),
                None => {
                    tracing::debug!(
                        "descriptors[{i}].limit.unit {} is not a unit this build reads; the \
                         domain's own limits apply",
                        over.unit
                    );
                    None
                }
            });
        let found = match over {
            Some((count, unit)) => {
                let limit = domain
                    .override_limit(u64::from(count), unit)
                    .map_err(|e| format!("descriptors[{i}].limit: {e}"))?;
                let values = entries
                    .flat_map(|(k, v)| [k.to_owned(), v.to_owned()])
                    .collect();
                (Cow::Owned(vec![limit]), values)
            }
            None => match domain.find(entries) {
                Some(Found {
                    rule: Rule::Limits(list),
                    values,
                }) => (Cow::Borrowed(list.as_slice()), values),
                Some(Found {
                    rule: Rule::Unlimited,
                    ..
                })
                | None => (Cow::Borrowed(&[][..]), Vec::new()),
            },
        };
        matched.push(found);
    }
    let replaced: HashSet<&str> = matched
        .iter()
        .flat_map(|(list, _)| list.iter())
        .flat_map(|l| l.replaces.iter().map(|r| &**r))
        .collect();
    let mut plan = Plan {
        descriptors: vec![Vec::new(); descriptors.len()],
        failure_mode: domain.failure_mode,
        ..Plan::default()
    };
    for (slot, (d, (list, values))) in descriptors.iter().zip(&matched).enumerate() {
        for limit in list.iter() {
            if replaced.contains(&*limit.def.name) {
                continue;
            }
            let key = StateKey {
                limit: limit.def.name.to_arc(),
                fingerprint: limit.def.fingerprint,
                values: values.iter().collect(),
            };
            let report = (limit.requests_per_unit, limit.unit);
            // A limit of 0 is charged above its window of one: refused, never counted.
            let cost = if limit.denies_all() { 2 } else { cost(d, hits) };
            plan.add(slot, Arc::clone(&limit.def), key, cost, report);
        }
    }
    Ok(plan)
}

/// For a `remote_address` entry (an address) or a `masked_remote_address` one (a network,
/// `address/length`) of a 6to4, Teredo or NAT64 network, the IPv4 host it stands for (a
/// network as `address/32`), as the policy's `ip` dimension counts it: the holder of one IPv4
/// address owns 65,536 /64s of 6to4 space, each a fresh counter otherwise. `None` for
/// anything else, which is counted as sent.
fn carried(key: &str, value: &str) -> Option<String> {
    // An IPv4 address (the usual value) has no colon: nothing to parse.
    if !matches!(key, "remote_address" | "masked_remote_address") || !value.contains(':') {
        return None;
    }
    let (address, bits) = match value.split_once('/') {
        Some((address, bits)) => (
            address,
            Some(bits.parse::<u8>().ok().filter(|&b| b <= 128)?),
        ),
        None => (value, None),
    };
    let v4 = carried_v4(address.parse().ok()?, bits.unwrap_or(128))?;
    Some(match bits {
        Some(_) => format!("{v4}/32"),
        None => v4.to_string(),
    })
}

/// Where an `ip` or `remote_address` entry that is not an address is counted: the unspecified
/// address, one counter shared by every such value. Refusing the call instead would make
/// Envoy (by default `failure_mode_deny: false`) let the request through with no limit at all,
/// and keying the text itself would let a caller pick a fresh counter per request.
pub const INVALID_IP: std::net::IpAddr = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// Plans a request against the main policy, one policy request per descriptor. `hits` is
/// `None` when the request left `hits_addend` at 0, so a matched route's cost applies.
///
/// When the policy identifies callers, `descriptors` must already name the caller as it
/// says ([`super::service::identified`]): entries are read as they are.
pub fn policy(policy: &Policy, descriptors: &[RateLimitDescriptor], hits: Option<u64>) -> Plan {
    let mut plan = Plan {
        descriptors: vec![Vec::new(); descriptors.len()],
        failure_mode: FailureMode::Open,
        ..Plan::default()
    };
    for (slot, d) in descriptors.iter().enumerate() {
        // An empty descriptor (every action of its entry skipped) matches nothing: read as a
        // request it would name no one, and a key-less limit would count it.
        if d.is_negative_hits || d.entries.is_empty() {
            continue;
        }
        let mut attrs = RequestAttrs {
            cost: own_hits(d).or(hits),
            ..RequestAttrs::default()
        };
        for entry in &d.entries {
            let value = Some(entry.value.clone());
            match entry.key.as_str() {
                "tenant" => attrs.tenant = value,
                "user" => attrs.user = value,
                key @ ("ip" | "remote_address") => {
                    let ip = entry.value.trim().parse().unwrap_or_else(|_| {
                        tracing::debug!(
                            "descriptors[{slot}]: entry `{key}` is not an IP address (`{}`); \
                             counted under `::`",
                            shortened(&entry.value)
                        );
                        INVALID_IP
                    });
                    attrs.ip = Some(ip);
                }
                "method" => attrs.method = value,
                // Several are all read (the resolver splits at commas).
                "method_override" => match &mut attrs.method_override {
                    Some(earlier) => {
                        earlier.push_str(", ");
                        earlier.push_str(&entry.value);
                    }
                    None => attrs.method_override = value,
                },
                "path" => attrs.path = value,
                "tier" => attrs.tier = value,
                other => {
                    attrs
                        .descriptors
                        .insert(other.to_owned(), entry.value.clone());
                }
            }
        }
        let resolved = policy.resolve(&attrs);
        plan.failure_mode = plan.failure_mode.stricter(resolved.failure_mode);
        for p in resolved.limits {
            let report = (p.def.params.quota(), exact_unit(p.def.params.window()));
            plan.add(slot, p.def, p.key, p.cost, report);
        }
    }
    plan
}

/// `text` cut to at most 64 bytes (on a character boundary) with `...` after a cut, and its
/// controls escaped ([`spillway_core::text::printable`]), for quoting a caller's value in a log
/// line without letting it fill the line or forge another.
fn shortened(text: &str) -> String {
    let cut = crate::telemetry::cut_to(text, 64);
    let shown = spillway_core::text::printable(cut);
    if cut.len() == text.len() {
        return shown.into_owned();
    }
    format!("{shown}...")
}

/// The unit a window is exactly one of, if any.
fn exact_unit(window: u64) -> Option<Unit> {
    Unit::ALL.into_iter().find(|u| u.micros() == window)
}

/// Envoy's unit enum (a month read as 30 days and a year as 365, as upstream's service reads
/// them); `None` for `UNKNOWN`.
fn unit(raw: i32) -> Option<Unit> {
    match RateLimitUnit::try_from(raw).ok()? {
        RateLimitUnit::Second => Some(Unit::Second),
        RateLimitUnit::Minute => Some(Unit::Minute),
        RateLimitUnit::Hour => Some(Unit::Hour),
        RateLimitUnit::Day => Some(Unit::Day),
        RateLimitUnit::Month => Some(Unit::Month),
        RateLimitUnit::Year => Some(Unit::Year),
        RateLimitUnit::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{carried, shortened};

    #[test]
    fn addresses_standing_for_an_ipv4_host_are_carried_as_it() {
        let of = |key, value| carried(key, value);
        assert_eq!(
            of("remote_address", "2002:cb00:7107::9").as_deref(),
            Some("203.0.113.7")
        );
        let masked = of("masked_remote_address", "2002:cb00:7107:5::/64");
        assert_eq!(masked.as_deref(), Some("203.0.113.7/32"));
        // A mask too short to hold the IPv4 address, or one no network has.
        for value in ["2002::/16", "2002:cb00:7107::/200", "2002:cb00:7107::/x"] {
            assert_eq!(of("masked_remote_address", value), None, "{value}");
        }
        // Anything else is counted as sent.
        for (key, value) in [
            ("remote_address", "203.0.113.7"),
            ("remote_address", "2001:db8::1"),
            ("masked_remote_address", "2001:0:4136:e378::/64"),
            ("user", "2002:cb00:7107::9"),
        ] {
            assert_eq!(of(key, value), None, "{key}={value}");
        }
    }

    #[test]
    fn quoted_values_are_cut_short_on_a_character_boundary() {
        assert_eq!(shortened("10.0.0.x"), "10.0.0.x");
        let cut = shortened(&"é".repeat(100));
        assert_eq!(cut, format!("{}...", "é".repeat(32)));
        // A line break cannot start a forged log line.
        assert_eq!(
            shortened("x\n2026-12-05T00:00:00Z  INFO forged"),
            "x\\n2026-12-05T00:00:00Z  INFO forged"
        );
    }
}
