//! `principals.subdomain.must_match`: a verified credential used on a host that names another
//! catalog tenant is refused (`tenant_mismatch`, 403 on `/v1/check`, the policy's
//! `invalid_status` on `/v1/authorize`), through the real `spillway` binary. Without the
//! option the host is ignored and the credential's tenant is counted.

mod common;

use common::{metric, Server, START_MS};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const NOW: u64 = START_MS / 1000;

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/principal/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// An ES256 token (fixture key `ec-1`) for tenant `org`, valid for an hour.
fn token(org: &str) -> String {
    let pem = std::fs::read(fixture("ec1.pem")).expect("fixture");
    let key = EncodingKey::from_ec_pem(&pem).expect("ec key");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let claims = json!({"sub": "u", "org": org, "iat": NOW, "exp": NOW + 3600});
    encode(&header, &claims, &key).expect("sign")
}

/// Tenants `acme` and `initech` in the catalog; a JWT gives the tenant; the host is read
/// from `x-original-host` under `example.com`.
fn policy(must_match: bool) -> String {
    policy_reading(must_match, "x-original-host")
}

/// [`policy`] with the host read from `header`.
fn policy_reading(must_match: bool, header: &str) -> String {
    format!(
        "default_tier: free
limits:
  tenant-minute: {{algorithm: fixed_window, limit: 20, window: 1m, key: [tenant]}}
tiers:
  free: {{limits: [tenant-minute]}}
tenants:
  acme: {{tier: free}}
  initech: {{tier: free}}
principals:
  jwt:
    jwks_file: {}
    algorithms: [ES256]
    claims: {{tenant: org, user: sub}}
  subdomain: {{base: example.com, header: {header}, must_match: {must_match}}}
",
        fixture("jwks.json")
    )
}

async fn check(server: &Server, token: &str, host: Option<&str>) -> (u16, Value) {
    let body = match host {
        Some(host) => json!({"host": host}),
        None => json!({}),
    };
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

async fn authorize(server: &Server, token: &str, host: &str) -> reqwest::Response {
    authorize_hosts(server, token, &[host]).await
}

/// [`authorize`] with one `x-original-host` header per host of `hosts`.
async fn authorize_hosts(server: &Server, token: &str, hosts: &[&str]) -> reqwest::Response {
    let mut request = server
        .http
        .get(server.url("/v1/authorize"))
        .bearer_auth(token);
    for host in hosts {
        request = request.header("x-original-host", *host);
    }
    request.send().await.expect("answer")
}

/// `answer` is /v1/authorize's refusal of a credential on another tenant's host: the invalid
/// status (401 by default), with the reason in a header for nginx.
fn assert_mismatch(answer: &reqwest::Response) {
    assert_eq!(answer.status(), 401);
    assert_eq!(
        answer.headers()["x-spillway-unauthenticated"],
        "tenant_mismatch"
    );
}

#[tokio::test]
async fn a_credential_on_another_tenants_host_is_refused_as_tenant_mismatch() {
    let server = Server::with_policy(&policy(true)).start();
    let acme = token("acme");

    // /v1/check: the host comes from the body.
    let (status, problem) = check(&server, &acme, Some("initech.example.com")).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["reason"], "tenant_mismatch");
    assert_eq!(problem["type"], "urn:spillway:problem:forbidden");
    // Its own host, a host naming no catalog tenant, the base itself, or no host: checked as
    // the credential's tenant.
    for host in [
        Some("acme.example.com"),
        Some("ACME.example.com:443"),
        Some("globex.example.com"),
        Some("example.com"),
        None,
    ] {
        let (status, verdict) = check(&server, &acme, host).await;
        assert_eq!(status, 200, "{host:?}: {verdict}");
    }

    // /v1/authorize: the host header, answered with the invalid status (401 by default) and
    // the reason in a header for nginx.
    assert_mismatch(&authorize(&server, &acme, "initech.example.com").await);
    let ok = authorize(&server, &acme, "acme.example.com").await;
    assert_eq!(ok.status(), 200);
    // Two host headers cannot be told apart from the client's own beside the proxy's: refused
    // (they counted as no host, and the check was skipped).
    let twice = ["acme.example.com", "initech.example.com"];
    assert_mismatch(&authorize_hosts(&server, &acme, &twice).await);
    // Nor two joined by a comma, as proxies chain them.
    let joined = "acme.example.com, initech.example.com";
    assert_mismatch(&authorize(&server, &acme, joined).await);
    // Nor a value no host has, which a proxy may read as another tenant's: nginx takes the
    // name before the first colon, so this is initech's host there (it counted as naming no
    // tenant, and the check was skipped).
    assert_mismatch(&authorize(&server, &acme, "initech.example.com:x").await);
    let (status, problem) = check(&server, &acme, Some("initech.example.com:80:x")).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["reason"], "tenant_mismatch");
    // Nor a deeper name under initech's, which proxies commonly route to initech too; one
    // under acme's own is acme's.
    assert_mismatch(&authorize(&server, &acme, "www.initech.example.com").await);
    let ok = authorize(&server, &acme, "api.eu.acme.example.com").await;
    assert_eq!(ok.status(), 200);

    // Nothing was charged to initech by the refused requests.
    let (_, verdict) = check(&server, &token("initech"), Some("initech.example.com")).await;
    assert_eq!(verdict["limits"][0]["remaining"], 19, "{verdict}");

    let text = server.metrics().await;
    let refusals = metric(
        &text,
        "spillway_principal_rejected_total",
        &[("reason", "tenant_mismatch")],
    );
    assert_eq!(refusals, Some(7.0), "{text}");
}

#[tokio::test]
async fn without_must_match_the_host_is_ignored_beside_a_credential() {
    let server = Server::with_policy(&policy(false)).start();
    let acme = token("acme");
    let (status, verdict) = check(&server, &acme, Some("initech.example.com")).await;
    assert_eq!(status, 200, "{verdict}");
    let ok = authorize(&server, &acme, "initech.example.com").await;
    assert_eq!(ok.status(), 200);
    // Both were counted as acme.
    let (_, verdict) = check(&server, &acme, None).await;
    assert_eq!(verdict["limits"][0]["remaining"], 17, "{verdict}");
}

/// Over HTTP/2 the host is the request's `:authority` (hyper keeps it out of the headers): on
/// the default `host` header, a credential used at another tenant's authority is refused as
/// over HTTP/1 (it passed, the host unseen).
#[tokio::test]
async fn over_http2_the_authority_is_the_host() {
    let server = Server::with_policy(&policy_reading(true, "host")).start();
    let tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let bearer = format!("Bearer {}", token("acme"));
    let authorize = |host: &str| {
        let client = client.clone();
        let request = http::Request::get(format!("http://{host}/v1/authorize"))
            .header("authorization", &bearer)
            .body(())
            .expect("request");
        async move {
            let mut client = client.ready().await.expect("ready");
            let (response, _) = client.send_request(request, true).expect("sent");
            let response = response.await.expect("answer");
            let reason = response
                .headers()
                .get("x-spillway-unauthenticated")
                .map(|v| v.to_str().expect("text").to_owned());
            (response.status().as_u16(), reason)
        }
    };
    assert_eq!(
        authorize("initech.example.com").await,
        (401, Some("tenant_mismatch".into()))
    );
    assert_eq!(authorize("acme.example.com").await, (200, None));
}

/// Envoy carries the host in a descriptor entry named like the configured header: the same
/// refusal, as `OVER_LIMIT` naming the reason.
#[tokio::test]
async fn envoy_calls_are_refused_the_same_way() {
    use common::grpc::{self, overall};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    let mut rls = grpc::start(Server::with_policy(&policy(true)), &[]).await;
    let bearer = format!("Bearer {}", token("acme"));
    let refused = rls
        .one(
            "spillway",
            &[
                ("authorization", bearer.as_str()),
                ("x-original-host", "initech.example.com"),
            ],
        )
        .await;
    assert_eq!(overall(&refused), Code::OverLimit);
    assert_eq!(
        grpc::header(&refused, "x-spillway-unauthenticated"),
        Some("tenant_mismatch")
    );
    let own = rls
        .one(
            "spillway",
            &[
                ("authorization", bearer.as_str()),
                ("x-original-host", "acme.example.com"),
            ],
        )
        .await;
    assert_eq!(overall(&own), Code::Ok);
}

/// The option needs a credential to compare with: alone it is refused at load time with its
/// position.
#[test]
fn must_match_without_jwt_or_api_key_is_refused_with_its_position() {
    let text = "default_tier: free
limits:
  tenant-minute: {algorithm: fixed_window, limit: 5, window: 1m, key: [tenant]}
tiers:
  free: {limits: [tenant-minute]}
principals:
  subdomain:
    base: example.com
    must_match: true
";
    let err =
        spillway_core::policy::Policy::from_yaml_str(text, "policy.yaml").expect_err("refused");
    let report = err.to_string();
    assert!(
        report.contains("policy.yaml:9:17: principals.subdomain.must_match: "),
        "{report}"
    );
}
