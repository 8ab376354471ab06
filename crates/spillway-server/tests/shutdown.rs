//! Graceful shutdown: after SIGTERM the server stops accepting, still completes a request that
//! was in flight, and exits 0; a request that never completes is abandoned once the grace
//! period is over, and the process still exits 0.
//!
//! These tests speak raw HTTP/1.1 over a socket so they can hold a request half-sent.

mod common;

use common::{wait_until, Server, PATIENCE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 10
    window: 1m
    key: [user]
tiers:
  free:
    limits: [user-minute]
"#;

const BODY: &str = r#"{"user":"u"}"#;

/// Sends a `POST /v1/check` with its headers and only the first bytes of its body, then waits
/// until the server has logged that the request started, so it is truly in flight.
fn start_half_sent_request(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let head = format!(
        "POST /v1/check HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        BODY.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    stream
        .write_all(&BODY.as_bytes()[..4])
        .expect("send part of the body");
    assert!(
        server.wait_for_log("request started").is_some(),
        "the request never started; logs:\n{}",
        server.logs().join("\n")
    );
    stream
}

fn debug_server(extra: &[&str]) -> Server {
    Server::with_policy(POLICY)
        .args(&["--log-filter", "spillway_server=debug"])
        .args(extra)
        .start()
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let mut server = debug_server(&[]);
    let mut stream = start_half_sent_request(&server);

    server.signal("TERM");
    assert!(server.wait_for_log("shutting down").is_some());
    // No new connections are accepted once the drain has begun.
    let refused = wait_until(PATIENCE, || TcpStream::connect(server.addr()).err());
    assert!(refused.is_some(), "the listener stayed open after SIGTERM");

    // The request that was already in flight is answered in full.
    stream
        .write_all(&BODY.as_bytes()[4..])
        .expect("send the rest of the body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("\"allowed\":true"), "{response}");

    let status = server.wait_exit(PATIENCE).expect("the server exits");
    assert_eq!(
        status.code(),
        Some(0),
        "logs:\n{}",
        server.logs().join("\n")
    );
    assert!(server.wait_for_log("in-flight requests finished").is_some());
}

#[test]
fn a_request_that_never_completes_is_abandoned_after_the_grace_period() {
    let mut server = debug_server(&["--shutdown-grace", "300ms"]);
    let _stream = start_half_sent_request(&server);
    server.signal("TERM");
    let status = server.wait_exit(PATIENCE).expect("the server exits");
    assert_eq!(status.code(), Some(0));
    assert!(server.wait_for_log("grace period over").is_some());
}

#[test]
fn sigint_on_an_idle_server_exits_zero_promptly() {
    let mut server = Server::with_policy(POLICY).start();
    server.signal("INT");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("the server exits");
    assert_eq!(status.code(), Some(0));
    assert!(server.wait_for_log("stopped").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_drain_within_one_grace_period_together() {
    let grace = Duration::from_secs(2);
    let rls = common::grpc::start(
        Server::with_policy(POLICY).args(&[
            "--log-filter",
            "spillway_server=debug",
            "--shutdown-grace",
            "2s",
        ]),
        &[],
    )
    .await;
    let mut server = rls.server;
    // One call that never completes on each port: an HTTP body and a gRPC message, both cut
    // short.
    let _http = start_half_sent_request(&server);
    let _grpc = start_half_sent_call(rls.addr, &rls_frame()).await;

    #[allow(clippy::disallowed_methods)] // the drain's wall-clock bound is the point
    let signalled = std::time::Instant::now();
    server.signal("TERM");
    let status = tokio::task::block_in_place(|| server.wait_exit(PATIENCE)).expect("exits");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    // Each drain used to get a grace period of its own, one after the other.
    assert!(
        took < grace + grace / 2,
        "took {took:?} to exit with a grace period of {grace:?}"
    );
    // The gRPC call really held the gRPC drain until the shared deadline.
    assert!(server
        .wait_for_log("abandoning gRPC calls in flight")
        .is_some());
}

/// A whole gRPC frame holding a `ShouldRateLimit` request for user `u` of the policy domain.
fn rls_frame() -> Vec<u8> {
    use common::grpc::{descriptor, framed, request};
    framed(&request("spillway", vec![descriptor(&[("user", "u")])], 0))
}

/// A `ShouldRateLimit` call held half-sent on its own HTTP/2 connection: the response to
/// come and the stream to finish the request on.
struct HalfSentCall {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<bytes::Bytes>,
    rest: bytes::Bytes,
}

/// Opens a connection to `addr`, sends the headers and the first bytes of `frame`, and returns
/// once the server has read them (it answers a ping sent after them).
async fn start_half_sent_call(addr: std::net::SocketAddr, frame: &[u8]) -> HalfSentCall {
    let (response, mut body, mut ping) =
        common::grpc::open_call(addr, common::grpc::SHOULD_RATE_LIMIT, &[]).await;
    body.send_data(bytes::Bytes::copy_from_slice(&frame[..3]), false)
        .expect("part of the frame");
    ping.ping(h2::Ping::opaque()).await.expect("pong");
    HalfSentCall {
        response,
        body,
        rest: bytes::Bytes::copy_from_slice(&frame[3..]),
    }
}

impl HalfSentCall {
    /// Sends the rest of the call; the response's `grpc-status` (from its trailers) and
    /// message bytes.
    async fn finish(mut self) -> (Option<String>, usize) {
        self.body
            .send_data(self.rest, true)
            .expect("the rest of the frame");
        let answer = common::grpc::read_answer(self.response).await;
        assert_eq!(answer.http, 200);
        let status = answer
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, answer.body.len())
    }
}

/// `ShouldRateLimit` calls that have started when SIGTERM arrives, one per connection and so
/// spread over both serving threads, are all answered; the gRPC port closes to new
/// connections, and the process exits 0 without waiting out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_in_flight_at_sigterm_are_answered_on_every_thread() {
    let rls = common::grpc::start(
        Server::with_policy(POLICY).args(&["--shutdown-grace", "60s", "--grpc-threads", "2"]),
        &[],
    )
    .await;
    let mut server = rls.server;
    let frame = rls_frame();
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(start_half_sent_call(rls.addr, &frame).await);
    }

    server.signal("TERM");
    assert!(server.wait_for_log("shutting down").is_some());
    let addr = rls.addr;
    let refused = wait_until(PATIENCE, || std::net::TcpStream::connect(addr).err());
    assert!(refused.is_some(), "the gRPC port stayed open after SIGTERM");

    for call in calls {
        let (status, received) = call.finish().await;
        assert_eq!(status.as_deref(), Some("0"));
        assert!(received > 5, "a RateLimitResponse came back");
    }

    // Well within the 60 s grace period: nothing is left to wait for.
    let status = tokio::task::block_in_place(|| server.wait_exit(PATIENCE)).expect("exits");
    assert_eq!(
        status.code(),
        Some(0),
        "logs:\n{}",
        server.logs().join("\n")
    );
    let logs = server.logs().join("\n");
    assert!(logs.contains("stopped"), "{logs}");
    assert!(!logs.contains("abandoning gRPC calls"), "{logs}");
}
