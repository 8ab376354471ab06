//! The HTTP endpoints, one module each, and the steps they share.
//!
//! - [`check`]: `POST /v1/check`, the JSON decision API.
//! - [`entry`]: each connection's service, which hands `/v1/check` to [`check`] before the
//!   router.
//! - [`authorize`]: `/v1/authorize`, the same decision read from a reverse proxy's headers.
//! - [`report`]: `POST /v1/report`, costs known only after the response.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`top`]: `GET /v1/top`, hot keys and the most denied tenants and users.
//! - [`debug`]: `POST /debug/clock`, present only on a manual clock.
//! - [`problem`]: RFC 9457 error documents, used by every endpoint.
//! - [`settings`]: the header names and statuses `/v1/authorize` works with.
//! - [`verdict`]: the JSON body and headers a verdict is shown as.
//! - [`answer_headers`]: a decision's rate-limit fields as an answer's header map.
//! - [`client_ip`]: which address a proxied request came from.
//! - [`principal`]: who is calling (JWT, API key, subdomain), before a request is resolved.
//! - [`access_log`]: debug-level request logging.
//!
//! Both decision endpoints end in [`decide`], so timing, metrics and store-failure handling are
//! the same whichever way a request arrives.

pub mod access_log;
pub mod answer_headers;
pub mod authorize;
pub mod check;
pub mod client_ip;
pub mod debug;
pub mod entry;
pub mod principal;
pub mod probes;
pub mod problem;
pub mod report;
pub mod settings;
pub mod top;
pub mod verdict;

use crate::decision::{self, Ask, Decided, Outcome, Refused, Who};
use crate::state::AppState;
use crate::telemetry::decision_log::{RequestIds, Subject};
use axum::http::StatusCode;
use problem::Problem;
use spillway_core::policy::Policy;
use spillway_core::request::{CheckMode, RequestAttrs};

/// Resolves `attrs` against `policy` and decides through [`crate::decision::decide`], the
/// path the gRPC service takes too, then translates a refusal: when the store fails and the
/// request's failure mode (its route's, else the policy's) is `closed`, a 503 problem with
/// `Retry-After`. An `open` fallback is an allowing verdict that lists no limits (so no
/// rate-limit headers are sent); `degrade` answers from the node's emergency quotas.
///
/// `policy` is the snapshot the caller loaded (`AppState::engine.policy()`), so everything one
/// request does, from reading its headers to a store failure's fallback, sees one policy.
pub async fn decide(
    app: &AppState,
    policy: &Policy,
    attrs: &RequestAttrs,
    ids: &RequestIds,
    mode: CheckMode,
) -> Result<Decided, Problem> {
    let resolved = policy.resolve(attrs);
    let who = Who {
        tenant: attrs.tenant.as_deref(),
        user: attrs.user.as_deref(),
    };
    let ask = Ask {
        subject: Subject::http(attrs, ids),
        ..Ask::resolved(&resolved, mode).by(who)
    };
    match decision::decide(app, policy, &ask).await {
        Outcome::Decided(decided) => Ok(decided),
        Outcome::Refused(Refused { retry_after, error }) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            problem::STORE_UNAVAILABLE,
            "Rate-limit store unavailable",
            format!("the rate-limit store failed and this route fails closed: {error}"),
        )
        .with_retry_after(retry_after)),
    }
}

/// Reads `?peek` / `?dry_run` from a query string. Either flag alone, or set to `true` or `1`,
/// asks for a check that consumes nothing; `false` or `0` is an ordinary check. Other
/// parameters are ignored.
pub fn check_mode(query: Option<&str>) -> Result<CheckMode, Problem> {
    let mut mode = CheckMode::Consume;
    // Nearly every check has no query at all: nothing to split.
    let Some(query) = query else {
        return Ok(mode);
    };
    for pair in query.split('&') {
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
