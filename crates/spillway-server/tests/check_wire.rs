//! The exact bytes of `POST /v1/check` answers on a manual clock: status line, every header in
//! order, and the body. The other `/v1/check` tests read fields; this one pins the wire form,
//! so a change to how answers are built (a faster writer, pre-rendered parts) cannot alter
//! what clients receive. Only the `date` line, which hyper takes from the real clock, is
//! left out.

mod common;

use common::Server;
use spillway_testkit::redis::RedisServer;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Several limits on one request: a shadow one, a route's own, algorithms whose resets fall
/// on fractions of a second (rounded up in headers and bodies alike). The route's limit has
/// the richest name the policy accepts (letters of both cases, a digit, `.`, `_`, `-`); it
/// refuses any character a structured-field or JSON string would escape (`check_name`), so
/// those escapes are pinned by `LimitName`'s own tests instead.
const POLICY: &str = r#"
default_tier: free
limits:
  ip-burst:
    algorithm: token_bucket
    rate: 20/s
    burst: 100
    key: [ip]
  ip-shadow:
    algorithm: fixed_window
    limit: 1
    window: 1d
    key: [ip]
    shadow: true
  user-minute:
    algorithm: fixed_window
    limit: 2
    window: 1m
    key: [tenant, user]
  user_daily:
    algorithm: gcra
    rate: 1000/d
    burst: 50
    key: [tenant, user]
  Gen.v2_b-3:
    algorithm: leaky_bucket
    rate: 1/s
    capacity: 3
    key: [tenant, user]
global: [ip-burst, ip-shadow]
tiers:
  free:
    limits: [user-minute, user_daily]
routes:
  - match: "POST /v1/generate"
    limits: [Gen.v2_b-3]
"#;

/// Sends `body` to `/v1/check{query}` on a connection of its own and returns the whole answer
/// without its `date` line.
fn exchange(server: &Server, query: &str, body: &str) -> String {
    pipelined(server, &[(query, body)])
}

/// A check's request for `body` to `/v1/check{query}`, closing its connection when `last`.
fn request(query: &str, body: &str, last: bool) -> String {
    let close = if last { "Connection: close\r\n" } else { "" };
    format!(
        "POST /v1/check{query} HTTP/1.1\r\nHost: spillway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{close}\r\n{body}",
        body.len()
    )
}

/// Sends every request in one write on one keep-alive connection (the last one closing it)
/// and returns all their answers, in order, without their `date` lines.
fn pipelined(server: &Server, requests: &[(&str, &str)]) -> String {
    let last = requests.len() - 1;
    let all: String = (requests.iter().enumerate())
        .map(|(i, (query, body))| request(query, body, i == last))
        .collect();
    without_date(&raw_exchange(server.addr(), &all))
}

/// Writes `requests` (whole HTTP/1.1 text, the last one closing the connection) on a fresh
/// connection to `addr` in one write and reads everything the server sends until it closes.
fn raw_exchange(addr: SocketAddr, requests: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(requests.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    String::from_utf8(answer).expect("an answer in UTF-8")
}

/// `answer` without its `date` lines, which hyper takes from the real clock.
fn without_date(answer: &str) -> String {
    (answer.split_inclusive("\r\n"))
        .filter(|line| !line.starts_with("date: "))
        .collect()
}

/// Compares line by line first, so a failure names the first line that differs.
fn assert_wire(got: &str, want: &str) {
    for (n, (g, w)) in got.split("\r\n").zip(want.split("\r\n")).enumerate() {
        assert_eq!(g, w, "line {n} differs; whole answer:\n{got}");
    }
    assert_eq!(got, want, "whole answer:\n{got}");
}

/// Joins header lines and a body into an HTTP/1.1 answer.
fn answer(lines: &[&str], body: &str) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

#[tokio::test]
async fn check_answers_are_pinned_byte_for_byte() {
    let server = Server::with_policy(POLICY).start();
    drop(pinned_exchanges(server).await);
}

/// The same answers through the router: with the debug access log on, `/v1/check` is not
/// taken by the serving thread's shortcut (`http/entry.rs`) but routed like every other path,
/// and a client must not be able to tell the difference.
#[tokio::test]
async fn the_router_path_answers_the_same_bytes() {
    let server = Server::with_policy(POLICY)
        .args(&["--log-filter", "spillway_server=debug"])
        .start();
    let server = pinned_exchanges(server).await;
    assert!(
        server.wait_for_log("path=/v1/check").is_some(),
        "the access log (a layer of the router) saw no /v1/check:\n{}",
        server.logs().join("\n")
    );
    drop(server);
}

/// The access log writes a caller's path with its controls escaped. A NEL (U+0085, a line
/// break to some log readers), an 8-bit CSI (U+009B) and a right-to-left override arrive raw
/// in a request line (hyper refuses only ASCII controls); written as they came they could
/// forge a line or drive the terminal of whoever reads the log.
#[tokio::test]
async fn the_access_log_escapes_the_controls_in_a_path() {
    let server = Server::with_policy(POLICY)
        .args(&["--log-filter", "spillway_server=debug"])
        .start();
    let addr = server.addr();
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            "GET /x\u{85}y\u{9b}2J\u{202e}z HTTP/1.1\r\nHost: spillway\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("the exchange");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let line = server
        .wait_for_log("request finished")
        .expect("the access log");
    assert!(line.contains(r"path=/x\u{85}y\u{9b}2J\u{202e}z"), "{line}");
    let raw = server
        .logs()
        .into_iter()
        .find(|line| line.contains(['\u{85}', '\u{9b}', '\u{202e}']));
    assert_eq!(raw, None, "a control reached the log as it came");
}

/// A problem quotes what the client sent (here the path of a 404) only up to a bound: echoed
/// whole, a 60 KB path of backslashes (each escaped to two in JSON) made a 120 KB answer, and
/// the connection's write buffer keeps its largest answer's size for its life.
#[tokio::test]
async fn a_problem_does_not_echo_a_long_path_whole() {
    let server = Server::with_policy(POLICY).start();
    let addr = server.addr();
    let path = format!("/{}", "\\".repeat(60_000));
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: spillway\r\nConnection: close\r\n\r\n"),
        )
    })
    .await
    .expect("the exchange");
    assert!(answer.starts_with("HTTP/1.1 404"), "{}", &answer[..200]);
    assert!(answer.len() < 4096, "a {} byte answer", answer.len());
    assert!(answer.contains("…"), "marked as cut");
}

/// A keep-alive connection whose write buffer grew for a large answer (`/metrics`, several
/// KB, written as one flattened buffer that keeps its capacity) answers a check after it with
/// the same bytes as a fresh connection. (How large the kept buffer is cannot be seen from
/// outside the process; it is bounded by the largest answer the connection sent.)
#[tokio::test]
async fn a_check_after_a_large_answer_reads_the_same() {
    let server = Server::with_policy(POLICY).start();
    tokio::task::spawn_blocking(move || {
        let body = r#"{"tenant":"acme","user":"dave","ip":"203.0.113.10"}"#;
        let fresh = exchange(&server, "?peek=true", body);
        let metrics = "GET /metrics HTTP/1.1\r\nHost: spillway\r\n\r\n";
        let both = raw_exchange(
            server.addr(),
            &(metrics.to_owned() + &request("?peek=true", body, true)),
        );
        let at = both
            .find("HTTP/1.1 200 OK\r\nx-ratelimit")
            .expect("the check's answer");
        assert!(
            at > 2048,
            "a /metrics answer of {at} bytes is too small to test this"
        );
        assert_wire(&without_date(&both[at..]), &fresh);
    })
    .await
    .expect("the exchanges");
}

/// `GET /healthz` answers the same bytes on the serving thread's shortcut as through the
/// router (the debug access log on).
#[tokio::test]
async fn healthz_answers_the_same_bytes_either_way() {
    for (args, routed) in [
        (&[][..], false),
        (&["--log-filter", "spillway_server=debug"][..], true),
    ] {
        let server = Server::with_policy(POLICY).args(args).start();
        let addr = server.addr();
        let answer = tokio::task::spawn_blocking(move || {
            let healthz = "GET /healthz HTTP/1.1\r\nHost: spillway\r\nConnection: close\r\n\r\n";
            without_date(&raw_exchange(addr, healthz))
        })
        .await
        .expect("the exchange");
        assert_wire(
            &answer,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 3\r\nconnection: close\r\n\r\nok\n",
        );
        if routed {
            // The access log is a layer of the router: the answer above came that way.
            assert!(
                server.wait_for_log("path=/healthz").is_some(),
                "the access log saw no /healthz:\n{}",
                server.logs().join("\n")
            );
        }
    }
}

/// Runs the pinned exchanges against a fresh `server` on the manual clock and hands it back.
async fn pinned_exchanges(server: Server) -> Server {
    // 15 s into the minute; the token buckets' and GCRA's resets fall on fractions of a
    // second and round up.
    server.advance_ms(15_000).await;
    tokio::task::spawn_blocking(move || {
        let generate = r#"{"tenant":"acme","user":"alice","ip":"203.0.113.7","method":"POST","path":"/v1/generate"}"#;

        // The first answer's head without its `connection` line, and its body: the first
        // answer of the pipelined pair below has them too, on a connection kept open.
        let first_head = [
            r#"HTTP/1.1 200 OK"#,
            r#"x-ratelimit-limit: 2"#,
            r#"x-ratelimit-remaining: 1"#,
            r#"x-ratelimit-reset: 45"#,
            r#"ratelimit-policy: "ip-burst";q=100;w=5, "user-minute";q=2;w=60, "user_daily";q=50;w=4320, "Gen.v2_b-3";q=3;w=3"#,
            r#"ratelimit: "ip-burst";r=99;t=1, "user-minute";r=1;t=45, "user_daily";r=49;t=87, "Gen.v2_b-3";r=2;t=1"#,
            r#"content-type: application/json"#,
            r#"content-length: 544"#,
        ];
        let first_body = r#"{"allowed":true,"tier":"free","route":"POST /v1/generate","cost":1,"limits":[{"name":"ip-burst","allowed":true,"limit":100,"remaining":99,"reset_ms":50,"shadow":false},{"name":"ip-shadow","allowed":true,"limit":1,"remaining":0,"reset_ms":57585000,"shadow":true},{"name":"user-minute","allowed":true,"limit":2,"remaining":1,"reset_ms":45000,"shadow":false},{"name":"user_daily","allowed":true,"limit":50,"remaining":49,"reset_ms":86400,"shadow":false},{"name":"Gen.v2_b-3","allowed":true,"limit":3,"remaining":2,"reset_ms":1000,"shadow":false}]}"#;
        let first = exchange(&server, "", generate);
        assert_wire(
            &first,
            &answer(&[&first_head[..], &["connection: close"]].concat(), first_body),
        );

        // A peek consumes nothing: the next check answers exactly as it did. Its body spells
        // the same request with JSON escapes, which decode to the same strings (and so the
        // same counters) as the plain spelling.
        let escaped = r#"{"tenant":"ac\u006de","user":"al\u0069ce","ip":"203.0.113.7","method":"P\u004fST","path":"\/v1\/generate"}"#;
        let peek = exchange(&server, "?peek=true", escaped);
        let third = exchange(&server, "", generate);
        assert_wire(&peek, &third);
        // Also the last answer of the pipelined pair below, which closes the connection.
        let third_answer = answer(
            &[
                r#"HTTP/1.1 200 OK"#,
                r#"x-ratelimit-limit: 2"#,
                r#"x-ratelimit-remaining: 0"#,
                r#"x-ratelimit-reset: 45"#,
                r#"ratelimit-policy: "ip-burst";q=100;w=5, "user-minute";q=2;w=60, "user_daily";q=50;w=4320, "Gen.v2_b-3";q=3;w=3"#,
                r#"ratelimit: "ip-burst";r=98;t=1, "user-minute";r=0;t=45, "user_daily";r=48;t=173, "Gen.v2_b-3";r=1;t=2"#,
                r#"content-type: application/json"#,
                r#"content-length: 595"#,
                r#"connection: close"#,
            ],
            r#"{"allowed":true,"tier":"free","route":"POST /v1/generate","cost":1,"limits":[{"name":"ip-burst","allowed":true,"limit":100,"remaining":98,"reset_ms":100,"shadow":false},{"name":"ip-shadow","allowed":false,"limit":1,"remaining":0,"reset_ms":57585000,"retry_after_ms":57585000,"denial":"over_limit","shadow":true},{"name":"user-minute","allowed":true,"limit":2,"remaining":0,"reset_ms":45000,"shadow":false},{"name":"user_daily","allowed":true,"limit":50,"remaining":48,"reset_ms":172800,"shadow":false},{"name":"Gen.v2_b-3","allowed":true,"limit":3,"remaining":1,"reset_ms":2000,"shadow":false}]}"#,
        );
        assert_wire(&third, &third_answer);

        let denied = exchange(&server, "", generate);
        assert_wire(
            &denied,
            &answer(
                &[
                    r#"HTTP/1.1 429 Too Many Requests"#,
                    r#"content-type: application/problem+json"#,
                    r#"x-ratelimit-limit: 2"#,
                    r#"x-ratelimit-remaining: 0"#,
                    r#"x-ratelimit-reset: 45"#,
                    r#"retry-after: 45"#,
                    r#"ratelimit-policy: "ip-burst";q=100;w=5, "user-minute";q=2;w=60, "user_daily";q=50;w=4320, "Gen.v2_b-3";q=3;w=3"#,
                    r#"ratelimit: "ip-burst";r=98;t=1, "user-minute";r=0;t=45, "user_daily";r=48;t=260, "Gen.v2_b-3";r=1;t=3"#,
                    r#"content-length: 800"#,
                    r#"connection: close"#,
                ],
                r#"{"type":"urn:spillway:problem:rate-limited","title":"Rate limit exceeded","status":429,"detail":"limit `user-minute` (2 per 1m) is used up; retry in 45000 ms","allowed":false,"tier":"free","route":"POST /v1/generate","cost":1,"limits":[{"name":"ip-burst","allowed":true,"limit":100,"remaining":98,"reset_ms":150,"shadow":false},{"name":"ip-shadow","allowed":false,"limit":1,"remaining":0,"reset_ms":57585000,"retry_after_ms":57585000,"denial":"over_limit","shadow":true},{"name":"user-minute","allowed":false,"limit":2,"remaining":0,"reset_ms":45000,"retry_after_ms":45000,"denial":"over_limit","shadow":false},{"name":"user_daily","allowed":true,"limit":50,"remaining":48,"reset_ms":259200,"shadow":false},{"name":"Gen.v2_b-3","allowed":true,"limit":3,"remaining":1,"reset_ms":3000,"shadow":false}]}"#,
            ),
        );

        let too_big = exchange(
            &server,
            "",
            r#"{"tenant":"acme","user":"bob","ip":"203.0.113.8","cost":7}"#,
        );
        assert_wire(
            &too_big,
            &answer(
                &[
                    r#"HTTP/1.1 429 Too Many Requests"#,
                    r#"content-type: application/problem+json"#,
                    r#"x-ratelimit-limit: 2"#,
                    r#"x-ratelimit-remaining: 2"#,
                    r#"x-ratelimit-reset: 0"#,
                    r#"ratelimit-policy: "ip-burst";q=100;w=5, "user-minute";q=2;w=60, "user_daily";q=50;w=4320"#,
                    // Untouched limits that would have admitted it reset in 0 (bob's first
                    // request), not in the time a charge that never happened would refill.
                    r#"ratelimit: "ip-burst";r=100;t=0, "user-minute";r=2;t=0, "user_daily";r=50;t=0"#,
                    r#"content-length: 689"#,
                    r#"connection: close"#,
                ],
                r#"{"type":"urn:spillway:problem:cost-exceeds-limit","title":"Cost exceeds limit","status":429,"detail":"a cost of 7 can never fit limit `user-minute`, which admits at most 2 at once; retrying will not help","allowed":false,"tier":"free","route":null,"cost":7,"limits":[{"name":"ip-burst","allowed":true,"limit":100,"remaining":100,"reset_ms":0,"shadow":false},{"name":"ip-shadow","allowed":false,"limit":1,"remaining":1,"reset_ms":0,"denial":"cost_exceeds_limit","shadow":true},{"name":"user-minute","allowed":false,"limit":2,"remaining":2,"reset_ms":0,"denial":"cost_exceeds_limit","shadow":false},{"name":"user_daily","allowed":true,"limit":50,"remaining":50,"reset_ms":0,"shadow":false}]}"#,
            ),
        );

        // No limit applies: no rate-limit headers, an empty list.
        let nothing = exchange(&server, "", "");
        assert_wire(
            &nothing,
            &answer(
                &[
                    r#"HTTP/1.1 200 OK"#,
                    r#"content-type: application/json"#,
                    r#"content-length: 64"#,
                    r#"connection: close"#,
                ],
                r#"{"allowed":true,"tier":"free","route":null,"cost":1,"limits":[]}"#,
            ),
        );
        // Two checks pipelined on one keep-alive connection: the first answer is the first
        // answer above on a connection kept open (no `connection` line), the second closes.
        let carol = r#"{"tenant":"acme","user":"carol","ip":"203.0.113.9","method":"POST","path":"/v1/generate"}"#;
        let pair = pipelined(&server, &[("", carol), ("", carol)]);
        let kept_open = answer(&first_head, first_body);
        assert_wire(&pair, &(kept_open + &third_answer));

        // A body that is not JSON: a problem answer, 400.
        let bad = exchange(&server, "", r#"{"tenant":"acme","user":"#);
        assert_wire(
            &bad,
            &answer(
                &[
                    r#"HTTP/1.1 400 Bad Request"#,
                    r#"content-type: application/problem+json"#,
                    r#"content-length: 171"#,
                    r#"connection: close"#,
                ],
                r#"{"type":"urn:spillway:problem:invalid-request","title":"Invalid request","status":400,"detail":"the body is not valid JSON: EOF while parsing a value at line 1 column 24"}"#,
            ),
        );
        server
    })
    .await
    .expect("the exchanges")
}

/// A policy on the Redis server at `url` with a route for each failure mode: `open` lets the
/// check through, `degrade` decides on the limit's emergency quota (one check a minute),
/// `closed` refuses. The breaker opens at the first failure and, on the manual clock, stays
/// open: every answer below is decided without the store.
fn failing_store_policy(url: &str) -> String {
    format!(
        r#"
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 5
    window: 1m
    key: [user]
    emergency: {{limit: 1}}
tiers:
  free:
    limits: []
routes:
  - match: "POST /open"
    failure_mode: open
    limits: [per-user]
  - match: "POST /degrade"
    failure_mode: degrade
    limits: [per-user]
  - match: "POST /closed"
    failure_mode: closed
    limits: [per-user]
store: {{type: redis, url: "{url}", timeout: 200ms, breaker_failures: 1, breaker_cooldown: 1h}}
"#
    )
}

/// The answers given while the store fails, byte for byte: the degraded mark (header and
/// body field) on `open` and `degrade` answers, the emergency quota's numbers under
/// `degrade`, and `closed`'s refusal. The store is a real `redis-server`, killed after the
/// server started on it.
#[test]
fn answers_without_the_store_are_pinned_byte_for_byte() {
    let mut redis = RedisServer::start();
    let server = Server::with_policy(&failing_store_policy(&redis.url())).start();
    let check = |path: &str, user: &str| {
        let body = format!(r#"{{"user":"{user}","method":"POST","path":"{path}"}}"#);
        exchange(&server, "", &body)
    };
    let decided = check("/open", "ann");
    assert!(
        decided.starts_with("HTTP/1.1 200 OK\r\n") && !decided.contains("degraded"),
        "the store decides while it is up:\n{decided}"
    );
    redis.kill();
    // The first failure opens the breaker; the answers after it are the ones pinned (the
    // first is asserted only to be degraded: its path to the failure, a refused connect or a
    // failed call, is not what this test is about).
    let first = check("/open", "warm-up");
    assert!(
        first.contains("\r\nspillway-degraded: store-unavailable\r\n"),
        "{first}"
    );

    let open = check("/open", "bob");
    assert_wire(
        &open,
        &answer(
            &[
                r#"HTTP/1.1 200 OK"#,
                r#"spillway-degraded: store-unavailable"#,
                r#"content-type: application/json"#,
                r#"content-length: 103"#,
                r#"connection: close"#,
            ],
            r#"{"allowed":true,"tier":"free","route":"POST /open","cost":1,"limits":[],"degraded":"store-unavailable"}"#,
        ),
    );
    let emergency = check("/degrade", "bob");
    assert_wire(
        &emergency,
        &answer(
            &[
                r#"HTTP/1.1 200 OK"#,
                r#"x-ratelimit-limit: 1"#,
                r#"x-ratelimit-remaining: 0"#,
                r#"x-ratelimit-reset: 60"#,
                r#"ratelimit-policy: "per-user";q=1;w=60"#,
                r#"ratelimit: "per-user";r=0;t=60"#,
                r#"spillway-degraded: store-unavailable"#,
                r#"content-type: application/json"#,
                r#"content-length: 196"#,
                r#"connection: close"#,
            ],
            r#"{"allowed":true,"tier":"free","route":"POST /degrade","cost":1,"limits":[{"name":"per-user","allowed":true,"limit":1,"remaining":0,"reset_ms":60000,"shadow":false}],"degraded":"store-unavailable"}"#,
        ),
    );
    let over = check("/degrade", "bob");
    assert_wire(
        &over,
        &answer(
            &[
                r#"HTTP/1.1 429 Too Many Requests"#,
                r#"content-type: application/problem+json"#,
                r#"x-ratelimit-limit: 1"#,
                r#"x-ratelimit-remaining: 0"#,
                r#"x-ratelimit-reset: 60"#,
                r#"retry-after: 60"#,
                r#"ratelimit-policy: "per-user";q=1;w=60"#,
                r#"ratelimit: "per-user";r=0;t=60"#,
                r#"spillway-degraded: store-unavailable"#,
                r#"content-length: 398"#,
                r#"connection: close"#,
            ],
            r#"{"type":"urn:spillway:problem:rate-limited","title":"Rate limit exceeded","status":429,"detail":"limit `per-user` (1 per 1m) is used up; retry in 60000 ms","allowed":false,"tier":"free","route":"POST /degrade","cost":1,"limits":[{"name":"per-user","allowed":false,"limit":1,"remaining":0,"reset_ms":60000,"retry_after_ms":60000,"denial":"over_limit","shadow":false}],"degraded":"store-unavailable"}"#,
        ),
    );
    let closed = check("/closed", "bob");
    assert_wire(
        &closed,
        &answer(
            &[
                r#"HTTP/1.1 503 Service Unavailable"#,
                r#"content-type: application/problem+json"#,
                r#"retry-after: 1"#,
                r#"content-length: 240"#,
                r#"connection: close"#,
            ],
            r#"{"type":"urn:spillway:problem:store-unavailable","title":"Rate-limit store unavailable","status":503,"detail":"the rate-limit store failed and this route fails closed: store unavailable: circuit breaker open; the store is not being called"}"#,
        ),
    );
}
