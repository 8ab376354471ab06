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
//! The shortcut is off when the debug-level access log is on, so that log still sees every
//! request (it is a layer of the router).

use crate::http::{access_log, check};
use crate::state::AppState;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::{BoxError, Router};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{Method, Request};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The path the shortcut serves (with `POST` only).
pub const CHECK_PATH: &str = "/v1/check";

/// One connection's service: `/v1/check` straight to its handler, the rest to `router`.
#[derive(Clone)]
pub struct Entry {
    router: Router,
    /// The state `/v1/check` is answered with; `None` sends it through the router too.
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

impl<B> tower::Service<Request<B>> for Entry
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(app) = &self.check {
            if request.method() == Method::POST && request.uri().path() == CHECK_PATH {
                let app = app.clone();
                return Either::Left(Box::pin(
                    async move { Ok(check::answer(&app, request).await) },
                ));
            }
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        Either::Right(self.router.call(request))
    }
}
