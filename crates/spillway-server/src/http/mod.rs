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
use crate::metrics;
use axum::http::StatusCode;
use problem::Problem;
use spillway_core::engine::Verdict;
use spillway_core::policy::FailureMode;
use spillway_core::request::{CheckMode, RequestAttrs};

/// Asks the engine, timing the call and counting the outcome.
///
/// When the store fails, the request's failure mode (its route's, else the policy's) decides:
/// `closed` answers a 503 problem; `open` lets the request through with an allowing verdict
/// that lists no limits (so no rate-limit headers are sent). `degrade` is treated as `open`
/// for now: this server has no local fallback store yet.
pub async fn decide(
    app: &AppState,
    attrs: &RequestAttrs,
    mode: CheckMode,
) -> Result<Verdict, Problem> {
    let stopwatch = metrics::Stopwatch::start();
    let result = app.engine.check(attrs, mode).await;
    metrics::record_check_duration(stopwatch.elapsed());
    match result {
        Ok(verdict) => {
            if mode == CheckMode::Consume {
                metrics::record_verdict(&verdict);
            }
            Ok(verdict)
        }
        Err(err) => {
            let resolved = app.engine.policy().resolve(attrs);
            let failure_mode = resolved.failure_mode;
            metrics::record_store_failure(failure_mode);
            if failure_mode == FailureMode::Closed {
                tracing::warn!(error = %err, %failure_mode, "rate-limit store failed; refusing");
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problem::STORE_UNAVAILABLE,
                    "Rate-limit store unavailable",
                    format!("the rate-limit store failed and this route fails closed: {err}"),
                ));
            }
            tracing::warn!(error = %err, %failure_mode, "rate-limit store failed; letting through");
            Ok(Verdict {
                allowed: true,
                tier: resolved.tier,
                route: resolved.route.map(|route| route.name.clone()),
                failure_mode,
                cost: resolved.cost,
                outcomes: Vec::new(),
            })
        }
    }
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
