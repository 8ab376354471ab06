//! Costs known after the response: a generation route metered after the fact (`charge:
//! after`), reported through `POST /v1/report`, on the in-memory store and on a real Redis,
//! with the manual clock stepped through the refill (no sleeping).

mod common;

use common::{header, metric, Server};
use serde_json::Value;
use spillway_testkit::redis::RedisServer;

/// A budget of 1,000 generated tokens an hour per tenant, metered after the fact, beside an
/// ordinary request limit charged up front.
const POLICY: &str = r#"
default_tier: free
failure_mode: closed
limits:
  generation-tokens:
    algorithm: token_bucket
    rate: 1000/h
    burst: 1000
    key: [tenant]
    charge: after
  requests:
    algorithm: fixed_window
    limit: 100
    window: 1d
    key: [tenant]
routes:
  - match: "POST /v1/generate"
    limits: [generation-tokens]
tiers:
  free:
    limits: [requests]
"#;

const GENERATE: &str = r#"{"tenant":"acme","method":"POST","path":"/v1/generate"}"#;

fn report(cost: u64, id: &str) -> String {
    format!(
        r#"{{"tenant":"acme","method":"POST","path":"/v1/generate","cost":{cost},"request_id":"{id}"}}"#
    )
}

async fn json(r: reqwest::Response) -> Value {
    r.json().await.expect("a JSON body")
}

fn tokens(body: &Value) -> &Value {
    body["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "generation-tokens"))
        .expect("the metered limit is listed")
}

/// The issue's scenario: admitted, 900 reported, admitted, 400 reported (300 in debt),
/// denied with a Retry-After for the debt and one token more, admitted again once refill has
/// repaid it and freed a token; a replayed report is counted once.
async fn scenario(server: &Server) {
    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(tokens(&body)["remaining"], 1000, "{body}");

    let r = server.post("/v1/report", &report(900, "gen-1")).await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["recorded"], true, "{body}");
    assert_eq!(body["allowed"], true);
    assert_eq!(tokens(&body)["remaining"], 100);

    // The same report again (a retry): counted once.
    let r = server.post("/v1/report", &report(900, "gen-1")).await;
    let body = json(r).await;
    assert_eq!(body["recorded"], false, "{body}");
    assert_eq!(tokens(&body)["remaining"], 100);

    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 200, "100 tokens remain: admitted");

    // 400 more: recorded in full, 300 tokens in debt.
    let r = server.post("/v1/report", &report(400, "gen-2")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1084"));
    let body = json(r).await;
    assert_eq!(body["recorded"], true);
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(tokens(&body)["remaining"], 0);
    // 300 tokens owed and one more to admit a request, at 3.6 s each.
    assert_eq!(tokens(&body)["retry_after_ms"], 1_083_600);

    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1084"));
    let body = json(r).await;
    assert_eq!(tokens(&body)["retry_after_ms"], 1_083_600, "{body}");

    // Once the debt is repaid nothing is left yet: still denied.
    server.advance_ms(1_080_000).await;
    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("4"));
    // A second before one token is free: still denied; then admitted.
    server.advance_ms(2_600).await;
    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    server.advance_ms(1_000).await;
    let r = server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 200);

    // A replay of the overdrawing report, even now, is still counted once.
    let r = server.post("/v1/report", &report(400, "gen-2")).await;
    let body = json(r).await;
    assert_eq!(body["recorded"], false);
    assert_eq!(body["allowed"], true, "{body}");

    // Other tenants were never touched.
    let r = server
        .post(
            "/v1/check",
            r#"{"tenant":"other","method":"POST","path":"/v1/generate"}"#,
        )
        .await;
    assert_eq!(tokens(&json(r).await)["remaining"], 1000);

    exact_budget(server).await;

    let text = server.metrics().await;
    let cost = metric(
        &text,
        "spillway_reported_cost_total",
        &[("limit", "generation-tokens")],
    );
    assert_eq!(cost, Some(2300.0), "{text}");
    let dup = metric(
        &text,
        "spillway_reports_total",
        &[("via", "http"), ("outcome", "duplicate")],
    );
    assert_eq!(dup, Some(2.0));
}

/// A tenant that reports exactly its budget owes nothing but has nothing left: its next
/// request is denied until one token is free (3.6 s), then admitted. A report of 0 changes
/// nothing.
async fn exact_budget(server: &Server) {
    let check = r#"{"tenant":"exact","method":"POST","path":"/v1/generate"}"#;
    let report = |cost: u64, id: &str| {
        format!(
            r#"{{"tenant":"exact","method":"POST","path":"/v1/generate","cost":{cost},"request_id":"{id}"}}"#
        )
    };
    assert_eq!(server.post("/v1/check", check).await.status(), 200);
    let r = server.post("/v1/report", &report(1000, "ex-1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("4"));
    let body = json(r).await;
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(tokens(&body)["remaining"], 0);
    assert_eq!(tokens(&body)["retry_after_ms"], 3_600, "{body}");

    let r = server.post("/v1/report", &report(0, "ex-2")).await;
    let body = json(r).await;
    assert_eq!(body["recorded"], true, "{body}");
    assert_eq!(tokens(&body)["retry_after_ms"], 3_600, "{body}");

    let r = server.post("/v1/check", check).await;
    assert_eq!(r.status(), 429, "0 of 1,000 left: no room");
    assert_eq!(header(&r, "retry-after").as_deref(), Some("4"));
    let body = json(r).await;
    assert_eq!(tokens(&body)["retry_after_ms"], 3_600, "{body}");
    server.advance_ms(3_599).await;
    assert_eq!(server.post("/v1/check", check).await.status(), 429);
    server.advance_ms(1).await;
    let r = server.post("/v1/check", check).await;
    assert_eq!(r.status(), 200, "one token refilled");
    assert_eq!(
        tokens(&json(r).await)["remaining"],
        1,
        "and nothing consumed"
    );
}

#[tokio::test]
async fn overdraw_and_repayment_in_memory() {
    let server = Server::with_policy(POLICY).start();
    scenario(&server).await;
}

#[tokio::test]
async fn overdraw_and_repayment_on_redis() {
    let redis = RedisServer::start();
    let policy = format!(
        "{POLICY}store: {{type: redis, url: \"{}\", prefix: m1, timeout: 5s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&policy)
        .args(&["--manual-clock-in-store"])
        .start();
    scenario(&server).await;
}

#[tokio::test]
async fn a_report_is_counted_once_across_nodes_sharing_redis() {
    let redis = RedisServer::start();
    let policy = format!(
        "{POLICY}store: {{type: redis, url: \"{}\", prefix: m2, timeout: 5s}}\n",
        redis.url()
    );
    let nodes: Vec<Server> = (0..2)
        .map(|_| {
            Server::with_policy(&policy)
                .args(&["--manual-clock-in-store"])
                .start()
        })
        .collect();
    let first = json(nodes[0].post("/v1/report", &report(600, "x-1")).await).await;
    assert_eq!(first["recorded"], true);
    let retry = json(nodes[1].post("/v1/report", &report(600, "x-1")).await).await;
    assert_eq!(retry["recorded"], false, "{retry}");
    assert_eq!(tokens(&retry)["remaining"], 400);
}

#[tokio::test]
async fn bad_reports_name_the_field() {
    let server = Server::with_policy(POLICY).start();
    for (body, field) in [
        (r#"{"tenant":"acme","request_id":"r"}"#, "cost"),
        (r#"{"tenant":"acme","cost":5}"#, "request_id"),
        (r#"{"tenant":"acme","cost":-5,"request_id":"r"}"#, "cost"),
        (
            r#"{"tenant":"acme","cost":5,"request_id":""}"#,
            "request_id",
        ),
        (
            r#"{"tenant":"acme","cost":"many","request_id":"r"}"#,
            "cost",
        ),
        // Above 2^53 no store could record the cost exactly.
        (
            r#"{"tenant":"acme","method":"POST","path":"/v1/generate","cost":9007199254740993,"request_id":"r"}"#,
            "cost",
        ),
        (
            r#"{"tenant":"acme","method":"POST","path":"/v1/generate","cost":18446744073709551615,"request_id":"r"}"#,
            "cost",
        ),
        (
            r#"{"tenant":"acme","method":"POST","path":"/v1/generate","cost":18446744073709551616,"request_id":"r"}"#,
            "cost",
        ),
    ] {
        let r = server.post("/v1/report", body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(
            header(&r, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem = json(r).await;
        assert_eq!(problem["field"], field, "{problem}");
        if body.contains("9007") || body.contains("1844") {
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("9007199254740992"),
                "names the bound: {problem}"
            );
        }
    }
    // Refused, so nothing was recorded: acme's budget is whole.
    let r = server.post("/v1/check?peek", GENERATE).await;
    assert_eq!(tokens(&json(r).await)["remaining"], 1000);
    // A request that reaches no metered limit records nothing and says so.
    let r = server
        .post(
            "/v1/report",
            r#"{"tenant":"acme","cost":5,"request_id":"r"}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["recorded"], false, "{body}");
}

#[test]
fn a_metered_sliding_log_is_refused_with_its_position() {
    let dir = common::TempDir::new();
    let path = dir.write(
        "bad.yaml",
        "default_tier: t\nlimits:\n  a:\n    algorithm: sliding_log\n    limit: 5\n    window: 1m\n    key: [user]\n    charge: after\ntiers:\n  t: {limits: [a]}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:8:13"), "{err}");
    assert!(err.contains("limits.a.charge"), "{err}");
}

/// Envoy's charge when the stream is done (`apply_on_stream_done`) arrives as an ordinary
/// `ShouldRateLimit` call; the `spillway_report` entry marks it: recorded (once per
/// `spillway_request_id`), never denied, even when it overdraws.
#[tokio::test]
async fn envoy_stream_done_calls_are_recorded_and_never_denied() {
    use common::grpc::{descriptor, header as grpc_header, overall, request, start};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

    let mut rls = start(Server::with_policy(POLICY), &[]).await;
    let route = [
        ("tenant", "acme"),
        ("method", "POST"),
        ("path", "/v1/generate"),
    ];
    let check = || request("spillway", vec![descriptor(&route)], 0);
    let done = |hits: u32, id: &str| {
        let mut entries = route.to_vec();
        entries.extend([("spillway_report", "true"), ("spillway_request_id", id)]);
        request("spillway", vec![descriptor(&entries)], hits)
    };
    assert_eq!(overall(&rls.ask(check()).await), Code::Ok);
    assert_eq!(overall(&rls.ask(done(900, "e-1")).await), Code::Ok);
    // Envoy does not retry, but a replay with the same id still counts once.
    assert_eq!(overall(&rls.ask(done(900, "e-1")).await), Code::Ok);
    assert_eq!(overall(&rls.ask(check()).await), Code::Ok);
    // 400 more overdraws by 300: recorded, and still answered OK.
    assert_eq!(overall(&rls.ask(done(400, "e-2")).await), Code::Ok);
    let denied = rls.ask(check()).await;
    assert_eq!(overall(&denied), Code::OverLimit);
    // 300 tokens owed and one to free, at 3.6 s each.
    assert_eq!(grpc_header(&denied, "retry-after"), Some("1084"));
    // The same debt, seen over HTTP.
    let r = rls.server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 429);
    rls.server.advance_ms(1_083_600).await;
    assert_eq!(overall(&rls.ask(check()).await), Code::Ok);

    let text = rls.server.metrics().await;
    let count = |outcome| {
        metric(
            &text,
            "spillway_reports_total",
            &[("via", "envoy"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("recorded"), Some(2.0), "{text}");
    assert_eq!(count("duplicate"), Some(1.0));

    // A marker-only descriptor beside a real one is skipped, not the whole call; a call for
    // an unknown domain is counted as invalid rather than dropped silently.
    let mut entries = route.to_vec();
    entries.extend([("spillway_report", "true"), ("spillway_request_id", "e-3")]);
    let mixed = request(
        "spillway",
        vec![
            descriptor(&[("spillway_report", "true")]),
            descriptor(&entries),
        ],
        5,
    );
    assert_eq!(overall(&rls.ask(mixed).await), Code::Ok);
    let unknown = request("no-such-domain", vec![descriptor(&entries)], 5);
    assert_eq!(overall(&rls.ask(unknown).await), Code::Ok);
    let text = rls.server.metrics().await;
    let count = |outcome| {
        metric(
            &text,
            "spillway_reports_total",
            &[("via", "envoy"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("recorded"), Some(3.0), "{text}");
    assert_eq!(count("invalid"), Some(1.0), "{text}");

    // A descriptor's cost above 2^53 cannot be recorded exactly: the call records nothing
    // and counts as invalid (still answered OK); at 2^53 it is recorded, a debt capped at
    // ten years of refill, never wrapped into credit.
    let costly = |hits: u64, id: &str| {
        let mut entries = route.to_vec();
        entries.extend([("spillway_report", "true"), ("spillway_request_id", id)]);
        let mut d = descriptor(&entries);
        d.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: hits });
        request("spillway", vec![d], 0)
    };
    let before = json(rls.server.post("/v1/check?peek", GENERATE).await).await;
    // A descriptor's own 0 records nothing (the request's 0 would mean 1).
    assert_eq!(overall(&rls.ask(costly(0, "e-zero")).await), Code::Ok);
    for hits in [u64::MAX, (1 << 53) + 1] {
        assert_eq!(overall(&rls.ask(costly(hits, "e-huge")).await), Code::Ok);
    }
    let after = json(rls.server.post("/v1/check?peek", GENERATE).await).await;
    assert_eq!(tokens(&after), tokens(&before), "nothing recorded");
    let text = rls.server.metrics().await;
    let invalid = metric(
        &text,
        "spillway_reports_total",
        &[("via", "envoy"), ("outcome", "invalid")],
    );
    assert_eq!(invalid, Some(3.0), "{text}");
    assert_eq!(overall(&rls.ask(costly(1 << 53, "e-max")).await), Code::Ok);
    let r = rls.server.post("/v1/check", GENERATE).await;
    assert_eq!(r.status(), 429);
    let body = json(r).await;
    assert_eq!(tokens(&body)["remaining"], 0, "{body}");
    // Ten years of refill at most, never past it.
    let retry = tokens(&body)["retry_after_ms"].as_u64().expect("a retry");
    assert!(
        retry > 3_000 * 86_400_000 && retry <= 3_650 * 86_400_000,
        "{body}"
    );
}

/// A report while the store is down is answered 503 with `Retry-After`, counted as failed,
/// and (being idempotent) can simply be sent again once the store is back: counted once.
#[tokio::test]
async fn a_report_during_an_outage_fails_visibly_and_can_be_retried() {
    let mut redis = RedisServer::start();
    let policy = format!(
        "{POLICY}store: {{type: redis, url: \"{}\", prefix: m3, timeout: 1s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&policy)
        .args(&["--manual-clock-in-store"])
        .start();
    redis.kill();
    let r = server.post("/v1/report", &report(300, "down-1")).await;
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").is_some());
    let text = server.metrics().await;
    let failed = metric(
        &text,
        "spillway_reports_total",
        &[("via", "http"), ("outcome", "failed")],
    );
    assert_eq!(failed, Some(1.0), "{text}");
    redis.restart();
    // The breaker lets a probe through once its cooldown has passed on the manual clock.
    let recorded = common::wait_until_async(common::PATIENCE, || async {
        server.advance_ms(1_000).await;
        let r = server.post("/v1/report", &report(300, "down-1")).await;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(recorded.is_some(), "the store never came back");
    let again = json(server.post("/v1/report", &report(300, "down-1")).await).await;
    assert_eq!(again["recorded"], false);
    assert_eq!(tokens(&again)["remaining"], 700, "{again}");
}

/// A `POST /v1/items/<id>` the client asks to be served as `DELETE` (`X-HTTP-Method-Override`)
/// is checked against the metered delete route too; its report names the same override, so
/// the same route's limit is charged.
#[tokio::test]
async fn a_report_charges_the_routes_its_checks_method_override_reached() {
    let policy = POLICY.replace(
        "routes:\n",
        "routes:\n  - match: \"DELETE /v1/items/*\"\n    limits: [generation-tokens]\n",
    );
    let server = Server::with_policy(&policy).start();
    let attrs =
        r#""tenant":"acme","method":"POST","path":"/v1/items/7","method_override":"DELETE""#;
    let body = json(server.post("/v1/check", &format!("{{{attrs}}}")).await).await;
    assert_eq!(tokens(&body)["remaining"], 1000, "{body}");
    let report = format!(r#"{{{attrs},"cost":600,"request_id":"del-1"}}"#);
    let body = json(server.post("/v1/report", &report).await).await;
    assert_eq!(body["recorded"], true, "{body}");
    assert_eq!(tokens(&body)["remaining"], 400, "{body}");
}

/// A metered limit keyed by route, reached under two routes by one oddly spelled path: both
/// counters are charged, and the metric counts the reported cost once.
#[tokio::test]
async fn a_limit_charged_under_two_routes_counts_its_reported_cost_once() {
    let policy = POLICY
        .replace(
            "key: [tenant]\n    charge",
            "key: [tenant, route]\n    charge",
        )
        .replace(
            "routes:\n",
            "routes:\n  - match: \"DELETE /v1/items/*\"\n    limits: [generation-tokens]\n  \
             - match: \"* /v1/**\"\n    limits: [generation-tokens]\n",
        );
    let server = Server::with_policy(&policy).start();
    // A strict server keeps the `.` (`* /v1/**`); a lenient one serves the item.
    let attrs = r#""tenant":"acme","method":"DELETE","path":"/v1/items/7/.""#;
    let report = format!(r#"{{{attrs},"cost":300,"request_id":"del-2"}}"#);
    let body = json(server.post("/v1/report", &report).await).await;
    assert_eq!(body["recorded"], true, "{body}");
    let charged: Vec<&Value> = (body["limits"].as_array().expect("limits").iter())
        .filter(|l| l["name"] == "generation-tokens")
        .map(|l| &l["remaining"])
        .collect();
    assert_eq!(charged.len(), 2, "one counter per route: {body}");
    assert!(charged.iter().all(|r| **r == 700), "{body}");
    let text = server.metrics().await;
    let cost = metric(
        &text,
        "spillway_reported_cost_total",
        &[("limit", "generation-tokens")],
    );
    assert_eq!(cost, Some(300.0), "{text}");
}
