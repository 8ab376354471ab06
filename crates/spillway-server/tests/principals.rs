//! Who is calling, end to end through the real `spillway` binary: JWTs of every algorithm
//! (keys from `tests/fixtures/principal`, made with openssl), API keys from the catalog,
//! subdomains and the anonymous tier, on `/v1/check` and `/v1/authorize`. The attacks: naming
//! another tenant beside a token, algorithm confusion, `none`, tokens out of their time, and
//! floods of unknown key ids against a JWKS URL.

mod common;

use common::{metric, Server, START_MS};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const NOW: u64 = START_MS / 1000;

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/principal/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// A token signed with `alg` by the fixture key `kid` names (`None` for no `kid` header).
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => {
            let file = if kid == Some("rsa-2") {
                "rsa2.pem"
            } else {
                "rsa1.pem"
            };
            EncodingKey::from_rsa_pem(&read(file)).expect("rsa key")
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec1.pem")).expect("ec key"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed1.pem")).expect("ed key"),
        Algorithm::HS256 => {
            let secret = std::fs::read_to_string(fixture("hs1.secret")).expect("secret");
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret.trim())
                .expect("base64url secret");
            EncodingKey::from_secret(&bytes)
        }
        other => panic!("no fixture for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

/// Claims for tenant `org`, user `sub`, plan `pro`, valid for an hour from the test clock.
fn claims(org: &str, sub: &str) -> Value {
    json!({"iss": "https://auth.test", "aud": "api", "sub": sub, "org": {"id": org},
           "plan": "pro", "iat": NOW, "exp": NOW + 3600})
}

fn policy(principals: &str) -> String {
    format!(
        "default_tier: free
limits:
  tenant-minute: {{algorithm: fixed_window, limit: 2, window: 1m, key: [tenant]}}
  ip-minute: {{algorithm: fixed_window, limit: 2, window: 1m, key: [ip]}}
tiers:
  free: {{limits: [tenant-minute]}}
  paid: {{limits: [tenant-minute]}}
  anonymous: {{limits: [ip-minute]}}
principals:
{principals}"
    )
}

/// A `principals:` section believing RS256 tokens of the test issuer, tenant and user from
/// their claims (the last part of a policy).
fn rs256_principals() -> String {
    format!(
        "principals:
  jwt:
    jwks_file: {}
    algorithms: [RS256]
    issuer: https://auth.test
    audience: [api]
    claims: {{tenant: org.id, user: sub}}
",
        fixture("jwks.json")
    )
}

fn jwt_policy(extra: &str) -> String {
    policy(&format!(
        "  jwt:
    jwks_file: {}
    algorithms: [RS256, ES256, EdDSA, HS256]
    issuer: https://auth.test
    audience: [api]
    leeway: 30s
    claims: {{tenant: org.id, user: sub, tier: plan}}
    tiers: {{pro: paid}}
{extra}",
        fixture("jwks.json")
    ))
}

/// POSTs `body` to `/v1/check` with `Authorization: Bearer token`.
async fn check(server: &Server, token: &str, body: Value) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/v1/check"))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The remaining count of `tenant-minute` in a verdict.
fn remaining(v: &Value) -> Option<u64> {
    v["limits"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "tenant-minute")?["remaining"]
        .as_u64()
}

#[tokio::test]
async fn a_valid_token_of_each_algorithm_governs_the_counters() {
    let server = Server::with_policy(&jwt_policy("")).start();
    let cases = [
        (Algorithm::RS256, Some("rsa-1")),
        (Algorithm::ES256, Some("ec-1")),
        (Algorithm::EdDSA, Some("ed-1")),
        (Algorithm::HS256, Some("hs-1")),
        (Algorithm::ES256, None),
    ];
    for (i, (alg, kid)) in cases.into_iter().enumerate() {
        let token = sign(alg, kid, &claims(&format!("org-{i}"), "u1"));
        let (status, v) = check(&server, &token, json!({})).await;
        assert_eq!((status, remaining(&v)), (200, Some(1)), "{alg:?}: {v}");
        assert_eq!(v["tier"], "paid", "plan pro maps to tier paid");
        let (status, _) = check(&server, &token, json!({})).await;
        assert_eq!(status, 200);
        let (status, v) = check(&server, &token, json!({})).await;
        assert_eq!(status, 429, "{alg:?}: the third in a minute is denied: {v}");
    }
    let text = server.metrics().await;
    // Each token's signature was checked once; the repeats came from the cache.
    assert_eq!(
        metric(&text, "spillway_principal_token_verifications_total", &[]),
        Some(5.0)
    );
}

#[tokio::test]
async fn naming_another_tenant_beside_a_token_counts_as_the_tokens_tenant() {
    let server = Server::with_policy(&jwt_policy("")).start();
    let a = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("tenant-a", "mallory"),
    );
    for _ in 0..3 {
        // Mallory holds a token for A and asks to be counted as B, on B's tier.
        let body = json!({"tenant": "tenant-b", "user": "bob", "tier": "free"});
        check(&server, &a, body).await;
    }
    let (status, v) = check(&server, &a, json!({"tenant": "tenant-b"})).await;
    assert_eq!(status, 429, "A's budget is spent: {v}");
    assert_eq!(v["tier"], "paid", "the token's tier, not the body's");
    // B's budget is untouched.
    let b = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-b", "bob"));
    let (status, v) = check(&server, &b, json!({})).await;
    assert_eq!((status, remaining(&v)), (200, Some(1)), "{v}");
    // The same through /v1/authorize's headers.
    let response = server
        .http
        .get(server.url("/v1/authorize"))
        .bearer_auth(&a)
        .header("x-tenant-id", "tenant-c")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 429, "still A's spent budget");
}

/// The reason a refused `/v1/check` names, with its status.
async fn refused(server: &Server, token: &str) -> (u16, String) {
    let (status, v) = check(server, token, json!({})).await;
    (status, v["reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn forged_unsigned_and_confused_tokens_are_refused_by_reason() {
    let server = Server::with_policy(&jwt_policy("")).start();
    let c = claims("acme", "u1");
    // HS256 "signed" with the RSA public key as the secret, naming the RSA key.
    let public = EncodingKey::from_secret(&read("rsa1.pub.pem"));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(&header, &c, &public).expect("sign");
    assert_eq!(
        refused(&server, &confused).await,
        (401, "disallowed_algorithm".into())
    );
    // Without a kid it meets the real HS256 key, and its signature is wrong.
    let confused = encode(&Header::new(Algorithm::HS256), &c, &public).expect("sign");
    assert_eq!(
        refused(&server, &confused).await,
        (401, "bad_signature".into())
    );
    // `none`.
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&c));
    assert_eq!(
        refused(&server, &none).await,
        (401, "disallowed_algorithm".into())
    );
    // A signature from another key.
    let good = sign(Algorithm::RS256, Some("rsa-1"), &c);
    let other = sign(Algorithm::RS256, Some("rsa-2"), &c);
    let spliced = format!(
        "{}.{}",
        &good[..good.rfind('.').expect("dot")],
        &other[other.rfind('.').expect("dot") + 1..]
    );
    assert_eq!(
        refused(&server, &spliced).await,
        (401, "bad_signature".into())
    );
    assert_eq!(refused(&server, &other).await, (401, "unknown_key".into()));
    assert_eq!(
        refused(&server, "not-a-token").await,
        (401, "malformed".into())
    );
    let (status, v) = check(&server, "", json!({})).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (401, Some("missing")),
        "{v}"
    );
    assert_eq!(v["type"], "urn:spillway:problem:unauthenticated");

    let text = server.metrics().await;
    let rejected = |reason| {
        metric(
            &text,
            "spillway_principal_rejected_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(rejected("disallowed_algorithm"), Some(2.0));
    assert_eq!(rejected("bad_signature"), Some(2.0));
    assert_eq!(rejected("missing"), Some(1.0));
    // Never a token in the logs.
    let logs = server.logs().join("\n");
    assert!(!logs.contains(&good[..40]), "a token was logged");
}

#[tokio::test]
async fn time_issuer_and_audience_are_checked() {
    let server = Server::with_policy(&jwt_policy("")).start();
    let with = |extra: Value| {
        let mut c = claims("acme", "u1");
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        sign(Algorithm::EdDSA, Some("ed-1"), &c)
    };
    assert_eq!(
        refused(&server, &with(json!({"exp": NOW - 31}))).await.1,
        "expired"
    );
    assert_eq!(
        refused(&server, &with(json!({"nbf": NOW + 31}))).await.1,
        "not_yet_valid"
    );
    assert_eq!(
        refused(&server, &with(json!({"iss": "https://evil"})))
            .await
            .1,
        "wrong_issuer"
    );
    assert_eq!(
        refused(&server, &with(json!({"aud": ["web"]}))).await.1,
        "wrong_audience"
    );
    assert_eq!(
        refused(&server, &with(json!({"org": {}}))).await.1,
        "missing_claim"
    );
    // Within the leeway both ways.
    let late = with(json!({"exp": NOW - 29, "nbf": NOW + 29}));
    assert_eq!(check(&server, &late, json!({})).await.0, 200);
    // A cached token stops working when its time is up, by the server's clock.
    let short = with(json!({"user": "x", "exp": NOW + 60}));
    assert_eq!(check(&server, &short, json!({})).await.0, 200);
    server.advance_ms(91_000).await;
    assert_eq!(refused(&server, &short).await, (401, "expired".into()));
}

/// A JWKS endpoint on a free port that counts its fetches and serves whatever `doc` holds.
struct Jwks {
    url: String,
    fetches: Arc<AtomicUsize>,
    doc: Arc<Mutex<String>>,
}

async fn jwks_server(doc: String) -> Jwks {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let fetches = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(Mutex::new(doc));
    let (count, served) = (fetches.clone(), doc.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (count, served) = (count.clone(), served.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().expect("doc").clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Jwks { url, fetches, doc }
}

// Two threads: the JWKS endpoint must answer while `Server::start` blocks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_jwks_once_per_interval_not_per_request() {
    let first = String::from_utf8(read("jwks.json")).expect("utf-8");
    let jwks = jwks_server(first.clone()).await;
    let text = policy(&format!(
        "  jwt:
    jwks_url: {}
    refresh: 5m
    claims: {{tenant: org.id}}
",
        jwks.url
    ));
    let server = Server::with_policy(&text).start();
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "fetched at start");
    let known = sign(Algorithm::RS256, Some("rsa-1"), &claims("acme", "u"));
    assert_eq!(check(&server, &known, json!({})).await.0, 200);
    // A key the set does not hold: within the interval of the fetch at start, no refetch.
    let rotated = sign(Algorithm::RS256, Some("rsa-2"), &claims("acme", "u"));
    assert_eq!(refused(&server, &rotated).await.1, "unknown_key");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    // Once the interval has passed: one refetch, then none for the rest of the interval,
    // however many requests (and made-up kids) arrive.
    server.advance_ms(300_000).await;
    for i in 0..20 {
        assert_eq!(refused(&server, &rotated).await.1, "unknown_key");
        let made_up = sign(
            Algorithm::RS256,
            Some(&format!("kid-{i}")),
            &claims("a", "u"),
        );
        assert_eq!(refused(&server, &made_up).await.1, "unknown_key");
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    // The issuer publishes the new key; after the interval the next unknown kid fetches it.
    let both: Value = {
        let mut a: Value = serde_json::from_str(&first).expect("json");
        let b: Value = serde_json::from_slice(&read("jwks-rsa2.json")).expect("json");
        let extra = b["keys"][0].clone();
        a["keys"].as_array_mut().expect("keys").push(extra);
        a
    };
    *jwks.doc.lock().expect("doc") = both.to_string();
    assert_eq!(refused(&server, &rotated).await.1, "unknown_key", "not yet");
    server.advance_ms(300_000).await;
    let rotated = sign(Algorithm::RS256, Some("rsa-2"), &{
        let mut c = claims("acme", "u");
        c["exp"] = json!(NOW + 3600 + 600);
        c
    });
    assert_eq!(check(&server, &rotated, json!({})).await.0, 200);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 3);
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "spillway_principal_jwks_fetches_total", &[]),
        Some(3.0)
    );
}

/// A JWKS URL that cannot be fetched is named in the log with its password masked, and the
/// transport's error does not repeat it.
#[tokio::test]
async fn a_failed_jwks_fetch_is_logged_without_the_urls_password() {
    let text = policy(
        "  jwt:
    jwks_url: https://issuer:s3cret-pass@127.0.0.1:1/jwks.json
    claims: {tenant: org.id}
",
    );
    let server = Server::with_policy(&text).start();
    let line = server
        .wait_for_log("JWKS URL")
        .expect("the failed fetch is logged");
    assert!(
        line.contains("https://****@127.0.0.1:1/jwks.json"),
        "{line}"
    );
    let shown = server
        .logs()
        .into_iter()
        .find(|l| l.contains("s3cret-pass"));
    assert_eq!(shown, None, "the password reached the log");
}

#[tokio::test]
async fn authorize_reads_the_bearer_header_and_answers_the_invalid_status() {
    let server = Server::with_policy(&jwt_policy("  invalid_status: 403\n")).start();
    let token = sign(Algorithm::ES256, Some("ec-1"), &claims("acme", "u"));
    let get = |token: Option<String>| {
        let mut request = server.http.get(server.url("/v1/authorize"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("answer") }
    };
    let ok = get(Some(token.clone())).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        common::header(&ok, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    let missing = get(None).await;
    assert_eq!(missing.status(), 403);
    let v: Value = missing.json().await.expect("problem");
    assert_eq!(v["reason"], "missing");
    let bad = get(Some(format!("{token}x"))).await;
    assert_eq!(bad.status(), 403);
}

#[tokio::test]
async fn anonymous_requests_are_counted_per_ip_in_the_anonymous_tier() {
    let text = jwt_policy("  missing: anonymous\n");
    let server = Server::with_policy(&text).start();
    // Without a token, naming a tenant changes nothing: the anonymous tier, by IP.
    for expected in [200, 200, 429] {
        let body = json!({"ip": "198.51.100.7", "tenant": "acme"}).to_string();
        let response = server.post("/v1/check", &body).await;
        assert_eq!(response.status(), expected);
        let v: Value = response.json().await.expect("json");
        assert_eq!(v["tier"], "anonymous");
    }
    let other = server.post("/v1/check", r#"{"ip":"198.51.100.8"}"#).await;
    assert_eq!(other.status(), 200, "another address has its own budget");
    // A presented but bad token is still refused, not anonymous, and names the scheme.
    assert_eq!(refused(&server, "x.y.z").await, (401, "malformed".into()));
    let bad = server
        .http
        .post(server.url("/v1/check"))
        .bearer_auth("x.y.z")
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        common::header(&bad, "www-authenticate").as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
    // /v1/authorize knows the peer's address, so an anonymous caller there is counted.
    let authorize = server
        .http
        .get(server.url("/v1/authorize"))
        .send()
        .await
        .expect("answer");
    assert_eq!(authorize.status(), 200);
}

/// A server whose catalog (SQLite, migrated) holds tenants `acme` and `initech`.
async fn with_tenants(text: &str, dir: &common::TempDir) -> Server {
    const ADMIN: &str = "test-admin-token-0123456789";
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let server = Server::with_policy(text)
        .args(&["--catalog", &url, "--catalog-migrate"])
        .env("SPILLWAY_ADMIN_TOKEN", ADMIN)
        .start();
    for tenant in ["acme", "initech"] {
        let put = server
            .http
            .put(server.url(&format!("/v1/admin/tenants/{tenant}")))
            .bearer_auth(ADMIN)
            .json(&json!({"tier": "free"}))
            .send()
            .await
            .expect("admin answers");
        assert!(put.status().is_success(), "{:?}", put.text().await);
    }
    server
}

#[tokio::test]
async fn subdomains_name_only_catalog_tenants_and_check_reads_the_body_host() {
    let dir = common::TempDir::new();
    let text = policy("  subdomain: {base: example.com, header: x-original-host}\n");
    let server = with_tenants(&text, &dir).await;
    let ask = |host: &'static str| {
        server
            .http
            .get(server.url("/v1/authorize"))
            .header("x-original-host", host)
            .header("x-tenant-id", "someone-else")
            .send()
    };
    for expected in [200, 200, 429] {
        assert_eq!(
            ask("acme.example.com").await.expect("answer").status(),
            expected
        );
    }
    // A label the catalog does not hold is no principal: no fresh counter per random name.
    for host in ["globex.example.com", "x1.example.com", "example.org"] {
        let answer = ask(host).await.expect("answer");
        assert_eq!(answer.status(), 401, "{host}");
        assert_eq!(
            answer.headers()["x-spillway-unauthenticated"],
            "missing",
            "{host}"
        );
    }
    let body = r#"{"host":"initech.example.com"}"#;
    let response = server.post("/v1/check", body).await;
    let v: Value = response.json().await.expect("json");
    assert_eq!(remaining(&v), Some(1), "{v}");
    // On /v1/check the host comes from the body only, never from a header.
    let from_header = server
        .http
        .post(server.url("/v1/check"))
        .header("x-original-host", "acme.example.com")
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(from_header.status(), 401);
    let v: Value = from_header.json().await.expect("json");
    assert_eq!(v["reason"], "missing", "{v}");
}

#[tokio::test]
async fn a_subdomain_never_stands_in_for_a_configured_credential() {
    let dir = common::TempDir::new();
    let text = policy(
        "  sources: [subdomain, api_key]\n  api_key: {header: x-api-key}\n  \
         subdomain: {base: example.com, header: x-original-host}\n",
    );
    let server = with_tenants(&text, &dir).await;
    let response = server
        .http
        .get(server.url("/v1/authorize"))
        .header("x-original-host", "acme.example.com")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-spillway-unauthenticated"], "missing");
}

#[tokio::test]
async fn an_anonymous_request_without_an_ip_is_refused() {
    let text = jwt_policy("  missing: anonymous\n");
    let server = Server::with_policy(&text).start();
    let response = server.post("/v1/check", r#"{"tenant":"acme"}"#).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        common::header(&response, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    let v: Value = response.json().await.expect("json");
    assert_eq!(v["reason"], "missing", "{v}");
}

/// An anonymous caller is counted by IP on every path and transport (one rule,
/// `principal::PrincipalState::identify`): over gRPC, a check and an Envoy stream-done report
/// that name no address are refused as `missing`, and the report records nothing; with an
/// address the report is recorded.
#[tokio::test]
async fn an_anonymous_envoy_call_without_an_ip_is_refused_on_checks_and_reports() {
    use common::grpc::{self, descriptor, overall, request};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let text = format!(
        "default_tier: free
limits:
  tenant-minute: {{algorithm: fixed_window, limit: 2, window: 1m, key: [tenant]}}
  ip-minute: {{algorithm: fixed_window, limit: 2, window: 1m, key: [ip]}}
  generation: {{algorithm: fixed_window, limit: 1000, window: 1h, key: [route], charge: after}}
routes:
  - {{match: \"POST /v1/generate\", limits: [generation]}}
tiers:
  free: {{limits: [tenant-minute]}}
  anonymous: {{limits: [ip-minute]}}
principals:
  jwt:
    jwks_file: {}
    algorithms: [RS256]
    claims: {{tenant: org.id}}
  missing: anonymous
",
        fixture("jwks.json")
    );
    let mut rls = grpc::start(Server::with_policy(&text), &[]).await;
    let route = [("method", "POST"), ("path", "/v1/generate")];
    let report = |ip: Option<&'static str>, id: &'static str| {
        let mut entries = route.to_vec();
        entries.extend(ip.map(|ip| ("remote_address", ip)));
        entries.extend([("spillway_report", "true"), ("spillway_request_id", id)]);
        request("spillway", vec![descriptor(&entries)], 600)
    };
    let rejected = |text: &str| {
        metric(
            text,
            "spillway_principal_rejected_total",
            &[("reason", "missing")],
        )
        .unwrap_or(0.0)
    };
    let reported = |text: &str| {
        metric(
            text,
            "spillway_reported_cost_total",
            &[("limit", "generation")],
        )
        .unwrap_or(0.0)
    };

    let check = rls.one("spillway", &route).await;
    assert_eq!(overall(&check), Code::OverLimit);
    assert_eq!(
        grpc::header(&check, "x-spillway-unauthenticated"),
        Some("missing")
    );
    // Envoy is answered OK whatever happens to a report; nothing is recorded.
    assert_eq!(overall(&rls.ask(report(None, "r-1")).await), Code::Ok);
    let text = rls.server.metrics().await;
    assert_eq!((rejected(&text), reported(&text)), (2.0, 0.0), "{text}");

    let mut with_ip = route.to_vec();
    with_ip.push(("remote_address", "192.0.2.7"));
    assert_eq!(overall(&rls.one("spillway", &with_ip).await), Code::Ok);
    assert_eq!(
        overall(&rls.ask(report(Some("192.0.2.7"), "r-2")).await),
        Code::Ok
    );
    let text = rls.server.metrics().await;
    assert_eq!((rejected(&text), reported(&text)), (2.0, 600.0), "{text}");
}

#[tokio::test]
async fn api_keys_are_looked_up_in_the_catalog() {
    const ADMIN: &str = "test-admin-token-0123456789";
    let dir = common::TempDir::new();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let text = policy("  api_key: {header: x-api-key}\n  request_may_name: [user]\n");
    let server = Server::with_policy(&text)
        .args(&[
            "--catalog",
            &url,
            "--catalog-migrate",
            "--catalog-poll",
            "200ms",
        ])
        .env("SPILLWAY_ADMIN_TOKEN", ADMIN)
        .start();
    let key = "sk_test_0123456789abcdef0123456789";
    let added = server
        .http
        .post(server.url("/v1/admin/api-keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"key": key, "tenant": "acme", "tier": "paid"}))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(added.status(), 201, "{:?}", added.text().await);
    let with_key = |key: &'static str, body: Value| {
        server
            .http
            .post(server.url("/v1/check"))
            .header("x-api-key", key)
            .body(body.to_string())
            .send()
    };
    for expected in [200, 200, 429] {
        let response = with_key(key, json!({"tenant": "globex", "user": "u"}))
            .await
            .expect("answer");
        assert_eq!(response.status(), expected);
        let v: Value = response.json().await.expect("json");
        assert_eq!(v["tier"], "paid");
    }
    let unknown = with_key("sk_test_not_a_key_at_all_000000", json!({}))
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 401);
    let v: Value = unknown.json().await.expect("json");
    assert_eq!(v["reason"], "unknown_api_key");
    let logs = server.logs().join("\n");
    assert!(!logs.contains(key), "an API key was logged");
}

#[tokio::test]
async fn envoy_descriptor_entries_carry_the_token_and_the_principal_wins() {
    use common::grpc::{self, overall};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let mut rls = grpc::start(Server::with_policy(&jwt_policy("")), &[]).await;
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let bearer = format!("Bearer {token}");
    // Envoy's `request_headers` action puts the Authorization header in an entry; the
    // descriptor also claims tenant B, which is ignored.
    let entries = [("authorization", bearer.as_str()), ("tenant", "tenant-b")];
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    assert_eq!(
        overall(&rls.one("spillway", &entries).await),
        Code::OverLimit
    );
    // B's budget is untouched.
    let b = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-b", "u"));
    let b = format!("Bearer {b}");
    let entries = [("authorization", b.as_str())];
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    // No credential, or a bad one: OVER_LIMIT with the reason, never an error.
    let missing = rls.one("spillway", &[("tenant", "tenant-c")]).await;
    assert_eq!(overall(&missing), Code::OverLimit);
    assert_eq!(
        grpc::header(&missing, "x-spillway-unauthenticated"),
        Some("missing")
    );
    let bad = rls
        .one("spillway", &[("authorization", "Bearer a.b.c")])
        .await;
    assert_eq!(
        grpc::header(&bad, "x-spillway-unauthenticated"),
        Some("malformed")
    );
}

#[tokio::test]
async fn envoy_credentials_never_reach_the_decision_log_which_names_the_verified_tenant() {
    use common::grpc::{self, overall};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let dir = common::TempDir::new();
    let path = dir.path().join("decisions.jsonl");
    let sink = format!("file:{}", path.display());
    let builder = Server::with_policy(&jwt_policy("")).args(&[
        "--decision-log",
        &sink,
        "--decision-log-sample-allowed",
        "1",
    ]);
    let mut rls = grpc::start(builder, &[]).await;
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let bearer = format!("Bearer {token}");
    let entries = [("authorization", bearer.as_str()), ("tenant", "tenant-b")];
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    let written = common::wait_until(common::PATIENCE, || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|t| t.lines().count() >= 1)
    })
    .expect("a decision record is written");
    let signature = token.rsplit('.').next().expect("three parts");
    assert!(!written.contains(signature), "{written}");
    assert!(!written.contains("authorization"), "{written}");
    let record: Value =
        serde_json::from_str(written.lines().next().expect("a line")).expect("json");
    assert_eq!(record["tenant"], "tenant-a", "{record}");
}

#[tokio::test]
async fn repeated_credential_headers_are_malformed_and_sources_are_read_in_order() {
    let text = jwt_policy("  api_key: {header: x-api-key}\n");
    let server = Server::with_policy(&text).start();
    let a = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let b = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-b", "u"));
    let send = |headers: Vec<(&'static str, reqwest::header::HeaderValue)>| {
        let mut request = server.http.post(server.url("/v1/check")).body("{}");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let bearer = |t: &str| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
    // Two Authorization headers: which one is meant? Neither.
    let two = send(vec![
        ("authorization", bearer(&a)),
        ("authorization", bearer(&b)),
    ])
    .await
    .expect("answer");
    assert_eq!(two.status(), 401);
    let v: Value = two.json().await.expect("json");
    assert_eq!(v["reason"], "malformed", "{v}");
    // A non-UTF-8 API key (lower precedence) does not refuse a valid token.
    let junk = reqwest::header::HeaderValue::from_bytes(b"k\xff").expect("opaque bytes");
    let fine = send(vec![("authorization", bearer(&a)), ("x-api-key", junk)])
        .await
        .expect("answer");
    assert_eq!(fine.status(), 200);
}

/// A policy taking RS256 tokens from the `session` cookie, the tenant from `org.id`.
fn cookie_policy() -> String {
    policy(&format!(
        "  jwt:\n    cookie: session\n    jwks_file: {}\n    algorithms: [RS256]\n    \
         issuer: https://auth.test\n    audience: [api]\n    claims: {{tenant: org.id}}\n",
        fixture("jwks.json")
    ))
}

#[tokio::test]
async fn a_cookie_token_is_found_across_several_cookie_headers() {
    let server = Server::with_policy(&cookie_policy()).start();
    let a = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let response = server
        .http
        .post(server.url("/v1/check"))
        .header("cookie", "theme=dark")
        .header("cookie", format!("session={a}"))
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// A browser sends the token cookie twice when it was set for two paths or domains: a stale
/// one beside a fresh one is taken as the fresh one; two valid tokens of different callers
/// are refused (a server could take either).
#[tokio::test]
async fn a_token_cookie_given_twice_is_taken_only_when_both_could_be_the_caller() {
    let server = Server::with_policy(&cookie_policy()).start();
    let token = |org: &str, exp: u64| {
        let mut c = claims(org, "u");
        c["exp"] = json!(exp);
        sign(Algorithm::RS256, Some("rsa-1"), &c)
    };
    let fresh = token("tenant-a", NOW + 3600);
    let stale = token("tenant-a", NOW - 600);
    let again = token("tenant-a", NOW + 1800);
    let other = token("tenant-b", NOW + 3600);
    let send = |cookie: String| {
        (server.http.post(server.url("/v1/check")))
            .header("cookie", cookie)
            .body("{}")
            .send()
    };
    // All three count under tenant-a's counter (two a minute): the third is its third.
    let taken = [
        format!("session={stale}; session={fresh}"),
        format!("session={fresh}; session={stale}"),
        format!("session={fresh}; session={again}"),
    ];
    for (cookie, (status, left)) in
        taken
            .into_iter()
            .zip([(200, Some(1)), (200, Some(0)), (429, Some(0))])
    {
        let answer = send(cookie).await.expect("answer");
        assert_eq!(answer.status(), status);
        let body: Value = answer.json().await.expect("json");
        assert_eq!(remaining(&body), left, "{body}");
    }
    // A report decides as its check did: a token of another caller that expired minutes ago
    // is stale to the check, so it is to the report too, whose grace would take it.
    let stale_other = token("tenant-b", NOW - 600);
    let report = (server.http.post(server.url("/v1/report")))
        .header("cookie", format!("session={stale_other}; session={fresh}"))
        .body(json!({"cost": 1, "request_id": "r-1"}).to_string())
        .send()
        .await
        .expect("answer");
    let status = report.status();
    assert_eq!(status, 200, "{:?}", report.text().await);
    for cookie in [
        format!("session={fresh}; session={other}"),
        format!("session={fresh}; session=junk"),
        format!("session={fresh}; session={again}; session={stale}"),
    ] {
        let answer = send(cookie).await.expect("answer");
        assert_eq!(answer.status(), 401);
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["reason"], "malformed", "{body}");
    }
    // A cookie that ran out long ago (past a report's grace too), sent beside the fresh one
    // with every request: the fresh one comes from the cache, and the stale one, saying it
    // ran out, is not checked at all (its key may be long gone).
    let verifications = |text: &str| {
        metric(text, "spillway_principal_token_verifications_total", &[]).unwrap_or(0.0)
    };
    let before = verifications(&server.metrics().await);
    let ancient = token("tenant-a", NOW - 7200);
    for _ in 0..3 {
        let answer = send(format!("session={ancient}; session={fresh}"))
            .await
            .expect("answer");
        assert_eq!(answer.status(), 429);
        let body: Value = answer.json().await.expect("json");
        assert_eq!(
            body["type"], "urn:spillway:problem:rate-limited",
            "tenant-a's, used up"
        );
    }
    let after = verifications(&server.metrics().await);
    assert_eq!(after - before, 0.0, "no signature checked");
}

#[tokio::test]
async fn a_report_is_charged_to_the_verified_caller_not_the_tenant_it_names() {
    let text = format!(
        "default_tier: free
limits:
  tokens: {{algorithm: fixed_window, limit: 10, window: 1m, key: [tenant], charge: after}}
tiers:
  free: {{limits: [tokens]}}
{}",
        rs256_principals()
    );
    let server = Server::with_policy(&text).start();
    let a = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("tenant-a", "mallory"),
    );
    let b = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-b", "bob"));
    let report = |token: Option<&str>, id: &str| {
        let mut request = server
            .http
            .post(server.url("/v1/report"))
            .body(json!({"tenant": "tenant-b", "cost": 100, "request_id": id}).to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Mallory, holding A's token, reports a huge cost naming B: it lands on A.
    let response = report(Some(&a), "r-1").await.expect("answer");
    assert_eq!(response.status(), 200);
    let (status, _) = check(&server, &a, json!({})).await;
    assert_eq!(status, 429, "A owes the reported cost");
    let (status, v) = check(&server, &b, json!({})).await;
    assert_eq!(status, 200, "B owes nothing: {v}");
    // Without a credential, nothing is recorded.
    let response = report(None, "r-2").await.expect("answer");
    assert_eq!(response.status(), 401);
    let (status, v) = check(&server, &b, json!({})).await;
    assert_eq!(status, 200, "B still owes nothing: {v}");
}

/// A policy with one limit charged after the response, 10 an hour per tenant, and RS256 tokens.
fn metered_by_tenant() -> String {
    format!(
        "default_tier: free
limits:
  tokens: {{algorithm: token_bucket, rate: 10/h, key: [tenant], charge: after}}
tiers:
  free: {{limits: [tokens]}}
{}",
        rs256_principals()
    )
}

/// A token of tenant `tenant-a` that expires a minute after the test clock's start.
fn near_its_end() -> String {
    let mut claims = claims("tenant-a", "u");
    claims["exp"] = json!(NOW + 60);
    sign(Algorithm::RS256, Some("rsa-1"), &claims)
}

/// A report takes the token its request was checked with after that token has expired, for
/// up to 15 minutes: a token near its end must not make a metered request's cost free (the
/// report was refused as `expired`, and nothing was recorded). A check with the expired token
/// is refused, and so is a report past the grace. The cache keeps the token through the grace,
/// so the report does not check its signature again.
#[tokio::test]
async fn a_report_takes_the_token_its_request_was_checked_with_after_it_expires() {
    let text = metered_by_tenant();
    let server = Server::with_policy(&text).start();
    let token = near_its_end();
    let report = |id: &str| {
        server
            .http
            .post(server.url("/v1/report"))
            .bearer_auth(&token)
            .body(json!({"cost": 100, "request_id": id}).to_string())
            .send()
    };
    let (status, v) = check(&server, &token, json!({})).await;
    assert_eq!(status, 200, "{v}");
    // The response outlasts the token.
    server.advance_ms(120_000).await;
    let (status, v) = check(&server, &token, json!({})).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (401, Some("expired")),
        "{v}"
    );
    let response = report("r-1").await.expect("answer");
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.expect("json");
    assert_eq!(v["recorded"], true, "{v}");
    // Its signature was checked once, at the first check: the entry was kept for the report.
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "spillway_principal_token_verifications_total", &[]),
        Some(1.0),
        "{text}"
    );
    let fresh = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let (status, v) = check(&server, &fresh, json!({})).await;
    assert_eq!(status, 429, "the tenant owes the reported cost: {v}");
    server.advance_ms(900_000).await;
    let response = report("r-2").await.expect("answer");
    assert_eq!(response.status(), 401, "past its grace");
}

/// Envoy's stream-done report takes the token its request was checked with after it expires,
/// as `/v1/report` does; a check with it is refused.
#[tokio::test]
async fn an_envoy_report_takes_the_token_after_it_expires() {
    use common::grpc::{self, descriptor, overall, request};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let text = metered_by_tenant();
    let mut rls = grpc::start(Server::with_policy(&text), &[]).await;
    let bearer = format!("Bearer {}", near_its_end());
    let entries = [("authorization", bearer.as_str())];
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    rls.server.advance_ms(120_000).await;
    assert_eq!(
        overall(&rls.one("spillway", &entries).await),
        Code::OverLimit,
        "a check with the expired token is refused"
    );
    let mut marked = entries.to_vec();
    marked.push(("spillway_report", "true"));
    let report = request("spillway", vec![descriptor(&marked)], 7);
    // A report is answered `OK` whether recorded or refused (Envoy ignores the answer): the
    // reported-cost metric below is what tells.
    assert_eq!(overall(&rls.ask(report).await), Code::Ok);
    let text = rls.server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "spillway_reported_cost_total",
            &[("limit", "tokens")]
        ),
        Some(7.0),
        "{text}"
    );
}

/// An Envoy report plans on the descriptors the matching check plans on: the credential entry
/// Envoy passes along is taken out of both, so a limit keyed by a descriptor of that name
/// counts on neither. (Reports once planned on the raw entries, and charged a counter keyed
/// by the caller's token that no check ever consults.) The cost lands on the verified
/// caller's tenant, not on one the descriptors name: each tenant's next check tells its own
/// standing.
#[tokio::test]
async fn an_envoy_report_counts_exactly_the_counters_its_check_counts() {
    use common::grpc::{self, descriptor, overall, request};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let text = format!(
        "default_tier: free
descriptors: [authorization]
limits:
  tokens: {{algorithm: fixed_window, limit: 10, window: 1m, key: [tenant], charge: after}}
  per-credential: {{algorithm: fixed_window, limit: 1000, window: 1m, key: [authorization], charge: after}}
tiers:
  free: {{limits: [tokens, per-credential]}}
{}",
        rs256_principals()
    );
    let mut rls = grpc::start(Server::with_policy(&text), &[]).await;
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let bearer = format!("Bearer {token}");
    let entries = [("authorization", bearer.as_str())];
    assert_eq!(overall(&rls.one("spillway", &entries).await), Code::Ok);
    let mut marked = entries.to_vec();
    // The report names another tenant too; only the verified one may be charged.
    marked.extend([("spillway_report", "true"), ("tenant", "tenant-b")]);
    let report = request("spillway", vec![descriptor(&marked)], 7);
    assert_eq!(overall(&rls.ask(report).await), Code::Ok);
    let text = rls.server.metrics().await;
    let reported = |limit: &str| {
        metric(&text, "spillway_reported_cost_total", &[("limit", limit)]).unwrap_or(0.0)
    };
    assert_eq!(
        (reported("tokens"), reported("per-credential")),
        (7.0, 0.0),
        "{text}"
    );
    // Which counter took the 7: tenant-a's (10 - 7 left), not tenant-b's (untouched).
    let b_token = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-b", "bob"));
    for (token, left) in [(&token, 3), (&b_token, 10)] {
        let bearer = format!("Bearer {token}");
        let answer = rls.one("spillway", &[("authorization", &bearer)]).await;
        let standing = grpc::header(&answer, "ratelimit").unwrap_or_default();
        assert!(
            standing.contains(&format!("\"tokens\";r={left};")),
            "{standing}"
        );
    }
}

/// Forged tokens cost a signature check each and are refused before any limit counts them:
/// each address may fail its burst (50), then 10 a second; past that a token the cache does
/// not hold is refused unchecked (429, `too_many_failures`). Tokens already verified, and
/// other addresses, are not held back.
#[tokio::test]
async fn an_address_sending_forged_tokens_is_held_to_a_budget_of_failures() {
    let server = Server::with_policy(&jwt_policy("")).start();
    let good = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "u"));
    let from = |ip: &str| json!({ "ip": ip });
    // Verified (and cached) before the flood.
    assert_eq!(check(&server, &good, from("203.0.113.9")).await.0, 200);
    let forged = |i: usize| {
        let mut c = claims("tenant-a", "u");
        c["jti"] = json!(i);
        let token = sign(Algorithm::RS256, Some("rsa-1"), &c);
        // The same header and claims, another signature.
        let (signed, _) = token.rsplit_once('.').expect("three parts");
        format!("{signed}.{}", "A".repeat(342))
    };
    let verifications = || async {
        let text = server.metrics().await;
        metric(&text, "spillway_principal_token_verifications_total", &[]).unwrap_or(0.0)
    };
    let before = verifications().await;
    let mut refused = Vec::new();
    for i in 0..60 {
        let (status, v) = check(&server, &forged(i), from("203.0.113.9")).await;
        refused.push((status, v["reason"].as_str().unwrap_or_default().to_owned()));
    }
    let bad = (401, "bad_signature".to_owned());
    let held = (429, "too_many_failures".to_owned());
    assert_eq!(refused[..50], vec![bad.clone(); 50]);
    assert_eq!(refused[50..], vec![held.clone(); 10]);
    assert_eq!(verifications().await - before, 50.0, "checked no further");
    // The cached token still passes from there; another address is checked as ever.
    assert_eq!(check(&server, &good, from("203.0.113.9")).await.0, 200);
    let (status, v) = check(&server, &forged(99), from("198.51.100.1")).await;
    assert_eq!((status, v["reason"].as_str()), (401, Some("bad_signature")));
    // A tenth of a second forgives one.
    server.advance_ms(100).await;
    let (status, v) = check(&server, &forged(100), from("203.0.113.9")).await;
    assert_eq!((status, v["reason"].as_str()), (401, Some("bad_signature")));
    let response = server
        .http
        .post(server.url("/v1/check"))
        .bearer_auth(forged(101))
        .body(from("203.0.113.9").to_string())
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // A report is not held back: it pays for a request already admitted, whose token this
    // node may not hold (here one it never saw).
    let fresh = sign(Algorithm::RS256, Some("rsa-1"), &claims("tenant-a", "v"));
    let report = (server.http.post(server.url("/v1/report")))
        .bearer_auth(&fresh)
        .body(json!({"ip": "203.0.113.9", "cost": 1, "request_id": "r-held"}).to_string())
        .send()
        .await
        .expect("answer");
    assert_eq!(report.status(), 200, "{:?}", report.text().await);
    // `/v1/authorize` (the peer's address here) answers a held check as a denial, for the
    // proxy's 429 page.
    let authorize = |token: String| {
        (server.http.get(server.url("/v1/authorize")))
            .bearer_auth(token)
            .send()
    };
    for i in 200..250 {
        assert_eq!(authorize(forged(i)).await.expect("answer").status(), 401);
    }
    let held = authorize(forged(250)).await.expect("answer");
    assert_eq!(held.status(), 429);
    assert_eq!(
        held.headers()
            .get("x-spillway-unauthenticated")
            .map(|v| v.as_bytes()),
        Some(&b"too_many_failures"[..])
    );
}
