//! `GET /v1/top?window=1m|10m&limit=20&scope=local|cluster`: the hottest counters and the
//! most denied tenants and users, for this node or for every node sharing its Redis store.
//!
//! The sketches are `crate::telemetry::top`; this module only reads the query and shapes
//! the answer. With the in-memory store there is no fleet to ask, so `scope=cluster` answers
//! for this node, says `"scope": "local"` and adds a `note` saying why.

use super::problem::{self, Problem};
use crate::state::AppState;
use crate::telemetry::top::{Summary, Window, MAX_ROWS};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// Rows per list when `limit` is not given.
pub const DEFAULT_ROWS: usize = 20;

/// What `/v1/top` answers.
#[derive(Debug, Serialize)]
pub struct TopBody {
    /// `1m` or `10m`.
    pub window: &'static str,
    /// `local` or `cluster`: what the lists cover.
    pub scope: &'static str,
    /// The nodes whose summaries were merged.
    pub nodes: Vec<Arc<str>>,
    /// The lists.
    #[serde(flatten)]
    pub summary: Summary,
    /// Why the scope differs from the one asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// The query, read and checked.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    window: Window,
    rows: usize,
    cluster: bool,
}

fn parse(query: Option<&str>) -> Result<Query, Problem> {
    let mut q = Query {
        window: Window::Minute,
        rows: DEFAULT_ROWS,
        cluster: false,
    };
    let bad = |name: &str, detail: String| Problem::invalid(detail, Some(name.to_owned()));
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "window" => {
                q.window = Window::parse(value).ok_or_else(|| {
                    bad(
                        name,
                        format!("`window` must be `1m` or `10m`, not `{value}`"),
                    )
                })?;
            }
            "limit" => {
                q.rows = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ROWS).contains(n))
                    .ok_or_else(|| {
                        bad(
                            name,
                            format!("`limit` must be a whole number from 1 to {MAX_ROWS}, not `{value}`"),
                        )
                    })?;
            }
            "scope" => {
                q.cluster = match value {
                    "local" => false,
                    "cluster" => true,
                    _ => {
                        return Err(bad(
                            name,
                            format!("`scope` must be `local` or `cluster`, not `{value}`"),
                        ))
                    }
                }
            }
            _ => {
                let name = name.chars().take(64).collect::<String>();
                return Err(bad(
                    &name,
                    format!("unknown query parameter `{name}` (expected window, limit, scope)"),
                ));
            }
        }
    }
    Ok(q)
}

/// The handler; see the module docs.
pub async fn top(State(app): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    if !app.top.enabled() {
        let detail = "this node does not count hot keys or denials (started with --no-top-k)";
        return Problem::http(StatusCode::NOT_FOUND, detail).into_response();
    }
    let q = match parse(query.as_deref()) {
        Ok(q) => q,
        Err(problem) => return problem.into_response(),
    };
    let now = app.clock.now();
    let local = || TopBody {
        window: q.window.as_str(),
        scope: "local",
        nodes: vec![app.top.node().clone()],
        summary: app.top.summary(now, q.window, q.rows),
        note: None,
    };
    if !q.cluster {
        return Json(local()).into_response();
    }
    let Some(board) = &app.top_board else {
        return Json(TopBody {
            note: Some("the in-memory store shares nothing between nodes: this node only"),
            ..local()
        })
        .into_response();
    };
    match board.merged(&app.top, now, q.window, q.rows).await {
        Ok((nodes, summary)) => Json(TopBody {
            window: q.window.as_str(),
            scope: "cluster",
            nodes,
            summary,
            note: None,
        })
        .into_response(),
        Err(err) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            problem::STORE_UNAVAILABLE,
            "Cluster summaries unavailable",
            format!("cannot read the other nodes' summaries from Redis: {err:#}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_each_parameter() {
        assert_eq!(
            parse(None).ok(),
            Some(Query {
                window: Window::Minute,
                rows: DEFAULT_ROWS,
                cluster: false
            })
        );
        assert_eq!(
            parse(Some("window=10m&limit=5&scope=cluster")).ok(),
            Some(Query {
                window: Window::TenMinutes,
                rows: 5,
                cluster: true
            })
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, field) in [
            ("window=5m", "window"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("scope=fleet", "scope"),
            ("windw=1m", "windw"),
        ] {
            let problem = parse(Some(query)).expect_err(query);
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(problem.field(), Some(field), "{query}");
        }
    }
}
