//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! - A malformed request (empty domain, no descriptors, a descriptor without entries, an entry
//!   with an empty key) is refused with `INVALID_ARGUMENT`.
//! - An unknown domain, or descriptors that match nothing, are `OK` with no limit, as with
//!   envoyproxy/ratelimit: a gateway config that is ahead of the limiter's must not block.
//! - `hits_addend` 0 means 1; a descriptor's own `hits_addend` wins over the request's, unless
//!   it is 0, which counts as not set (a cost of 0 would pass even a used-up limit).
//! - A descriptor with `is_negative_hits` (hits given back, which nothing here does) plans no
//!   limit and is answered `OK` (`plan`); the call's other descriptors are judged as ever.
//! - Every matched limit of every descriptor goes to the store in one atomic check: either
//!   the request is charged everywhere, or (on `OVER_LIMIT`) nowhere.
//! - When the store fails, the domain's failure mode (for the policy domain, the strictest of
//!   the resolved routes') decides through [`decision::decide`], as on HTTP. `open` answers
//!   `OK` with the [`DEGRADED_HEADER`] header; `degrade` answers `OK` or `OVER_LIMIT` per
//!   descriptor from the node's emergency quotas, with the usual rate-limit headers and the
//!   same marker; `closed` answers `UNAVAILABLE`, the gRPC form of the HTTP API's 503, which
//!   Envoy turns into a refusal with `failure_mode_deny: true`.
//! - With a `principals:` section, the policy domain's caller is identified from descriptor
//!   entries named like the configured headers (Envoy's `request_headers` action with
//!   `descriptor_key: authorization`); the verified principal replaces every descriptor's
//!   `tenant`, `user` and `tier`. A missing or refused credential is `OVER_LIMIT` for every
//!   descriptor with an `x-spillway-unauthenticated: <reason>` header: an error would let
//!   Envoy admit the request (`failure_mode_deny: false`), and the RLS protocol has no 401.
//!
//! [`decision::decide`]: crate::decision::decide

use super::plan::{self, Plan};
use super::response;
use super::RlsState;
use crate::decision::{self, Ask, Decided, Outcome, Refused, Who};
use crate::failure::{DEGRADED_HEADER, DEGRADED_REASON};
use crate::principal::{self, Identity, Lookup, Reason};
use crate::telemetry::decision_log::{Ids, Subject};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use spillway_core::policy::principal::{Principals, TokenPlace};
use spillway_core::policy::{FailureMode, Policy};
use spillway_core::request::CheckMode;
use spillway_core::time::Micros;
use std::sync::Arc;
use tonic::Status;

/// The service, sharing the server's engine and config.
#[derive(Clone)]
pub struct Rls(pub Arc<RlsState>);

/// tonic's typed entry, for the unit tests only: the server answers every call on the direct
/// path ([`super::unary`]), which counts a message's descriptors before decoding it.
#[cfg(test)]
#[tonic::async_trait]
impl envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService
    for Rls
{
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.answer(&message, Ids::Headers(metadata.as_ref()))
            .await
            .map(tonic::Response::new)
    }
}

impl Rls {
    /// Checks one request's shape, then decides it: the whole call, as the direct path in
    /// [`super::unary`] (and the unit tests' typed entry) hands it over.
    /// `ids` are the call's request id and trace headers, for the decision log.
    pub async fn answer(
        &self,
        request: &RateLimitRequest,
        ids: Ids<'_>,
    ) -> Result<RateLimitResponse, Status> {
        let is_report = check_shape(request).map_err(Status::invalid_argument)?;
        // Envoy's charge when the stream is done: recorded, never denied (see `report`).
        if is_report {
            // A report is charged to the caller the `principals:` section verifies, like a
            // check; one without a valid credential is not recorded (and counted as refused).
            let policy = self.0.app.engine.policy();
            let identity = if request.domain == *self.0.policy_domain {
                match self
                    .identify(&policy, &request.descriptors, principal::REPORT_GRACE)
                    .await
                {
                    Ok(identity) => identity,
                    Err(_) => return Ok(response::unlimited(request.descriptors.len(), &[])),
                }
            } else {
                None
            };
            let report = super::report::record(&self.0, request, &policy, identity.as_ref(), ids);
            return Ok(report.await);
        }
        self.decide(request, ids).await
    }

    async fn decide(
        &self,
        request: &RateLimitRequest,
        ids: Ids<'_>,
    ) -> Result<RateLimitResponse, Status> {
        let state = &self.0;
        let hits = u64::from(request.hits_addend);
        let domain = request.domain.as_str();
        // One policy snapshot serves the plan and, if the store fails, the fallback.
        let policy = state.app.engine.policy();
        if domain == &*state.policy_domain {
            if let Some(config) = policy.principals() {
                return self.decide_identified(request, ids, &policy, config).await;
            }
        }
        // The domain's name as configuration holds it, so the verdict shares it (no copy of
        // the request's string per call).
        let (name, plan) = if domain == &*state.policy_domain {
            let hits = (hits > 0).then_some(hits);
            let plan = plan::policy(&policy, &request.descriptors, hits);
            (Arc::clone(&state.policy_domain), plan)
        } else {
            let envoy = state.envoy.load();
            let Some(config) = envoy.domain(domain) else {
                return Ok(response::unlimited(request.descriptors.len(), &[]));
            };
            let plan = plan::envoy(config, &request.descriptors, hits.max(1))
                .map_err(Status::invalid_argument)?;
            (Arc::clone(&config.name), plan)
        };
        let subject = Subject::envoy(&request.descriptors, ids);
        let who = who(&request.descriptors);
        self.check(
            &policy,
            name,
            &plan,
            request.descriptors.len(),
            subject,
            who,
        )
        .await
    }

    /// The policy domain when the policy identifies callers: the credential entries are
    /// taken out of the descriptors before anything plans, logs or ranks them (a token must
    /// never reach the decision log), and the decision log and top-k lists name the verified
    /// principal's tenant and user, not what the descriptors claim.
    async fn decide_identified(
        &self,
        request: &RateLimitRequest,
        ids: Ids<'_>,
        policy: &Policy,
        config: &Principals,
    ) -> Result<RateLimitResponse, Status> {
        let count = request.descriptors.len();
        let identity = match self.identify(policy, &request.descriptors, 0).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return Ok(response::unauthenticated(count, Reason::Missing.as_str())),
            Err(reason) => return Ok(response::unauthenticated(count, reason.as_str())),
        };
        let descriptors = identified(&request.descriptors, &identity, config);
        let hits = u64::from(request.hits_addend);
        let hits = (hits > 0).then_some(hits);
        let plan = plan::policy(policy, &descriptors, hits);
        let subject = Subject::envoy(&descriptors, ids);
        let who = match &identity {
            Identity::Verified(p, _) => Who {
                tenant: p.tenant.as_deref(),
                user: p.user.as_deref(),
            },
            Identity::Anonymous(_) => Who {
                tenant: None,
                user: None,
            },
        };
        let name = Arc::clone(&self.0.policy_domain);
        self.check(policy, name, &plan, count, subject, who).await
    }

    /// Who is calling, by the policy's `principals:` section, from the credentials Envoy puts
    /// in descriptor entries (keyed by the configured header names: `authorization`,
    /// `x-api-key`, the host header); `None` without the section. A token is taken up to
    /// `grace` past its expiry (a report's: see
    /// [`Presented::grace`](crate::principal::Presented::grace)).
    async fn identify(
        &self,
        policy: &Policy,
        descriptors: &[RateLimitDescriptor],
        grace: Micros,
    ) -> Result<Option<Identity>, Reason> {
        let Some(config) = policy.principals() else {
            return Ok(None);
        };
        let entries = Entries(descriptors);
        let mut presented = principal::presented(&entries, config);
        presented.ip = carries_ip(descriptors);
        presented.address = address(descriptors);
        presented.grace = grace;
        let now = self.0.app.clock.now();
        match self
            .0
            .app
            .principals
            .identify(policy, &presented, now)
            .await
        {
            None => Ok(None),
            Some(result) => result.map(Some),
        }
    }

    async fn check(
        &self,
        policy: &Policy,
        domain: Arc<str>,
        plan: &Plan,
        descriptors: usize,
        subject: Subject<'_>,
        who: Who<'_>,
    ) -> Result<RateLimitResponse, Status> {
        let ask = Ask {
            planned: &plan.planned,
            tier: Arc::clone(&domain),
            route: None,
            label: Some(&domain),
            failure_mode: plan.failure_mode,
            cost: plan.planned.iter().map(|p| p.cost).max().unwrap_or(0),
            mode: CheckMode::Consume,
            subject,
            who,
        };
        match decision::decide(&self.0.app, policy, &ask).await {
            Outcome::Decided(Decided {
                verdict,
                degraded,
                home_region,
            }) => {
                let mut marker: Vec<(&str, &str)> = Vec::new();
                if degraded.is_some() {
                    marker.push((DEGRADED_HEADER, DEGRADED_REASON));
                }
                if let Some(home) = &home_region {
                    marker.push((crate::region::HOME_HEADER, home));
                }
                let marker = marker.as_slice();
                // An `open` fallback of the whole request checked nothing: every descriptor
                // is plainly `OK`. (One for a far region's limits alone lists them all, those
                // it let through as shadow limits.)
                if degraded == Some(FailureMode::Open) && verdict.outcomes.is_empty() {
                    return Ok(response::unlimited(descriptors, marker));
                }
                Ok(response::checked(plan, &verdict, marker))
            }
            Outcome::Refused(Refused { error, .. }) => Err(Status::unavailable(format!(
                "the rate-limit store failed and domain `{domain}` fails closed: {error}"
            ))),
        }
    }
}

/// The descriptors a call in the policy domain is planned and logged by when the policy
/// identifies callers: each one's entries [`as_identified`]. Checks and reports both plan
/// on these, so a report counts exactly the counters the matching check counts (never one
/// keyed by a credential the check does not see).
pub(super) fn identified(
    descriptors: &[RateLimitDescriptor],
    identity: &Identity,
    config: &Principals,
) -> Vec<RateLimitDescriptor> {
    let mut copy = descriptors.to_vec();
    identify_in_place(&mut copy, identity, config);
    copy
}

/// [`identified`] in place, for descriptors the caller already owns (a report's).
pub(super) fn identify_in_place(
    descriptors: &mut [RateLimitDescriptor],
    identity: &Identity,
    config: &Principals,
) {
    let credentials = credential_names(config);
    for d in descriptors {
        as_identified(&mut d.entries, &credentials, identity, config);
    }
}

/// The descriptor entry names that carry credentials under `config` (the token's header or
/// `cookie`, the API key's header, the host header), which are never planned or logged.
pub(super) fn credential_names(config: &Principals) -> Credentials<'_> {
    Credentials([
        config.jwt.as_ref().map(|jwt| match &jwt.place {
            TokenPlace::Header(name) => name.as_str(),
            TokenPlace::Cookie(_) => "cookie",
        }),
        config.api_key.as_ref().map(|key| key.header.as_str()),
        config.subdomain.as_ref().map(|sub| sub.header.as_str()),
    ])
}

/// The entry names [`credential_names`] gives: the token's, the API key's, the host's, each
/// when configured (no allocation per call).
pub(super) struct Credentials<'a>([Option<&'a str>; 3]);

impl Credentials<'_> {
    /// Whether an entry named `key` carries a credential.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.0.contains(&Some(key))
    }
}

/// Makes a descriptor's entries what the decision log and the plan should see: without the
/// credential entries, and with `tenant`, `user` and `tier` as the identity sets them
/// ([`principal::apply`]'s rules), so the log never records a claimed tenant as the caller.
pub(super) fn as_identified(
    entries: &mut Vec<Entry>,
    credentials: &Credentials<'_>,
    identity: &Identity,
    config: &Principals,
) {
    let may = config.request_may_name;
    let (tenant, user, tier): (Option<&str>, Option<&str>, Option<&str>) = match identity {
        Identity::Verified(p, _) => (p.tenant.as_deref(), p.user.as_deref(), p.tier.as_deref()),
        Identity::Anonymous(tier) => (None, None, Some(tier)),
    };
    let anonymous = matches!(identity, Identity::Anonymous(_));
    let set = [
        ("tenant", tenant, may.tenant && !anonymous),
        ("user", user, may.user && !anonymous),
        ("tier", tier, may.tier && !anonymous),
    ];
    entries.retain(|e| {
        !credentials.contains(&e.key)
            && set
                .iter()
                .all(|(key, value, may)| e.key != *key || (value.is_none() && *may))
    });
    for (key, value, _) in set {
        if let Some(value) = value {
            entries.push(Entry {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
    }
}

/// A request's descriptor entries read as named values. Envoy repeats a header's entry in
/// every descriptor whose actions read it, so equal values count once: the second value is
/// the first that differs from the first (two different tokens are malformed).
struct Entries<'a>(&'a [RateLimitDescriptor]);

impl Lookup for Entries<'_> {
    fn nth(&self, name: &str, n: usize) -> Option<&[u8]> {
        let mut values = self
            .0
            .iter()
            .flat_map(|d| &d.entries)
            .filter(|e| e.key == name)
            .map(|e| e.value.as_str());
        let first = values.next()?;
        match n {
            0 => Some(first.as_bytes()),
            _ => values.filter(|v| *v != first).nth(n - 1).map(str::as_bytes),
        }
    }
}

/// Whether every descriptor names the client's address (an `ip` or `remote_address` entry),
/// by which an anonymous caller is counted; a report's marker descriptor (the report marker,
/// perhaps with its request id, and nothing else), which names no limit, needs none. A
/// descriptor holding only a request id is not a marker and needs an address like any other.
fn carries_ip(descriptors: &[RateLimitDescriptor]) -> bool {
    let marker = |key: &str| key == super::report::MARKER || key == super::report::REQUEST_ID;
    let is_marker = |d: &RateLimitDescriptor| {
        d.entries.iter().any(|e| e.key == super::report::MARKER)
            && d.entries.iter().all(|e| marker(&e.key))
    };
    descriptors.iter().filter(|d| !is_marker(d)).all(|d| {
        d.entries
            .iter()
            .any(|e| e.key == "ip" || e.key == "remote_address")
    })
}

/// The client's address, for its budget of failed token checks: Envoy's own `remote_address`
/// first, then a `masked_remote_address` network no wider than the budget's subject (an IPv4
/// `/32`, an IPv6 `/64`), then an `ip` entry (which a route may take from a header).
fn address(descriptors: &[RateLimitDescriptor]) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    let entries = || descriptors.iter().flat_map(|d| &d.entries);
    let plain = |key: &str| {
        entries()
            .filter(|e| e.key == key)
            .find_map(|e| e.value.trim().parse::<IpAddr>().ok())
    };
    let masked = || {
        entries()
            .filter(|e| e.key == "masked_remote_address")
            .find_map(|e| {
                let (address, bits) = e.value.trim().split_once('/')?;
                let (address, bits) = (address.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?);
                let narrow = match address {
                    IpAddr::V4(_) => bits >= 32,
                    IpAddr::V6(_) => bits >= 64,
                };
                narrow.then_some(address)
            })
    };
    plain("remote_address")
        .or_else(masked)
        .or_else(|| plain("ip"))
}

/// The first `tenant` and `user` entries among the descriptors, for the top-k lists and the
/// span; not a descriptor giving hits back (`is_negative_hits`), which counts nothing, so
/// names no one.
fn who(descriptors: &[RateLimitDescriptor]) -> Who<'_> {
    let counted = descriptors.iter().filter(|d| !d.is_negative_hits);
    // Within a descriptor the last entry of a key counts (as planning reads it), so the
    // record names the counter charged; across descriptors, the first that names one.
    let first = |key: &str| {
        (counted.clone())
            .find_map(|d| d.entries.iter().rev().find(|e| e.key == key))
            .map(|e| e.value.as_str())
    };
    Who {
        tenant: first("tenant"),
        user: first("user"),
    }
}

/// Refuses requests no gateway would send, saying which field is wrong; else tells whether the
/// call is a report (a descriptor carries [`super::report::MARKER`]), from the same walk over
/// the entries. How many descriptors and entries a call holds was bounded in its bytes,
/// before it was decoded ([`super::wire`]).
///
/// A descriptor with no entries is not refused: Envoy sends one when every action of a
/// `rate_limits` entry was skipped (`skip_if_absent` on a header the client left out), and a
/// refusal would have Envoy (by default `failure_mode_deny: false`) admit the whole request,
/// the call's other descriptors unjudged. It matches nothing (as upstream's service reads it).
fn check_shape(request: &RateLimitRequest) -> Result<bool, String> {
    if request.domain.is_empty() {
        return Err("`domain` must not be empty".into());
    }
    if request.descriptors.is_empty() {
        return Err("`descriptors` must not be empty".into());
    }
    let mut report = false;
    for (i, d) in request.descriptors.iter().enumerate() {
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(format!(
                    "descriptors[{i}].entries[{j}].key must not be empty"
                ));
            }
            report |= e.key == super::report::MARKER;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod descriptor_tests {
    use super::{address, carries_ip, who};
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..RateLimitDescriptor::default()
        }
    }

    #[test]
    fn only_a_report_marker_is_excused_from_naming_an_address() {
        let limited = descriptor(&[("ip", "192.0.2.1"), ("user", "u")]);
        let marker = descriptor(&[
            (super::super::report::MARKER, "1"),
            (super::super::report::REQUEST_ID, "r-1"),
        ]);
        assert!(carries_ip(&[limited.clone(), marker]), "a report's marker");
        // A descriptor holding only a request id names no limit either, but it is not a
        // report's marker: an anonymous check must not pass on it without an address.
        let request_id_only = descriptor(&[(super::super::report::REQUEST_ID, "r-1")]);
        assert!(!carries_ip(&[limited.clone(), request_id_only]));
        assert!(!carries_ip(&[descriptor(&[("user", "u")])]));
        assert!(carries_ip(&[descriptor(&[(
            "remote_address",
            "192.0.2.1"
        )])]));
    }

    /// A descriptor giving hits back counts nothing, so the tenant it names is not the one the
    /// top-k lists and the span blame (a caller could pin its denials on another tenant).
    #[test]
    fn a_descriptor_giving_hits_back_names_no_one() {
        let mut back = descriptor(&[("tenant", "victim"), ("user", "v")]);
        back.is_negative_hits = true;
        let own = descriptor(&[("tenant", "acme"), ("user", "alice")]);
        let named = who(std::slice::from_ref(&back));
        assert_eq!((named.tenant, named.user), (None, None));
        let both = [back, own];
        let named = who(&both);
        assert_eq!((named.tenant, named.user), (Some("acme"), Some("alice")));
    }

    #[test]
    fn a_descriptor_names_its_last_tenant_as_planning_counts_it() {
        let twice = descriptor(&[("tenant", "victim"), ("tenant", "abuser"), ("user", "u")]);
        let named = who(std::slice::from_ref(&twice));
        assert_eq!((named.tenant, named.user), (Some("abuser"), Some("u")));
    }

    #[test]
    fn the_address_is_envoys_own_first() {
        let addr = |d: Vec<RateLimitDescriptor>| address(&d).map(|a| a.to_string());
        let header_ip = descriptor(&[("ip", "198.51.100.7")]);
        let envoy = descriptor(&[("remote_address", " 203.0.113.9 ")]);
        assert_eq!(
            addr(vec![header_ip.clone(), envoy]).as_deref(),
            Some("203.0.113.9"),
            "remote_address before a header's ip, trimmed"
        );
        let masked = |net: &str| descriptor(&[("masked_remote_address", net)]);
        assert_eq!(
            addr(vec![header_ip.clone(), masked("2001:db8:1:2::/64")]).as_deref(),
            Some("2001:db8:1:2::")
        );
        assert_eq!(
            addr(vec![header_ip.clone(), masked("203.0.113.0/24")]).as_deref(),
            Some("198.51.100.7"),
            "a network wider than one subject is no address"
        );
        assert_eq!(addr(vec![descriptor(&[("tenant", "t")])]), None);
    }
}
