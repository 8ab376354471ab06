//! The admin API: the tenant catalog read and changed over HTTP, by a billing system, a
//! script or `curl`.
//!
//! Off unless a token is configured (`--admin-token-file` or `SPILLWAY_ADMIN_TOKEN`); every
//! request must then carry `Authorization: Bearer <token>`, compared in constant time. It is
//! served on the main listener under `/v1/admin/`, or on its own (`--admin-listen`), e.g. a
//! private interface. The OpenAPI description is `docs/admin-openapi.yaml`.
//!
//! | path | methods |
//! |------|---------|
//! | `/v1/admin/version` | GET: the catalog version this node has applied, and how current it is |
//! | `/v1/admin/tenants` | GET: list (`?after=<id>&limit=<n>`) |
//! | `/v1/admin/tenants/{tenant}` | GET, PUT, PATCH (JSON merge patch), DELETE (`?cascade=true`: with its users and API keys) |
//! | `/v1/admin/tenants/{tenant}/users` | GET: list |
//! | `/v1/admin/tenants/{tenant}/users/{user}` | GET, PUT, PATCH, DELETE |
//! | `/v1/admin/api-keys` | GET: list; POST: add a key (given in clear, stored as its SHA-256) |
//! | `/v1/admin/api-keys/{digest}` | GET, PUT, PATCH, DELETE |
//!
//! Reads come from the database (the truth); every write is checked against this node's
//! policy first, answers the new catalog version, and waits (briefly) until this node has
//! applied it, so a caller that reads back through the same node sees its write. `ETag`
//! carries an entry's version; `If-Match` makes a write conditional on it and `If-None-Match:
//! *` makes a PUT a create.

mod entries;

// Shared with `spillway catalog`, so the CLI hashes keys, patches entries and prints them
// exactly as the API does.
pub use entries::digest_of;
pub(crate) use entries::{document, id_of, merge, record_value, unknown_removal};

use crate::http::problem::Problem;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The prefix every admin path starts with.
pub const PREFIX: &str = "/v1/admin";

/// The shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The shortest API key the catalog takes (admin API and CLI).
pub const MIN_KEY_LEN: usize = 16;

/// Why the catalog will not take `key` as an API key, if it will not: 16 to
/// [`crate::principal::api_key::MAX_KEY`] bytes of visible ASCII. A longer key is never read
/// by the request path, and one with spaces at its ends or control characters never arrives
/// whole in a header, so either would be stored and refuse every use; inner spaces and
/// non-ASCII text are refused too, as keys no client should have to quote.
pub fn key_refusal(key: &str) -> Option<String> {
    let max = crate::principal::api_key::MAX_KEY;
    if key.len() < MIN_KEY_LEN || key.len() > max {
        return Some(format!(
            "an API key must be {MIN_KEY_LEN} to {max} characters long (this one has {})",
            key.len()
        ));
    }
    if let Some(at) = key.bytes().position(|b| !b.is_ascii_graphic()) {
        return Some(format!(
            "an API key must be visible ASCII characters (no spaces or control characters); \
             byte {at} is not"
        ));
    }
    None
}

/// The admin API's secret.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding whitespace, such as a file's final newline, is
    /// dropped); refused when shorter than [`MIN_TOKEN_LEN`].
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the admin token must be printable ASCII without spaces (it travels in an \
                        HTTP header)"
                    .into(),
            );
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. \
                 `openssl rand -hex 32`)",
                text.len()
            ));
        }
        Ok(Self(text.into()))
    }

    /// Compares digests, so the time taken says nothing of the token, its length included.
    fn admits(&self, presented: &str) -> bool {
        let (want, got) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(presented));
        bool::from(want.as_slice().ct_eq(got.as_slice()))
    }
}

/// The admin routes, behind the token, for merging into a router with [`AppState`].
pub fn routes(token: AdminToken) -> Router<Arc<AppState>> {
    Router::new()
        .route(&format!("{PREFIX}/version"), get(entries::version))
        .route(&format!("{PREFIX}/tenants"), get(entries::list_tenants))
        .route(
            &format!("{PREFIX}/tenants/{{tenant}}"),
            get(entries::get_tenant)
                .put(entries::put_tenant)
                .patch(entries::patch_tenant)
                .delete(entries::delete_tenant),
        )
        .route(
            &format!("{PREFIX}/tenants/{{tenant}}/users"),
            get(entries::list_users),
        )
        .route(
            &format!("{PREFIX}/tenants/{{tenant}}/users/{{user}}"),
            get(entries::get_user)
                .put(entries::put_user)
                .patch(entries::patch_user)
                .delete(entries::delete_user),
        )
        .route(
            &format!("{PREFIX}/api-keys"),
            get(entries::list_keys).post(entries::add_key),
        )
        .route(
            &format!("{PREFIX}/api-keys/{{digest}}"),
            get(entries::get_key)
                .put(entries::put_key)
                .patch(entries::patch_key)
                .delete(entries::delete_key),
        )
        .layer(axum::middleware::from_fn_with_state(token, authenticate))
}

/// Refuses a request without the token: 401 with `WWW-Authenticate: Bearer`.
pub(crate) async fn authenticate(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        Some(presented) if token.admits(presented) => next.run(request).await,
        found => {
            let detail = match found {
                None => "this needs the admin token as `Authorization: Bearer <token>`",
                Some(_) => "the bearer token is not the admin token",
            };
            let mut response = Problem::http(StatusCode::UNAUTHORIZED, detail).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"spillway-admin\""),
            );
            response
        }
    }
}

/// Serves the admin API (and the dashboard, `crate::ui`) on `listen` until `shutdown`, on one serving thread with the
/// main port's connection cap and timeouts, body limit and problem documents.
pub async fn serve(
    listen: std::net::SocketAddr,
    app: Arc<AppState>,
    token: AdminToken,
    limits: crate::serving::ConnectionLimits,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<crate::serving::Threads> {
    use anyhow::Context;
    use axum::extract::connect_info::ConnectInfo;
    use axum::Extension;
    use hyper_util::service::TowerToHyperService;
    use tower::Layer;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the admin API"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the admin address")?;
    tracing::info!("admin API listening on {addr}");
    // The dashboard is served beside the admin API, behind the same token.
    let router = routes(token.clone())
        .merge(crate::ui::routes(crate::ui::Readers {
            token: Some(token),
            ..crate::ui::Readers::default()
        }))
        .fallback(crate::http::problem::not_found)
        .method_not_allowed_fallback(crate::http::problem::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::check::MAX_BODY_BYTES,
        ))
        .with_state(app);
    crate::serving::start(
        "admin",
        1,
        listener,
        limits,
        shutdown,
        move |incoming| async move {
            crate::serving::serve_http(
                incoming,
                crate::serving::Writes::Queued,
                |peer: std::net::SocketAddr| {
                    TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(router.clone()))
                },
            )
            .await;
            Ok::<(), std::convert::Infallible>(())
        },
    )
}
