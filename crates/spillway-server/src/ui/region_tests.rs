//! The lookup with regions: it reads each limit where a decision on this node would (a `home`
//! limit in the tenant's home region's store, an `aggregate` limit as the worldwide figure),
//! and says where each is counted. The home region's store is a real Redis; this node's own
//! store is in memory, on a manual clock.

use crate::app;
use crate::clock::ServerClock;
use crate::failure::FailureSettings;
use crate::region::tally::Known;
use crate::region::RegionNode;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spillway_core::request::RequestAttrs;
use spillway_testkit::policy::{regions_store, unreachable};
use spillway_testkit::redis::{command, RedisServer};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

/// A minute into an hour.
const START_MS: u64 = 1_728_000_060_000;

#[tokio::test]
async fn the_lookup_shows_what_the_decision_path_sees_in_each_scope() {
    let eu = RedisServer::start();
    let state = AppState::for_test(&format!(
        "default_tier: t
{}limits:
  plain: {{algorithm: fixed_window, limit: 20, window: 1h, key: [tenant]}}
  soft: {{algorithm: fixed_window, limit: 90, window: 1h, key: [tenant], scope: aggregate}}
  exact: {{algorithm: token_bucket, rate: 10/h, burst: 10, key: [tenant], scope: home}}
tiers:
  t: {{limits: [plain, soft, exact]}}
tenants:
  acme: {{home_region: eu}}
",
        regions_store(&[("us", &unreachable(1)), ("eu", &eu.url())], &[])
    ));
    let clock = ServerClock::manual(START_MS);
    let state = state.clock(clock.clone());
    let failure = FailureSettings::default();
    let node = RegionNode::new(state.policy(), Some("us"), &failure, clock.shared())
        .expect("regions")
        .expect("two regions");
    // eu has been read: it used 50 of acme's `soft` in this window.
    let attrs = RequestAttrs {
        tenant: Some("acme".into()),
        ..RequestAttrs::default()
    };
    let soft = (state.policy().resolve(&attrs).limits.into_iter())
        .find(|p| &*p.def.name == "soft")
        .expect("soft applies");
    let known = Known::one(&soft, clock.now(), &[0, 50]);
    node.tally().publish_known(known, &[1], clock.now());
    let app = Arc::new(state.failure(failure).regions(Some(node)).build());
    let router = app::router(app.clone(), None, &Default::default())
        .merge(super::router(app.clone(), super::Readers::default()))
        .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let send = |request: Request<Body>| {
        let router = router.clone();
        async move {
            let answer = router.oneshot(request).await.expect("infallible");
            let status = answer.status();
            let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    for _ in 0..3 {
        let check = Request::post("/v1/check")
            .body(Body::from(r#"{"tenant":"acme"}"#))
            .expect("request");
        let (status, body) = send(check).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let keys = (app.store.key_count(), command(eu.port(), "DBSIZE"));
    for _ in 0..2 {
        let lookup = Request::get("/ui/api/lookup?tenant=acme")
            .body(Body::empty())
            .expect("request");
        let (status, lookup) = send(lookup).await;
        assert_eq!(status, StatusCode::OK, "{lookup}");
        let limit = |name: &str| {
            (lookup["limits"].as_array().into_iter().flatten())
                .find(|l| l["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no limit {name} in {lookup}"))
        };
        let (plain, soft, exact) = (limit("plain"), limit("soft"), limit("exact"));
        // Counted here: this node's store.
        assert_eq!(
            (&plain["scope"], &plain["counted_in"]),
            (&Value::from("regional"), &Value::from("us"))
        );
        assert_eq!(plain["usage"]["remaining"], 17, "{lookup}");
        // Counted in eu, read there (this node's store has no such counter).
        assert_eq!(
            (&exact["scope"], &exact["counted_in"]),
            (&Value::from("home"), &Value::from("eu"))
        );
        assert_eq!(exact["usage"]["remaining"], 7, "{lookup}");
        // Worldwide: 90 less eu's 50 and this region's 3.
        assert_eq!(
            (&soft["scope"], &soft["counted_in"]),
            (&Value::from("aggregate"), &Value::from("all regions"))
        );
        assert_eq!(soft["usage"]["remaining"], 37, "{lookup}");
        assert_eq!(soft["usage"]["limit"], 90, "{lookup}");
    }
    // Looked at, not charged, in either store.
    assert_eq!((app.store.key_count(), command(eu.port(), "DBSIZE")), keys);
}
