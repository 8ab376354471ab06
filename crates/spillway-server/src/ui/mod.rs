//! The dashboard: a page at `/ui` that answers what operators ask a rate limiter (is it
//! protecting us right now, who is being limited, why was this customer limited), and the
//! JSON endpoints behind it, which scripts can use as well (`docs/dashboard-openapi.yaml`).
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
//! exactly like the admin API. With no token, the endpoints answer only loopback peers whose
//! `Host` names a loopback address or `localhost` (so a page on another site cannot reach
//! them through DNS rebinding); `--ui-open` serves them to every peer instead. With a token, the page asks for the token once, keeps it in the tab's
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
use crate::http::client_ip::ForwardingHeaders;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use spillway_core::host::Host;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the page lives.
pub const PREFIX: &str = "/ui";

/// The policy every answer under `/ui` carries; see the module docs. `img-src data:` is for
/// the chart's canvas snapshots, nothing else is loaded from anywhere but here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for merging into a router with [`AppState`]: the page and its assets
/// open, the JSON endpoints behind `token` when one is set, else loopback-only unless `open`.
pub fn routes(readers: Readers) -> Router<Arc<AppState>> {
    let token_required = readers.token.is_some();
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
    api = readers.guard(api);
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

/// Who may read the node's live figures (the dashboard's data, and `/v1/top` on the main
/// port): the holders of the admin token when one is set, wherever the admin API is served;
/// else loopback peers only, unless `open` (`--ui-open`). Tenant and user names, and key
/// values such as addresses, are in those figures.
#[derive(Debug, Clone, Default)]
pub struct Readers {
    /// The admin token, if the node has one.
    pub token: Option<AdminToken>,
    /// `--ui-open`: every peer may read when no token is set.
    pub open: bool,
    /// The forwarding headers the operator named for `/v1/authorize` (`--real-ip-header`,
    /// `--forwarded-for-header`): the operator's proxies add them, so a local call carrying
    /// one is relayed too, like one carrying any of [`RELAY_HEADERS`].
    pub relay: Arc<[HeaderName]>,
}

impl Readers {
    /// The readers of a node whose `/v1/authorize` reads the client's address from
    /// `forwarding`.
    pub fn new(token: Option<AdminToken>, open: bool, forwarding: &ForwardingHeaders) -> Self {
        let relay = (forwarding.real_ip.iter())
            .chain([&forwarding.forwarded_for])
            .filter(|name| !RELAY_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect();
        Self { token, open, relay }
    }

    /// `router` served only to these readers: a call without the token answers 401, one
    /// from beyond loopback (no token set) 403.
    pub fn guard<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        match &self.token {
            Some(token) => router.layer(axum::middleware::from_fn_with_state(
                token.clone(),
                crate::admin::authenticate,
            )),
            None if !self.open => router.layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.relay),
                loopback_only,
            )),
            None => router,
        }
    }
}

/// The dashboard alone, with its state, for serving beside the main router (see
/// `crate::serve`).
pub fn router(app: Arc<AppState>, readers: Readers) -> Router {
    routes(readers).with_state(app)
}

/// Whether a call with no admin token configured may read the endpoints: the peer must be a
/// loopback address, and the `Host` (when sent) must name one or `localhost`, so that a
/// browser tricked by DNS rebinding (a foreign name resolving to 127.0.0.1) is refused. A
/// call `relayed` by a proxy (it carries one of [`RELAY_HEADERS`]) is refused too: a proxy on
/// the same host comes from loopback, and may name a loopback host upstream (nginx's default
/// `Host $proxy_host`), for every client it serves. That is best-effort: a proxy that adds
/// none of them (nginx's bare `proxy_pass`) passes for a local caller, so a node behind a
/// proxy on its own host needs an admin token.
pub fn local_call_allowed(peer: Option<SocketAddr>, host: Option<&str>, relayed: bool) -> bool {
    let Some(peer) = peer else { return false };
    if relayed {
        return false;
    }
    if !peer.ip().to_canonical().is_loopback() {
        return false;
    }
    match host {
        None => true,
        Some(host) => host_is_loopback(host),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn host_is_loopback(host: &str) -> bool {
    Host::names_loopback(host.trim())
}

/// Headers a proxy adds to what it relays: a call carrying one is not a local caller's.
pub const RELAY_HEADERS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
    "x-envoy-external-address",
];

/// Refuses (403) a call that [`local_call_allowed`] does not allow; `relay` names the
/// operator's own forwarding headers ([`Readers::relay`]).
async fn loopback_only(
    State(relay): State<Arc<[HeaderName]>>,
    request: Request,
    next: Next,
) -> Response {
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            extensions
                .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        });
    let host = match request.headers().get(header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("\u{0}").to_owned()),
        None => request.uri().authority().map(|a| a.as_str().to_owned()),
    };
    let headers = request.headers();
    let relayed = RELAY_HEADERS.iter().any(|name| headers.contains_key(*name))
        || relay.iter().any(|name| headers.contains_key(name));
    if local_call_allowed(peer, host.as_deref(), relayed) {
        return next.run(request).await;
    }
    crate::http::problem::Problem::http(
        StatusCode::FORBIDDEN,
        "no admin token is set, so the dashboard's data and /v1/top are served only to \
         loopback (127.0.0.1, ::1, localhost), not through a proxy; set an admin token or \
         start with --ui-open",
    )
    .into_response()
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
mod region_tests;
#[cfg(test)]
mod tests;
