//! The router that maps HTTP paths to handlers (the state they share is `crate::state`).
//!
//! Routes:
//!
//! | path                      | methods | purpose                                   |
//! |---------------------------|---------|-------------------------------------------|
//! | `/v1/check`               | POST    | JSON decision API                         |
//! | `/v1/authorize`           | any     | decision from proxy headers (nginx, Traefik) |
//! | `/v1/authorize/{*path}`   | any     | the same, Envoy `path_prefix` form        |
//! | `/healthz`                | GET     | liveness                                  |
//! | `/readyz`                 | GET     | readiness (policy loaded; store health reported) |
//! | `/metrics`                | GET     | Prometheus text                           |
//! | `/v1/top`                 | GET     | hot keys, most denied tenants and users   |
//! | `/debug/clock`            | POST    | only with `--manual-clock` (tests)        |
//! | `/v1/admin/...`           | various | the catalog's admin API, when a token is set and it has no listener of its own (`crate::admin`) |
//!
//! Unknown paths get a 404 problem, known paths asked with the wrong method a 405 problem with
//! an `Allow` header. Request bodies over 16 KiB are refused with 413.
//!
//! A served connection hands `POST /v1/check` and `GET /healthz` to their handlers before this
//! router sees them (`crate::http::entry`); the routes here answer them when the access log is
//! on, and in in-process tests.

use crate::admin::AdminToken;
use crate::http::authorize;
use crate::http::{access_log, check, debug, probes, problem, report, top};
use crate::state::AppState;
use crate::ui::Readers;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::Router;
use std::sync::Arc;

/// The HTTP surface of the server, ready for `axum::serve`; with the admin API under
/// `/v1/admin` when its token is given, and `/v1/top` served to `readers` only.
pub fn router(state: Arc<AppState>, admin: Option<AdminToken>, readers: &Readers) -> Router {
    let top = readers.guard(Router::new().route("/v1/top", get(top::top)));
    let mut router = Router::new()
        .route(crate::http::entry::CHECK_PATH, post(check::check))
        .route("/v1/report", post(report::report))
        .route(authorize::PREFIX, any(authorize::authorize))
        // The prefixed form; the site's root comes as the prefix and a slash, which the
        // catch-all (one character at least) does not take.
        .route(
            &format!("{}/", authorize::PREFIX),
            any(authorize::authorize_prefixed),
        )
        .route(
            &format!("{}/{{*path}}", authorize::PREFIX),
            any(authorize::authorize_prefixed),
        )
        .route(crate::http::entry::HEALTHZ_PATH, get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .merge(top);
    if state.clock.manual_control().is_some() {
        router = router.route(debug::CLOCK_PATH, post(debug::clock));
    }
    if let Some(token) = admin {
        router = router.merge(crate::admin::routes(token));
    }
    let router = router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(check::MAX_BODY_BYTES));
    // NOTE: `POST /v1/check` and `GET /healthz` do not pass through this router on the fast
    // path (`http/entry.rs` answers them itself; `check::answer` applies the same body limit).
    // A layer added here for every route must be added there as well.
    // The log filter is fixed at start, so a server that will never write the debug-level
    // access log skips the layer and its per-request boxing.
    let router = if access_log::enabled() {
        router.layer(axum::middleware::from_fn(access_log::log))
    } else {
        router
    };
    router.with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ServerClock;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use spillway_core::store::Store;
    use std::net::SocketAddr;
    use tower::ServiceExt;

    use crate::test_support::FailingStore;

    const POLICY: &str = r#"
default_tier: free
failure_mode: open
limits:
  user-minute:
    algorithm: fixed_window
    limit: 5
    window: 1m
    key: [user]
  route-hour:
    algorithm: fixed_window
    limit: 30
    window: 1h
    key: [user]
tiers:
  free:
    limits: [user-minute]
routes:
  - match: "POST /v1/generate"
    failure_mode: closed
  - match: "POST /v1/search"
    failure_mode: degrade
    limits: [route-hour]
"#;

    fn app_on(store: Arc<dyn Store>) -> Router {
        app_with(POLICY, store)
    }

    fn app_with(policy: &str, store: Arc<dyn Store>) -> Router {
        let state = AppState::for_test(policy)
            .clock(ServerClock::manual(1_000))
            .store(store)
            .serve_args(&[
                "--method-header",
                "X-Original-Method",
                "--tier-header",
                "X-Tier",
                "--cost-header",
                "X-RateLimit-Cost",
            ])
            .build();
        router(Arc::new(state), None, &Readers::default())
            .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))))
    }

    async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value, bool) {
        let (status, body, headers) = call_with_headers(app, request).await;
        (status, body, headers.contains_key("x-ratelimit-limit"))
    }

    async fn call_with_headers(
        app: &Router,
        request: Request<Body>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body, headers)
    }

    fn check(body: &str) -> Request<Body> {
        Request::post("/v1/check")
            .body(Body::from(body.to_owned()))
            .expect("request")
    }

    #[tokio::test]
    async fn a_failing_store_fails_open_or_closed_as_the_route_says() {
        let app = app_on(Arc::new(FailingStore::down()));

        let (status, body, headers) =
            call(&app, check(r#"{"user":"u","method":"GET","path":"/x"}"#)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["allowed"], true);
        assert_eq!(body["limits"], serde_json::json!([]));
        assert!(!headers, "a guessed verdict must not advertise limits");

        let (status, body, _) = call(
            &app,
            check(r#"{"user":"u","method":"POST","path":"/v1/generate"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["type"], "urn:spillway:problem:store-unavailable");

        let request = Request::get("/v1/authorize")
            .header("x-user-id", "u")
            .header("x-original-method", "POST")
            .header("x-original-uri", "/v1/generate")
            .body(Body::empty())
            .expect("request");
        let (status, _, _) = call(&app, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn degraded_answers_are_marked_and_closed_ones_advise_a_retry() {
        let app = app_on(Arc::new(FailingStore::down()));
        let (status, body, headers) =
            call_with_headers(&app, check(r#"{"user":"u","method":"GET","path":"/x"}"#)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["spillway-degraded"], "store-unavailable");
        assert_eq!(body["degraded"], "store-unavailable");

        let (status, _, headers) = call_with_headers(
            &app,
            check(r#"{"user":"u","method":"POST","path":"/v1/generate"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert!(!headers.contains_key("spillway-degraded"));
    }

    #[tokio::test]
    async fn a_degrade_route_holds_to_its_emergency_quota() {
        let app = app_on(Arc::new(FailingStore::down()));
        let mut admitted = 0;
        for _ in 0..20 {
            let (status, body, headers) = call_with_headers(
                &app,
                check(r#"{"user":"u","method":"POST","path":"/v1/search"}"#),
            )
            .await;
            assert_eq!(headers["spillway-degraded"], "store-unavailable");
            assert_eq!(body["degraded"], "store-unavailable");
            if status == StatusCode::OK {
                admitted += 1;
                // ceil(5 / 3) for user-minute, ceil(30 / 3) for route-hour.
                assert_eq!(body["limits"][0]["limit"], 2);
                assert_eq!(body["limits"][1]["limit"], 10);
            } else {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            }
        }
        assert_eq!(admitted, 2, "the smaller emergency quota governs");
    }

    #[tokio::test]
    async fn with_no_failure_mode_a_down_store_degrades_to_emergency_quotas() {
        let policy = POLICY.replace("failure_mode: open\n", "");
        let app = app_with(&policy, Arc::new(FailingStore::down()));
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let (status, body, headers) =
                call_with_headers(&app, check(r#"{"user":"u","method":"GET","path":"/x"}"#)).await;
            assert_eq!(headers["spillway-degraded"], "store-unavailable");
            assert_eq!(body["limits"][0]["limit"], 2, "ceil(5 / 3), not unlimited");
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 429], "the default keeps limiting");
    }

    #[tokio::test]
    async fn readyz_stays_ready_but_degraded_while_the_store_is_down() {
        let app = app_on(Arc::new(FailingStore::down()));
        let request = Request::get("/readyz")
            .body(Body::empty())
            .expect("request");
        let (status, body, _) = call(&app, request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ready"], true);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["store"]["circuit"], "closed");
        assert_eq!(body["store"]["ok"], false);
        assert!(body["store"]["status"]
            .as_str()
            .unwrap_or_default()
            .contains("connection refused"));
    }
}
