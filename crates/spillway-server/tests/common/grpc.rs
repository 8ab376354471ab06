//! gRPC helpers: start a server with the RLS port open and talk to it with a real tonic
//! client, the way Envoy would.

use super::{parse_listen_line, Server, ServerBuilder, TempDir};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::net::SocketAddr;
use tonic::transport::Channel;

/// A server with gRPC on, and a client connected to it.
pub struct Rls {
    /// The server (HTTP side too, for the manual clock).
    pub server: Server,
    /// Where gRPC listens.
    pub addr: SocketAddr,
    /// A connected client.
    pub client: RateLimitServiceClient<Channel>,
}

/// Starts `builder` with `--grpc-listen 127.0.0.1:0` plus `--envoy-config` for each of `envoy`.
pub async fn start(builder: ServerBuilder, envoy: &[&std::path::Path]) -> Rls {
    let mut args = vec!["--grpc-listen".to_owned(), "127.0.0.1:0".to_owned()];
    for path in envoy {
        args.push("--envoy-config".to_owned());
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = builder.args(&args).start();
    let line = server.wait_for_log("grpc listening on ");
    let Some(addr) = line.as_deref().and_then(parse_listen_line) else {
        panic!("no gRPC address; logs:\n{}", server.logs().join("\n"));
    };
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the gRPC port");
    Rls {
        server,
        addr,
        client,
    }
}

/// Writes an Envoy config file into a fresh directory.
pub fn envoy_file(name: &str, text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    let path = dir.write(name, text);
    (dir, path)
}

/// A descriptor from `(key, value)` pairs.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// A request for `domain` with `descriptors` and a request-level `hits_addend`.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: hits,
    }
}

impl Rls {
    /// Sends `request`; panics on a gRPC error.
    pub async fn ask(&mut self, request: RateLimitRequest) -> RateLimitResponse {
        self.client
            .should_rate_limit(request)
            .await
            .expect("a gRPC answer")
            .into_inner()
    }

    /// Sends one descriptor of `entries` to `domain`.
    pub async fn one(&mut self, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
        self.ask(request(domain, vec![descriptor(entries)], 0))
            .await
    }
}

/// The overall code.
pub fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).expect("a known code")
}

/// A status's code.
pub fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).expect("a known code")
}

/// A response header's value.
pub fn header<'a>(response: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The status's `(name, requests_per_unit, remaining)`.
pub fn limit(status: &DescriptorStatus) -> Option<(String, u32, u32)> {
    let current = status.current_limit.as_ref()?;
    Some((
        current.name.clone(),
        current.requests_per_unit,
        status.limit_remaining,
    ))
}

/// `message` as a gRPC body: an uncompressed flag, its 4-byte big-endian length, then it.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// What a gRPC call sent by [`raw_call`] got back.
#[derive(Debug)]
pub struct RawAnswer {
    /// The HTTP status.
    pub http: u16,
    /// The response's headers.
    pub headers: http::HeaderMap,
    /// The response's trailers, if any came.
    pub trailers: Option<http::HeaderMap>,
    /// The response body's bytes.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The gRPC status (code and percent-decoded message), wherever the answer put it.
    pub fn status(&self) -> Option<tonic::Status> {
        tonic::Status::from_header_map(self.trailers.as_ref().unwrap_or(&self.headers))
    }

    /// A trailers-only answer: the status in the headers, no body and no trailers, as gRPC
    /// sends errors.
    pub fn is_trailers_only(&self) -> bool {
        self.headers.contains_key("grpc-status") && self.body.is_empty() && self.trailers.is_none()
    }
}

/// The path of Envoy's rate-limit call, as clients put it on the wire.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// `request` as a whole gRPC body.
pub fn framed(request: &RateLimitRequest) -> Vec<u8> {
    use prost::Message;
    frame(&request.encode_to_vec())
}

/// An open call: its answer to come, its body's stream, and its connection's ping handle.
pub type OpenCall = (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    h2::PingPong,
);

/// A gRPC call opened on a fresh HTTP/2 connection to `addr`: its headers sent (as a gRPC
/// client sends them, plus `extra`), its body still to send. Also the connection's ping
/// handle, to learn when the server has read what was sent.
pub async fn open_call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> OpenCall {
    open_call_as(http::Method::POST, addr, path, extra).await
}

/// [`open_call`] with another HTTP method than gRPC's `POST`.
pub async fn open_call_as(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> OpenCall {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gRPC port");
    let (client, mut connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let ping = connection
        .ping_pong()
        .expect("the connection's ping handle");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("request");
    let (response, send) = client.send_request(request, false).expect("sent");
    (response, send, ping)
}

/// Sends one call to `path` on a fresh HTTP/2 connection to `addr`, with `extra` headers and
/// `body` exactly as given: the wire as a client that gets it wrong would speak it.
pub async fn raw_call(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> RawAnswer {
    let (response, mut send, _) = open_call(addr, path, extra).await;
    send.send_data(body.into(), true).expect("the body");
    read_answer(response).await
}

/// A call's whole answer: headers, body and trailers.
pub async fn read_answer(response: h2::client::ResponseFuture) -> RawAnswer {
    let response = response.await.expect("a response");
    let http = response.status().as_u16();
    let headers = response.headers().clone();
    let mut answer = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.expect("response data");
        let _ = answer.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = answer.trailers().await.expect("trailers");
    RawAnswer {
        http,
        headers,
        trailers,
        body,
    }
}
