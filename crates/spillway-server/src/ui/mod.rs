//! The dashboard: a page at `/ui` that answers what operators ask a rate limiter (is it
//! protecting us right now, who is being limited, why was this customer limited), and the
//! JSON endpoints behind it, which scripts can use as well (`docs/admin-openapi.yaml`).
//!
//! | path | what |
//! |------|------|
//! | `/ui`, `/ui/` | the page (`ui/index.html`) |
//! | `/ui/assets/{file}` | its script, style sheet and the vendored chart library (uPlot) |
//! | `/ui/api/auth` | whether the endpoints need the admin token (the one open endpoint) |
//! | `/ui/api/info` | node name, version, whether the admin API can be used from the page |
//! | `/ui/api/series` | decisions per second, last 15 minutes (`telemetry::live::rates`) |
//! | `/ui/api/store` | the store: kind, ping, breaker, degraded now, recent store-call times |
//! | `/ui/api/top` | `/v1/top`, here too so the page works on the admin listener |
//! | `/ui/api/lookup` | a tenant's limits, usage and reset (a peek), tier, overrides, recent decisions |
//! | `/ui/api/policy` | limits, tiers, routes; policy and catalog versions; recent reloads |
//! | `/ui/api/shadow` | shadow-mode limits and how many requests each would have denied |
//!
//! Where: on the admin listener when there is one (`--admin-listen`), else on the main one.
//! Who: when an admin token is set, every `/ui/api/` call needs it as `Authorization: Bearer`,
//! exactly like the admin API; the page asks for the token once, keeps it in the tab's
//! `sessionStorage` and sends it on its own fetches (never in a URL). The page and its assets
//! are public: they hold no data, and a browser cannot send a header when it navigates. With
//! a token the page can also change a tenant's tier or overrides through the admin API.
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles and fetches
//! from this origin only (no inline script, no `eval`) and forbids framing, with
//! `X-Content-Type-Options: nosniff`. The page writes data into the document as text only
//! (`textContent`), never as markup, since tenant and user names come from clients.
//!
//! The files are embedded in the binary ([`assets`]), so `cargo build` alone makes a binary
//! that serves the page offline, with no Node.js anywhere.

pub mod api;
pub mod assets;
pub mod lookup;

use crate::admin::AdminToken;
use crate::state::AppState;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Where the page lives.
pub const PREFIX: &str = "/ui";

/// The policy every answer under `/ui` carries; see the module docs. `img-src data:` is for
/// the chart's canvas snapshots, nothing else is loaded from anywhere but here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for merging into a router with [`AppState`]: the page and its assets
/// open, the JSON endpoints behind `token` when one is set.
pub fn routes(token: Option<AdminToken>) -> Router<Arc<AppState>> {
    let token_required = token.is_some();
    let placement = api::Placement {
        admin_api: token_required,
    };
    let mut api = Router::new()
        .route("/ui/api/info", get(api::info))
        .route("/ui/api/series", get(api::series))
        .route("/ui/api/store", get(api::store))
        .route("/ui/api/top", get(crate::http::top::top))
        .route("/ui/api/lookup", get(lookup::lookup))
        .route("/ui/api/policy", get(api::policy))
        .route("/ui/api/shadow", get(api::shadow));
    if let Some(token) = token {
        api = api.layer(axum::middleware::from_fn_with_state(
            token,
            crate::admin::authenticate,
        ));
    }
    api.layer(axum::Extension(placement))
        .route(
            "/ui/api/auth",
            get(move || async move { axum::Json(api::Auth { token_required }) }),
        )
        .route(PREFIX, get(assets::page))
        .route("/ui/", get(assets::page))
        .route("/ui/assets/{file}", get(assets::file))
        .layer(axum::middleware::from_fn(guard))
}

/// The dashboard alone, with its state, for serving beside the main router (see
/// `crate::serve`).
pub fn router(app: Arc<AppState>, token: Option<AdminToken>) -> Router {
    routes(token).with_state(app)
}

/// Adds the security headers of the module docs to every answer, and keeps live figures out
/// of every cache.
async fn guard(request: Request, next: Next) -> Response {
    let live = request.uri().path().starts_with("/ui/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if live {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests;
