//! A small OpenTelemetry collector for tests: the OTLP/gRPC `TraceService` on a free loopback
//! port, keeping every span it is sent together with its resource's attributes.
//!
//! It runs on a thread of its own with its own runtime, so a test may wait for spans in any
//! way (async or blocking) without starving it. The server under test exports to
//! [`Collector::endpoint`] exactly as it would to a real collector: plain (`http://`) from
//! [`Collector::start`], or over TLS (`https://`) from [`Collector::start_tls`] with a
//! certificate and key the test provides.

// Waiting for spans is real time on purpose: the exporter sends them on its own schedule.
#![allow(clippy::disallowed_methods)]

pub use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
pub use opentelemetry_proto::tonic::trace::v1::Span;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The attributes of the resource that sent it (`service.name`, ...).
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: Span,
}

impl Received {
    /// The span's trace id in lower-case hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span's id in lower-case hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span's id in lower-case hex (empty for a root).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A span attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, key)
    }

    /// A resource attribute's value.
    pub fn resource_attribute(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.resource, key)
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// Bytes in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        *self.requests.lock().expect("collector lock") += 1;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector; it stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    secure: bool,
    sink: Sink,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Starts a collector on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a collector on a free loopback port serving TLS with this PEM certificate
    /// (chain) and PEM private key; its [`endpoint`](Self::endpoint) is `https://`.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        Self::start_with(Some(
            tonic::transport::ServerTlsConfig::new().identity(identity),
        ))
    }

    fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let secure = tls.is_some();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the collector's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    builder = builder
                        .tls_config(tls)
                        .expect("the collector's TLS identity");
                }
                let _ = builder
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            secure,
            sink,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The endpoint to give an OTLP/gRPC exporter: `http://127.0.0.1:<port>`, or `https://`
    /// when it serves TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.sink.spans.lock().expect("collector lock").clone()
    }

    /// How many export calls were received.
    pub fn exports(&self) -> usize {
        *self.sink.requests.lock().expect("collector lock")
    }

    /// Waits up to `timeout` for a span `wanted` accepts.
    pub fn wait_for(
        &self,
        timeout: Duration,
        wanted: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.spans().into_iter().find(|s| wanted(s)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Collector {
    /// Waits up to `timeout` for a span `wanted` accepts, without blocking the runtime (for
    /// tests whose exporter runs in the same process).
    pub async fn wait_for_async(
        &self,
        timeout: Duration,
        wanted: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.spans().into_iter().find(|s| wanted(s)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
