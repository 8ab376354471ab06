//! `GET /v1/top?window=1m|10m&limit=20&scope=local|cluster&limit_name=NAME`: the hottest
//! counters (all limits', or only the limit `limit_name`'s) and the most denied tenants and
//! users, for this node or for every node sharing its Redis store.
//!
//! The sketches are `crate::telemetry::top`; this module only reads the query and shapes
//! the answer. Every answer says each merged node's sample (`samples`, and the sparsest as
//! `sample`), since counts taken one decision in N are estimates. With the in-memory store
//! there is no fleet to ask, so `scope=cluster` answers for this node, says `"scope":
//! "local"` and adds a `note` saying why.

use super::problem::{self, Problem};
use crate::state::AppState;
use crate::telemetry::top::redis::Merged;
use crate::telemetry::top::{HotKeys, Summary, Window, MAX_ROWS};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Rows per list when `limit` is not given.
pub const DEFAULT_ROWS: usize = 20;
/// The longest `limit_name` taken, in bytes (after percent-decoding).
pub const MAX_LIMIT_NAME: usize = 1024;

/// What `/v1/top` answers.
#[derive(Debug, Serialize)]
pub struct TopBody {
    /// `1m` or `10m`.
    pub window: &'static str,
    /// `local` or `cluster`: what the lists cover.
    pub scope: &'static str,
    /// The nodes whose summaries were merged.
    pub nodes: Vec<Arc<str>>,
    /// The sparsest sample among them: counts are estimates unless it is 1 (each node counts
    /// one consuming decision in its sample, with that weight; see `telemetry::top`).
    pub sample: u32,
    /// Each merged node's sample, by name.
    pub samples: BTreeMap<Arc<str>, u32>,
    /// The limit whose hot keys were asked for (`limit_name`), when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_name: Option<String>,
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
    /// Only this limit's hot keys.
    limit_name: Option<String>,
}

fn parse(query: Option<&str>) -> Result<Query, Problem> {
    let mut q = Query {
        window: Window::Minute,
        rows: DEFAULT_ROWS,
        cluster: false,
        limit_name: None,
    };
    let bad = |name: &str, detail: String| Problem::invalid(detail, Some(name.to_owned()));
    // Percent-decoded: a limit name may hold any character (those made from an Envoy
    // configuration's descriptors do).
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let (name, value) = (name.as_ref(), value.as_ref());
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
            "limit_name" => q.limit_name = Some(limit_name(value).map_err(|d| bad(name, d))?),
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
                    format!(
                        "unknown query parameter `{name}` (expected window, limit, scope, limit_name)"
                    ),
                ));
            }
        }
    }
    Ok(q)
}

/// A `limit_name` as given, or what is wrong with it. Any name a policy can hold fits; the
/// checks bound what a client makes the node compare and echo back.
fn limit_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("`limit_name` must not be empty".into());
    }
    if value.len() > MAX_LIMIT_NAME {
        return Err(format!(
            "`limit_name` is longer than {MAX_LIMIT_NAME} bytes"
        ));
    }
    // Decoding replaced bytes that were not UTF-8 with U+FFFD.
    if value
        .chars()
        .any(|c| c.is_control() || c == char::REPLACEMENT_CHARACTER)
    {
        return Err("`limit_name` holds a control character or bytes that are not UTF-8".into());
    }
    Ok(value.to_owned())
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
    let local = || {
        let hot = q.limit_name.as_deref().map_or(HotKeys::All, HotKeys::Of);
        let me = Merged {
            node: app.top.node().clone(),
            sample: app.top.sample(),
        };
        body(
            &q,
            "local",
            vec![me],
            app.top.summary_with(now, q.window, q.rows, hot),
        )
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
    let limit = q.limit_name.as_deref();
    match board.merged(&app.top, now, q.window, q.rows, limit).await {
        Ok((nodes, summary)) => Json(body(&q, "cluster", nodes, summary)).into_response(),
        Err(err) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            problem::STORE_UNAVAILABLE,
            "Cluster summaries unavailable",
            format!("cannot read the other nodes' summaries from Redis: {err:#}"),
        )
        .into_response(),
    }
}

/// The answer for `nodes` (sorted by name) and their merged `summary`.
fn body(q: &Query, scope: &'static str, nodes: Vec<Merged>, summary: Summary) -> TopBody {
    TopBody {
        window: q.window.as_str(),
        scope,
        sample: nodes.iter().map(|n| n.sample).max().unwrap_or(1),
        samples: nodes.iter().map(|n| (n.node.clone(), n.sample)).collect(),
        nodes: nodes.into_iter().map(|n| n.node).collect(),
        limit_name: q.limit_name.clone(),
        summary,
        note: None,
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
                cluster: false,
                limit_name: None,
            })
        );
        assert_eq!(
            parse(Some("window=10m&limit=5&scope=cluster&limit_name=per-user")).ok(),
            Some(Query {
                window: Window::TenMinutes,
                rows: 5,
                cluster: true,
                limit_name: Some("per-user".into()),
            })
        );
        // Percent-decoded: names built from Envoy descriptors hold any character.
        let q = parse(Some("limit_name=api.path_%2Fv1%2Fx%20y%231")).expect("valid");
        assert_eq!(q.limit_name.as_deref(), Some("api.path_/v1/x y#1"));
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
            ("limit_name=", "limit_name"),
            ("limit_name=a%0Ab", "limit_name"),
            ("limit_name=%FF%FE", "limit_name"),
        ] {
            let problem = parse(Some(query)).expect_err(query);
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(problem.field(), Some(field), "{query}");
        }
        let long = format!("limit_name={}", "x".repeat(MAX_LIMIT_NAME + 1));
        let problem = parse(Some(&long)).expect_err("over-long");
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        assert_eq!(problem.field(), Some("limit_name"));
        let longest = format!("limit_name={}", "x".repeat(MAX_LIMIT_NAME));
        assert!(parse(Some(&longest)).is_ok());
    }
}
