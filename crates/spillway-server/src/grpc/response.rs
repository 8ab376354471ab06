//! How the engine's outcomes are told to Envoy: an overall code, one status per request
//! descriptor (in request order) and the same rate-limit headers the HTTP API sends.
//!
//! A descriptor's status speaks for the limits it matched the way the headers speak for a
//! request: on a denial, the enforced limit that makes the client wait longest; otherwise the
//! one with the least remaining. A descriptor that matched nothing, or only `unlimited` or
//! shadow-mode limits, is `OK` with no `current_limit`.

use super::plan::{Plan, Report};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as PbUnit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::google::protobuf::Duration;
use spillway_core::engine::{LimitOutcome, Verdict};
use spillway_core::envoy_config::Unit;
use spillway_core::headers;
use spillway_core::policy::FailureMode;
use spillway_core::time::SECOND;

/// The answer for a checked request, plus `extra` headers (the degraded marker when the
/// emergency quotas decided).
pub fn checked(plan: &Plan, overall: &Verdict, extra: &[(&str, &str)]) -> RateLimitResponse {
    let told;
    let overall = match none_allowed(plan, overall) {
        Some(verdict) => {
            told = verdict;
            &told
        }
        None => overall,
    };
    let statuses = plan
        .descriptors
        .iter()
        .map(|limits| descriptor_status(plan, limits, overall))
        .collect();
    let headers = header_values(overall, extra);
    RateLimitResponse {
        overall_code: code(overall.allowed) as i32,
        statuses,
        response_headers_to_add: headers,
        ..RateLimitResponse::default()
    }
}

/// `overall` as the client is told it when a descriptor's override of 0 (deny every request)
/// applied: such a limit is judged by a window of one charged above it (`plan::envoy`), and
/// says what it is, none at all (`q=0`, `r=0` in the headers), not the window of one. `None`
/// when no such override applied (the usual case: nothing is copied).
fn none_allowed(plan: &Plan, overall: &Verdict) -> Option<Verdict> {
    let mut zero = (plan.descriptors.iter().flatten())
        .filter(|(_, (per_unit, _))| *per_unit == 0)
        .map(|(index, _)| *index)
        .peekable();
    zero.peek()?;
    let mut told = overall.clone();
    for index in zero {
        if let Some(outcome) = told.outcomes.get_mut(index) {
            outcome.quota = 0;
            outcome.decision.limit = 0;
            outcome.decision.remaining = 0;
        }
    }
    Some(told)
}

/// The header that says why a call was refused for its credential (the HTTP API's too).
pub use crate::http::principal::REASON_HEADER as UNAUTHENTICATED_HEADER;

/// The answer for a call whose credential is missing or refused: `OVER_LIMIT` everywhere
/// (never an error, which Envoy may treat as "admit"), with the reason in
/// [`UNAUTHENTICATED_HEADER`].
pub fn unauthenticated(descriptors: usize, reason: &str) -> RateLimitResponse {
    let over = DescriptorStatus {
        code: Code::OverLimit as i32,
        ..DescriptorStatus::default()
    };
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![over; descriptors],
        response_headers_to_add: vec![header(UNAUTHENTICATED_HEADER, reason)],
        ..RateLimitResponse::default()
    }
}

/// The answer when no limit applies: one plain `OK` per descriptor, plus `extra` headers.
pub fn unlimited(descriptors: usize, extra: &[(&str, &str)]) -> RateLimitResponse {
    let ok = DescriptorStatus {
        code: Code::Ok as i32,
        ..DescriptorStatus::default()
    };
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![ok; descriptors],
        response_headers_to_add: extra.iter().map(|(k, v)| header(k, v)).collect(),
        ..RateLimitResponse::default()
    }
}

fn descriptor_status(
    plan: &Plan,
    limits: &[(usize, Report)],
    overall: &Verdict,
) -> DescriptorStatus {
    let outcomes: Vec<LimitOutcome> = limits
        .iter()
        .map(|(i, _)| overall.outcomes[*i].clone())
        .collect();
    let allowed = outcomes.iter().all(|o| o.shadow || o.decision.allowed);
    let own = Verdict {
        allowed,
        outcomes,
        tier: overall.tier.clone(),
        route: None,
        failure_mode: FailureMode::Open,
        cost: overall.cost,
    };
    let Some(gov) = own.governing() else {
        return DescriptorStatus {
            code: Code::Ok as i32,
            ..DescriptorStatus::default()
        };
    };
    let at = own
        .outcomes
        .iter()
        .position(|o| std::ptr::eq(o, gov))
        .unwrap_or(0);
    let (index, (per_unit, unit)) = limits[at];
    let per_unit = in_force(per_unit, plan.planned[index].def.params.quota(), gov.quota);
    DescriptorStatus {
        code: code(allowed) as i32,
        current_limit: Some(RateLimit {
            name: gov.name.to_string(),
            requests_per_unit: u32::try_from(per_unit).unwrap_or(u32::MAX),
            unit: pb_unit(unit) as i32,
        }),
        // A limit of 0 (an override denying every request) has nothing left, whatever the
        // window of one it is judged by says.
        limit_remaining: match per_unit {
            0 => 0,
            _ => u32::try_from(gov.decision.remaining).unwrap_or(u32::MAX),
        },
        duration_until_reset: Some(duration(gov.decision.reset_after)),
        ..DescriptorStatus::default()
    }
}

/// The requests per unit actually in force: the configured `per_unit` when the limit was
/// judged by its own numbers (quota `configured`), or scaled like the quota when an emergency
/// quota (`judged`) stood in for it while the store was down. The emergency quotas keep a
/// limit's window and shrink its rate by the quota's ratio, so the unit still holds.
fn in_force(per_unit: u64, configured: u64, judged: u64) -> u64 {
    if judged == configured || configured == 0 {
        return per_unit;
    }
    let scaled = (u128::from(per_unit) * u128::from(judged)).div_ceil(u128::from(configured));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

fn code(allowed: bool) -> Code {
    if allowed {
        Code::Ok
    } else {
        Code::OverLimit
    }
}

/// The HTTP API's headers for `verdict` (`Retry-After` only when waiting can help, which
/// `headers::fields` already decides), each value copied once, from the one string the
/// fields share into its protobuf message; then `extra`.
fn header_values(verdict: &Verdict, extra: &[(&str, &str)]) -> Vec<HeaderValue> {
    let fields = headers::fields(verdict);
    let mut values = Vec::with_capacity(fields.len() + extra.len());
    values.extend(fields.iter().map(|(name, value)| header(name, value)));
    values.extend(extra.iter().map(|(k, v)| header(k, v)));
    values
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value: value.to_owned(),
        ..HeaderValue::default()
    }
}

fn pb_unit(unit: Option<Unit>) -> PbUnit {
    match unit {
        Some(Unit::Second) => PbUnit::Second,
        Some(Unit::Minute) => PbUnit::Minute,
        Some(Unit::Hour) => PbUnit::Hour,
        Some(Unit::Day) => PbUnit::Day,
        Some(Unit::Week) => PbUnit::Week,
        Some(Unit::Month) => PbUnit::Month,
        Some(Unit::Year) => PbUnit::Year,
        None => PbUnit::Unknown,
    }
}

fn duration(micros: u64) -> Duration {
    Duration {
        seconds: i64::try_from(micros / SECOND).unwrap_or(i64::MAX),
        nanos: i32::try_from((micros % SECOND) * 1_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::in_force;

    #[test]
    fn the_reported_rate_follows_an_emergency_quota() {
        // Judged by its own numbers: the configured figure stands.
        assert_eq!(in_force(100, 100, 100), 100);
        assert_eq!(in_force(60, 10, 10), 60);
        // An emergency quota of 34 for 100: the window stays, so 34 per unit.
        assert_eq!(in_force(100, 100, 34), 34);
        // A bucket of burst 10 refilling 60 per minute, cut to burst 4: 24 per minute.
        assert_eq!(in_force(60, 10, 4), 24);
        // Rounded up, like the emergency quotas themselves.
        assert_eq!(in_force(10, 3, 1), 4);
    }
}
