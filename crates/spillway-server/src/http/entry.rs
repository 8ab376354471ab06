//! [`Entry`]: the service each HTTP connection is served by, in front of the router.
//!
//! `POST /v1/check` is nearly every request a busy server sees, and the router's own work for
//! one (matching the path, recording the match and its parameters in the request's
//! extensions, boxing the body and the handler's future, adding the peer's address) cost a
//! sixth of the instructions of a whole check (`docs/BENCHMARKS.md`, issue 16). So that one
//! method and path go straight to [`check::answer`], the function the router's handler calls
//! too, and everything else goes through the router as before, with the peer's address as
//! `ConnectInfo`. Any other method on `/v1/check` still gets the router's 405, any other path
//! its 404.
//!
//! `GET /healthz` takes the same shortcut (to [`probes::healthz`]), so that it measures what a
//! check costs apart from the decision: through the router it cost about 4,500 instructions
//! more than the check's own dispatch (`docs/BENCHMARKS.md`, "The HTTP floor (issue 16,
//! session 17)"). Its answer is the router's, byte for byte.
//!
//! The shortcut is off when the debug-level access log is on, so that log still sees every
//! request (it is a layer of the router).

use crate::http::{access_log, check, probes};
use crate::state::AppState;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::{BoxError, Router};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{Method, Request};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// The path the shortcut serves (with `POST` only).
pub const CHECK_PATH: &str = "/v1/check";

/// The liveness probe's path, served by the shortcut too (with `GET` only).
pub const HEALTHZ_PATH: &str = "/healthz";

/// One connection's service: `/v1/check` and `/healthz` straight to their handlers, the rest
/// to `router`.
#[derive(Clone)]
pub struct Entry {
    router: Router,
    /// The state `/v1/check` is answered with; `None` sends it (and `/healthz`) through the
    /// router too.
    check: Option<Arc<AppState>>,
    peer: SocketAddr,
}

impl Entry {
    /// The service for a connection from `peer`. `app` is the state `router` was built with.
    pub fn new(router: Router, app: &Arc<AppState>, peer: SocketAddr) -> Self {
        Self {
            router,
            check: (!access_log::enabled()).then(|| app.clone()),
            peer,
        }
    }
}

/// A hyper service itself rather than a tower one behind hyper-util's `TowerToHyperService`,
/// whose per-request `Oneshot` (a clone of this service, the request moved in and out of it,
/// a `poll_ready` that is always ready) cost about 600 instructions per `/healthz` and 120 per
/// check (`docs/BENCHMARKS.md`, "Fewer instructions per `/v1/check` (issue 16, session 19)").
impl<B> hyper::service::Service<Request<B>> for Entry
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        if let Some(app) = &self.check {
            let (method, path) = (request.method(), request.uri().path());
            if method == Method::POST && path == CHECK_PATH {
                let app = app.clone();
                return Either::Left(Box::pin(
                    async move { Ok(check::answer(&app, request).await) },
                ));
            }
            if method == Method::GET && path == HEALTHZ_PATH {
                return Either::Left(Box::pin(async move {
                    // With the length in the map, as the router sets it (hyper would add it
                    // after its `connection` line).
                    Ok(check::with_length(probes::healthz().await.into_response()))
                }));
            }
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // The router is always ready (axum's `Router::poll_ready` never waits).
        Either::Right(tower::Service::call(&mut self.router.clone(), request))
    }
}
