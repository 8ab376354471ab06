//! Envoy's rate-limit service (RLS v3) over gRPC, on its own port next to the HTTP API.
//!
//! Off unless `--grpc-listen` is given. It shares the HTTP server's engine (so both see one
//! policy and one store), metrics and shutdown signal, and serves `grpc.health.v1` so Envoy
//! and Kubernetes can probe it. Requests for the policy domain (`--grpc-policy-domain`,
//! default `spillway`) are judged by the main policy; other domains by the envoyproxy/ratelimit
//! style files given with `--envoy-config`, hot-reloaded like the policy.
//!
//! Layout: [`service`] answers `ShouldRateLimit`, [`plan`] turns descriptors into limits,
//! [`response`] words the answer, [`source`] reads and reloads the Envoy config files,
//! [`unary`] carries `ShouldRateLimit` calls between HTTP/2 and the service without tonic's
//! router and codec (inflating gzip-compressed ones through [`encoding`], and counting a message's
//! descriptors and entries in its bytes before decoding it through [`wire`], and reading one
//! whose strings are not all UTF-8 through [`lenient`]), and hands every
//! other call (health checks included) to tonic.
//!
//! Threads: the service runs on `--grpc-threads` serving threads (one per CPU by default),
//! each with its own runtime and its own HTTP/2 server, under the same connection cap, stream
//! cap and timeouts as the HTTP port; see [`crate::serving`].

pub mod encoding;
pub mod lenient;
pub mod plan;
pub mod report;
pub mod response;
pub mod service;
pub mod source;
pub mod unary;
pub mod wire;

#[cfg(test)]
mod tests;

use crate::reload;
use crate::serving::{self, ConnectionLimits, Threads};
use crate::shutdown::Shutdown;
use crate::state::AppState;
use anyhow::Context;
use arc_swap::ArcSwap;
use service::Rls;
use source::{EnvoyReloader, EnvoySource};
use spillway_core::envoy_config::EnvoyConfig;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use unary::GrpcService;

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

/// The running gRPC server: its serving threads and its reload task.
pub struct GrpcServer {
    threads: Threads,
    reload: JoinHandle<()>,
}

/// Loads the Envoy config, binds the port and starts serving under `connections` (the same
/// connection limits as the HTTP port's); `None` when gRPC is off. A bad config or a busy port
/// fails start-up, like a bad policy does.
pub async fn start(
    settings: &GrpcSettings,
    connections: ConnectionLimits,
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
    if !settings.envoy.paths.is_empty() && texts.is_empty() {
        // Served (files may appear later, and are reloaded), but surely worth a look: a wrong
        // directory, or files not named `*.yaml` / `*.yml`. `spillway validate` refuses it.
        tracing::warn!(
            "no Envoy config files found under --envoy-config (a directory's files must be named \
             *.yaml or *.yml): every domain but the policy's is unknown until some appear"
        );
    }
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

    // Health checks see the drain: NOT_SERVING from the signal on.
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.triggered().await;
        for service in [SERVICE_NAME, ""] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    });
    let threads = serving::start(
        "gRPC",
        settings.threads,
        listener,
        connections,
        shutdown.clone(),
        move |incoming: serving::Incoming| async move {
            // This thread's own store lane, if the store makes them (see `crate::serving`).
            state.app.store.attach_thread();
            let rls = Rls(state);
            // `ShouldRateLimit` is answered on the direct path alone (`unary`): a tonic
            // route for it too would decode a message before its descriptors were counted.
            let routes = Routes::new(health_service).prepare();
            // Ends, draining gracefully, once the queue of connections ends.
            serving::serve_http2(incoming, GrpcService::new(rls, routes)).await;
            Ok::<(), Infallible>(())
        },
    )?;
    let domains = domains.join(",");
    tracing::info!(
        domains,
        limits,
        threads = settings.threads.max(1),
        "grpc listening on {addr}"
    );
    Ok(Some(GrpcServer { threads, reload }))
}

/// Resolves once every serving thread of `server` has ended; never when gRPC is off. Before
/// the shutdown signal that means they all stopped. Cancel-safe.
pub async fn stopped(server: &mut Option<GrpcServer>) {
    match server {
        Some(server) => server.threads.finished().await,
        None => std::future::pending().await,
    }
}

impl GrpcServer {
    /// Waits for in-flight calls to finish after the shutdown signal, for at most `grace`.
    /// Threads still serving after that are left behind; the process is about to exit.
    pub async fn finish(mut self, grace: Duration, shutdown: &Shutdown) {
        self.reload.abort();
        tokio::select! {
            () = self.threads.finished() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; abandoning gRPC calls in flight");
                self.threads.abandon();
            }
            () = shutdown.forced() => self.threads.abandon(),
        }
    }
}
