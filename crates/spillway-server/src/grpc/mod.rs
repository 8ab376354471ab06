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
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
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

/// The running gRPC server and its reload task.
pub struct GrpcServer {
    server: JoinHandle<Result<(), tonic::transport::Error>>,
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

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for gRPC"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound gRPC address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(Rls(state)));
    let server = tokio::spawn(async move {
        let stop = async move {
            shutdown.triggered().await;
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
        };
        router.serve_with_incoming_shutdown(incoming, stop).await
    });
    let domains = domains.join(",");
    tracing::info!(domains, limits, "grpc listening on {addr}");
    Ok(Some(GrpcServer { server, reload }))
}

impl GrpcServer {
    /// Waits for in-flight calls to finish after the shutdown signal, for at most `grace`.
    pub async fn finish(mut self, grace: Duration, shutdown: &Shutdown) {
        self.reload.abort();
        tokio::select! {
            ended = &mut self.server => match ended {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "the gRPC server failed"),
                Err(err) => tracing::warn!(error = %err, "the gRPC server task failed"),
            },
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; abandoning gRPC calls in flight");
                self.server.abort();
            }
            _ = shutdown.forced() => self.server.abort(),
        }
    }
}
