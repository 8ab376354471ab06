//! Reports of costs known after the response in the decision log: `reported` and
//! `report_failed` records over HTTP (`POST /v1/report`) and from Envoy's stream-done calls;
//! retries are not logged.

use super::*;
use crate::grpc::service::Rls;
use crate::grpc::RlsState;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

/// 1,000 generated tokens an hour per tenant, metered after the fact.
const METERED: &str = r#"
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
        r#"{{"tenant":"acme","user":"alice","method":"POST","path":"/v1/generate","cost":{cost},"request_id":"{id}"}}"#
    )
}

impl Harness {
    /// `POST /v1/report` with `body`.
    async fn report(&self, body: &str) -> StatusCode {
        let request = Request::post("/v1/report")
            .body(Body::from(body.to_owned()))
            .expect("request");
        let answer =
            tokio::time::timeout(Duration::from_secs(1), self.router.clone().oneshot(request))
                .await
                .expect("answered promptly")
                .expect("infallible");
        answer.status()
    }
}

fn quiet(name: &str) -> DecisionLogSettings {
    let mut s = settings(name);
    s.sample_allowed = 0.0;
    s
}

#[tokio::test]
async fn http_reports_are_logged_with_cost_id_and_standing_and_retries_are_not() {
    let mut h = harness_with(METERED, quiet("report-http"), memory(1_800_000_000_000));
    assert_eq!(h.report(&report(900, "r-1")).await, StatusCode::OK);
    // A retry records nothing and is not logged.
    assert_eq!(h.report(&report(900, "r-1")).await, StatusCode::OK);
    // 400 more: 300 in debt.
    assert_eq!(h.report(&report(400, "r-2")).await, StatusCode::OK);
    // A report that reaches no metered limit records nothing either.
    let elsewhere = r#"{"tenant":"acme","method":"GET","path":"/x","cost":5,"request_id":"r-3"}"#;
    assert_eq!(h.report(elsewhere).await, StatusCode::OK);
    let lines = h.flush().await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (first, second) = (&lines[0], &lines[1]);
    assert_eq!(first.outcome, record::Kind::Reported);
    assert_eq!(first.request_id.as_deref(), Some("r-1"));
    assert_eq!(first.cost, 900);
    assert!(first.allowed, "nothing owed after 900 of 1000");
    assert_eq!(first.tenant.as_deref(), Some("acme"));
    assert_eq!(first.user.as_deref(), Some("alice"));
    assert_eq!(first.route.as_deref(), Some("POST /v1/generate"));
    assert_eq!(first.limits.len(), 1);
    assert_eq!(first.limits[0].name, "generation-tokens");
    assert_eq!(first.limits[0].remaining, 100);
    assert_eq!(first.retry_after_ms, None);

    assert_eq!(second.outcome, record::Kind::Reported);
    assert_eq!(
        (second.request_id.as_deref(), second.cost),
        (Some("r-2"), 400)
    );
    assert!(!second.allowed, "300 tokens owed");
    assert_eq!(second.limits[0].remaining, 0);
    assert_eq!(
        second.limit.as_ref().map(|l| l.name.as_str()),
        Some("generation-tokens")
    );
    // 300 tokens owed and one to be free, at 3.6 s each.
    assert_eq!(second.retry_after_ms, Some(1_083_600));

    // `spillway decisions` shows them with their cost; `--denied` leaves reports out.
    let found: Vec<query::Found> = lines
        .iter()
        .map(|line| query::Found {
            line: line.clone(),
            json: String::new(),
        })
        .collect();
    let table = query::table(&found);
    assert!(table.contains("reported (cost 900)"), "{table}");
    assert!(table.contains("reported (cost 400)"), "{table}");
    let denied = query::Filter {
        since: 0,
        tenant: None,
        user: None,
        denied: true,
        limit: 10,
    };
    assert!(!lines.iter().any(|l| denied.matches(l)));
}

#[tokio::test]
async fn a_report_the_store_cannot_record_is_logged_as_failed() {
    let mut h = harness_with(
        METERED,
        quiet("report-failed"),
        Arc::new(FailingStore::down()),
    );
    assert_eq!(
        h.report(&report(250, "lost-1")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let lines = h.flush().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l.outcome, record::Kind::ReportFailed);
    assert_eq!((l.request_id.as_deref(), l.cost), (Some("lost-1"), 250));
    assert_eq!(l.tenant.as_deref(), Some("acme"));
    assert!(l.limits.is_empty());
}

#[tokio::test]
async fn envoy_stream_done_reports_are_logged_without_their_markers() {
    let mut h = harness_with(METERED, quiet("report-envoy"), memory(1_800_000_000_000));
    let rls = Rls(Arc::new(RlsState {
        app: h.app.clone(),
        envoy: ArcSwap::from_pointee(
            spillway_core::envoy_config::EnvoyConfig::from_sources(&[]).expect("empty"),
        ),
        policy_domain: "spillway".into(),
    }));
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    let done = |hits: u32, id: &str| RateLimitRequest {
        domain: "spillway".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("tenant", "acme"),
                entry("method", "POST"),
                entry("path", "/v1/generate"),
                entry("spillway_report", "true"),
                entry("spillway_request_id", id),
            ],
            ..Default::default()
        }],
        hits_addend: hits,
    };
    let ids = RequestIds::default();
    for (hits, id) in [(700, "e-1"), (700, "e-1"), (500, "e-2")] {
        rls.answer(&done(hits, id), Ids::Read(&ids))
            .await
            .expect("answered");
    }
    let lines = h.flush().await;
    assert_eq!(lines.len(), 2, "the retry of e-1 is not logged: {lines:?}");
    let l = &lines[1];
    assert_eq!(l.outcome, record::Kind::Reported);
    assert_eq!((l.request_id.as_deref(), l.cost), (Some("e-2"), 500));
    assert_eq!(
        (l.domain.as_deref(), l.tier.as_deref()),
        (Some("spillway"), None)
    );
    assert_eq!(l.tenant.as_deref(), Some("acme"));
    assert!(!l.allowed, "200 tokens owed, one more to be free");
    assert_eq!(l.retry_after_ms, Some(723_600));
    assert_eq!(l.descriptors.len(), 1);
    let keys: Vec<&str> = l.descriptors[0].keys().map(String::as_str).collect();
    assert_eq!(keys, ["method", "path", "tenant"]);
}
