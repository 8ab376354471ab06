//! Rendering a [`Verdict`] as HTTP response fields.
//!
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`: the governing limit's numbers.
//! - `X-RateLimit-Reset`: **delta seconds** until the governing limit is fully reset, rounded
//!   up. Implementations are split between delta seconds and a Unix timestamp; we send delta
//!   seconds because it needs no agreement between client and server clocks, and it is what the
//!   IETF fields below (and `Retry-After`) use, so every number we send means the same thing.
//! - `Retry-After` on a denial: delay-seconds, rounded up, at least 1. Absent when the cost
//!   can never fit, since no wait would help.
//! - `RateLimit-Policy` and `RateLimit` as in draft-ietf-httpapi-ratelimit-headers (-09/-10):
//!   structured-field lists with one item per enforced limit, named by a String item, e.g.
//!   `"free-user";q=100;w=60` and `"free-user";r=42;t=18`. Shadow-mode limits are left out:
//!   they do not constrain the client.

use crate::engine::Verdict;
use crate::time::ceil_secs;

/// `X-RateLimit-Limit`.
pub const X_LIMIT: &str = "x-ratelimit-limit";
/// `X-RateLimit-Remaining`.
pub const X_REMAINING: &str = "x-ratelimit-remaining";
/// `X-RateLimit-Reset` (delta seconds).
pub const X_RESET: &str = "x-ratelimit-reset";
/// `Retry-After` (delay-seconds).
pub const RETRY_AFTER: &str = "retry-after";
/// The IETF `RateLimit-Policy` field.
pub const POLICY: &str = "ratelimit-policy";
/// The IETF `RateLimit` field.
pub const RATELIMIT: &str = "ratelimit";

/// The response fields for `verdict`, lower-case names first. Empty when no enforced limit
/// applied to the request.
///
/// This runs once per decision, so it writes digits and names straight into each value with
/// no intermediate strings.
pub fn render(verdict: &Verdict) -> Vec<(&'static str, String)> {
    let Some(gov) = verdict.governing() else {
        return Vec::new();
    };
    let d = &gov.decision;
    let mut out = Vec::with_capacity(6);
    let number = |n: u64| itoa::Buffer::new().format(n).to_owned();
    out.push((X_LIMIT, number(d.limit)));
    out.push((X_REMAINING, number(d.remaining)));
    out.push((X_RESET, number(ceil_secs(d.reset_after))));
    if !verdict.allowed {
        if let Some(retry) = d.retry_after {
            out.push((RETRY_AFTER, number(ceil_secs(retry).max(1))));
        }
    }
    let enforced = || verdict.outcomes.iter().filter(|o| !o.shadow);
    let room: usize = enforced().map(|o| o.name.len() + 32).sum();
    let (mut policy, mut current) = (String::with_capacity(room), String::with_capacity(room));
    for o in enforced() {
        if !policy.is_empty() {
            policy.push_str(", ");
            current.push_str(", ");
        }
        push_sf_string(&mut policy, &o.name);
        push_param(&mut policy, ";q=", o.quota);
        push_param(&mut policy, ";w=", ceil_secs(o.window).max(1));
        push_sf_string(&mut current, &o.name);
        push_param(&mut current, ";r=", o.decision.remaining);
        push_param(&mut current, ";t=", ceil_secs(o.decision.reset_after));
    }
    out.push((POLICY, policy));
    out.push((RATELIMIT, current));
    out
}

/// Appends `;k=` and a decimal integer.
fn push_param(out: &mut String, key: &str, value: u64) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(value));
}

/// Appends `s` as a structured-field String: quoted, with `"` and `\` escaped. Characters a
/// String cannot hold (outside printable ASCII) become `?`, so no limit name can break the
/// field.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Decision, Denial};
    use crate::engine::LimitOutcome;
    use crate::policy::FailureMode;
    use crate::time::SECOND;

    fn outcome(
        name: &str,
        allowed: bool,
        remaining: u64,
        reset: u64,
        retry: Option<u64>,
    ) -> LimitOutcome {
        LimitOutcome {
            name: name.into(),
            decision: Decision {
                allowed,
                limit: 100,
                remaining,
                reset_after: reset,
                retry_after: retry,
                denial: (!allowed).then_some(Denial::OverLimit),
            },
            shadow: false,
            quota: 100,
            window: 60 * SECOND,
        }
    }

    fn verdict(allowed: bool, outcomes: Vec<LimitOutcome>) -> Verdict {
        Verdict {
            allowed,
            tier: "free".into(),
            route: None,
            failure_mode: FailureMode::Open,
            cost: 1,
            outcomes,
        }
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn allowed_request_reports_the_least_remaining() {
        let v = verdict(
            true,
            vec![
                outcome("a", true, 42, 18 * SECOND, None),
                outcome("b\"x", true, 7, 1, None),
            ],
        );
        let h = render(&v);
        assert_eq!(get(&h, X_REMAINING), Some("7"));
        assert_eq!(get(&h, X_RESET), Some("1"));
        assert_eq!(get(&h, RETRY_AFTER), None);
        assert_eq!(
            get(&h, POLICY),
            Some(r#""a";q=100;w=60, "b\"x";q=100;w=60"#)
        );
        assert_eq!(get(&h, RATELIMIT), Some(r#""a";r=42;t=18, "b\"x";r=7;t=1"#));
    }

    #[test]
    fn denial_reports_the_longest_wait_rounded_up_and_at_least_one() {
        let v = verdict(
            false,
            vec![
                outcome("short", false, 0, 5, Some(1)),
                outcome("long", false, 0, 30 * SECOND, Some(2 * SECOND + 1)),
            ],
        );
        assert_eq!(get(&render(&v), RETRY_AFTER), Some("3"));
        let v = verdict(false, vec![outcome("tiny", false, 0, 5, Some(5))]);
        assert_eq!(get(&render(&v), RETRY_AFTER), Some("1"));
    }

    #[test]
    fn a_cost_that_can_never_fit_gets_no_retry_after() {
        let mut hopeless = outcome("small", false, 0, 5, None);
        hopeless.decision.denial = Some(Denial::CostExceedsLimit);
        let v = verdict(
            false,
            vec![
                outcome("waiting", false, 0, 30 * SECOND, Some(30 * SECOND)),
                hopeless,
            ],
        );
        assert_eq!(v.governing().map(|o| &*o.name), Some("small"));
        assert_eq!(get(&render(&v), RETRY_AFTER), None);
    }

    #[test]
    fn shadow_limits_stay_out_of_the_headers() {
        let mut s = outcome("shadow", false, 0, 5, Some(5));
        s.shadow = true;
        let v = verdict(true, vec![s, outcome("real", true, 3, SECOND, None)]);
        let h = render(&v);
        assert_eq!(get(&h, POLICY), Some(r#""real";q=100;w=60"#));
        assert_eq!(get(&h, X_REMAINING), Some("3"));
    }
}
