//! The HTTP endpoints, one module each, and the steps they share.
//!
//! - [`check`]: `POST /v1/check`, the JSON decision API.
//! - [`authorize`]: `/v1/authorize`, the same decision read from a reverse proxy's headers.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`debug`]: `POST /debug/clock`, present only on a manual clock.
//! - [`problem`]: RFC 9457 error documents, used by every endpoint.
//! - [`verdict`]: the JSON body and headers a verdict is shown as.
//! - [`client_ip`]: which address a proxied request came from.
//! - [`access_log`]: debug-level request logging.
//!
//! Both decision endpoints end in [`decide`], so timing, metrics and store-failure handling are
//! the same whichever way a request arrives.

pub mod access_log;
pub mod authorize;
pub mod check;
pub mod client_ip;
pub mod debug;
pub mod probes;
pub mod problem;
pub mod verdict;

use crate::app::AppState;
use crate::failure::{Failed, Fallback};
use crate::metrics;
use axum::http::StatusCode;
use problem::Problem;
use spillway_core::engine::Verdict;
use spillway_core::policy::{FailureMode, Policy};
use spillway_core::request::{CheckMode, RequestAttrs};

/// A verdict, and whether it was reached without the store.
#[derive(Debug, Clone)]
pub struct Decided {
    /// What to answer.
    pub verdict: Verdict,
    /// `Some(mode)` when the store failed and the route's failure mode decided; the response
    /// then carries the `Spillway-Degraded` header and a `degraded` member.
    pub degraded: Option<FailureMode>,
}

/// Asks the engine through [`Failover::decide`], the same path the gRPC service takes, and
/// counts a consuming verdict.
///
/// When the store fails (or the budget runs out, or the breaker is open), the request's
/// failure mode (its route's, else the policy's) decides: `closed` answers a 503 problem with
/// `Retry-After`; `open` lets the request through with an allowing verdict that lists no
/// limits (so no rate-limit headers are sent); `degrade` answers from the node's emergency
/// quotas.
///
/// `policy` is the snapshot the caller loaded (`AppState::engine.policy()`), so everything one
/// request does, from reading its headers to a store failure's fallback, sees one policy.
///
/// [`Failover::decide`]: crate::failure::Failover::decide
pub async fn decide(
    app: &AppState,
    policy: &Policy,
    attrs: &RequestAttrs,
    mode: CheckMode,
) -> Result<Decided, Problem> {
    let resolved = policy.resolve(attrs);
    let route = resolved.route.as_ref().map(|r| &*r.name);
    let failure_mode = resolved.failure_mode;
    let decided = app
        .failover
        .decide(
            &app.engine,
            policy,
            &resolved.limits,
            failure_mode,
            route,
            mode,
        )
        .await;
    let (allowed, outcomes, degraded) = match decided {
        Ok((allowed, outcomes)) => (allowed, outcomes, None),
        Err(Failed { fallback, error }) => match fallback {
            Fallback::Closed { retry_after } => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problem::STORE_UNAVAILABLE,
                    "Rate-limit store unavailable",
                    format!("the rate-limit store failed and this route fails closed: {error}"),
                )
                .with_retry_after(retry_after));
            }
            Fallback::Open => (true, Vec::new(), Some(failure_mode)),
            Fallback::Degraded { allowed, outcomes } => (allowed, outcomes, Some(failure_mode)),
        },
    };
    let verdict = Verdict::of(&resolved, allowed, outcomes);
    if degraded.is_none() && mode == CheckMode::Consume {
        metrics::record_verdict(&verdict);
    }
    Ok(Decided { verdict, degraded })
}

/// Reads `?peek` / `?dry_run` from a query string. Either flag alone, or set to `true` or `1`,
/// asks for a check that consumes nothing; `false` or `0` is an ordinary check. Other
/// parameters are ignored.
pub fn check_mode(query: Option<&str>) -> Result<CheckMode, Problem> {
    let mut mode = CheckMode::Consume;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "peek" && name != "dry_run" {
            continue;
        }
        mode = match value {
            "" | "true" | "1" => CheckMode::Peek,
            "false" | "0" => CheckMode::Consume,
            other => {
                return Err(Problem::invalid(
                    format!("query parameter `{name}` must be true or false, not `{other}`"),
                    Some(name.to_owned()),
                ))
            }
        };
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_and_dry_run_switch_the_mode() {
        assert_eq!(check_mode(None).ok(), Some(CheckMode::Consume));
        assert_eq!(check_mode(Some("peek")).ok(), Some(CheckMode::Peek));
        assert_eq!(check_mode(Some("peek=true")).ok(), Some(CheckMode::Peek));
        assert_eq!(
            check_mode(Some("x=1&dry_run=1")).ok(),
            Some(CheckMode::Peek)
        );
        assert_eq!(
            check_mode(Some("peek=false")).ok(),
            Some(CheckMode::Consume)
        );
        assert_eq!(
            check_mode(Some("peeking=yes")).ok(),
            Some(CheckMode::Consume)
        );
    }

    #[test]
    fn nonsense_flag_values_are_rejected_by_name() {
        let problem = check_mode(Some("peek=maybe")).expect_err("invalid");
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        assert_eq!(problem.field(), Some("peek"));
    }
}
