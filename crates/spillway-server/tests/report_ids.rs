//! Reports against the store and the log: a report of cost 0 leaves nothing behind on Redis
//! (no marker, no state), so a caller cannot fill Redis with markers for free, while a report
//! that charges something leaves one marker; and an Envoy report's decision-log record names
//! the verified tenant and never holds the credential.

mod common;

use common::Server;
use serde_json::Value;
use spillway_testkit::redis::{command, RedisServer};

const POLICY: &str = r#"
default_tier: free
limits:
  generation-tokens:
    algorithm: token_bucket
    rate: 1000/h
    burst: 1000
    key: [tenant]
    charge: after
routes:
  - match: "POST /v1/generate"
    limits: [generation-tokens]
tiers:
  free: {limits: []}
"#;

fn report(cost: u64, id: &str) -> String {
    format!(
        r#"{{"tenant":"acme","method":"POST","path":"/v1/generate","cost":{cost},"request_id":"{id}"}}"#
    )
}

/// How many keys match `pattern` (the store's own keys, not the top-k board's).
fn keys(redis: &RedisServer, pattern: &str) -> usize {
    let reply = command(redis.port(), &format!("KEYS {pattern}")).expect("Redis answers");
    let count = reply.lines().next().and_then(|l| l.strip_prefix('*'));
    count
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an array reply: {reply:?}"))
}

#[tokio::test]
async fn a_zero_cost_report_leaves_no_marker_on_redis() {
    let redis = RedisServer::start();
    let policy = format!(
        "{POLICY}store: {{type: redis, url: \"{}\", prefix: z, timeout: 5s}}\n",
        redis.url()
    );
    let server = Server::with_policy(&policy)
        .args(&["--manual-clock-in-store"])
        .start();
    for n in 0..50 {
        let r = server
            .post("/v1/report", &report(0, &format!("zero-{n}")))
            .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["recorded"], true, "{body}");
        assert_eq!(body["limits"][0]["remaining"], 1000, "{body}");
    }
    assert_eq!(keys(&redis, "z:*"), 0, "cost 0 wrote keys");

    let r = server.post("/v1/report", &report(5, "five")).await;
    assert_eq!(r.status(), 200);
    // The state key and one marker.
    assert_eq!(keys(&redis, "z:*"), 2);
    assert_eq!(keys(&redis, "z:*~report:*"), 1);
    let again: Value = server
        .post("/v1/report", &report(5, "five"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["recorded"], false, "{again}");
    assert_eq!(again["limits"][0]["remaining"], 995, "{again}");
}

#[tokio::test]
async fn an_envoy_reports_log_record_names_the_verified_tenant_and_holds_no_credential() {
    use common::grpc::{self, descriptor, overall, request};
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    let fixture = |name: &str| {
        format!(
            "{}/tests/fixtures/principal/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let policy = format!(
        "{POLICY}principals:\n  jwt:\n    jwks_file: {}\n    algorithms: [ES256]\n    \
         claims: {{tenant: org}}\n",
        fixture("jwks.json")
    );
    let dir = common::TempDir::new();
    let path = dir.path().join("decisions.jsonl");
    let sink = format!("file:{}", path.display());
    let builder = Server::with_policy(&policy).args(&[
        "--decision-log",
        &sink,
        "--decision-log-sample-allowed",
        "0",
    ]);
    let mut rls = grpc::start(builder, &[]).await;
    let pem = std::fs::read(fixture("ec1.pem")).expect("fixture");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let now = common::START_MS / 1000;
    let claims = serde_json::json!({"org": "tenant-a", "iat": now, "exp": now + 3600});
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(&pem).expect("key"),
    )
    .expect("sign");
    let bearer = format!("Bearer {token}");
    let entries = [
        ("authorization", bearer.as_str()),
        ("tenant", "tenant-b"),
        ("method", "POST"),
        ("path", "/v1/generate"),
        ("spillway_report", "true"),
        ("spillway_request_id", "env-1"),
    ];
    let answer = rls
        .ask(request("spillway", vec![descriptor(&entries)], 300))
        .await;
    assert_eq!(overall(&answer), Code::Ok);
    let written = common::wait_until(common::PATIENCE, || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|t| t.lines().count() >= 1)
    })
    .expect("a report record is written");
    let signature = token.rsplit('.').next().expect("three parts");
    assert!(!written.contains(signature), "{written}");
    assert!(!written.contains("authorization"), "{written}");
    assert!(!written.contains("spillway_report"), "{written}");
    let record: Value =
        serde_json::from_str(written.lines().next().expect("a line")).expect("json");
    assert_eq!(record["outcome"], "reported", "{record}");
    assert_eq!(record["tenant"], "tenant-a", "{record}");
    assert_eq!(record["request_id"], "env-1", "{record}");
    assert_eq!(record["cost"], 300, "{record}");
    assert_eq!(record["limits"][0]["remaining"], 700, "{record}");
}
