//! Server settings, and where the policy comes from.
//!
//! [`ServerSettings`] is the validated form of the `serve` flags, grouped the way the code uses
//! them. [`PolicySource`] is the one place that reads and parses the policy, so the first load,
//! a file-change reload and a `SIGHUP` reload go through exactly the same steps.

use crate::cli::ServeArgs;
use crate::grpc::source::EnvoySource;
use crate::grpc::GrpcSettings;
use crate::http::client_ip::ForwardingHeaders;
use crate::http::settings::{AuthorizeSettings, HeaderMapping};
use crate::telemetry::decision_log::DecisionLogSettings;
use axum::http::StatusCode;
use spillway_core::policy::{Policy, PolicyError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The example policy shipped in the repository, built into the binary so `spillway serve`
/// works with no arguments.
pub const BUILTIN_POLICY: &str = include_str!("../../../examples/spillway.yaml");

/// The name the built-in policy goes by in logs, errors and `/readyz`.
pub const BUILTIN_POLICY_NAME: &str = "builtin:examples/spillway.yaml";

/// A setting found wrong only once the server reads or tries it (an invalid policy, a store
/// URL or region the policy cannot use, a store that refuses the login): `serve` exits 2 for
/// it, as for the settings [`ServerSettings::from_args`] refuses, and not 1 (a start that
/// failed and might succeed if tried again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Everything `spillway serve` needs to know, checked and grouped.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Capacity of the in-memory store, in keys.
    pub max_keys: u64,
    /// `--store-url`: overrides the policy's `store:` section.
    pub store_url: Option<String>,
    /// `--region`: this node's region among the policy's `store.regions`.
    pub region: Option<String>,
    /// `--store-timeout`: overrides the policy's `store.timeout`.
    pub store_timeout: Option<Duration>,
    /// The logins of a `redis_sentinel` store (its `Debug` form hides the passwords).
    pub sentinel_auth: spillway_redis::SentinelAuth,
    /// Threads serving HTTP.
    pub http_threads: usize,
    /// How long in-flight requests get after a shutdown signal.
    pub shutdown_grace: Duration,
    /// The policy's origin.
    pub policy: PolicySource,
    /// How `/v1/authorize` reads requests and answers them.
    pub authorize: AuthorizeSettings,
    /// Start of the manual clock (test only), in milliseconds since the epoch.
    pub manual_clock_ms: Option<u64>,
    /// Whether a Redis store runs at the manual clock's time (test only).
    pub manual_clock_in_store: bool,
    /// Envoy's rate-limit service over gRPC.
    pub grpc: GrpcSettings,
    /// Connection caps and timeouts, the same on both ports.
    pub connections: crate::serving::ConnectionLimits,
    /// The tenant catalog's database, if any.
    pub catalog: Option<crate::catalog::settings::CatalogSettings>,
    /// The admin API, if a token is configured.
    pub admin: Option<crate::catalog::settings::AdminSettings>,
    /// The decision log; `None` when off.
    pub decision_log: Option<DecisionLogSettings>,
    /// `--node-name`, else the host name.
    pub node_name: String,
    /// OpenTelemetry traces; `None` when off.
    pub trace: Option<crate::telemetry::trace::TraceSettings>,
    /// How often top-k summaries are published to a Redis store.
    pub top_publish_every: Duration,
    /// Whether the top-k sketches count decisions (`--no-top-k` turns them off).
    pub top_k: bool,
    /// `--top-k-sample`: one consuming decision in this many is counted.
    pub top_k_sample: u32,
    /// `--ui-open`: the dashboard's data for every peer when no admin token is set.
    pub ui_open: bool,
}

impl ServerSettings {
    /// Groups the parsed flags. Values clap could not check on its own are checked here.
    pub fn from_args(args: ServeArgs) -> Result<Self, String> {
        let status = |code: u16| {
            StatusCode::from_u16(code).map_err(|_| format!("`{code}` is not an HTTP status"))
        };
        let prefix = args.descriptor_header_prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() {
            return Err("--descriptor-header-prefix must not be empty".into());
        }
        // Settings of a catalog with no catalog: surely one flag (or variable) left out.
        if args.catalog.catalog.is_none() {
            let orphan = [
                (
                    "--catalog-snapshot",
                    args.catalog.catalog_snapshot.is_some(),
                ),
                ("--catalog-migrate", args.catalog.catalog_migrate),
            ];
            if let Some((flag, _)) = orphan.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{flag} (or its SPILLWAY_ variable) needs --catalog (SPILLWAY_CATALOG), \
                     which is not set"
                ));
            }
        }
        let node_name = match args.node_name.as_deref().map(str::trim) {
            Some("") => return Err("--node-name must not be empty".into()),
            Some(name) => name.to_owned(),
            None => host_name(),
        };
        Ok(Self {
            listen: args.listen,
            max_keys: args.max_keys,
            store_url: args.store_url,
            region: args.region,
            store_timeout: args.store_timeout,
            sentinel_auth: args
                .sentinel_login
                .logins(|name| std::env::var(name).ok())?,
            http_threads: thread_count(args.http_threads),
            shutdown_grace: args.shutdown_grace,
            policy: args
                .config
                .map_or(PolicySource::Builtin, PolicySource::File),
            authorize: AuthorizeSettings {
                allow_status: status(args.allow_status)?,
                deny_status: status(args.deny_status)?,
                invalid_status: status(args.invalid_status)?,
                trusted_proxies: args.trusted_proxies,
                forwarding: ForwardingHeaders {
                    real_ip: args.real_ip_header.0,
                    forwarded_for: args.forwarded_for_header,
                },
                headers: HeaderMapping {
                    method: args.method_header,
                    path: args.path_header,
                    tenant: args.tenant_header,
                    user: args.user_header,
                    tier: args.tier_header,
                    cost: args.cost_header,
                    descriptor_prefix: prefix,
                },
            },
            manual_clock_ms: args.manual_clock,
            manual_clock_in_store: args.manual_clock_in_store,
            node_name: node_name.clone(),
            decision_log: DecisionLogSettings::from_args(args.decision_log, &node_name)?,
            trace: crate::telemetry::trace::TraceSettings::from_args(args.trace, &node_name)?,
            top_publish_every: args.top_publish_every,
            top_k: !args.no_top_k,
            top_k_sample: args.top_k_sample,
            ui_open: args.ui_open,
            grpc: grpc_settings(
                args.grpc_listen,
                args.grpc_policy_domain,
                args.envoy_config,
                args.grpc_threads,
            )?,
            connections: crate::serving::ConnectionLimits {
                max_connections: args.max_connections as usize,
                header_timeout: args.header_timeout,
                idle_timeout: args.idle_timeout,
                max_streams: args.max_streams,
                body_timeout: args.body_timeout,
                max_body_memory: usize::try_from(args.max_body_memory).unwrap_or(usize::MAX),
            }
            .checked()?,
            catalog: args.catalog.catalog(),
            admin: args.catalog.admin()?,
        })
    }
}

/// Checks the gRPC flags: Envoy config files only make sense with a gRPC port to serve them.
fn grpc_settings(
    listen: Option<SocketAddr>,
    policy_domain: String,
    envoy: Vec<PathBuf>,
    threads: Option<u16>,
) -> Result<GrpcSettings, String> {
    if listen.is_none() && !envoy.is_empty() {
        return Err(
            "--envoy-config needs --grpc-listen (the Envoy config is served over gRPC)".into(),
        );
    }
    if policy_domain.trim().is_empty() {
        return Err("--grpc-policy-domain must not be empty".into());
    }
    Ok(GrpcSettings {
        listen,
        policy_domain: policy_domain.trim().to_owned(),
        envoy: EnvoySource { paths: envoy },
        threads: thread_count(threads),
    })
}

/// A `--*-threads` flag's value: one thread per CPU when unset.
fn thread_count(flag: Option<u16>) -> usize {
    flag.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    )
}

/// Where the policy is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A YAML file, watched for changes.
    File(PathBuf),
    /// The example policy compiled into the binary; never changes, so never reloaded.
    Builtin,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the policy file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error("{0}")]
    Invalid(#[from] PolicyError),
}

impl PolicySource {
    /// How the source is named in logs and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Builtin => BUILTIN_POLICY_NAME.to_owned(),
        }
    }

    /// The policy file, if there is one to watch.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Builtin => None,
        }
    }

    /// The policy's current text.
    pub async fn read(&self) -> Result<String, LoadError> {
        match self {
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|source| unreadable(path, source)),
            Self::Builtin => Ok(BUILTIN_POLICY.to_owned()),
        }
    }

    /// [`Self::read`] for the subcommands that read the policy once, outside any runtime
    /// (`validate`, `decisions --config`): the same text, or the same error worded the same.
    pub fn read_blocking(&self) -> Result<String, LoadError> {
        match self {
            Self::File(path) => {
                std::fs::read_to_string(path).map_err(|source| unreadable(path, source))
            }
            Self::Builtin => Ok(BUILTIN_POLICY.to_owned()),
        }
    }

    /// [`Self::read_blocking`], then [`Self::parse_checked`]: the policy as `serve` would
    /// take it, for a subcommand that reads it once.
    pub fn load_checked_blocking(&self, own_store_replaced: bool) -> Result<Policy, LoadError> {
        self.parse_checked(&self.read_blocking()?, own_store_replaced)
    }

    /// Parses and validates `text` as this source's policy; errors name this source.
    pub fn parse(&self, text: &str) -> Result<Policy, LoadError> {
        Ok(Policy::from_yaml_str(text, &self.describe())?)
    }

    /// [`Self::parse`], then the clusters' seeds checked to agree on the login as a node
    /// about to use them checks them ([`Policy::check_seed_logins`]; `own_store_replaced`:
    /// `--store-url` stands in for the policy's `store.nodes`).
    pub fn parse_checked(&self, text: &str, own_store_replaced: bool) -> Result<Policy, LoadError> {
        let policy = self.parse(text)?;
        policy.check_seed_logins(&self.describe(), own_store_replaced)?;
        Ok(policy)
    }
}

/// The policy file at `path` could not be read.
fn unreadable(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The machine's host name (Linux), or `spillway` when it cannot be read.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "spillway".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_policy_is_valid() {
        let policy = PolicySource::Builtin.parse(BUILTIN_POLICY);
        assert!(policy.is_ok(), "{:?}", policy.err().map(|e| e.to_string()));
    }

    #[tokio::test]
    async fn missing_files_say_which_file() {
        let source = PolicySource::File(PathBuf::from("/nonexistent/spillway.yaml"));
        let err = source.read().await.expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/spillway.yaml"),
            "{err}"
        );
    }
}
