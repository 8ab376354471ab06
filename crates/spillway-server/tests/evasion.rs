//! Requests spelled to slip past a limit, end to end against the real binary: paths a lenient
//! or a strict backend reads as a costly route, a second method or path header, and client
//! addresses rotated within one network.

mod common;

use common::grpc::{self, overall};
use common::{header, Server};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::{json, Value};

/// The shipped example policy (`examples/spillway.yaml`, built into the binary):
/// `POST /v1/generate` costs 5 and adds `generate-user` (a leaky bucket holding 20).
const EXAMPLE: &str = spillway_server::config::BUILTIN_POLICY;

/// Paths that Tomcat, Jetty or Spring (which drop `;` parameters) or ASP.NET and IIS (which
/// route without regard to case) serve as `/v1/generate`.
const SPELLINGS: [&str; 4] = [
    "/V1/Generate",
    "/v1/generate;x=1",
    "/v1;a/generate",
    // nginx's `$request_uri` keeps a fragment written into the request line.
    "/v1/generate#x",
];

/// Asserts that `response` (to a request spelled `path`) was admitted and charged the
/// generate route: `generate-user`'s entry in the `RateLimit` header reads `r=15` (20 less
/// this request's cost of 5).
fn assert_paid_generate(response: &reqwest::Response, path: &str) {
    assert_eq!(response.status(), 200, "{path}");
    let entry = header(response, "ratelimit").and_then(|h| {
        h.split(", ")
            .find(|entry| entry.starts_with("\"generate-user\""))
            .map(str::to_owned)
    });
    assert!(
        entry.as_deref().is_some_and(|e| e.contains(";r=15;")),
        "{path}: {entry:?}"
    );
}

#[tokio::test]
async fn every_spelling_of_the_generate_route_pays_its_cost_on_check() {
    let server = Server::with_policy(EXAMPLE).start();
    for (i, path) in SPELLINGS.iter().enumerate() {
        let body = json!({"tenant": "t", "user": format!("check-{i}"), "method": "POST",
                          "path": path});
        let response = server.post("/v1/check", &body.to_string()).await;
        assert_eq!(response.status(), 200, "{path}");
        let verdict: Value = response.json().await.expect("verdict");
        assert_eq!(verdict["route"], "POST /v1/generate", "{path}");
        assert_eq!(verdict["cost"], 5, "{path}");
        let limits = verdict["limits"].as_array().cloned().unwrap_or_default();
        let generate = limits.iter().find(|l| l["name"] == "generate-user");
        let remaining = generate.map(|l| l["remaining"].clone());
        // 20 minus this request's 5.
        assert_eq!(remaining, Some(json!(15)), "{path}: {verdict}");
    }
}

#[tokio::test]
async fn every_spelling_of_the_generate_route_pays_its_cost_on_authorize() {
    let server = Server::with_policy(EXAMPLE).start();
    for (i, path) in SPELLINGS.iter().enumerate() {
        // The plain form, with the original request in headers (nginx, Traefik).
        let response = server
            .http
            .get(server.url("/v1/authorize"))
            .header("X-Tenant-Id", "t")
            .header("X-User-Id", format!("plain-{i}"))
            .header("X-Original-Method", "POST")
            .header("X-Original-URI", *path)
            .send()
            .await
            .expect("sent");
        assert_paid_generate(&response, path);

        // The prefixed form, with the original path in the URL (Envoy's `path_prefix`). A
        // fragment there never reaches a server: an HTTP client cuts it off the URL.
        if path.contains('#') {
            continue;
        }
        let response = server
            .http
            .post(server.url(&format!("/v1/authorize{path}")))
            .header("X-Tenant-Id", "t")
            .header("X-User-Id", format!("prefixed-{i}"))
            .send()
            .await
            .expect("sent");
        assert_paid_generate(&response, path);
    }
}

/// Asks `/v1/authorize` as nginx or Traefik would for a request of user `user`, with `more`
/// headers naming the original request.
async fn authorize(server: &Server, user: &str, more: &[(&str, &str)]) -> reqwest::Response {
    let mut request = (server.http.get(server.url("/v1/authorize")))
        .header("X-Tenant-Id", "t")
        .header("X-User-Id", user);
    for (name, value) in more {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sent")
}

#[tokio::test]
async fn a_path_header_of_the_clients_own_beside_the_proxys_is_refused() {
    let server = Server::with_policy(EXAMPLE).start();
    // Traefik sets `X-Forwarded-Uri` and passes the client's `X-Original-URI` along, which
    // is read first.
    let response = authorize(
        &server,
        "two-paths",
        &[
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/v1/meta/cheap"),
            ("X-Forwarded-Uri", "/v1/generate"),
        ],
    )
    .await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("x-forwarded-uri") && detail.contains("/v1/meta/cheap"),
        "{problem}"
    );
}

/// A route a lenient reading alone could be talked out of (`/v1/generate/<id>`), and one a
/// `POST` could reach by naming another method.
const GENERATE_ID: &str = r#"
default_tier: t
limits:
  per-user: {algorithm: fixed_window, limit: 10, window: 1m, key: [tenant, user]}
tiers:
  t: {limits: [per-user]}
routes:
  - {match: "POST /v1/generate/*", cost: 10}
  - {match: "DELETE /v1/items/*", cost: 10}
"#;

#[tokio::test]
async fn a_post_naming_another_method_pays_for_the_method_the_backend_serves() {
    let server = Server::with_policy(GENERATE_ID).start();
    // Express, Rack, Symfony and Laravel serve each of these as `DELETE /v1/items/7`.
    let ways: [&[(&str, &str)]; 4] = [
        &[("X-HTTP-Method-Override", "DELETE")],
        &[("X-HTTP-Method", "delete")],
        &[("X-Method-Override", "DELETE")],
        &[],
    ];
    for (i, more) in ways.iter().enumerate() {
        let path = if more.is_empty() {
            "/v1/items/7?_method=DELETE"
        } else {
            "/v1/items/7"
        };
        let mut headers = vec![("X-Original-Method", "POST"), ("X-Original-URI", path)];
        headers.extend_from_slice(more);
        let user = format!("override-{i}");
        assert_eq!(
            authorize(&server, &user, &headers).await.status(),
            200,
            "{more:?}"
        );
        // The first took all ten.
        assert_eq!(
            authorize(&server, &user, &headers).await.status(),
            429,
            "{more:?}"
        );
    }
    // Envoy's form reads the query's `_method` from its own URL.
    let prefixed = |user: &'static str| {
        (server
            .http
            .post(server.url("/v1/authorize/v1/items/7?_method=DELETE")))
        .header("X-Tenant-Id", "t")
        .header("X-User-Id", user)
        .send()
    };
    assert_eq!(prefixed("envoy").await.expect("sent").status(), 200);
    assert_eq!(prefixed("envoy").await.expect("sent").status(), 429);
    // A plain POST costs one: ten pass, the eleventh does not.
    let headers = [
        ("X-Original-Method", "POST"),
        ("X-Original-URI", "/v1/items/7"),
    ];
    for i in 0..10 {
        let answer = authorize(&server, "plain", &headers).await;
        assert_eq!(answer.status(), 200, "{i}");
    }
    assert_eq!(authorize(&server, "plain", &headers).await.status(), 429);
}

#[tokio::test]
async fn a_path_a_strict_backend_reads_longer_pays_for_the_longer_route() {
    let server = Server::with_policy(GENERATE_ID).start();
    // Express serves each as `/v1/generate/:id`; read leniently each is shorter.
    for (i, path) in [
        "/v1/generate/x%2F..",
        "/v1/generate/..",
        "/v1/generate/.",
        "/v1/generate%2F..",
    ]
    .iter()
    .enumerate()
    {
        let user = format!("strict-{i}");
        let headers = [("X-Original-Method", "POST"), ("X-Original-URI", *path)];
        let first = authorize(&server, &user, &headers).await;
        assert_eq!(first.status(), 200, "{path}");
        // The first request took all ten: a second is refused.
        let second = authorize(&server, &user, &headers).await;
        assert_eq!(second.status(), 429, "{path}");
    }
}

/// Three requests a minute per client network (the default /64 for IPv6, /32 for IPv4).
const IP_POLICY: &str = r#"
default_tier: free
limits:
  ip-minute:
    algorithm: fixed_window
    limit: 3
    window: 1m
    key: [ip]
global: [ip-minute]
tiers:
  free: {limits: []}
"#;

/// Three addresses of `2001:db8:1:2::/64`, spelled three ways, then a fourth of it.
const ROTATED: [&str; 4] = [
    "2001:db8:1:2::1",
    "2001:DB8:1:2:0:0:0:2",
    "2001:0db8:0001:0002:ffff:0000:0000:0003",
    "2001:db8:1:2:abcd:ef01:2345:6789",
];

#[tokio::test]
async fn addresses_rotated_within_a_64_share_one_counter_on_check() {
    let server = Server::with_policy(IP_POLICY).start();
    let ask = |ip: &str| {
        let body = json!({ "ip": ip }).to_string();
        let server = &server;
        async move { server.post("/v1/check", &body).await }
    };
    for (ip, remaining) in ROTATED[..3].iter().zip(["2", "1", "0"]) {
        let response = ask(ip).await;
        assert_eq!(response.status(), 200, "{ip}");
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some(remaining),
            "{ip}"
        );
    }
    assert_eq!(ask(ROTATED[3]).await.status(), 429);
    // The next /64 is someone else.
    assert_eq!(ask("2001:db8:1:3::1").await.status(), 200);
    // An IPv4 client is one address, however it is written.
    for _ in 0..3 {
        assert_eq!(ask("::ffff:198.51.100.7").await.status(), 200);
    }
    assert_eq!(ask("198.51.100.7").await.status(), 429);
    assert_eq!(ask("198.51.100.8").await.status(), 200);
    // So is the holder of 192.0.2.1, through the /64s of its 6to4 network or Teredo.
    for ip in [
        "2002:c000:201:1::1",
        "2002:c000:201:2::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdfe",
    ] {
        assert_eq!(ask(ip).await.status(), 200, "{ip}");
    }
    assert_eq!(ask("2002:c000:201:3::1").await.status(), 429);
    assert_eq!(ask("192.0.2.1").await.status(), 429);

    // Free text would be a fresh counter per request: it is refused, naming the field.
    let refused = ask("fresh-counter-42").await;
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["field"], "ip", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`fresh-counter-42` is not an IP address"),
        "{detail}"
    );
}

#[tokio::test]
async fn addresses_rotated_within_a_64_share_one_counter_on_authorize() {
    // The test client connects over loopback, a trusted proxy by default, so `X-Real-IP`
    // names the client.
    let server = Server::with_policy(IP_POLICY).start();
    let ask = |ip: &str| {
        server
            .http
            .get(server.url("/v1/authorize"))
            .header("X-Real-IP", ip)
            .send()
    };
    for ip in &ROTATED[..3] {
        assert_eq!(ask(ip).await.expect("sent").status(), 200, "{ip}");
    }
    assert_eq!(ask(ROTATED[3]).await.expect("sent").status(), 429);
    assert_eq!(ask("2001:db8:1:3::1").await.expect("sent").status(), 200);
}

#[tokio::test]
async fn addresses_rotated_within_a_64_share_one_counter_over_grpc() {
    let mut rls = grpc::start(Server::with_policy(IP_POLICY), &[]).await;
    for ip in &ROTATED[..3] {
        let answer = rls.one("spillway", &[("remote_address", ip)]).await;
        assert_eq!(overall(&answer), Code::Ok, "{ip}");
    }
    let answer = rls.one("spillway", &[("remote_address", ROTATED[3])]).await;
    assert_eq!(overall(&answer), Code::OverLimit);
    let answer = rls.one("spillway", &[("ip", "2001:db8:1:3::1")]).await;
    assert_eq!(overall(&answer), Code::Ok);

    // Text that is not an address cannot pick fresh counters, and does not fail the call
    // (Envoy would then let the request through unlimited): every such value counts under
    // the unspecified address, one shared counter.
    for i in 0..3 {
        let answer = rls
            .one(
                "spillway",
                &[("remote_address", &format!("fresh-counter-{i}"))],
            )
            .await;
        assert_eq!(overall(&answer), Code::Ok, "invalid value {i}");
    }
    let answer = rls.one("spillway", &[("ip", "yet-another")]).await;
    assert_eq!(
        overall(&answer),
        Code::OverLimit,
        "invalid values share one counter"
    );
}

#[tokio::test]
async fn a_post_naming_another_method_over_grpc_pays_for_it() {
    let mut rls = grpc::start(Server::with_policy(GENERATE_ID), &[]).await;
    // Envoy's `request_headers` action can pass `X-HTTP-Method-Override` as this entry.
    let call = [
        ("tenant", "t"),
        ("user", "grpc"),
        ("method", "POST"),
        ("path", "/v1/items/7"),
        ("method_override", "DELETE"),
    ];
    assert_eq!(overall(&rls.one("spillway", &call).await), Code::Ok);
    // The first took all ten.
    assert_eq!(overall(&rls.one("spillway", &call).await), Code::OverLimit);
    // Without it, a POST costs one: ten pass, the eleventh does not.
    let plain = [
        ("tenant", "t"),
        ("user", "plain"),
        ("method", "POST"),
        ("path", "/v1/items/7"),
    ];
    for i in 0..10 {
        let answer = rls.one("spillway", &plain).await;
        assert_eq!(overall(&answer), Code::Ok, "{i}");
    }
    let answer = rls.one("spillway", &plain).await;
    assert_eq!(overall(&answer), Code::OverLimit);
}

/// Three calls a minute per client network, in envoyproxy/ratelimit's format.
const EDGE: &str = r#"
domain: edge
descriptors:
  - key: masked_remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
"#;

#[tokio::test]
async fn an_envoy_domain_counts_6to4_networks_as_their_ipv4_host() {
    let (_dir, path) = grpc::envoy_file("edge.yaml", EDGE);
    let mut rls = grpc::start(Server::with_policy(IP_POLICY), &[&path]).await;
    // Envoy's /64 of each of 203.0.113.7's 6to4 subnets, then the address itself.
    for i in 1..=3 {
        let network = format!("2002:cb00:7107:{i}::/64");
        let answer = rls
            .one("edge", &[("masked_remote_address", &network)])
            .await;
        assert_eq!(overall(&answer), Code::Ok, "{network}");
    }
    let answer = (rls.one("edge", &[("masked_remote_address", "203.0.113.7/32")])).await;
    assert_eq!(overall(&answer), Code::OverLimit);
    // Unmasked: a 6to4 address, a Teredo one (whatever its server), the host itself.
    let teredo = [
        "2001:0:4136:e378:8000:63bf:3fff:fdfe",
        "2001:0:5ef5:79fd:0:1:3fff:fdfe",
    ];
    for ip in ["2002:c000:201:9::1", teredo[0], teredo[1]] {
        let answer = rls.one("edge", &[("remote_address", ip)]).await;
        assert_eq!(overall(&answer), Code::Ok, "{ip}");
    }
    let answer = rls.one("edge", &[("remote_address", "192.0.2.1")]).await;
    assert_eq!(overall(&answer), Code::OverLimit);
    // Other networks are counted as sent.
    let answer = (rls.one("edge", &[("masked_remote_address", "2001:db8:1:2::/64")])).await;
    assert_eq!(overall(&answer), Code::Ok);
}
