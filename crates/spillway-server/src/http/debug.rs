//! `POST /debug/clock`: moves the manual clock. TEST ONLY.
//!
//! The route exists only when the server was started with the hidden `--manual-clock` flag;
//! otherwise the path is an ordinary 404. Body: `{"advance_ms": N}` to move forward or
//! `{"set_ms": N}` to jump to an absolute time (milliseconds since the epoch). Answers 200
//! `{"now_ms": N}` with the new reading.

use crate::http::problem::Problem;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The path of the clock control.
pub const CLOCK_PATH: &str = "/debug/clock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    advance_ms: Option<u64>,
    set_ms: Option<u64>,
}

/// The handler.
pub async fn clock(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let Some(control) = app.clock.manual_control() else {
        return Problem::http(
            axum::http::StatusCode::NOT_FOUND,
            "the server is not running on a manual clock",
        )
        .into_response();
    };
    let change: ClockChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(err) => return Problem::invalid(format!("body: {err}"), None).into_response(),
    };
    match (change.advance_ms, change.set_ms) {
        (Some(ms), None) => control.advance(ms.saturating_mul(1_000)),
        (None, Some(ms)) => control.set(ms.saturating_mul(1_000)),
        _ => {
            return Problem::invalid("give exactly one of `advance_ms` or `set_ms`", None)
                .into_response()
        }
    }
    let now_ms = app.clock.now() / 1_000;
    tracing::debug!(now_ms, "manual clock moved");
    Json(json!({ "now_ms": now_ms })).into_response()
}
