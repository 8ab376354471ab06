//! The page's files, embedded in the binary at build time from `crates/spillway-server/ui/`
//! (the uPlot chart library from `ui/vendor/`, see its README for where it came from).
//!
//! Only the names listed here are served; anything else under `/ui/assets/` is a 404, so a
//! path cannot reach any other file. Answers say `Cache-Control: no-cache`: a browser
//! revalidates after an upgrade rather than run an old script against a new API.

use crate::http::problem::Problem;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX: &str = include_str!("../../ui/index.html");

/// The files under `/ui/assets/`: name, content type, content.
pub const FILES: [(&str, &str, &str); 4] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/vendor/uPlot.min.css"),
    ),
];

fn answer(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the page.
pub async fn page() -> Response {
    answer("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/assets/{file}`: one of [`FILES`].
pub async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => answer(content_type, body),
        None => Problem::http(StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}
