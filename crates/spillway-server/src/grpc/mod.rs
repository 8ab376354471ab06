//! Envoy's rate-limit service (RLS v3) over gRPC, on its own port next to the HTTP API.
//!
//! Off unless `--grpc-listen` is given. It shares the HTTP server's engine (so both see one
//! policy and one store), metrics and shutdown signal, and serves `grpc.health.v1` so Envoy
//! and Kubernetes can probe it. Requests for the policy domain (`--grpc-policy-domain`,
//! default `spillway`) are judged by the main policy; other domains by the envoyproxy/ratelimit
//! style files given with `--envoy-config`, hot-reloaded like the policy.
//!
//! Layout: [`service`] answers `ShouldRateLimit`, [`plan`] turns descriptors into limits,
//! [`response`] words the answer, [`source`] reads and reloads the Envoy config files.
//!
//! Threads: one task accepts connections and hands them out in turn to `--grpc-threads`
//! threads (one per CPU by default), each running its own single-threaded runtime and its own
//! copy of the tonic server. HTTP/2 keeps a connection's state behind one lock that every
//! stream of it takes; with all of a connection's streams on one thread that lock is never
//! contended and no wake-up crosses threads. On two cores this cut the server's CPU per call
//! by about a third against one shared multi-threaded runtime (see `docs/BENCHMARKS.md`).

pub mod plan;
pub mod response;
pub mod service;
pub mod source;

#[cfg(test)]
mod tests;

use crate::app::AppState;
use crate::reload;
use crate::shutdown::Shutdown;
use anyhow::Context;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use service::Rls;
use source::{EnvoyReloader, EnvoySource};
use spillway_core::envoy_config::EnvoyConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::ServingStatus;

/// The full name of the service, as health checks ask for it.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// How the gRPC side is set up.
#[derive(Debug, Clone, Default)]
pub struct GrpcSettings {
    /// Where to listen; `None` leaves gRPC off.
    pub listen: Option<SocketAddr>,
    /// The domain answered from the main policy.
    pub policy_domain: String,
    /// envoyproxy/ratelimit-style files and directories.
    pub envoy: EnvoySource,
    /// Threads serving connections (at least one is started).
    pub threads: usize,
}

/// What the service shares between requests.
pub struct RlsState {
    /// The HTTP server's state: engine, store, clock.
    pub app: Arc<AppState>,
    /// The Envoy-style domains, swapped whole on reload.
    pub envoy: ArcSwap<EnvoyConfig>,
    /// The domain answered from the main policy.
    pub policy_domain: Arc<str>,
}

/// What a serving thread reports when its server ends.
type Served = Result<(), tonic::transport::Error>;

/// The running gRPC server: its accept task, its serving threads and its reload task.
pub struct GrpcServer {
    accept: JoinHandle<()>,
    /// One per serving thread, answered when that thread's server has drained.
    served: Vec<oneshot::Receiver<Served>>,
    reload: JoinHandle<()>,
}

/// Loads the Envoy config, binds the port and starts serving; `None` when gRPC is off. A bad
/// config or a busy port fails start-up, like a bad policy does.
pub async fn start(
    settings: &GrpcSettings,
    app: Arc<AppState>,
    shutdown: Shutdown,
) -> anyhow::Result<Option<GrpcServer>> {
    let Some(listen) = settings.listen else {
        return Ok(None);
    };
    let (config, texts) = settings
        .envoy
        .load()
        .context("the Envoy rate-limit config is invalid")?;
    let (domains, limits) = (config.domain_names(), config.limit_count());
    let state = Arc::new(RlsState {
        app,
        envoy: ArcSwap::from_pointee(config),
        policy_domain: settings.policy_domain.as_str().into(),
    });
    let reloader = EnvoyReloader::new(state.clone(), settings.envoy.clone(), texts);
    let reload = reload::spawn(reloader, shutdown.clone()).context("cannot listen for SIGHUP")?;

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for gRPC"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound gRPC address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;

    let threads = settings.threads.max(1);
    let mut queues = Vec::with_capacity(threads);
    let mut served = Vec::with_capacity(threads);
    for n in 0..threads {
        let (queue, connections) = mpsc::unbounded_channel();
        let (report, done) = oneshot::channel();
        let server = ServingThread {
            connections,
            health: health_service.clone(),
            state: state.clone(),
            shutdown: shutdown.clone(),
        };
        std::thread::Builder::new()
            .name(format!("spillway-grpc-{n}"))
            .spawn(move || {
                // The receiver may be gone if start-up failed after this thread began.
                let _ = report.send(server.run());
            })
            .context("cannot start a gRPC thread")?;
        queues.push(queue);
        served.push(done);
    }
    let accept = tokio::spawn(accept(listener, queues, shutdown, health));
    let domains = domains.join(",");
    tracing::info!(domains, limits, threads, "grpc listening on {addr}");
    Ok(Some(GrpcServer {
        accept,
        served,
        reload,
    }))
}

/// Accepts connections and deals them out to the serving threads in turn, until shutdown.
/// Then it closes the port, marks the health service as not serving, and drops the queues,
/// which ends each thread's stream of new connections.
async fn accept(
    listener: TcpListener,
    queues: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    shutdown: Shutdown,
    health: tonic_health::server::HealthReporter,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.triggered() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // keep serving the connections already open, and try again shortly.
                tracing::warn!(error = %err, "cannot accept a gRPC connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a gRPC connection");
        }
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        match stream.into_std() {
            Ok(stream) => {
                let _ = queues[next].send(stream);
                next = (next + 1) % queues.len();
            }
            Err(err) => tracing::warn!(error = %err, "cannot hand a gRPC connection over"),
        }
    }
    drop(listener);
    for service in [SERVICE_NAME, ""] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}

/// One serving thread: a single-threaded runtime running tonic over the connections the
/// accept task sends it.
struct ServingThread<H: Health> {
    connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    health: HealthServer<H>,
    state: Arc<RlsState>,
    shutdown: Shutdown,
}

impl<H: Health> ServingThread<H> {
    fn run(self) -> Served {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(error = %err, "cannot start a gRPC thread's runtime");
                return Ok(());
            }
        };
        let Self {
            connections,
            health,
            state,
            shutdown,
        } = self;
        runtime.block_on(async move {
            let incoming = UnboundedReceiverStream::new(connections).map(TcpStream::from_std);
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(RateLimitServiceServer::new(Rls(state)))
                .serve_with_incoming_shutdown(incoming, shutdown.triggered())
                .await
        })
    }
}

impl GrpcServer {
    /// Waits for in-flight calls to finish after the shutdown signal, for at most `grace`.
    /// Threads still serving after that are left behind; the process is about to exit.
    pub async fn finish(mut self, grace: Duration, shutdown: &Shutdown) {
        self.reload.abort();
        let accept = &mut self.accept;
        let served = std::mem::take(&mut self.served);
        let drained = async {
            // The accept task ends at once on the signal, once the port is closed and the
            // health service says NOT_SERVING.
            let _ = accept.await;
            for done in served {
                match done.await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "the gRPC server failed"),
                    Err(_) => tracing::warn!("a gRPC thread ended without reporting"),
                }
            }
        };
        tokio::select! {
            () = drained => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; abandoning gRPC calls in flight");
            }
            () = shutdown.forced() => {}
        }
        self.accept.abort();
    }
}
