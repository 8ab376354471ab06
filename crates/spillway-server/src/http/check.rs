//! `POST /v1/check`: ask for a verdict by describing the request in JSON.
//!
//! Request body (every field optional, unknown fields refused so typos are caught rather than
//! silently ignored; an empty body means `{}`; the `Content-Type` is not checked, so plain
//! `curl -d` works):
//! ```json
//! {"tenant": "acme", "user": "u1", "ip": "203.0.113.7", "method": "POST",
//!  "path": "/v1/generate", "tier": "pro", "cost": 5, "descriptors": {"region": "eu"}}
//! ```
//! Answers:
//! - 200 with the verdict as JSON (see [`crate::http::verdict`]) when allowed;
//! - 429 with an `application/problem+json` document that also carries the verdict when
//!   denied. A denial because the cost can never fit is 429 too (its problem type is
//!   `urn:spillway:problem:cost-exceeds-limit` and it has no `Retry-After`), since what the
//!   client must do is the same (stop sending this) and the detail says retrying cannot help;
//! - both with the rate-limit headers;
//! - 400 naming the offending field for a malformed body (including an `ip` that is not an
//!   IP address: per-IP limits count by network, and free text would let a client pick a
//!   fresh counter for every request), 413 over 16 KiB, 408 for a body still arriving after
//!   `--body-timeout`, 503 when the store fails.
//!
//! `?peek=true` (or `?dry_run`) evaluates without consuming anything.
//!
//! With a `principals:` section in the policy, the caller is identified first (the body's
//! `token`, `api_key` and `host`, else the configured headers; see [`crate::http::principal`]):
//! a refused or missing credential is a 401 problem naming the `reason`.

use crate::http::principal;
use crate::http::problem::Problem;
use crate::http::verdict::{decided_response, denied_response};
use crate::http::{check_mode, decide};
use crate::principal::Presented;
use crate::serving::BodyTimeout;
use crate::state::AppState;
use crate::telemetry::decision_log::RequestIds;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::BoxError;
use bytes::BytesMut;
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use spillway_core::policy::Policy;
use spillway_core::request::RequestAttrs;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;

/// The largest body `/v1/check` reads; a request description has no business being bigger.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The JSON a client sends: [`RequestAttrs`] in wire form.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// See [`RequestAttrs::tenant`].
    pub tenant: Option<String>,
    /// See [`RequestAttrs::user`].
    pub user: Option<String>,
    /// See [`RequestAttrs::ip`]; must be an IPv4 or IPv6 address.
    #[serde(default, deserialize_with = "ip_address")]
    pub ip: Option<IpAddr>,
    /// See [`RequestAttrs::method`].
    pub method: Option<String>,
    /// See [`RequestAttrs::path`].
    pub path: Option<String>,
    /// See [`RequestAttrs::tier`].
    pub tier: Option<String>,
    /// See [`RequestAttrs::cost`].
    pub cost: Option<u64>,
    /// See [`RequestAttrs::descriptors`].
    pub descriptors: Option<BTreeMap<String, String>>,
    /// A bearer token, when the policy identifies callers (`principals:`); wins over the
    /// configured header.
    pub token: Option<String>,
    /// An API key, likewise.
    pub api_key: Option<String>,
    /// The host name the caller used, for `principals.subdomain`.
    pub host: Option<String>,
}

impl From<CheckRequest> for RequestAttrs {
    fn from(r: CheckRequest) -> Self {
        RequestAttrs {
            tenant: r.tenant,
            user: r.user,
            ip: r.ip,
            method: r.method,
            path: r.path,
            tier: r.tier,
            cost: r.cost,
            descriptors: r.descriptors.unwrap_or_default(),
        }
    }
}

/// Reads the `ip` field as an address (surrounding spaces ignored), saying what was sent when
/// it is not one.
pub(crate) fn ip_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    struct Address;

    impl<'de> Visitor<'de> for Address {
        type Value = Option<IpAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address such as 203.0.113.7 or 2001:db8::1")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text.trim().parse() {
                Ok(ip) => Ok(Some(ip)),
                Err(_) => Err(E::custom(format!(
                    "`{text}` is not an IP address (per-IP limits count clients by network, \
                     so `ip` must be an IPv4 or IPv6 address, or be left out)"
                ))),
            }
        }
    }

    deserializer.deserialize_option(Address)
}

/// Parses a body, naming the field at fault when it does not fit.
pub fn parse_body(body: &[u8]) -> Result<CheckRequest, Problem> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(CheckRequest::default()),
        // serde would also read a struct from an array of its fields, in order; a caller who
        // sends one has made a mistake worth naming.
        Some(b'[') => {
            return Err(Problem::invalid(
                "the body must be a JSON object, not an array",
                None,
            ))
        }
        Some(_) => {}
    }
    // The common case, a well-formed body, parses once without tracking paths; only a body
    // that fails is read again to name the field at fault. Its UTF-8 is checked once for the
    // whole body, which lets serde_json skip checking each string again (from bytes it checks
    // every key and value on its own, a sixth of the parse). A body that is not UTF-8 cannot
    // be valid and goes straight to the path that words the error, as before.
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(request) = serde_json::from_str(text) {
            return Ok(request);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: CheckRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            Problem::invalid(format!("the body does not fit: {inner}"), None)
        } else {
            Problem::invalid(format!("field `{path}`: {inner}"), Some(path))
        }
    })?;
    de.end()
        .map_err(|err| Problem::invalid(format!("the body is not valid JSON: {err}"), None))?;
    Ok(request)
}

/// The handler, as the router calls it: see [`answer`].
pub async fn check(State(app): State<Arc<AppState>>, request: Request) -> Response {
    answer(&app, request).await
}

/// Answers one `/v1/check` request, `Content-Length` included. The router's handler ends
/// here, and so does the serving thread's shortcut (`crate::http::entry`), which hands a
/// request over before the router sees it; either way the request is read and answered alike.
///
/// The policy is loaded once, before the body is read, and the request is decided with it
/// from its headers' credentials to a store failure's fallback, so a reload part way cannot
/// judge it by two policies.
pub async fn answer<B>(app: &AppState, request: http::Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let ids = RequestIds::read(app, &parts.headers);
    let policy = app.engine.policy();
    let body = read_body(body).await;
    let query = parts.uri.query();
    match respond(app, policy, query, &ids, &parts.headers, body).await {
        // A decided answer carries its own length.
        Ok(response) => response,
        Err(response) => with_length(response),
    }
}

/// `response` with a `Content-Length` when its body's size is known: what the router adds to
/// each answer, added here to the problem answers too (the decided ones add their own), so
/// headers come out in the same order whichever way the request went (hyper writes
/// `Connection` between the handler's headers and the length it adds itself).
pub(crate) fn with_length(mut response: Response) -> Response {
    if !response.headers().contains_key(CONTENT_LENGTH) {
        if let Some(size) = HttpBody::size_hint(response.body()).exact() {
            let value = HeaderValue::from(size);
            response.headers_mut().insert(CONTENT_LENGTH, value);
        }
    }
    response
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`], or the problem that stopped it.
///
/// A check's body nearly always arrives in one frame, whose bytes are then the body as they
/// are; only a body in several frames is gathered into a buffer of its own. (Collecting
/// through `http_body_util`'s `Collected` kept every frame in a queue first, an allocation and
/// about 360 instructions per check: `docs/BENCHMARKS.md`, "Fewer instructions per
/// `/v1/check` (issue 16, session 18)".) Trailers are ignored, as `Collected::to_bytes` did.
async fn read_body<B>(body: B) -> Result<Bytes, Problem>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(Limited::new(body, MAX_BODY_BYTES));
    let mut first = Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|err| body_problem(&*err))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut gathered {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buffer = BytesMut::with_capacity(first.len() + data.len());
                buffer.extend_from_slice(&first);
                buffer.extend_from_slice(&data);
                gathered = Some(buffer);
            }
        }
    }
    Ok(gathered.map_or(first, BytesMut::freeze))
}

async fn respond(
    app: &AppState,
    policy: Arc<Policy>,
    query: Option<&str>,
    ids: &RequestIds,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Response> {
    let mode = check_mode(query).map_err(IntoResponse::into_response)?;
    let body = body.map_err(IntoResponse::into_response)?;
    let mut request = parse_body(&body).map_err(IntoResponse::into_response)?;
    let (token, api_key, host) = (
        request.token.take(),
        request.api_key.take(),
        request.host.take(),
    );
    let mut attrs: RequestAttrs = request.into();
    let own = Presented {
        token: token.as_deref(),
        api_key: api_key.as_deref(),
        host: host.as_deref(),
        ..Presented::default()
    };
    principal::identify(app, &policy, headers, own, false, &mut attrs)
        .await
        .map_err(IntoResponse::into_response)?;
    let decided = decide(app, &policy, &attrs, ids, mode)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(if decided.verdict.allowed {
        decided_response(StatusCode::OK, &decided)
    } else {
        denied_response(StatusCode::TOO_MANY_REQUESTS, &decided)
    })
}

/// The problem for a body that could not be read, whichever reader failed (this endpoint's
/// own limited read, or axum's `Bytes` extractor on `/v1/report`, whose rejection is passed
/// whole): 413 when it is too long, 408 when it did not arrive in time (`--body-timeout`),
/// else 400.
pub(crate) fn body_problem(err: &(dyn std::error::Error + 'static)) -> Problem {
    if let Some(late) = BodyTimeout::find(err) {
        return Problem::http(StatusCode::REQUEST_TIMEOUT, late.to_string());
    }
    // axum's rejection says so in its status (its chain need not hold the length error).
    let too_long = |e: &(dyn std::error::Error + 'static)| {
        e.is::<LengthLimitError>()
            || e.downcast_ref::<BytesRejection>()
                .is_some_and(|r| r.status() == StatusCode::PAYLOAD_TOO_LARGE)
    };
    let mut cause = Some(err);
    while let Some(e) = cause {
        if too_long(e) {
            return too_large();
        }
        cause = e.source();
    }
    // Both endpoints word it alike: axum's rejection names the buffering itself.
    if err.is::<BytesRejection>() {
        Problem::invalid(format!("the body could not be read: {err}"), None)
    } else {
        Problem::invalid(
            format!("the body could not be read: Failed to buffer the request body: {err}"),
            None,
        )
    }
}

fn too_large() -> Problem {
    Problem::http(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    /// One frame of a test body, or the error reading it ends with.
    type Sent = Result<Frame<Bytes>, std::io::Error>;

    /// A body of `frames`, in order, each ready at once.
    fn frames(
        frames: Vec<Sent>,
    ) -> StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Sent>>> {
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn data(text: &'static str) -> Sent {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_read_without_a_copy() {
        let sent = Bytes::from_static(br#"{"user":"u"}"#);
        let read = read_body(frames(vec![Ok(Frame::data(sent.clone()))]))
            .await
            .expect("read");
        assert_eq!(read, sent);
        assert_eq!(read.as_ptr(), sent.as_ptr(), "the frame's own bytes");
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
        let request =
            parse_body(br#"{"descriptors":{"region":"eu","region":"us"}}"#).expect("valid");
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
                        "tenant", "user", "ip", "method", "path", "tier", "cost", "token",
                        "descriptors", "api_key", "host", "nope",
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
            let reference = serde_json::from_slice::<CheckRequest>(&body).ok();
            let got = parse_body(&body).ok();
            proptest::prop_assert_eq!(got, reference);
        }
    }

    #[test]
    fn negative_costs_are_refused() {
        let problem = parse_body(br#"{"cost":-1}"#).expect_err("invalid");
        assert_eq!(problem.field(), Some("cost"));
    }
}
