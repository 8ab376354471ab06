//! Envoy's charge when the stream is done: costs known only after the response, sent by the
//! rate-limit filter as ordinary `ShouldRateLimit` calls, recorded and never denied.
//!
//! Envoy's `envoy.filters.http.ratelimit` can send a rate-limit action again once the
//! response is done (`apply_on_stream_done: true` on the route's `rate_limits` entry), with a
//! `hits_addend` taken from the response (for example a header or dynamic metadata holding
//! the tokens generated). Such a call looks like any other, so the entry carries a marker:
//! a descriptor entry **`spillway_report`** (a `generic_key` action with
//! `descriptor_key: spillway_report`, any value). A call with the marker on any descriptor
//! is a report:
//!
//! - In the policy domain, each descriptor resolves like a request; its cost (the
//!   descriptor's own `hits_addend`, else the request's, where the request's 0 means 1; a
//!   descriptor's own 0 records nothing) is recorded on the
//!   metered limits (`charge: after`) it reaches, past the limit if need be; other limits
//!   were charged when the request was checked and are left alone.
//! - In an envoyproxy/ratelimit-style domain (which has no `charge: after`), the cost is
//!   recorded on every limit the descriptor reaches, past the limit if need be, where
//!   upstream would only count hits that fit.
//! - An optional entry **`spillway_request_id`** (for example a `request_headers` action on
//!   `x-request-id`) makes the report idempotent, as `request_id` does on `POST /v1/report`
//!   (an id longer than that takes is kept as its SHA-256, `kept_id`).
//! - The answer is always `OK` (Envoy ignores it anyway); a report the store could not
//!   record is lost and counted (`spillway_reports_total{via="envoy",outcome="failed"}`).
//!
//! - A call that names nothing to record (only marker-only descriptors or ones giving hits
//!   back with `is_negative_hits`, which nothing here does, an unknown domain, descriptors the
//!   domain's plan refuses), or a descriptor's `hits_addend` above
//!   [`MAX_REPORTED_COST`] (2^53: no store could record it exactly, so nothing of the call is
//!   recorded rather than a rounded cost), is counted as `outcome="invalid"`; a marker-only
//!   descriptor, or one giving hits back, beside real ones is skipped and the others
//!   recorded.
//!
//! Both marker entries are removed before the descriptor is resolved or matched.

use super::plan;
use super::response;
use super::service;
use super::RlsState;
use crate::decision::{self, Report};
use crate::principal::Identity;
use crate::telemetry::decision_log::{Ids, Subject};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use spillway_core::policy::Policy;
use spillway_core::store::MAX_REPORTED_COST;
use std::sync::Arc;

/// The descriptor entry that marks a call as a report.
pub const MARKER: &str = "spillway_report";
/// The descriptor entry that carries the report's request id.
pub const REQUEST_ID: &str = "spillway_request_id";

/// A stream-done call's request id as the report keeps it: as sent, or, longer than
/// `POST /v1/report` takes, its SHA-256 (`sha256:` and hex). Envoy sends what the header held,
/// and a call is answered `OK` whatever it carries, so the id cannot be refused as the HTTP API
/// refuses it; dropped, a retry of the report would be charged again.
fn kept_id(id: String) -> String {
    if id.len() <= crate::http::report::MAX_REQUEST_ID {
        return id;
    }
    format!("sha256:{}", crate::admin::digest_of(&id))
}

/// The descriptors without the marker entries, and the first request id among them: the one
/// copy of the call's descriptors a report makes (identified, planned and logged in place).
fn strip(descriptors: &[RateLimitDescriptor]) -> (Vec<RateLimitDescriptor>, Option<String>) {
    let mut id = None;
    let stripped = descriptors
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.entries.retain(|e| {
                if e.key == REQUEST_ID {
                    id = id.take().or_else(|| Some(e.value.clone()));
                }
                e.key != MARKER && e.key != REQUEST_ID
            });
            d
        })
        .collect();
    (stripped, id.filter(|id| !id.trim().is_empty()))
}

/// Records a report call (see the module docs) and answers `OK` for every descriptor.
/// `ids` are the call's request id and trace headers, for the decision log.
pub async fn record(
    state: &RlsState,
    request: &RateLimitRequest,
    policy: &Policy,
    identity: Option<&Identity>,
    ids: Ids<'_>,
) -> RateLimitResponse {
    let n = request.descriptors.len();
    let (mut descriptors, request_id) = strip(&request.descriptors);
    // A descriptor of nothing but markers names no limit, and one giving hits back
    // (`is_negative_hits`) is not taken: skipped, the others recorded.
    descriptors.retain(|d| !d.entries.is_empty() && !d.is_negative_hits);
    let invalid = || {
        crate::metrics::record_report("envoy", "invalid", &[], 0);
        response::unlimited(n, &[])
    };
    if descriptors.is_empty() {
        return invalid();
    }
    let unrecordable = |d: &RateLimitDescriptor| {
        d.hits_addend
            .as_ref()
            .is_some_and(|h| h.value > MAX_REPORTED_COST)
    };
    if let Some(d) = descriptors.iter().find(|d| unrecordable(d)) {
        tracing::debug!(
            hits_addend = d.hits_addend.as_ref().map_or(0, |h| h.value),
            bound = MAX_REPORTED_COST,
            "report not recorded: a descriptor's hits_addend is above the largest recordable cost"
        );
        return invalid();
    }
    let request_id = request_id.map(kept_id);
    let hits = u64::from(request.hits_addend).max(1);
    let domain = request.domain.as_str();
    // Under `principals:`, the descriptors name the caller as a check's do (credential
    // entries out, the verified tenant, user and tier in): planned, logged and ranked alike.
    if let Some((identity, config)) = identity.zip(policy.principals()) {
        service::identify_in_place(&mut descriptors, identity, config);
    }
    let (name, plan, metered_only) = if domain == &*state.policy_domain {
        let plan = plan::policy(policy, &descriptors, Some(hits));
        (Arc::clone(&state.policy_domain), plan, true)
    } else {
        let envoy = state.envoy.load();
        let Some(config) = envoy.domain(domain) else {
            return invalid();
        };
        match plan::envoy(config, &descriptors, hits) {
            Ok(plan) => (Arc::clone(&config.name), plan, false),
            Err(_) => return invalid(),
        }
    };
    // The plan's costs are a check's; a report records each descriptor's own, as given (a 0
    // records nothing: a report denies nothing, so its 0 passes no limit), the largest for a
    // counter two descriptors reach.
    let plan::Plan {
        mut planned,
        descriptors: reached,
        ..
    } = plan;
    for p in &mut planned {
        p.cost = 0;
    }
    for (d, limits) in descriptors.iter().zip(&reached) {
        let cost = d.hits_addend.as_ref().map_or(hits, |h| h.value);
        for (i, _) in limits {
            planned[*i].cost = planned[*i].cost.max(cost);
        }
    }
    if metered_only {
        planned.retain(|p| p.def.metered);
    }
    // Planned: from here on the descriptors are what the decision log sees.
    if identity.is_none() {
        drop_credentials(&mut descriptors, policy);
    }
    let report = Report {
        planned: &planned,
        request_id: request_id.as_deref(),
        tier: name,
        route: None,
        cost: planned.iter().map(|p| p.cost).max().unwrap_or(0),
        via: "envoy",
        tenant: tenant(&descriptors, identity, policy.principals().is_none()),
        subject: Subject::envoy(&descriptors, ids),
    };
    // Recorded or lost (and counted either way): Envoy is answered OK regardless.
    let _ = decision::report(&state.app, policy, &report).await;
    response::unlimited(n, &[])
}

/// The tenant a report is charged to: the verified principal's under `principals:` (none for
/// an anonymous caller), else the first `tenant` entry.
fn tenant<'a>(
    descriptors: &'a [RateLimitDescriptor],
    identity: Option<&'a Identity>,
    claims_trusted: bool,
) -> Option<&'a str> {
    match identity {
        Some(Identity::Verified(p, _)) => p.tenant.as_deref(),
        Some(Identity::Anonymous(_)) => None,
        // Under `principals:` a tenant the call merely names (an Envoy-style domain, which is
        // not identified) is not believed: its reports are filed under no tenant, so they
        // cannot crowd a verified tenant's remembered report ids out.
        None if !claims_trusted => None,
        None => descriptors
            .iter()
            .flat_map(|d| &d.entries)
            .find(|e| e.key == "tenant")
            .map(|e| e.value.as_str()),
    }
}

/// Takes the credential entries out of descriptors the caller was not identified by (an
/// Envoy-style domain under `principals:`), so the decision log never sees one. An identified
/// call's descriptors are already [`service::identify_in_place`]d (and name the verified tenant, user
/// and tier, as a check's record does).
fn drop_credentials(descriptors: &mut [RateLimitDescriptor], policy: &Policy) {
    let Some(config) = policy.principals() else {
        return;
    };
    let credentials = service::credential_names(config);
    for d in descriptors {
        d.entries.retain(|e| !credentials.contains(&e.key));
    }
}

#[cfg(test)]
mod tests {
    use super::{kept_id, tenant};
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;

    #[test]
    fn a_named_tenant_is_believed_only_without_principals() {
        let named = [RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: "victim".into(),
            }],
            ..Default::default()
        }];
        assert_eq!(tenant(&named, None, true), Some("victim"));
        assert_eq!(tenant(&named, None, false), None);
    }

    #[test]
    fn long_request_ids_are_kept_as_their_digest() {
        assert_eq!(kept_id("abc".into()), "abc");
        let long = "x".repeat(500);
        let kept = kept_id(long.clone());
        assert!(
            kept.starts_with("sha256:") && kept.len() == 7 + 64,
            "{kept}"
        );
        assert_eq!(
            kept,
            kept_id(long),
            "the same id, the same digest: a retry counts once"
        );
        assert_ne!(kept, kept_id("y".repeat(500)));
    }
}
