//! The dashboard's endpoints inside one process: the real routers (main API and dashboard),
//! the in-memory store, a manual clock. The page itself is tested in a real browser by
//! `tests/ui.rs`.

use super::*;
use crate::clock::ServerClock;
use crate::telemetry::live::ReloadEvent;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spillway_core::time::SECOND;
use std::net::SocketAddr;
use tower::ServiceExt;

const POLICY: &str = r#"
default_tier: free
limits:
  tenant-minute: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}
  user-burst: {algorithm: token_bucket, rate: 1/h, burst: 3, key: [tenant, user]}
  tenant-trial: {algorithm: fixed_window, limit: 2, window: 1m, key: [tenant], shadow: true}
  search-hour: {algorithm: sliding_window, limit: 100, window: 1h, key: [tenant]}
tiers:
  free: {limits: [tenant-minute, user-burst, tenant-trial]}
  pro: {limits: [tenant-minute]}
routes:
  - match: "POST /v1/search"
    cost: 2
    failure_mode: closed
    limits: [search-hour]
tenants:
  bigco:
    tier: pro
    overrides:
      tenant-minute: {limit: 50}
"#;

const TOKEN: &str = "0123456789abcdef-dashboard";
const T0_MS: u64 = 1_800_000_000_000;

struct Harness {
    app: Arc<AppState>,
    router: Router,
}

fn harness(token: Option<&str>) -> Harness {
    harness_at(token, SocketAddr::from(([127, 0, 0, 1], 4000)), false)
}

fn harness_at(token: Option<&str>, peer: SocketAddr, open: bool) -> Harness {
    harness_with(token, peer, open, &[])
}

/// As [`harness_at`], the node started with `args` too.
fn harness_with(token: Option<&str>, peer: SocketAddr, open: bool, args: &[&str]) -> Harness {
    let app = Arc::new(
        AppState::for_test(POLICY)
            .clock(ServerClock::manual(T0_MS))
            .node("node-ui")
            .serve_args(args)
            .build(),
    );
    let token = token.map(|t| AdminToken::new(t).expect("token"));
    let readers = super::Readers::new(token.clone(), open, &app.authorize.forwarding);
    let router = crate::app::router(app.clone(), token, &readers)
        .merge(router(app.clone(), readers))
        .layer(MockConnectInfo(peer));
    Harness { app, router }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let answer = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 22)
            .await
            .expect("body");
        (status, headers, body.to_vec())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (status, _, body) = self
            .send(request.body(Body::empty()).expect("request"))
            .await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn check(&self, body: &str) -> StatusCode {
        let request = Request::post("/v1/check")
            .body(Body::from(body.to_owned()))
            .expect("request");
        self.send(request).await.0
    }

    fn advance(&self, micros: u64) {
        self.app
            .clock
            .manual_control()
            .expect("manual clock")
            .advance(micros);
    }
}

fn limit<'a>(lookup: &'a Value, name: &str) -> &'a Value {
    lookup["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no limit {name} in {lookup}"))
}

#[tokio::test]
async fn with_a_token_every_endpoint_needs_it_and_the_page_does_not() {
    let h = harness(Some(TOKEN));
    for path in [
        "/ui/api/info",
        "/ui/api/series",
        "/ui/api/store",
        "/ui/api/top",
        "/ui/api/lookup?tenant=acme",
        "/ui/api/policy",
        "/ui/api/shadow",
        // The main port's twin of the dashboard's top lists: the same names and keys.
        "/v1/top",
    ] {
        let (status, body) = h.get(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert!(body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"));
        let (status, _) = h.get(path, Some("0123456789abcdef-wrong")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        let (status, _) = h.get(path, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{path} with the token");
    }
    // The one open endpoint says whether the token is needed, and nothing else.
    let (status, auth) = h.get("/ui/api/auth", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(auth, serde_json::json!({ "token_required": true }));
    let (_, auth) = harness(None).get("/ui/api/auth", None).await;
    assert_eq!(auth["token_required"], false);
    // A token in the query string is not a token.
    let (status, _) = h.get(&format!("/ui/api/info?token={TOKEN}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, info) = h.get("/ui/api/info", Some(TOKEN)).await;
    assert_eq!(info["admin_api"], true);
    assert_eq!(info["node"], "node-ui");
    for path in [
        "/ui",
        "/ui/",
        "/ui/assets/app.js",
        "/ui/assets/app.css",
        "/ui/assets/uPlot.iife.min.js",
        "/ui/assets/uPlot.min.css",
    ] {
        let (status, _, _) = h
            .send(Request::get(path).body(Body::empty()).expect("request"))
            .await;
        assert_eq!(status, StatusCode::OK, "{path} is public");
    }
    let (_, info) = harness(None).get("/ui/api/info", None).await;
    assert_eq!(info["admin_api"], false, "no token: open, and no admin API");
}

/// With the admin API (and the dashboard) on a listener of its own, the main port serves no
/// admin API, yet `/v1/top` there still needs the token, whatever the peer.
#[tokio::test]
async fn with_the_admin_api_elsewhere_the_main_ports_top_still_needs_the_token() {
    let h = harness(None);
    let readers = Readers {
        token: Some(AdminToken::new(TOKEN).expect("token")),
        open: true,
        ..Readers::default()
    };
    let main = Harness {
        router: crate::app::router(h.app.clone(), None, &readers)
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000)))),
        app: h.app,
    };
    assert_eq!(main.get("/v1/top", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(main.get("/v1/top", Some(TOKEN)).await.0, StatusCode::OK);
    let admin = main.get("/v1/admin/version", Some(TOKEN)).await.0;
    assert_eq!(
        admin,
        StatusCode::NOT_FOUND,
        "no admin API on the main port"
    );
}

#[test]
fn without_a_token_only_loopback_peers_naming_a_loopback_host_are_served() {
    let local = SocketAddr::from(([127, 0, 0, 1], 5000));
    let local6: SocketAddr = "[::1]:5000".parse().expect("addr");
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
    let remote = SocketAddr::from(([192, 0, 2, 1], 5000));
    for host in [
        None,
        Some("localhost"),
        Some("localhost:8080"),
        Some("LOCALHOST."),
        Some("127.0.0.1:8080"),
        Some("127.1.2.3"),
        Some("[::1]:8080"),
        Some("[::1]"),
    ] {
        assert!(local_call_allowed(Some(local), host, false), "{host:?}");
        assert!(local_call_allowed(Some(local6), host, false), "{host:?}");
        assert!(local_call_allowed(Some(mapped), host, false), "{host:?}");
        assert!(!local_call_allowed(Some(remote), host, false), "{host:?}");
    }
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "10.0.0.1:8080",
        "[::2]:80",
        "[::1]x",
        "localhost:80x",
        "",
    ] {
        assert!(
            !local_call_allowed(Some(local), Some(host), false),
            "{host}"
        );
    }
    assert!(!local_call_allowed(None, Some("localhost"), false));
    // A proxy on this host relays remote clients from loopback.
    assert!(!local_call_allowed(Some(local), Some("localhost"), true));
}

#[tokio::test]
async fn without_a_token_a_foreign_host_or_peer_gets_403_unless_open() {
    let h = harness(None);
    let request = |host: &str| {
        Request::get("/ui/api/series")
            .header("host", host)
            .body(Body::empty())
            .expect("request")
    };
    let (status, _, _) = h.send(request("evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = h.send(request("localhost:8080")).await;
    assert_eq!(status, StatusCode::OK);
    // The same call relayed by a proxy on this host, for a client it does not name.
    for relayed in super::RELAY_HEADERS {
        let mut call = request("127.0.0.1:8080");
        let value = axum::http::HeaderValue::from_static("for=192.0.2.1");
        call.headers_mut().insert(relayed, value);
        let (status, _, _) = h.send(call).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{relayed}");
    }
    // And by one carrying the forwarding headers the operator named for its own proxies.
    let local = SocketAddr::from(([127, 0, 0, 1], 4000));
    let args = [
        "--real-ip-header",
        "CF-Connecting-IP",
        "--forwarded-for-header",
        "X-Client-Chain",
    ];
    let h = harness_with(None, local, false, &args);
    for relayed in ["cf-connecting-ip", "x-client-chain"] {
        let mut call = request("127.0.0.1:8080");
        let value = axum::http::HeaderValue::from_static("192.0.2.1");
        call.headers_mut().insert(relayed, value);
        let (status, _, _) = h.send(call).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{relayed}");
    }
    assert_eq!(h.send(request("localhost")).await.0, StatusCode::OK);
    let remote = SocketAddr::from(([192, 0, 2, 1], 4000));
    let h = harness_at(None, remote, false);
    for path in [
        "/ui/api/lookup?tenant=acme",
        "/ui/api/policy",
        "/ui/api/top",
        "/v1/top",
    ] {
        assert_eq!(h.get(path, None).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(h.get("/ui/api/auth", None).await.0, StatusCode::OK);
    let page = Request::get("/ui").body(Body::empty()).expect("request");
    assert_eq!(h.send(page).await.0, StatusCode::OK);
    let h = harness_at(None, remote, true);
    assert_eq!(h.get("/ui/api/policy", None).await.0, StatusCode::OK);
    assert_eq!(h.get("/v1/top", None).await.0, StatusCode::OK);
    // With a token, the token decides, wherever the peer is.
    let h = harness_at(Some(TOKEN), remote, false);
    assert_eq!(h.get("/ui/api/policy", Some(TOKEN)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let h = harness(Some(TOKEN));
    for (path, token) in [
        ("/ui", None),
        ("/ui/assets/app.js", None),
        ("/ui/assets/nope.js", None),
        ("/ui/api/policy", None),
        ("/ui/api/policy", Some(TOKEN)),
    ] {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (_, headers, _) = h.send(request.body(Body::empty()).expect("request")).await;
        let csp = headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
    }
    let (status, headers, _) = h
        .send(
            Request::get("/ui/assets/..%2Fmod.rs")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.contains_key("content-security-policy"));
    let (_, headers, _) = h
        .send(
            Request::get("/ui/api/store")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("application/json"));
}

#[tokio::test]
async fn the_lookup_is_a_peek_that_consumes_and_creates_nothing() {
    let h = harness(None);
    for _ in 0..3 {
        assert_eq!(h.check(r#"{"tenant":"acme"}"#).await, StatusCode::OK);
    }
    let keys = h.app.store.key_count();
    for _ in 0..20 {
        let (status, lookup) = h.get("/ui/api/lookup?tenant=acme", None).await;
        assert_eq!(status, StatusCode::OK, "{lookup}");
        let minute = limit(&lookup, "tenant-minute");
        assert_eq!(minute["usage"]["remaining"], 2, "{lookup}");
        assert_eq!(minute["usage"]["limit"], 5);
        assert_eq!(minute["usage"]["next_allowed"], true);
        assert_eq!(minute["values"], serde_json::json!(["acme"]));
    }
    // Tenants and users never seen: looked at, not created.
    for i in 0..50 {
        let path = format!("/ui/api/lookup?tenant=stranger-{i}&user=u{i}");
        let (status, lookup) = h.get(&path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(limit(&lookup, "tenant-minute")["usage"]["remaining"], 5);
        assert_eq!(limit(&lookup, "user-burst")["usage"]["remaining"], 3);
    }
    assert_eq!(h.app.store.key_count(), keys, "a peek stores no key");
    // The budget is whole: two more pass, the sixth is denied.
    assert_eq!(h.check(r#"{"tenant":"acme"}"#).await, StatusCode::OK);
    assert_eq!(h.check(r#"{"tenant":"acme"}"#).await, StatusCode::OK);
    assert_eq!(
        h.check(r#"{"tenant":"acme"}"#).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (_, lookup) = h.get("/ui/api/lookup?tenant=acme", None).await;
    let minute = limit(&lookup, "tenant-minute");
    assert_eq!(minute["usage"]["remaining"], 0);
    assert_eq!(minute["usage"]["next_allowed"], false);
    let reset = minute["usage"]["reset_after_ms"].as_u64().expect("reset");
    assert!(reset > 0 && reset <= 60_000, "{reset}");
    // Peeks are not decisions: the chart counts the six checks only.
    h.advance(SECOND);
    let (_, series) = h.get("/ui/api/series?seconds=5", None).await;
    let total = |k: &str| {
        series[k]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(
        (total("allowed"), total("denied"), total("degraded")),
        (5, 1, 0)
    );
}

#[tokio::test]
async fn the_lookup_names_the_tier_its_source_the_override_and_the_route() {
    let h = harness(None);
    let (_, lookup) = h
        .get(
            "/ui/api/lookup?tenant=bigco&user=ann&method=POST&path=/v1/search",
            None,
        )
        .await;
    assert_eq!(lookup["tier"], "pro", "{lookup}");
    assert_eq!(lookup["tier_source"], "tenant");
    assert_eq!(lookup["route"], "POST /v1/search");
    assert_eq!(lookup["cost"], 2);
    assert_eq!(lookup["failure_mode"], "closed");
    assert_eq!(lookup["catalog"]["tenant"]["tier"], "pro");
    assert_eq!(lookup["catalog"]["user"], Value::Null);
    let minute = limit(&lookup, "tenant-minute");
    assert_eq!(minute["override"], "tenant");
    assert_eq!(minute["quota"], 50);
    assert_eq!(limit(&lookup, "search-hour")["override"], Value::Null);
    let names: Vec<&str> = lookup["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["tenant-minute", "search-hour"],
        "pro has no user-burst"
    );

    let (_, lookup) = h.get("/ui/api/lookup?tenant=acme", None).await;
    assert_eq!(lookup["tier"], "free");
    assert_eq!(lookup["tier_source"], "default");
    assert_eq!(lookup["route"], Value::Null);
    assert_eq!(lookup["decisions"]["log"], false);
}

#[tokio::test]
async fn bad_lookups_say_what_was_wrong() {
    let h = harness(None);
    for (path, field) in [
        ("/ui/api/lookup", Some("tenant")),
        ("/ui/api/lookup?tenant=", Some("tenant")),
        ("/ui/api/lookup?tenant=a&ip=not-an-address", Some("ip")),
        ("/ui/api/lookup?tenant=a&tier=pro", None),
        ("/ui/api/series?seconds=0", Some("seconds")),
        ("/ui/api/series?seconds=900", Some("seconds")),
        ("/ui/api/series?seconds=x", None),
    ] {
        let (status, body) = h.get(path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            !body["detail"].as_str().unwrap_or_default().is_empty(),
            "{path}"
        );
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{path}: {body}");
        }
    }
    let long = "x".repeat(lookup::MAX_VALUE + 1);
    let (status, body) = h.get(&format!("/ui/api/lookup?tenant={long}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "tenant");
}

#[tokio::test]
async fn names_from_clients_come_back_as_json_text_never_as_markup() {
    let h = harness(None);
    let evil = r#"<img src=x onerror="document.title='pwned'">"#;
    let body = serde_json::json!({ "tenant": evil, "user": "</script><script>alert(1)</script>" });
    for _ in 0..6 {
        h.check(&body.to_string()).await;
    }
    let (status, headers, bytes) = h
        .send(Request::get("/ui/api/top").body(Body::empty()).expect("r"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("application/json"));
    let top: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(top["blocked_tenants"][0]["tenant"], evil);
    let path = format!(
        "/ui/api/lookup?tenant={}",
        evil.bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (status, lookup) = h.get(&path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lookup["tenant"], evil);
    // Three got through (then the user's burst of 3 denied): 2 of 5 remain.
    assert_eq!(limit(&lookup, "tenant-minute")["usage"]["remaining"], 2);
    // The page's script writes data as text only: no HTML parsing sinks anywhere in it.
    let script = assets::FILES[0].2;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    assert!(!assets::INDEX.contains("<script>"), "no inline script");
    assert!(!assets::INDEX.contains("style="), "no inline style");
}

#[tokio::test]
async fn shadow_limits_count_what_they_would_have_denied() {
    let h = harness(None);
    for _ in 0..5 {
        assert_eq!(h.check(r#"{"tenant":"acme"}"#).await, StatusCode::OK);
    }
    let (_, shadow) = h.get("/ui/api/shadow", None).await;
    let rows = shadow["limits"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{shadow}");
    assert_eq!(rows[0]["limit"], "tenant-trial");
    // A limit of 2: the third, fourth and fifth requests would have been denied.
    assert_eq!(rows[0]["would_deny_total"], 3);
    assert_eq!(rows[0]["would_deny_15m"], 3);
    assert_eq!(rows[0]["last_ms"], T0_MS);
}

#[tokio::test]
async fn the_policy_comes_as_tables_with_versions_and_reloads() {
    let h = harness(None);
    h.app.live.reloaded(ReloadEvent {
        at_ms: T0_MS + 5,
        trigger: "SIGHUP",
        outcome: "rejected",
        error: Some("policy.yaml:3:5: limits.x.rate: not a rate".into()),
    });
    let (status, policy) = h.get("/ui/api/policy", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(policy["policy"]["source"], "test.yaml");
    assert_eq!(policy["policy"]["loaded_at_ms"], T0_MS);
    assert_eq!(
        policy["policy"]["version"],
        "test.yaml@2027-01-15T08:00:00.000Z"
    );
    assert_eq!(policy["policy"]["default_tier"], "free");
    let names: Vec<&str> = policy["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["tenant-minute", "user-burst", "tenant-trial", "search-hour"],
        "each once, the base numbers (not bigco's override)"
    );
    assert_eq!(policy["limits"][0]["quota"], 5);
    assert_eq!(policy["limits"][0]["window_ms"], 60_000);
    assert_eq!(policy["limits"][1]["algorithm"], "token_bucket");
    assert_eq!(policy["limits"][2]["shadow"], true);
    assert_eq!(policy["tiers"][0]["name"], "free");
    assert_eq!(policy["tiers"][0]["default"], true);
    assert_eq!(
        policy["tiers"][1]["limits"],
        serde_json::json!(["tenant-minute"])
    );
    assert_eq!(policy["routes"][0]["match"], "POST /v1/search");
    assert_eq!(policy["routes"][0]["cost"], 2);
    assert_eq!(policy["routes"][0]["failure_mode"], "closed");
    assert_eq!(policy["catalog"]["origin"], "policy");
    assert_eq!(policy["catalog"]["tenants"], 1);
    assert_eq!(policy["reloads"][0]["outcome"], "rejected");
    assert!(policy["reloads"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("policy.yaml:3:5"));
}

#[tokio::test]
async fn the_store_panel_reports_kind_breaker_and_recent_times() {
    let h = harness(None);
    for _ in 0..4 {
        h.check(r#"{"tenant":"acme"}"#).await;
    }
    h.advance(SECOND);
    let (status, store) = h.get("/ui/api/store", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(store["kind"], "memory");
    assert_eq!(store["ok"], true);
    assert_eq!(store["circuit"], "closed");
    assert_eq!(store["degraded_now"], false);
    assert_eq!(store["recent"]["decisions"], 4);
    assert!(store["ping_ms"].as_f64().is_some());
    assert!(store["keys"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_nothing_else() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/dashboard-openapi.yaml"
    );
    let text = std::fs::read_to_string(path).expect("docs/dashboard-openapi.yaml");
    let doc: Value = serde_saphyr::from_str(&text).expect("valid YAML");
    let documented: std::collections::BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    // Every `/ui/api/...` path the router registers, read from its source.
    let served: std::collections::BTreeSet<String> = include_str!("mod.rs")
        .split("\"/ui/api/")
        .skip(1)
        .filter_map(|rest| rest.split_once('"'))
        .filter(|(name, _)| !name.contains(' ') && !name.is_empty())
        .map(|(name, _)| format!("/ui/api/{name}"))
        .collect();
    assert_eq!(documented, served);
    let h = harness(Some(TOKEN));
    for path in &documented {
        let query = if path.ends_with("lookup") {
            "?tenant=a"
        } else {
            ""
        };
        let (status, _) = h.get(&format!("{path}{query}"), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let item = &doc["paths"][path.as_str()]["get"];
        if path != "/ui/api/auth" {
            assert!(item["responses"].get("401").is_some(), "{path} answers 401");
        }
    }
}
