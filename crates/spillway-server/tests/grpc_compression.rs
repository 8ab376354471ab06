//! Compressed `ShouldRateLimit` calls against the real binary: Envoy's rate-limit filter can
//! gzip its calls, and a server that refused them would make Envoy fail open.

mod common;

use common::grpc::{
    descriptor, frame, limit, open_call_as, overall, raw_call, read_answer, request, start,
    SHOULD_RATE_LIMIT,
};
use common::Server;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use prost::Message;
use spillway_server::grpc::unary::MAX_MESSAGE;
use std::io::Write;

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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("compressed")
}

/// `message` gzip-compressed in a gRPC frame flagged compressed.
fn gzip_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = frame(&gzip(message));
    framed[0] = 1;
    framed
}

/// The answer's one message, decoded.
fn decoded(answer: &common::grpc::RawAnswer) -> RateLimitResponse {
    assert_eq!(answer.http, 200, "{answer:?}");
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
    assert_eq!(answer.body.first(), Some(&0), "answered uncompressed");
    RateLimitResponse::decode(&answer.body[5..]).expect("a RateLimitResponse")
}

/// A gzip call is decided and charges its limit like a plain one, whether the client asks
/// for gzip answers or not; a call naming gzip whose message is not flagged compressed is
/// read as it is.
#[tokio::test]
async fn gzip_calls_are_decided_and_charge() {
    let rls = start(Server::with_policy(POLICY), &[]).await;
    let call = request("spillway", vec![descriptor(&[("user", "zipped")])], 0).encode_to_vec();
    let gzip_call = [("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")];
    let first = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, gzip_frame(&call)).await;
    let first = decoded(&first);
    assert_eq!(overall(&first), Code::Ok);
    assert_eq!(
        limit(&first.statuses[0]),
        Some(("user-minute".into(), 2, 1))
    );
    // Named gzip, sent plain: the frame's flag decides.
    let second = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call[..1], frame(&call)).await;
    let second = decoded(&second);
    assert_eq!(
        limit(&second.statuses[0]),
        Some(("user-minute".into(), 2, 0))
    );
    // The limit was charged twice: the third call is over it.
    let third = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, gzip_frame(&call)).await;
    assert_eq!(overall(&decoded(&third)), Code::OverLimit);
}

/// A few kilobytes that inflate past the largest message (a zip bomb) are refused with
/// `RESOURCE_EXHAUSTED` (the unit tests in `grpc/encoding.rs` show inflating stops one byte
/// past the cap), and the server goes on answering.
#[tokio::test]
async fn a_zip_bomb_is_refused_and_charges_nothing() {
    let rls = start(Server::with_policy(POLICY), &[]).await;
    let bomb = gzip_frame(&vec![0; 4 * MAX_MESSAGE]);
    assert!(bomb.len() < 128 * 1024, "a bomb is small: {}", bomb.len());
    let gzip_call = [("grpc-encoding", "gzip")];
    let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, bomb).await;
    assert!(answer.is_trailers_only(), "{answer:?}");
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4194304 bytes"), "{status:?}");
    let call = request("spillway", vec![descriptor(&[("user", "u")])], 0).encode_to_vec();
    let after = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, gzip_frame(&call)).await;
    assert_eq!(
        limit(&decoded(&after).statuses[0]),
        Some(("user-minute".into(), 2, 1))
    );
}

/// A message of a million empty descriptors (four bytes each: 4 MiB, just under the cap, and
/// about 4 KiB once gzipped) is refused from its bytes, before decoding would build every
/// descriptor (a quarter of a gigabyte): the server's peak memory barely moves. Sent plain
/// with another method than `POST` it is not decoded either. The server goes on answering.
#[tokio::test]
async fn a_million_descriptors_are_refused_before_they_are_built() {
    let rls = start(Server::with_policy(POLICY), &[]).await;
    // `domain: "spillway"`, then the descriptors, so that nothing but their number is wrong.
    let mut message = b"\x0a\x08spillway".to_vec();
    message.extend([0x12, 0x02, 0x0a, 0x00].repeat(MAX_MESSAGE / 4 - 4));
    let bomb = gzip_frame(&message);
    assert!(bomb.len() < 64 * 1024, "a bomb is small: {}", bomb.len());
    let gzip_call = [("grpc-encoding", "gzip")];
    let before = rls.server.peak_resident_bytes();
    let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, bomb.clone()).await;
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("at most 64 descriptors"),
        "{status:?}"
    );
    // Plain, so that no refusal of the encoding could stand in for not decoding it.
    let (response, mut send, _) =
        open_call_as(http::Method::PUT, rls.addr, SHOULD_RATE_LIMIT, &[]).await;
    send.send_data(frame(&message).into(), true)
        .expect("the body");
    let status = read_answer(response).await.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    let grown = rls.server.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the server's peak memory grew by {} MiB",
        grown >> 20
    );
    let call = request("spillway", vec![descriptor(&[("user", "u")])], 0).encode_to_vec();
    let after = raw_call(rls.addr, SHOULD_RATE_LIMIT, &gzip_call, gzip_frame(&call)).await;
    assert_eq!(
        limit(&decoded(&after).statuses[0]),
        Some(("user-minute".into(), 2, 1))
    );
}

/// An encoding the server does not take is `UNIMPLEMENTED`, saying which it is and naming
/// the ones taken in `grpc-accept-encoding`, as the gRPC compression spec asks.
#[tokio::test]
async fn an_unknown_encoding_is_refused_naming_the_accepted_ones() {
    let rls = start(Server::with_policy(POLICY), &[]).await;
    let call = request("spillway", vec![descriptor(&[("user", "u")])], 0).encode_to_vec();
    let snappy = [("grpc-encoding", "snappy")];
    let mut body = frame(&call);
    body[0] = 1;
    let answer = raw_call(rls.addr, SHOULD_RATE_LIMIT, &snappy, body).await;
    assert!(answer.is_trailers_only(), "{answer:?}");
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("`snappy`"), "{status:?}");
    assert!(status.message().contains("gzip,identity"), "{status:?}");
    assert_eq!(answer.header("grpc-accept-encoding"), Some("gzip,identity"));
}
