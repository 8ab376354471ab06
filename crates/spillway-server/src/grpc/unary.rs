//! The direct way in for `ShouldRateLimit`, the call Envoy makes once per request it proxies.
//!
//! hyper's HTTP/2 server hands each call to [`GrpcService`]. A `ShouldRateLimit` call (`POST`)
//! is answered here: its one length-prefixed message is read whole, inflated if it is
//! gzip-compressed ([`super::encoding`]), its descriptors and entries counted in its bytes
//! ([`super::wire`]), decoded with prost (or, if it holds strings that are not UTF-8, read
//! with them replaced: [`super::lenient`]), decided by [`Rls::answer`] and written back
//! uncompressed as one data frame followed by a `grpc-status: 0` trailer. A call naming an
//! encoding other than `gzip` or `identity` is `UNIMPLEMENTED`, with a `grpc-accept-encoding`
//! header naming those two. Everything else (health checks, unknown methods) goes to tonic's
//! routes and generated services; they do not hold `ShouldRateLimit`, so a request on its
//! path with another HTTP method than `POST` is tonic's `UNIMPLEMENTED`, never decoded.
//!
//! Why not tonic for this call too: its transport server's layers, router, streaming decoder
//! and encoder cost more CPU per call than the decision itself; answering here cut the server's
//! CPU per call by 28% and took the port past 100,000 calls a second on two cores
//! (`docs/BENCHMARKS.md`). The codec is the gRPC wire format's simplest case. No call on the
//! port has its `grpc-timeout` enforced (that was the transport server's layer): the store's
//! time budget bounds a decision, and a client whose deadline passes resets its stream, which
//! drops the call.
//!
//! Errors are gRPC statuses in a trailers-only answer, built by tonic's [`Status::into_http`].
//! A body that is not one complete message, or a message that does not inflate or decode, is
//! `INVALID_ARGUMENT` saying what was wrong (tonic says `INTERNAL`, but the fault is the
//! caller's); a message over [`MAX_MESSAGE`] bytes, before or after inflating, is
//! `RESOURCE_EXHAUSTED`, and so is one whose bytes, while it waits for the rest, would take the
//! process's bodies still arriving past `--max-body-memory` ([`crate::serving::body_memory`]);
//! a message still arriving when the body deadline passes (`--body-timeout`,
//! [`crate::serving::guarded`]) is `DEADLINE_EXCEEDED`.

use super::encoding::{self, Encoding};
use super::service::Rls;
use crate::serving::{read_body, BodyMemoryFull, BodyTimeout};
use crate::telemetry::decision_log::Ids;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Either, LengthLimitError};
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::service::Routes;
use tonic::Status;
use tower::ServiceExt;

/// The path of the call answered directly.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// The largest request message taken, as tonic's default.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// A gRPC message's prefix: a compression flag, then a 4-byte big-endian length.
const PREFIX: usize = 5;

/// The answer's body: the direct path's own, or tonic's.
pub type AnswerBody = Either<UnaryBody, tonic::body::Body>;

/// What each HTTP/2 stream of the gRPC port is handed to.
#[derive(Clone)]
pub struct GrpcService {
    rls: Rls,
    routes: Routes,
}

impl GrpcService {
    /// `rls` answers `ShouldRateLimit` directly; `routes` (the health service, and not
    /// `ShouldRateLimit`'s: see the module docs) answers every other call.
    pub fn new(rls: Rls, routes: Routes) -> Self {
        Self { rls, routes }
    }
}

impl<B> hyper::service::Service<Request<B>> for GrpcService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<AnswerBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        if is_direct(&request) {
            let Some(encoding) = Encoding::of(request.headers()) else {
                let refused = encoding::unsupported(request.headers());
                return Box::pin(async move { Ok(error_answer(refused)) });
            };
            let rls = self.rls.clone();
            // The metadata stays with the call, lent to the decision: its request id and
            // trace headers are looked up only if a record is kept or a span made.
            let (parts, body) = request.into_parts();
            Box::pin(async move {
                let ids = Ids::Headers(&parts.headers);
                Ok(should_rate_limit(&rls, encoding, ids, body).await)
            })
        } else {
            let routes = self.routes.clone();
            Box::pin(async move {
                let answer = routes.oneshot(request).await?;
                Ok(answer.map(Either::Right))
            })
        }
    }
}

/// A `ShouldRateLimit` call, which this path answers whatever its encoding.
fn is_direct<B>(request: &Request<B>) -> bool {
    request.uri().path() == SHOULD_RATE_LIMIT && request.method() == Method::POST
}

/// Reads, decides and answers one call; every failure is a gRPC status.
async fn should_rate_limit<B>(
    rls: &Rls,
    encoding: Encoding,
    ids: Ids<'_>,
    body: B,
) -> Response<AnswerBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let answer = match read_request(encoding, body).await {
        Ok(request) => rls.answer(&request, ids).await,
        Err(status) => Err(status),
    };
    match answer {
        Ok(answer) => {
            let length = answer.encoded_len();
            let mut message = BytesMut::with_capacity(PREFIX + length);
            message.put_u8(0);
            message.put_u32(u32::try_from(length).expect("an answer is far below 4 GiB"));
            answer
                .encode(&mut message)
                .expect("the buffer was sized to the message");
            let mut response = Response::new(Either::Left(UnaryBody::ok(message.freeze())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => error_answer(status),
    }
}

/// `status` as a trailers-only answer.
fn error_answer(status: Status) -> Response<AnswerBody> {
    status.into_http::<UnaryBody>().map(Either::Left)
}

/// The call's one message, inflated as `encoding` says and decoded.
async fn read_request<B>(encoding: Encoding, body: B) -> Result<RateLimitRequest, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::serving::BodyError>,
{
    let body = match read_body(body, PREFIX + MAX_MESSAGE).await {
        Ok(body) => body,
        Err(err) if err.is::<LengthLimitError>() => return Err(too_large()),
        Err(err) if BodyTimeout::find(err.as_ref()).is_some() => {
            return Err(Status::deadline_exceeded(err.to_string()))
        }
        Err(err) if BodyMemoryFull::find(err.as_ref()).is_some() => {
            return Err(Status::resource_exhausted(err.to_string()))
        }
        Err(err) => {
            return Err(Status::cancelled(format!(
                "the request body could not be read: {err}"
            )))
        }
    };
    let (compressed, message) = one_message(&body)?;
    let message = encoding.decode(compressed, message)?;
    super::wire::counts_fit(&message).map_err(Status::invalid_argument)?;
    // Refused, it may hold strings that are not UTF-8, which Envoy sends when a header had
    // such bytes: read them anyway rather than let the refusal admit the request unlimited.
    RateLimitRequest::decode(message.clone())
        .or_else(|_| super::lenient::decode(&message))
        .map_err(|err| {
            Status::invalid_argument(format!("the RateLimitRequest does not decode: {err}"))
        })
}

/// The message in a unary call's body, which must hold exactly one, complete; and whether
/// its prefix flags it compressed.
fn one_message(body: &Bytes) -> Result<(bool, Bytes), Status> {
    let invalid = |why: String| Err(Status::invalid_argument(why));
    if body.is_empty() {
        return invalid("the call carries no request message".into());
    }
    if body.len() < PREFIX {
        return invalid(format!(
            "the body ends inside a message's {PREFIX}-byte prefix"
        ));
    }
    let compressed = match body[0] {
        0 => false,
        1 => true,
        flag => {
            return invalid(format!(
                "the message's compression flag is {flag}, not 0 or 1"
            ))
        }
    };
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if length > MAX_MESSAGE {
        return Err(too_large());
    }
    let end = PREFIX + length;
    match body.len().cmp(&end) {
        std::cmp::Ordering::Less => invalid(format!(
            "the message is cut short: its prefix says {length} bytes, the body holds {}",
            body.len() - PREFIX
        )),
        std::cmp::Ordering::Greater => {
            invalid("a unary call carries one request message, this one more".into())
        }
        std::cmp::Ordering::Equal => Ok((compressed, body.slice(PREFIX..end))),
    }
}

fn too_large() -> Status {
    Status::resource_exhausted(format!(
        "the request message is larger than {MAX_MESSAGE} bytes"
    ))
}

/// A unary answer's body: one message, then the trailers saying it succeeded. Empty (the
/// default) when the status went out in the headers instead.
#[derive(Debug, Default)]
pub struct UnaryBody {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl UnaryBody {
    fn ok(message: Bytes) -> Self {
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self {
            message: Some(message),
            trailers: Some(trailers),
        }
    }
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match this.message.take() {
            Some(message) => Some(Frame::data(message)),
            None => this.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }

    // No exact size hint: hyper would turn it into a `content-length`, which gRPC servers
    // do not send.
    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut body = vec![flag];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body.into()
    }

    #[test]
    fn one_complete_message_is_taken() {
        let taken = |body: Bytes| one_message(&body).map(|(c, m)| (c, m.to_vec())).unwrap();
        assert_eq!(taken(framed(0, b"abc")), (false, b"abc".to_vec()));
        assert_eq!(taken(framed(0, b"")), (false, Vec::new()));
        assert_eq!(taken(framed(1, b"xyz")), (true, b"xyz".to_vec()));
    }

    #[test]
    fn bodies_that_are_not_one_message_say_why() {
        let mut huge = vec![0; PREFIX];
        huge[1..].copy_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        let status = one_message(&huge.into()).expect_err("refused by its prefix");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let cases: [(Bytes, &str); 5] = [
            (Bytes::new(), "no request message"),
            (
                Bytes::from_static(&[0, 0, 0]),
                "inside a message's 5-byte prefix",
            ),
            (framed(2, b"abc"), "compression flag is 2"),
            (
                framed(0, b"abc").slice(..6),
                "prefix says 3 bytes, the body holds 1",
            ),
            ([framed(0, b"a"), framed(0, b"b")].concat().into(), "more"),
        ];
        for (body, expected) in cases {
            let status = one_message(&body).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let says = status.message();
            assert!(says.contains(expected), "{says:?} should say {expected:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_body_is_its_message_then_its_trailers() {
        let mut body = UnaryBody::ok(Bytes::from_static(b"msg"));
        assert_eq!(body.size_hint().exact(), None, "no content-length");
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), &b"msg"[..]);
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_trailers().unwrap()["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
