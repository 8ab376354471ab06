//! Slow, idle and greedy clients against the real binary: the connection cap, the header,
//! idle and body timeouts, and the HTTP/2 stream cap (`--max-connections`, `--header-timeout`,
//! `--idle-timeout`, `--body-timeout`, `--max-streams`), and the cap on bodies still arriving
//! (`--max-body-memory`). The timeouts are set short by flag,
//! and these tests wait for them in real time: they are network timeouts, not rates.

mod common;

use common::grpc::{descriptor, framed, open_call, read_answer, request, start, SHOULD_RATE_LIMIT};
use common::{metric, wait_until_async, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
default_tier: free
limits:
  user-minute:
    algorithm: fixed_window
    limit: 100
    window: 1m
    key: [user]
tiers:
  free:
    limits: [user-minute]
"#;

/// The short timeout these tests set.
const SHORT: Duration = Duration::from_millis(300);
/// Longer than any short timeout could take to act, however loaded the machine.
const AT_MOST: Duration = Duration::from_secs(5);
/// A read timeout for a wait whose length a test does not bound, only its end: long enough
/// for a debug binary on a loaded machine to do heavy work first.
const PATIENT: Duration = Duration::from_secs(30);

/// The real time now: what these tests measure is how long the server really waited, which
/// no manual clock can stand in for.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// A connection to `addr` that gives up reading after [`AT_MOST`].
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(AT_MOST)).expect("timeout");
    stream
}

/// One whole keep-alive `GET path` on `stream`; the status line of its answer, read in full.
fn get_on(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    read_response(stream)
}

/// Reads one response (headers and `content-length` body); its status line.
fn read_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("the response ended early ({other:?}): {head:?}"),
        }
    }
    let head = String::from_utf8(head).expect("text");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the body");
    head.lines().next().unwrap_or_default().to_owned()
}

/// Waits for the server to close `stream`; how long that took from `since`.
fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => since.elapsed(),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => since.elapsed(),
        Err(err) => panic!("the connection was not closed within {AT_MOST:?}: {err}"),
    }
}

/// An HTTP/1 keep-alive connection with no request in flight is closed after the idle
/// timeout, not before; a client that keeps asking is not. (The timeout is a second here, not
/// [`SHORT`]: the busy client, a blocking thread, must not be taken for idle if a loaded
/// machine wakes it a few hundred milliseconds late.)
#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_idle_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::with_policy(POLICY)
        .args(&["--idle-timeout", "1s", "--header-timeout", "8s"])
        .start();
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut busy = connect(addr);
        let mut idle = connect(addr);
        // Timed from before the request: the server's idle period starts after it answered.
        let asked = now();
        assert_eq!(get_on(&mut idle, "/healthz"), "HTTP/1.1 200 OK");
        // The busy client asks every 100 ms for twice the idle timeout, and stays open.
        for _ in 0..20 {
            assert_eq!(get_on(&mut busy, "/healthz"), "HTTP/1.1 200 OK");
            std::thread::sleep(SHORT / 3);
        }
        let waited = closed_after(&mut idle, asked);
        assert!(
            waited >= timeout,
            "closed after {waited:?}, before the timeout"
        );
        // Well before the 8 s header timeout, which also ends a keep-alive wait: the idle
        // timeout is what closed it.
        assert!(
            waited < Duration::from_secs(4),
            "closed after {waited:?}: not by the idle timeout"
        );
        assert_eq!(get_on(&mut busy, "/healthz"), "HTTP/1.1 200 OK");
    })
    .await
    .expect("client");
}

/// A server whose HTTP/1 connections have [`SHORT`] to send a request head (and a long idle
/// timeout, so that only the header deadline acts), started with `more` flags besides.
fn header_short(more: &[&str]) -> Server {
    Server::with_policy(POLICY)
        .args(&["--header-timeout", "300ms", "--idle-timeout", "30s"])
        .args(more)
        .start()
}

/// A server whose gRPC port closes connections idle for [`SHORT`].
async fn grpc_idle_short() -> common::grpc::Rls {
    start(
        Server::with_policy(POLICY).args(&["--idle-timeout", "300ms"]),
        &[],
    )
    .await
}

/// An HTTP/2 client's handshake with `addr`: its request handle and its connection (which
/// must be driven).
async fn h2_to(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    h2::client::handshake(tcp).await.expect("handshake")
}

/// An HTTP/2 connection on the gRPC port that never sends a call is closed after the idle
/// timeout.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let rls = grpc_idle_short().await;
    let opened = now();
    let (_client, connection) = h2_to(rls.addr).await;
    // Ends (cleanly after the server's GOAWAY, or with an error) once the server closes it.
    let _ = tokio::time::timeout(AT_MOST, connection)
        .await
        .expect("the server closed the idle connection");
    let waited = opened.elapsed();
    assert!(
        waited >= SHORT,
        "closed after {waited:?}, before the timeout"
    );
}

/// A client's `PING`s are not requests: an HTTP/2 connection that pings more often than the
/// idle timeout but never calls is still closed (the server's acknowledgements are writes,
/// which once kept it open).
#[tokio::test]
async fn an_http2_connection_that_only_pings_is_closed_after_the_idle_timeout() {
    let rls = grpc_idle_short().await;
    let (_client, mut connection) = h2_to(rls.addr).await;
    let mut pings = connection.ping_pong().expect("ping handle");
    let opened = now();
    let connection = tokio::spawn(connection);
    let pinging = async {
        // Every 100 ms until the connection goes (a ping then fails).
        loop {
            tokio::time::sleep(SHORT / 3).await;
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(AT_MOST, pinging)
        .await
        .expect("the server closed a connection that only pinged");
    let _ = tokio::time::timeout(AT_MOST, connection).await;
    let waited = opened.elapsed();
    assert!(
        waited >= SHORT,
        "closed after {waited:?}, before the timeout"
    );
}

/// A client that connects to the gRPC port and never sends HTTP/2's opening (nor anything
/// else) does not hold its place for ever: asked to close at the idle timeout, which it cannot
/// hear before its handshake, it is dropped one idle timeout later.
#[tokio::test]
async fn a_grpc_connection_that_sends_nothing_is_dropped() {
    let rls = grpc_idle_short().await;
    let addr = rls.addr;
    tokio::task::spawn_blocking(move || {
        let mut silent = connect(addr);
        let opened = now();
        let waited = closed_after(&mut silent, opened);
        assert!(
            waited >= SHORT * 2,
            "dropped after {waited:?}, before twice the idle timeout"
        );
    })
    .await
    .expect("client");
}

/// A client sending its headers a line at a time (slowloris) is cut off after the header
/// timeout, while a well-behaved client is answered meanwhile.
#[tokio::test]
async fn a_slowloris_is_cut_off_after_the_header_timeout() {
    let server = header_short(&[]);
    let addr = server.addr();
    let slow = tokio::task::spawn_blocking(move || {
        let mut slow = connect(addr);
        let started = now();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").expect("send");
        for n in 0..50 {
            std::thread::sleep(SHORT / 6);
            if write!(slow, "X-Slow-{n}: yes\r\n").is_err() {
                return started.elapsed();
            }
            if started.elapsed() > AT_MOST {
                break;
            }
        }
        closed_after(&mut slow, started)
    });
    tokio::time::sleep(SHORT / 3).await;
    assert_eq!(server.get("/healthz").await.status(), 200);
    let cut_after = slow.await.expect("slow client");
    assert!(cut_after >= SHORT, "cut off after {cut_after:?}");
    assert!(cut_after < AT_MOST, "not cut off: {cut_after:?}");
}

/// A head sent in part and then left is cut off after the header timeout, with no answer.
#[tokio::test]
async fn a_head_sent_in_part_is_cut_off_without_an_answer() {
    let server = header_short(&[]);
    let addr = server.addr();
    let (waited, answered) = tokio::task::spawn_blocking(move || {
        let mut half = connect(addr);
        let started = now();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Half")
            .expect("send");
        let mut answered = Vec::new();
        let waited = match half.read_to_end(&mut answered) {
            Ok(_) => started.elapsed(),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => started.elapsed(),
            Err(err) => panic!("not cut off within {AT_MOST:?}: {err}"),
        };
        (waited, answered)
    })
    .await
    .expect("client");
    assert!(waited >= SHORT, "cut off after {waited:?}");
    assert!(waited < AT_MOST, "not cut off: {waited:?}");
    assert_eq!(String::from_utf8_lossy(&answered), "", "answered");
}

/// A head sent one byte at a time, each well within the timeout of the last, is still cut off
/// once the whole head has taken the header timeout.
#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_off() {
    let server = header_short(&[]);
    let addr = server.addr();
    let cut_after = tokio::task::spawn_blocking(move || {
        let mut slow = connect(addr);
        let started = now();
        let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: a-very-long-value-indeed";
        for byte in head.iter().cycle().take(1000) {
            if slow.write_all(&[*byte]).is_err() || started.elapsed() > AT_MOST {
                break;
            }
            std::thread::sleep(SHORT / 10);
        }
        closed_after(&mut slow, started)
    })
    .await
    .expect("client");
    assert!(cut_after >= SHORT, "cut off after {cut_after:?}");
    assert!(cut_after < AT_MOST, "not cut off: {cut_after:?}");
}

/// Between keep-alive requests the header timeout runs too: a connection that asked once and
/// then waits is closed after it, while one that keeps asking more often stays open. (A
/// second, as in the idle test above.)
#[tokio::test]
async fn a_keep_alive_connection_waits_at_most_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::with_policy(POLICY)
        .args(&["--header-timeout", "1s", "--idle-timeout", "30s"])
        .start();
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut busy = connect(addr);
        let mut waiting = connect(addr);
        let asked = now();
        assert_eq!(get_on(&mut waiting, "/healthz"), "HTTP/1.1 200 OK");
        for _ in 0..25 {
            assert_eq!(get_on(&mut busy, "/healthz"), "HTTP/1.1 200 OK");
            std::thread::sleep(SHORT / 3);
        }
        let waited = closed_after(&mut waiting, asked);
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
        assert_eq!(get_on(&mut busy, "/healthz"), "HTTP/1.1 200 OK");
    })
    .await
    .expect("client");
}

/// A connection that sends nothing at all is cut off after the header timeout, not held until
/// the idle timeout.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_off_after_the_header_timeout() {
    let server = header_short(&[]);
    let addr = server.addr();
    let waited = tokio::task::spawn_blocking(move || {
        let mut silent = connect(addr);
        closed_after(&mut silent, now())
    })
    .await
    .expect("client");
    assert!(waited >= SHORT, "closed after {waited:?}");
}

/// Requests pipelined in one write are all answered, in order, under a short header timeout.
#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let server = header_short(&[]);
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut stream = connect(addr);
        let one = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
        let missing = "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n";
        stream
            .write_all([one, missing, one].concat().as_bytes())
            .expect("send");
        assert_eq!(read_response(&mut stream), "HTTP/1.1 200 OK");
        assert_eq!(read_response(&mut stream), "HTTP/1.1 404 Not Found");
        assert_eq!(read_response(&mut stream), "HTTP/1.1 200 OK");
        // And the connection is then closed by the header timeout like any other.
        let waited = closed_after(&mut stream, now());
        assert!(waited < AT_MOST);
    })
    .await
    .expect("client");
}

/// HTTP/2 on the API port (prior knowledge) has no header deadline, only the idle timeout: a
/// connection quiet for several header timeouts still answers.
#[tokio::test]
async fn http2_on_the_api_port_has_no_header_deadline() {
    let server = header_short(&[]);
    let (client, connection) = h2_to(server.addr()).await;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    tokio::time::sleep(SHORT * 4).await;
    let get = http::Request::get(format!("http://{}/healthz", server.addr()))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(get, true).expect("sent");
    let response = tokio::time::timeout(AT_MOST, response)
        .await
        .expect("answered in time")
        .expect("an answer, not a closed connection");
    assert_eq!(response.status(), 200);
    assert!(!connection.is_finished());
}

/// A `ShouldRateLimit` call whose body trickles in is cut off with `DEADLINE_EXCEEDED` after
/// the body timeout, while a whole call on another connection is answered meanwhile.
#[tokio::test]
async fn a_grpc_call_whose_body_trickles_is_cut_off() {
    let mut rls = start(
        Server::with_policy(POLICY).args(&["--body-timeout", "300ms", "--idle-timeout", "30s"]),
        &[],
    )
    .await;
    let body = framed(&request(
        "spillway",
        vec![descriptor(&[("user", "slow")])],
        0,
    ));
    let (response, mut send, _ping) = open_call(rls.addr, SHOULD_RATE_LIMIT, &[]).await;
    let started = now();
    send.send_data(body[..3].to_vec().into(), false)
        .expect("the first bytes");
    let answer = tokio::spawn(read_answer(response));
    let fine = rls.one("spillway", &[("user", "fine")]).await;
    assert_eq!(fine.statuses.len(), 1);
    let answer = tokio::time::timeout(AT_MOST, answer)
        .await
        .expect("answered within the timeout")
        .expect("the answer");
    let status = answer.status().expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("did not arrive within 300 ms"),
        "{status:?}"
    );
    assert!(started.elapsed() >= SHORT);
    // Nothing was charged for the cut-off call.
    let after = rls.one("spillway", &[("user", "slow")]).await;
    assert_eq!(after.statuses[0].limit_remaining, 99);
}

/// An HTTP body that trickles in is cut off with a 408 problem after the body timeout.
#[tokio::test]
async fn an_http_body_that_trickles_gets_408() {
    let server = Server::with_policy(POLICY)
        .args(&["--body-timeout", "300ms", "--idle-timeout", "30s"])
        .start();
    let addr = server.addr();
    let (status, waited) = tokio::task::spawn_blocking(move || {
        let mut slow = connect(addr);
        let started = now();
        slow.write_all(
            b"POST /v1/check HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
              content-length: 20\r\n\r\n{\"user\"",
        )
        .expect("send");
        (read_response(&mut slow), started.elapsed())
    })
    .await
    .expect("client");
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(waited >= SHORT, "answered after {waited:?}");
}

/// The header deadline does not run while a request is in flight: a body that takes longer
/// than the header timeout, but arrives within the body timeout, is answered.
#[tokio::test]
async fn a_body_slower_than_the_header_timeout_is_answered() {
    let server = Server::with_policy(POLICY)
        .args(&["--header-timeout", "300ms", "--body-timeout", "5s"])
        .start();
    let addr = server.addr();
    let status = tokio::task::spawn_blocking(move || {
        let mut slow = connect(addr);
        slow.write_all(
            b"POST /v1/check HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
              content-length: 12\r\n\r\n{\"user\"",
        )
        .expect("send");
        // Over three header timeouts with the request in flight.
        std::thread::sleep(SHORT * 3);
        slow.write_all(b":\"u\"}").expect("the rest");
        read_response(&mut slow)
    })
    .await
    .expect("client");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// A report whose body trickles in gets the same 408 as a check, not a 400.
#[tokio::test]
async fn a_report_body_that_trickles_gets_408() {
    let server = Server::with_policy(POLICY)
        .args(&["--body-timeout", "300ms", "--idle-timeout", "30s"])
        .start();
    let addr = server.addr();
    let status = tokio::task::spawn_blocking(move || {
        let mut slow = connect(addr);
        slow.write_all(
            b"POST /v1/report HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
              content-length: 40\r\n\r\n{\"cost\"",
        )
        .expect("send");
        read_response(&mut slow)
    })
    .await
    .expect("client");
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
}

/// With the cap reached, a new connection waits unanswered; once a connection closes it is
/// served.
#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_once_others_close() {
    let server = Server::with_policy(POLICY)
        .args(&[
            "--max-connections",
            "2",
            "--idle-timeout",
            "30s",
            "--header-timeout",
            "30s",
        ])
        .start();
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut first = connect(addr);
        let mut second = connect(addr);
        assert_eq!(get_on(&mut first, "/healthz"), "HTTP/1.1 200 OK");
        assert_eq!(get_on(&mut second, "/healthz"), "HTTP/1.1 200 OK");
        // The third connects (the kernel queues it) but is not served while both are open.
        let mut third = connect(addr);
        third.set_read_timeout(Some(SHORT * 2)).expect("timeout");
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let mut byte = [0];
        let waiting = third.read(&mut byte);
        assert!(
            matches!(&waiting, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
                || err.kind() == std::io::ErrorKind::TimedOut),
            "served past the cap: {waiting:?}"
        );
        // The ones already in keep being served.
        assert_eq!(get_on(&mut second, "/healthz"), "HTTP/1.1 200 OK");
        drop(first);
        third.set_read_timeout(Some(AT_MOST)).expect("timeout");
        assert_eq!(read_response(&mut third), "HTTP/1.1 200 OK");
    })
    .await
    .expect("client");
}

/// Pipelined `GET /metrics` requests in one burst: their answers (about 2 KB each, some 40 MB
/// in all) come to far more than both sockets' buffers hold.
const BURST: usize = 20_000;

/// A client that sends a burst of pipelined requests and never reads the answers does not
/// keep its connection: once the server's writes stop moving (the sockets' buffers full) for
/// the header timeout, it is dropped, and its place under `--max-connections` goes to the next
/// client. While it is held, the server stops reading the client's requests (hyper reads the
/// next one only once the last answer is written), so what it keeps is one connection's write
/// buffer: measured with the header timeout at 60 s, the process's resident memory stayed
/// within 0.3 MB whether 10 MB or 100 MB of answers were owed. Dropping it is still right:
/// otherwise any client could hold a place of `--max-connections` for ever by not reading.
#[tokio::test]
async fn a_client_that_stops_reading_its_answers_is_dropped() {
    let server = header_short(&["--max-connections", "1"]);
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let mut greedy = connect(addr);
        let mut writer = greedy.try_clone().expect("a second handle");
        writer.set_write_timeout(Some(AT_MOST)).expect("timeout");
        let burst = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(BURST);
        let started = now();
        // The burst may not fit the sockets' buffers, and the server stops reading once its
        // answers back up: this write may wait until the server drops the connection.
        let sending = std::thread::spawn(move || writer.write_all(burst.as_bytes()));
        // The only place is the greedy client's until the server drops it. What this test
        // asserts is the lower bound; how long the drop takes (the header timeout, plus a
        // debug binary writing a socket's worth of /metrics answers on a loaded machine) is
        // not the point, so the next client gets a long read timeout of its own rather than
        // AT_MOST.
        let mut next = connect(addr);
        next.set_read_timeout(Some(PATIENT)).expect("timeout");
        assert_eq!(get_on(&mut next, "/healthz"), "HTTP/1.1 200 OK");
        let waited = started.elapsed();
        assert!(
            waited >= SHORT,
            "the next client was served after {waited:?}, before the greedy one could be cut"
        );
        // The greedy connection has ended: reading it gives what was already on its way,
        // then the end (closed or reset), not a wait; and far from every answer.
        let (mut got, mut chunk) = (Vec::new(), vec![0; 1 << 16]);
        let end = loop {
            match greedy.read(&mut chunk) {
                Ok(0) => break "closed".to_owned(),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    break "reset".to_owned()
                }
                Err(err) => panic!("the greedy connection was still open: {err}"),
            }
        };
        let answers = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
        assert!(
            answers < BURST,
            "all {BURST} answers arrived ({end}): the client was never held up"
        );
        let _ = sending.join();
    })
    .await
    .expect("client");
}

/// The gRPC port tells HTTP/2 clients how many streams a connection may hold.
#[tokio::test]
async fn http2_connections_are_told_the_stream_cap() {
    let rls = start(
        Server::with_policy(POLICY).args(&["--max-streams", "2"]),
        &[],
    )
    .await;
    let (client, connection) = h2_to(rls.addr).await;
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    // The server's settings have arrived once a call has been answered.
    let call = http::Request::post(format!("http://{}{SHOULD_RATE_LIMIT}", rls.addr))
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(call, false).expect("sent");
    let body = framed(&request("spillway", vec![descriptor(&[("user", "s")])], 0));
    send.send_data(body.into(), true).expect("body");
    let answer = read_answer(response).await;
    assert_eq!(answer.http, 200);
    assert_eq!(client.current_max_send_streams(), 2);
}

/// A call's headers on `client`'s connection, its body still to send.
async fn open_on(
    client: &h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let mut client = client.clone().ready().await.expect("ready");
    let call = http::Request::post(format!("http://{addr}{SHOULD_RATE_LIMIT}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    client.send_request(call, false).expect("sent")
}

/// A gRPC server whose bodies still arriving may hold 4 MiB, with 60 s for a body to arrive,
/// and an HTTP/2 connection to it.
async fn under_a_4_mib_cap() -> (common::grpc::Rls, h2::client::SendRequest<bytes::Bytes>) {
    let args = [
        "--max-body-memory",
        "4MiB",
        "--body-timeout",
        "60s",
        "--idle-timeout",
        "60s",
    ];
    let rls = start(Server::with_policy(POLICY).args(&args), &[]).await;
    let (client, connection) = h2_to(rls.addr).await;
    tokio::spawn(connection);
    (rls, client)
}

/// The first `len` bytes of a call's body whose prefix says its message is 4 MiB long.
fn part_of_a_4_mib_message(len: usize) -> bytes::Bytes {
    let mut part = vec![0; len];
    part[1..5].copy_from_slice(&(4u32 << 20).to_be_bytes());
    part.into()
}

/// The bytes the server holds for bodies still arriving, by its metrics.
async fn held_bytes(server: &Server) -> f64 {
    metric(
        &server.metrics().await,
        "spillway_body_memory_held_bytes",
        &[],
    )
    .expect("the held-bytes gauge")
}

/// Bodies still arriving may hold at most `--max-body-memory` between them. One client opens
/// 64 calls on one connection and sends each 1 MiB of a 4 MiB message, never the rest: 64 MiB
/// under a 4 MiB cap. The calls past the cap are refused at once with `RESOURCE_EXHAUSTED`:
/// without the cap every one waited out the body timeout, and the server's peak memory grew
/// by 153 MiB; with it, by 18 to 27 MiB here. A whole call on the same connection is answered
/// meanwhile. Once the held calls are reset, what they held is given back.
#[tokio::test]
async fn bodies_still_arriving_hold_at_most_the_body_memory() {
    const CALLS: usize = 64;
    const CAP: f64 = (4 << 20) as f64;
    let (rls, client) = under_a_4_mib_cap().await;
    let part = part_of_a_4_mib_message(5 + (1 << 20));
    let before = rls.server.peak_resident_bytes();
    let mut held_calls = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..CALLS {
        let (response, mut send) = open_on(&client, rls.addr).await;
        send.send_data(part.clone(), false).expect("a part");
        held_calls.push(send);
        answers.push(tokio::spawn(read_answer(response)));
    }
    // Every call past the cap is answered; the held ones are not.
    let mut refused = 0;
    let waited = now();
    while refused < CALLS - 4 && waited.elapsed() < PATIENT {
        refused = answers.iter().filter(|a| a.is_finished()).count();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused >= CALLS - 4,
        "only {refused} of {CALLS} calls were refused within {PATIENT:?}"
    );
    let mut still = Vec::new();
    for answer in answers {
        if !answer.is_finished() {
            still.push(answer);
            continue;
        }
        let status = answer
            .await
            .expect("the answer")
            .status()
            .expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("--max-body-memory of 4194304 bytes"),
            "{status:?}"
        );
    }
    assert!(!still.is_empty(), "the calls within the cap are held");
    let holding = held_bytes(&rls.server).await;
    assert!(holding > 0.0 && holding <= CAP, "{holding} bytes held");
    let grown = rls.server.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the server's peak memory grew by {} MiB for {CALLS} MiB sent",
        grown >> 20
    );
    // A whole call is answered on the same connection.
    let body = framed(&request("spillway", vec![descriptor(&[("user", "u")])], 0));
    let (response, mut send) = open_on(&client, rls.addr).await;
    send.send_data(body.into(), true).expect("a whole call");
    let answer = read_answer(response).await;
    assert_eq!(answer.status().map(|s| s.code()), Some(tonic::Code::Ok));
    // The held calls are reset, and all they held is given back.
    for answer in still {
        answer.abort();
    }
    for mut send in held_calls {
        send.send_reset(h2::Reason::CANCEL);
    }
    let given_back = wait_until_async(AT_MOST, || async {
        (held_bytes(&rls.server).await == 0.0).then_some(())
    })
    .await;
    assert!(
        given_back.is_some(),
        "{} bytes still held",
        held_bytes(&rls.server).await
    );
}

/// With the cap exactly full, a body that would wait is refused, however small, while a whole
/// call is answered: a body that never waits is charged nothing. Four calls, each sent 1 MiB
/// less its head's 16 KiB charge, fill a 4 MiB cap; each is sent once the one before is held.
#[tokio::test]
async fn a_whole_call_is_answered_when_the_cap_is_exactly_full() {
    const MIB: usize = 1 << 20;
    let (rls, client) = under_a_4_mib_cap().await;
    // With its head's 16 KiB, exactly 1 MiB is charged.
    let part = part_of_a_4_mib_message(MIB - (16 << 10));
    let mut held = Vec::new();
    for k in 1..=4 {
        let (response, mut send) = open_on(&client, rls.addr).await;
        send.send_data(part.clone(), false).expect("a part");
        held.push((response, send));
        let full = wait_until_async(AT_MOST, || async {
            (held_bytes(&rls.server).await == (k * MIB) as f64).then_some(())
        })
        .await;
        assert!(
            full.is_some(),
            "call {k} is not held: {}",
            held_bytes(&rls.server).await
        );
    }
    // One byte more cannot wait...
    let (response, mut send) = open_on(&client, rls.addr).await;
    send.send_data(bytes::Bytes::from_static(&[0]), false)
        .expect("a byte");
    let status = read_answer(response).await.status().expect("a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // ...while a whole call is answered.
    let body = framed(&request("spillway", vec![descriptor(&[("user", "u")])], 0));
    let (response, mut send) = open_on(&client, rls.addr).await;
    send.send_data(body.into(), true).expect("a whole call");
    let answer = read_answer(response).await;
    assert_eq!(answer.status().map(|s| s.code()), Some(tonic::Code::Ok));
    assert_eq!(held_bytes(&rls.server).await, (4 * MIB) as f64);
}

/// The status line `stream` is answered with, or `None` if none comes within [`AT_MOST`].
fn status_soon(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(AT_MOST)).expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// The HTTP API's bodies share the cap. Two bodies sent in part (a check's and a report's),
/// 10 KiB each, under a cap of 32 KiB: each waiting request holds its 10 KiB and 16 KiB for
/// its head, so they cannot both wait. One is refused at once with a 503, whichever the server reached first; the other
/// waits, holding exactly its share. Whole requests, a check and a report, are answered
/// meanwhile (no room is left for a waiting one's 16 KiB).
#[tokio::test]
async fn an_http_body_past_the_body_memory_gets_503() {
    let server = Server::with_policy(POLICY)
        .args(&["--max-body-memory", "32KiB", "--body-timeout", "60s"])
        .start();
    let part = format!("{{\"user\":\"{}", "u".repeat(10 << 10));
    let streams = [connect(server.addr()), connect(server.addr())];
    // A check and a report: both endpoints read their bodies alike.
    for (mut stream, path) in streams.iter().zip(["/v1/check", "/v1/report"]) {
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
             content-length: 16000\r\n\r\n{part}"
        )
        .expect("send");
    }
    let ends: Vec<TcpStream> = streams
        .iter()
        .map(|s| s.try_clone().expect("clone"))
        .collect();
    let readers = streams.map(|mut s| std::thread::spawn(move || status_soon(&mut s)));
    // One body waits with its part and its head; the other was refused.
    let held = (16 << 10) + part.len();
    let settled = wait_until_async(AT_MOST, || async {
        let text = server.metrics().await;
        let refused = metric(&text, "spillway_body_memory_refusals_total", &[]);
        let holding = metric(&text, "spillway_body_memory_held_bytes", &[]);
        (refused == Some(1.0) && holding == Some(held as f64)).then_some(())
    })
    .await;
    assert!(settled.is_some(), "{}", server.metrics().await);
    let answered = wait_until_async(AT_MOST, || async {
        readers.iter().any(|r| r.is_finished()).then_some(())
    })
    .await;
    assert!(answered.is_some(), "the refused body got no answer");
    // While the cap has no room for another waiting request, whole ones are answered.
    let whole = server.post("/v1/check", r#"{"user":"w"}"#).await;
    assert_eq!(whole.status(), 200);
    // Nor is a whole report's.
    let report = r#"{"user":"w","cost":1,"request_id":"r-1"}"#;
    assert_eq!(server.post("/v1/report", report).await.status(), 200);
    // The waiting one would wait for the body timeout: its reader is let go.
    for end in &ends {
        let _ = end.shutdown(std::net::Shutdown::Both);
    }
    let statuses = readers.map(|r| r.join().expect("reader"));
    let refused = Some("HTTP/1.1 503 Service Unavailable".to_owned());
    assert!(
        statuses == [refused.clone(), None] || statuses == [None, refused],
        "{statuses:?}"
    );
}

/// An HTTP/1 request head past 64 KiB is refused with 431, so no connection buffers more
/// than that for a head (hyper's default let each hold about 400 KiB until the header
/// timeout); a head just under it is answered.
#[tokio::test]
async fn an_http1_head_past_64_kib_gets_431() {
    let server = Server::with_policy(POLICY).start();
    let addr = server.addr();
    let statuses = tokio::task::spawn_blocking(move || {
        [60 << 10, 70 << 10].map(|size: usize| {
            let mut stream = connect(addr);
            write!(
                stream,
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: {}\r\n\r\n",
                "p".repeat(size)
            )
            .expect("send");
            read_response(&mut stream)
        })
    })
    .await
    .expect("client");
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK".to_owned(),
            "HTTP/1.1 431 Request Header Fields Too Large".to_owned()
        ]
    );
}
