//! Envoy's rate-limit service, end to end: the real binary with `--grpc-listen`, a real tonic
//! client, and the manual clock moved instead of sleeping.

mod common;

use common::grpc::{
    code, descriptor, envoy_file, frame, framed, header, limit, overall, raw_call, request, start,
    SHOULD_RATE_LIMIT,
};
use common::{Server, PATIENCE};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [user]
tiers:
  free:
    limits: [user-minute]
"#;

/// Spillway extensions on an Envoy-style file: several limits on one descriptor, custom
/// windows and algorithms, overrides and `replaces`.
const SHOP: &str = r#"
domain: shop
allow_limit_override: true
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: budget
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: api_key
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: sustained, window: 30s, requests_per_unit: 3, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 3}
"#;

#[tokio::test]
async fn the_policy_domain_allows_then_denies_with_headers() {
    let mut rls = start(Server::with_policy(POLICY), &[]).await;
    for remaining in [1, 0] {
        let answer = rls.one("spillway", &[("user", "u1")]).await;
        assert_eq!(overall(&answer), Code::Ok);
        let status = &answer.statuses[0];
        assert_eq!(limit(status), Some(("user-minute".into(), 2, remaining)));
        assert_eq!(
            status.current_limit.as_ref().map(|l| l.unit),
            Some(Unit::Minute as i32)
        );
        assert_eq!(
            status.duration_until_reset.as_ref().map(|d| d.seconds),
            Some(60)
        );
        assert_eq!(
            header(&answer, "x-ratelimit-remaining"),
            Some(&*remaining.to_string())
        );
        assert_eq!(header(&answer, "retry-after"), None);
    }
    let denied = rls.one("spillway", &[("user", "u1")]).await;
    assert_eq!(overall(&denied), Code::OverLimit);
    assert_eq!(code(&denied.statuses[0]), Code::OverLimit);
    assert_eq!(header(&denied, "retry-after"), Some("60"));
    assert_eq!(header(&denied, "x-ratelimit-limit"), Some("2"));
    assert_eq!(
        header(&denied, "ratelimit-policy"),
        Some("\"user-minute\";q=2;w=60")
    );
    rls.server.advance_ms(60_000).await;
    assert_eq!(
        overall(&rls.one("spillway", &[("user", "u1")]).await),
        Code::Ok
    );
}

#[tokio::test]
async fn statuses_follow_request_order_and_a_denial_charges_nothing() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let three = || {
        let ds = vec![
            descriptor(&[("tenant", "a")]),
            descriptor(&[("user", "u")]),
            descriptor(&[("nothing", "x")]),
        ];
        request("shop", ds, 0)
    };
    let first = rls.ask(three()).await;
    assert_eq!(overall(&first), Code::Ok);
    assert_eq!(first.statuses.len(), 3);
    assert_eq!(
        limit(&first.statuses[0]),
        Some(("shop.tenant".into(), 5, 4))
    );
    assert_eq!(limit(&first.statuses[1]), Some(("shop.user".into(), 1, 0)));
    assert_eq!(
        (code(&first.statuses[2]), limit(&first.statuses[2])),
        (Code::Ok, None)
    );

    let second = rls.ask(three()).await;
    assert_eq!(overall(&second), Code::OverLimit);
    assert_eq!(code(&second.statuses[0]), Code::Ok);
    assert_eq!(code(&second.statuses[1]), Code::OverLimit);
    // The tenant was not charged for the denied request: 5 - 1 - 1 = 3 left now.
    let tenant = rls.one("shop", &[("tenant", "a")]).await;
    assert_eq!(
        limit(&tenant.statuses[0]),
        Some(("shop.tenant".into(), 5, 3))
    );
}

#[tokio::test]
async fn hits_addend_counts_per_request_and_per_descriptor() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let answer = rls
        .ask(request("shop", vec![descriptor(&[("budget", "b")])], 4))
        .await;
    assert_eq!(limit(&answer.statuses[0]).map(|l| l.2), Some(6));
    let mut own = descriptor(&[("budget", "b")]);
    own.hits_addend = Some(UInt64Value { value: 5 });
    let answer = rls.ask(request("shop", vec![own], 4)).await;
    assert_eq!(limit(&answer.statuses[0]).map(|l| l.2), Some(1));
    // 0 means 1.
    let answer = rls
        .ask(request("shop", vec![descriptor(&[("budget", "b")])], 0))
        .await;
    assert_eq!(limit(&answer.statuses[0]).map(|l| l.2), Some(0));
    let answer = rls
        .ask(request("shop", vec![descriptor(&[("budget", "b")])], 1))
        .await;
    assert_eq!(overall(&answer), Code::OverLimit);
    // A descriptor's own 0 counts as not set: a cost of 0 does not pass the used-up budget.
    let mut zero = descriptor(&[("budget", "b")]);
    zero.hits_addend = Some(UInt64Value { value: 0 });
    let answer = rls.ask(request("shop", vec![zero.clone()], 0)).await;
    assert_eq!(overall(&answer), Code::OverLimit);
    // Nor in the policy domain, where the limit is 2 a minute per user.
    zero.entries[0].key = "user".into();
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        let answer = rls.ask(request("spillway", vec![zero.clone()], 0)).await;
        assert_eq!(overall(&answer), expected);
    }
}

#[tokio::test]
async fn unknown_domains_and_unmatched_descriptors_are_not_limited() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    for domain in ["elsewhere", "shop"] {
        let answer = rls.one(domain, &[("colour", "blue")]).await;
        assert_eq!(overall(&answer), Code::Ok);
        assert_eq!(
            (code(&answer.statuses[0]), limit(&answer.statuses[0])),
            (Code::Ok, None)
        );
        assert!(answer.response_headers_to_add.is_empty());
    }
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let mut rls = start(Server::with_policy(POLICY), &[]).await;
    let cases = [
        request("", vec![descriptor(&[("user", "u")])], 0),
        request("spillway", vec![], 0),
        request("spillway", vec![descriptor(&[("", "u")])], 0),
    ];
    for case in cases {
        let status = rls
            .client
            .should_rate_limit(case)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    // The server is still fine.
    assert_eq!(
        overall(&rls.one("spillway", &[("user", "u")]).await),
        Code::Ok
    );
}

/// A descriptor with no entries (Envoy sends one when every action of a `rate_limits` entry
/// was skipped: `skip_if_absent` on a header the client left out) matches nothing, and the
/// call's other descriptors are judged as ever. Refusing the call would have Envoy admit the
/// request with no limit at all.
#[tokio::test]
async fn an_empty_descriptor_matches_nothing_and_the_rest_are_judged() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    for (domain, key, allowed) in [("spillway", "user", 2), ("shop", "user", 1)] {
        let call = || request(domain, vec![descriptor(&[]), descriptor(&[(key, "u")])], 0);
        for _ in 0..allowed {
            let answer = rls.ask(call()).await;
            assert_eq!(overall(&answer), Code::Ok, "{domain}");
            assert_eq!(limit(&answer.statuses[0]), None, "{domain}");
        }
        let answer = rls.ask(call()).await;
        assert_eq!(overall(&answer), Code::OverLimit, "{domain}");
        assert_eq!(code(&answer.statuses[0]), Code::Ok, "{domain}");
        assert_eq!(code(&answer.statuses[1]), Code::OverLimit, "{domain}");
    }
}

/// A descriptor giving hits back (`is_negative_hits`, which nothing here does) is answered
/// `OK` with no limit and charges nothing; the call's other descriptors are judged as ever.
/// (Refusing the call would have Envoy admit the whole request with no limit.)
#[tokio::test]
async fn a_descriptor_giving_hits_back_charges_nothing() {
    let mut rls = start(Server::with_policy(POLICY), &[]).await;
    let mut refund = descriptor(&[("user", "u")]);
    refund.is_negative_hits = true;
    let answer = rls
        .ask(request(
            "spillway",
            vec![refund, descriptor(&[("user", "v")])],
            0,
        ))
        .await;
    assert_eq!(overall(&answer), Code::Ok);
    assert_eq!(limit(&answer.statuses[0]), None);
    assert_eq!(
        limit(&answer.statuses[1]),
        Some(("user-minute".into(), 2, 1))
    );
    let after = rls.one("spillway", &[("user", "u")]).await;
    assert_eq!(
        limit(&after.statuses[0]),
        Some(("user-minute".into(), 2, 1)),
        "the refund charged"
    );
}

/// A descriptor value that is not UTF-8 (Envoy copies a header's bytes as they came, and
/// HTTP allows bytes above 0x7F) is decided, not refused: a refusal would have Envoy admit the
/// request with no limit. Such values are read with U+FFFD in place of what is not UTF-8.
#[tokio::test]
async fn a_value_that_is_not_utf8_is_limited_not_refused() {
    use prost::Message;
    let rls = start(Server::with_policy(POLICY), &[]).await;
    // domain "spillway", one descriptor with the entry user = "u" 0xff 0xfe (not UTF-8).
    let entry = [b"\x0a\x04user\x12\x03u".as_slice(), &[0xff, 0xfe]].concat();
    let descriptor = [&[0x0a, entry.len() as u8][..], &entry].concat();
    let message = [
        b"\x0a\x08spillway".as_slice(),
        &[0x12, descriptor.len() as u8],
        &descriptor,
    ]
    .concat();
    let mut limits = Vec::new();
    for _ in 0..3 {
        let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &[], frame(&message)).await;
        assert_eq!(
            answer.status().map(|s| s.code()),
            Some(tonic::Code::Ok),
            "{answer:?}"
        );
        let decoded = RateLimitResponse::decode(&answer.body[5..]).expect("a RateLimitResponse");
        limits.push((overall(&decoded), limit(&decoded.statuses[0])));
    }
    assert_eq!(
        limits,
        [
            (Code::Ok, Some(("user-minute".into(), 2, 1))),
            (Code::Ok, Some(("user-minute".into(), 2, 0))),
            (Code::OverLimit, Some(("user-minute".into(), 2, 0))),
        ]
    );
}

#[tokio::test]
async fn several_limits_custom_windows_and_algorithms_hold_together() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let key = [("api_key", "k")];
    for _ in 0..2 {
        assert_eq!(overall(&rls.one("shop", &key).await), Code::Ok);
    }
    let denied = rls.one("shop", &key).await;
    assert_eq!(
        limit(&denied.statuses[0]).map(|l| l.0),
        Some("burst".into())
    );
    assert_eq!(header(&denied, "retry-after"), Some("1"));
    rls.server.advance_ms(1_000).await;
    let third = rls.one("shop", &key).await;
    assert_eq!(overall(&third), Code::Ok);
    let sustained = third.statuses[0].current_limit.clone().expect("a limit");
    assert_eq!(
        (sustained.name.as_str(), sustained.unit),
        ("sustained", Unit::Unknown as i32)
    );
    rls.server.advance_ms(1_000).await;
    let denied = rls.one("shop", &key).await;
    assert_eq!(
        limit(&denied.statuses[0]).map(|l| l.0),
        Some("sustained".into())
    );

    let bucket = [("bucket", "b")];
    for _ in 0..3 {
        assert_eq!(overall(&rls.one("shop", &bucket).await), Code::Ok);
    }
    assert_eq!(overall(&rls.one("shop", &bucket).await), Code::OverLimit);
    rls.server.advance_ms(1_000).await;
    assert_eq!(overall(&rls.one("shop", &bucket).await), Code::Ok);
}

#[tokio::test]
async fn a_descriptor_limit_override_applies_when_the_domain_allows_it() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let mut own = descriptor(&[("tenant", "b")]);
    own.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Hour as i32,
    });
    let first = rls.ask(request("shop", vec![own.clone()], 0)).await;
    let current = first.statuses[0].current_limit.clone().expect("a limit");
    assert_eq!(
        (current.requests_per_unit, current.unit),
        (1, Unit::Hour as i32)
    );
    assert_eq!(
        overall(&rls.ask(request("shop", vec![own], 0)).await),
        Code::OverLimit
    );
}

/// Overrides upstream's service reads are read, never refused (a refusal would have Envoy
/// admit the request unjudged): a limit of 0 denies every request, a month or a year is a
/// window of 30 or 365 days, and a unit this build cannot read leaves the domain's own limit.
#[tokio::test]
async fn every_descriptor_limit_override_is_judged() {
    use envoy_types::pb::envoy::r#type::v3::RateLimitUnit as OverUnit;
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let over = |tenant: &str, requests_per_unit, unit: i32| {
        let mut d = descriptor(&[("tenant", tenant)]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit,
            unit,
        });
        request("shop", vec![d], 0)
    };
    // 0: denied from the first request, and told so.
    for _ in 0..2 {
        let answer = rls.ask(over("blocked", 0, OverUnit::Minute as i32)).await;
        assert_eq!(overall(&answer), Code::OverLimit);
        let told = answer.statuses[0].current_limit.clone().expect("a limit");
        assert_eq!(
            (told.requests_per_unit, told.unit),
            (0, Unit::Minute as i32)
        );
        assert_eq!(answer.statuses[0].limit_remaining, 0);
        // The headers Envoy adds say none, not the window of one it is judged by.
        let header = |name: &str| {
            (answer.response_headers_to_add.iter())
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone())
        };
        let policy = header("ratelimit-policy").expect("a policy header");
        assert!(policy.contains(";q=0;"), "{policy}");
        let state = header("ratelimit").expect("a state header");
        assert!(state.contains(";r=0;"), "{state}");
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("0"));
    }
    // Nor does another override on the same entries, sharing the unit's counter, admit it:
    // a limit of 0 counts on a counter of its own.
    for order in [[100, 0], [0, 100]] {
        let mut call = over("blocked", order[0], OverUnit::Minute as i32);
        let second = over("blocked", order[1], OverUnit::Minute as i32);
        call.descriptors.extend(second.descriptors);
        let answer = rls.ask(call).await;
        assert_eq!(overall(&answer), Code::OverLimit, "{order:?}");
    }
    // A year: two a year, counted; a month: one. Each refills where its window ends, a
    // window of 365 or 30 days.
    const DAY_MS: u64 = 86_400_000;
    for (name, count, unit, told_unit, days) in [
        ("yearly", 2, OverUnit::Year, Unit::Year, 365),
        ("monthly", 1, OverUnit::Month, Unit::Month, 30),
    ] {
        let mut reset_ms = 0;
        for (expected, left) in (0..count)
            .map(|i| (Code::Ok, count - 1 - i))
            .chain([(Code::OverLimit, 0)])
        {
            let answer = rls.ask(over(name, count, unit as i32)).await;
            assert_eq!(overall(&answer), expected, "{name}");
            let status = &answer.statuses[0];
            let told = status.current_limit.clone().expect("a limit");
            assert_eq!(
                (told.requests_per_unit, told.unit),
                (count, told_unit as i32)
            );
            assert_eq!(status.limit_remaining, left, "{name}");
            let reset = status.duration_until_reset.expect("a reset");
            reset_ms = u64::try_from(reset.seconds).expect("ahead") * 1000
                + u64::try_from(reset.nanos).expect("ahead") / 1_000_000;
        }
        assert!(
            reset_ms > 0 && reset_ms <= days * DAY_MS,
            "{name}: {reset_ms} ms"
        );
        rls.server.advance_ms(reset_ms - 1).await;
        let answer = rls.ask(over(name, count, unit as i32)).await;
        assert_eq!(overall(&answer), Code::OverLimit, "{name}: a moment early");
        rls.server.advance_ms(1).await;
        let answer = rls.ask(over(name, count, unit as i32)).await;
        assert_eq!(overall(&answer), Code::Ok, "{name}: its next window");
    }
    // `UNKNOWN`, or a number newer than this build's proto: the domain's own 5 a minute.
    for unit in [OverUnit::Unknown as i32, 42] {
        let answer = rls.ask(over("unread", 1, unit)).await;
        assert_eq!(overall(&answer), Code::Ok, "{unit}");
        let told = answer.statuses[0].current_limit.clone().expect("a limit");
        assert_eq!(
            (told.requests_per_unit, told.unit),
            (5, Unit::Minute as i32),
            "{unit}"
        );
    }
}

/// An `--envoy-config` directory with no file the server reads (named `*.YAML` here) is
/// served, since files may appear later, but said loudly (`spillway validate` refuses it).
#[tokio::test]
async fn an_envoy_config_directory_with_no_readable_file_is_warned_about() {
    let (dir, _) = envoy_file("ratelimit-config.YAML", SHOP);
    let rls = start(Server::with_policy(POLICY), &[dir.path()]).await;
    let line = rls.server.wait_for_log("no Envoy config files found");
    assert!(
        line.is_some_and(|l| l.contains("WARN")),
        "logs:\n{}",
        rls.server.logs().join("\n")
    );
}

#[tokio::test]
async fn health_reports_serving_for_the_rate_limit_service() {
    let rls = start(Server::with_policy(POLICY), &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", rls.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answer")
            .into_inner();
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "service `{service}`"
        );
    }
}

#[tokio::test]
async fn envoy_config_changes_are_reloaded_and_bad_ones_rejected() {
    let (_dir, shop) = envoy_file("shop.yaml", SHOP);
    let mut rls = start(Server::with_policy(POLICY), &[&shop]).await;
    let before = rls.one("shop", &[("tenant", "r")]).await;
    assert_eq!(limit(&before.statuses[0]).map(|l| l.1), Some(5));
    std::fs::write(
        &shop,
        SHOP.replace("requests_per_unit: 5", "requests_per_unit: 0"),
    )
    .expect("write");
    assert!(rls
        .server
        .wait_for_log("envoy config reload rejected")
        .is_some());
    let kept = rls.one("shop", &[("tenant", "r")]).await;
    assert_eq!(limit(&kept.statuses[0]).map(|l| l.1), Some(5));
    std::fs::write(
        &shop,
        SHOP.replace("requests_per_unit: 5", "requests_per_unit: 50"),
    )
    .expect("write");
    let reloaded = common::wait_until(PATIENCE, || {
        rls.server
            .logs()
            .iter()
            .any(|l| l.contains("envoy config reloaded"))
            .then_some(())
    });
    assert!(
        reloaded.is_some(),
        "logs:\n{}",
        rls.server.logs().join("\n")
    );
    let after = rls.one("shop", &[("tenant", "r")]).await;
    // The counter survives the change of numbers: the two calls before the reload still
    // count against the new 50.
    assert_eq!(
        limit(&after.statuses[0]).map(|l| (l.1, l.2)),
        Some((50, 47))
    );
}

/// Asserts a gRPC error answer: HTTP 200, trailers-only, `grpc-status` `code`, a message
/// containing `says`.
fn expect_status(answer: common::grpc::RawAnswer, code: tonic::Code, says: &str) {
    assert_eq!(answer.http, 200, "{answer:?}");
    assert!(answer.is_trailers_only(), "{answer:?}");
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{status:?} should say {says:?}"
    );
}

/// A plain call, spoken raw: a gRPC answer in full, with its content type, one message that
/// decodes, and `grpc-status: 0` in the trailers.
#[tokio::test]
async fn a_raw_call_gets_a_complete_grpc_answer() {
    use prost::Message;
    let rls = start(Server::with_policy(POLICY), &[]).await;
    let call = framed(&request(
        "spillway",
        vec![descriptor(&[("user", "raw")])],
        0,
    ));
    let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &[], call).await;
    assert_eq!(answer.http, 200);
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    // The status comes after the message, in the trailers, and nowhere else.
    assert_eq!(answer.header("grpc-status"), None, "{answer:?}");
    let trailers = answer.trailers.as_ref().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(answer.body[0], 0, "not compressed");
    let length = u32::from_be_bytes(answer.body[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(answer.body.len(), 5 + length);
    let decoded = RateLimitResponse::decode(&answer.body[5..]).expect("a RateLimitResponse");
    assert_eq!(overall(&decoded), Code::Ok);
    assert_eq!(
        limit(&decoded.statuses[0]),
        Some(("user-minute".into(), 2, 1))
    );
}

/// Bodies that are not one well-formed message get `INVALID_ARGUMENT` saying what is wrong;
/// an oversized one `RESOURCE_EXHAUSTED`; a message flagged gzip that is not gzip
/// `INVALID_ARGUMENT`; unknown methods and unknown services tonic's `UNIMPLEMENTED`.
/// (Compression itself: `tests/grpc_compression.rs`.) None of them charges anything or harms the server.
#[tokio::test]
async fn malformed_calls_get_a_status_that_says_what_is_wrong() {
    let mut rls = start(Server::with_policy(POLICY), &[]).await;
    let good = framed(&request("spillway", vec![descriptor(&[("user", "u")])], 0));
    let mut compressed = good.clone();
    compressed[0] = 1;
    let mut oversized = frame(&[]);
    oversized.resize(4 * 1024 * 1024 + 64, 0);
    use tonic::Code::{InvalidArgument as Invalid, ResourceExhausted as Exhausted, Unimplemented};
    // Answered on the direct path: (body, status code, what the message says).
    let bodies = [
        (vec![], Invalid, "no request message"),
        (good[..3].to_vec(), Invalid, "5-byte prefix"),
        (good[..good.len() - 1].to_vec(), Invalid, "cut short"),
        (
            [good.clone(), good.clone()].concat(),
            Invalid,
            "one request message",
        ),
        (frame(&[0xff, 0xff, 0xff]), Invalid, "does not decode"),
        (compressed.clone(), Invalid, "flagged compressed"),
        (
            [&[2][..], &good[1..]].concat(),
            Invalid,
            "compression flag is 2",
        ),
        (oversized, Exhausted, "larger than 4194304 bytes"),
        // A prefix announcing 16 MiB, on a short body.
        (
            vec![0, 1, 0, 0, 0, 1, 2],
            Exhausted,
            "larger than 4194304 bytes",
        ),
    ];
    for (body, status, says) in bodies {
        expect_status(
            raw_call(rls.addr, SHOULD_RATE_LIMIT, &[], body).await,
            status,
            says,
        );
    }
    // Flagged gzip, but not a gzip stream.
    let gzip = [("grpc-encoding", "gzip")];
    let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip, compressed).await;
    expect_status(answer, Invalid, "does not inflate");
    // Handed to tonic: unknown methods and services.
    for path in [
        "/envoy.service.ratelimit.v3.RateLimitService/NoSuchMethod",
        "/no.such.Service/Call",
    ] {
        expect_status(
            raw_call(rls.addr, path, &[], good.clone()).await,
            Unimplemented,
            "",
        );
    }
    // Nothing was charged: the first well-formed call still sees its whole limit.
    let answer = rls.one("spillway", &[("user", "u")]).await;
    assert_eq!(
        limit(&answer.statuses[0]),
        Some(("user-minute".into(), 2, 1))
    );
}
