//! `/v1/check`'s body: read in frames, parsed, and refused by field.

use super::*;
use http_body::Frame;
use http_body_util::StreamBody;

/// One frame of a test body, or the error reading it ends with.
type Sent = Result<Frame<Bytes>, std::io::Error>;

/// A body of `frames`, in order, each ready at once.
fn frames(frames: Vec<Sent>) -> StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Sent>>> {
    StreamBody::new(futures_util::stream::iter(frames))
}

/// A body of `frames` that says it has ended once they have all been read, as hyper's does
/// when a `Content-Length` has arrived or an HTTP/2 stream has ended.
struct Ends(std::collections::VecDeque<Sent>);

impl HttpBody for Ends {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Sent>> {
        std::task::Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn data(text: &'static str) -> Sent {
    Ok(Frame::data(Bytes::from_static(text.as_bytes())))
}

#[tokio::test]
async fn a_body_in_one_frame_is_read_without_a_copy() {
    let sent = Bytes::from_static(br#"{"user":"u"}"#);
    let read = read_body(Ends([Ok(Frame::data(sent.clone()))].into()))
        .await
        .expect("read");
    assert_eq!(read, sent);
    assert_eq!(read.as_ptr(), sent.as_ptr(), "the frame's own bytes");
}

/// An empty frame before a body's one frame of data leaves it uncopied; one after it is read
/// too, but the data frame was copied out of the connection's buffer, since the body had not
/// said it had ended and might have waited with it (`serving/body.rs`).
#[tokio::test]
async fn empty_frames_around_one_frame_of_data_are_read_past() {
    let sent = Bytes::from_static(br#"{"user":"u"}"#);
    let read = read_body(Ends([data(""), Ok(Frame::data(sent.clone()))].into()))
        .await
        .expect("read");
    assert_eq!(read, sent);
    assert_eq!(read.as_ptr(), sent.as_ptr(), "the frame's own bytes");
    let read = read_body(Ends([Ok(Frame::data(sent.clone())), data("")].into()))
        .await
        .expect("read");
    assert_eq!(read, sent);
}

/// A body of exactly the limit is taken, even over two frames.
#[tokio::test]
async fn a_body_of_exactly_the_limit_over_two_frames_is_read() {
    let half = "x".repeat(MAX_BODY_BYTES / 2);
    let body = frames(vec![
        Ok(Frame::data(Bytes::from(half.clone()))),
        Ok(Frame::data(Bytes::from(half))),
    ]);
    assert_eq!(read_body(body).await.expect("read").len(), MAX_BODY_BYTES);
}

#[tokio::test]
async fn a_body_in_several_frames_is_read_whole_without_its_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("1"));
    let body = frames(vec![
        data(r#"{"us"#),
        data(""),
        data(r#"er":"#),
        data(r#""u"}"#),
        Ok(Frame::trailers(trailers)),
    ]);
    assert_eq!(
        read_body(body).await.expect("read"),
        &br#"{"user":"u"}"#[..]
    );
    assert_eq!(read_body(frames(vec![])).await.expect("read"), &b""[..]);
}

#[tokio::test]
async fn a_body_past_the_limit_over_several_frames_is_too_large() {
    let half = "x".repeat(MAX_BODY_BYTES / 2);
    let body = frames(vec![
        Ok(Frame::data(Bytes::from(half.clone()))),
        Ok(Frame::data(Bytes::from(half))),
        data("x"),
    ]);
    let problem = read_body(body).await.expect_err("too large");
    assert_eq!(problem.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_that_fails_part_way_is_a_problem() {
    let body = frames(vec![data("{"), Err(std::io::Error::other("reset"))]);
    let problem = read_body(body).await.expect_err("failed");
    assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
    let detail = problem.detail();
    assert!(
        detail.contains("could not be read") && detail.contains("reset"),
        "{detail}"
    );
}

#[test]
fn empty_bodies_mean_no_attributes() {
    assert_eq!(parse_body(b"").ok(), Some(CheckRequest::default()));
    assert_eq!(parse_body(b" \n").ok(), Some(CheckRequest::default()));
    assert_eq!(parse_body(b"{}").ok(), Some(CheckRequest::default()));
}

#[test]
fn every_field_is_read() {
    let body = br#"{"tenant":"t","user":"u","ip":"1.2.3.4","method":"GET","path":"/x",
                    "tier":"pro","cost":3,"descriptors":{"region":"eu"}}"#;
    let attrs: RequestAttrs = parse_body(body).expect("valid").into();
    assert_eq!(attrs.tenant.as_deref(), Some("t"));
    assert_eq!(attrs.cost, Some(3));
    assert_eq!(
        attrs.descriptors.get("region").map(String::as_str),
        Some("eu")
    );
}

#[test]
fn wrong_types_name_the_field() {
    let problem = parse_body(br#"{"cost":"lots"}"#).expect_err("invalid");
    assert_eq!(problem.field(), Some("cost"));
    let detail = problem.detail();
    assert!(detail.starts_with("field `cost`"), "{detail}");

    let problem = parse_body(br#"{"descriptors":{"region":7}}"#).expect_err("invalid");
    assert_eq!(problem.field(), Some("descriptors.region"));
}

#[test]
fn unknown_fields_are_named() {
    let problem = parse_body(br#"{"tennant":"t"}"#).expect_err("invalid");
    let detail = problem.detail();
    assert!(detail.contains("tennant"), "{detail}");
}

#[test]
fn broken_json_is_called_broken() {
    for body in [&b"{"[..], b"{\"tenant\":}", b"{} x", b"nope"] {
        let problem = parse_body(body).expect_err("invalid");
        let detail = problem.detail();
        assert!(detail.contains("not valid JSON"), "{detail}");
    }
}

#[test]
fn arrays_are_not_objects() {
    let problem = parse_body(br#" ["t", "u"]"#).expect_err("invalid");
    let detail = problem.detail();
    assert!(detail.contains("JSON object"), "{detail}");
}

#[test]
fn ips_must_be_addresses() {
    let attrs: RequestAttrs = parse_body(br#"{"ip":" 2001:DB8::1 "}"#)
        .expect("valid")
        .into();
    assert_eq!(attrs.ip, "2001:db8::1".parse().ok());
    let attrs: RequestAttrs = parse_body(br#"{"ip":null}"#).expect("valid").into();
    assert_eq!(attrs.ip, None);
    for body in [
        &br#"{"ip":"not-an-ip"}"#[..],
        br#"{"ip":""}"#,
        br#"{"ip":"10.0.0.1/8"}"#,
        br#"{"ip":7}"#,
    ] {
        let problem = parse_body(body).expect_err("invalid");
        assert_eq!(problem.field(), Some("ip"));
        let detail = problem.detail();
        assert!(
            detail.starts_with("field `ip`") && detail.contains("IP address"),
            "{detail}"
        );
    }
}

#[test]
fn escapes_decode_to_the_plain_strings() {
    let plain = parse_body(br#"{"tenant":"acme","user":"al/ice","path":"/v1/x"}"#);
    let escaped = parse_body(br#"{"tenant":"ac\u006de","user":"al\/ice","path":"\/v1\/x"}"#);
    assert_eq!(plain.expect("valid"), escaped.expect("valid"));
    let request = parse_body(br#"{"user":"caf\u00e9 \ud83d\ude00 \"q\""}"#).expect("valid");
    assert_eq!(request.user.as_deref(), Some("caf\u{e9} \u{1f600} \"q\""));
}

#[test]
fn bodies_that_are_not_utf8_are_refused_as_before() {
    // Raw bytes that are not UTF-8, inside a string and outside one, and an escape that
    // names half of a surrogate pair: each a 400 saying the JSON is not valid.
    for body in [
        &b"{\"user\":\"u\xff1\"}"[..],
        b"{\"user\":\"\xc3\x28\"}",
        b"{\xff}",
        br#"{"user":"\ud800"}"#,
    ] {
        let problem = parse_body(body).expect_err("invalid");
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        let detail = problem.detail();
        assert!(detail.contains("not valid JSON"), "{detail}");
    }
}

#[test]
fn duplicate_keys_are_refused_by_name() {
    let problem = parse_body(br#"{"user":"a","user":"b"}"#).expect_err("invalid");
    let detail = problem.detail();
    assert!(detail.contains("duplicate field `user`"), "{detail}");
    let request = parse_body(br#"{"descriptors":{"region":"eu","region":"us"}}"#).expect("valid");
    // A map keeps serde's last value, as it always has; only struct fields are checked.
    assert_eq!(
        request.descriptors.and_then(|d| d.get("region").cloned()),
        Some("us".to_owned())
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// The checked-once fast path reads every body as serde_json reads it from bytes:
    /// the same request when it parses, a refusal when it does not (whose wording comes
    /// from the byte path in both cases).
    #[test]
    fn the_fast_path_reads_what_the_byte_path_reads(
        fields in proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "tenant", "user", "ip", "method", "method_override", "path", "tier",
                    "cost", "token", "descriptors", "api_key", "host", "nope",
                ]),
                proptest::string::bytes_regex(
                    "(\"([a-z0-9/. ]|\\\\[nt\"/\\\\]|\\\\u00[0-7][0-9a-f]|\\\\ud83d\\\\ude00|\\\\ud800|[\\x80-\\xff]){0,8}\"|[0-9]{1,3}|-1|null|\\{\\}|\\{\"r\":\"x\"\\})",
                )
                .expect("regex"),
            ),
            0..5,
        ),
    ) {
        let mut body = b"{".to_vec();
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(format!("\"{name}\":").as_bytes());
            body.extend_from_slice(value);
        }
        body.push(b'}');
        // A path no route could match is refused after the reading either way.
        let reference = serde_json::from_slice::<CheckRequest>(&body)
            .ok()
            .filter(|r| super::checked_path(r.path.as_deref()).is_ok());
        let got = parse_body(&body).ok();
        proptest::prop_assert_eq!(got, reference);
    }
}

/// A path without its leading slash matched no route, so its route's limits went uncounted:
/// refused, naming the field. Absolute URLs and `*` stay.
#[test]
fn a_path_no_route_could_match_is_refused() {
    for path in ["v1/generate", "", "generate", "1://x"] {
        let body = format!(r#"{{"tenant":"t","path":"{path}"}}"#);
        let problem = parse_body(body.as_bytes()).expect_err(path);
        assert_eq!(problem.field(), Some("path"), "{path}");
    }
    for path in ["/v1/generate", "https://x/v1/generate", "*"] {
        let body = format!(r#"{{"tenant":"t","path":"{path}"}}"#);
        assert!(parse_body(body.as_bytes()).is_ok(), "{path}");
    }
}

#[test]
fn negative_costs_are_refused() {
    let problem = parse_body(br#"{"cost":-1}"#).expect_err("invalid");
    assert_eq!(problem.field(), Some("cost"));
}
