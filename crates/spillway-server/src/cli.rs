//! The command line: `spillway serve`, `spillway validate`, `spillway check`,
//! `spillway decisions` and `spillway catalog`.
//!
//! Every `serve` flag can also come from a `SPILLWAY_*` environment variable (named in each
//! flag's help), so a container can be configured without a wrapper script. A flag on the
//! command line wins over the environment. The one exception is the hidden, test-only
//! `--manual-clock`, which has no variable so that a stray environment can never freeze time in
//! production.

use crate::http::client_ip::TrustedProxies;
use crate::telemetry::decision_log::query::DecisionsArgs;
use crate::telemetry::decision_log::DecisionLogArgs;
use axum::http::HeaderName;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Spillway: a rate limiter you can put behind a reverse proxy or call directly.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one per job the binary does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the decision server (HTTP API, proxy auth endpoint, probes and metrics).
    ///
    /// Without --config it serves the example policy built into the binary, with the
    /// in-memory store. SIGTERM or SIGINT shut it down gracefully; SIGHUP reloads the policy.
    Serve(Box<ServeArgs>),
    /// Check a policy file, envoyproxy/ratelimit config files, or both, and report every
    /// problem with its file, line and field.
    ///
    /// Exits 0 and prints a summary of each part when all is valid; exits 1 and prints one
    /// problem per line on stderr when anything is not.
    Validate(ValidateArgs),
    /// Ask a running server for a verdict and print it with the rate-limit headers.
    ///
    /// Exit status: 0 when the request is allowed, 1 when it is denied, 2 when no verdict
    /// could be had (server unreachable, bad arguments, unexpected response).
    Check(CheckArgs),
    /// Read and change the tenant catalog directly in its database (no server needed):
    /// migrate, get, put, patch, delete, list, add-key, import, export.
    ///
    /// Writes are checked against the policy (--config, else the built-in one) as the admin
    /// API checks them. Exit status: 0 done, 1 refused / not found / version conflict, 2 bad
    /// usage or the database unreachable.
    Catalog(crate::catalog::cli::CatalogCli),
    /// Read the decision log back (from its file or its Redis stream) and print the
    /// decisions that match as a table, or as JSON lines.
    ///
    /// Exit status: 0 when the log could be read (even if nothing matched), 2 when not.
    Decisions(DecisionsArgs),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flags of `spillway serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Policy file (YAML). Watched for changes; omit to run on the built-in example policy.
    #[arg(long, env = "SPILLWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port (the chosen address is logged).
    #[arg(
        long,
        env = "SPILLWAY_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        value_parser = parse_listen
    )]
    pub listen: SocketAddr,

    /// Most rate-limit keys the in-memory store holds; past it, keys closest to expiry are
    /// evicted first (and counted in spillway_store_evictions_total).
    #[arg(long, env = "SPILLWAY_MAX_KEYS", value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_keys: u64,

    /// Store override: `memory`, `redis://host:port`, `cluster+redis://a:6379,redis://b:6379`,
    /// or `sentinel:<master>@redis://a:26379,redis://b:26379`
    /// for a Redis Cluster's seed nodes. Wins over the policy's `store:` section.
    #[arg(long, env = "SPILLWAY_STORE_URL", value_name = "URL")]
    pub store_url: Option<String>,

    /// This node's region, one of the policy's `store.regions`: its store is the node's own,
    /// and `home` and `aggregate` limits count across the others (docs/GLOBAL.md).
    #[arg(long, env = "SPILLWAY_REGION", value_name = "NAME")]
    pub region: Option<String>,

    /// Time budget of one call to a shared (Redis) store, e.g. `10ms`; past it the route's
    /// failure mode decides. Wins over the policy's `store.timeout` (default 10ms).
    #[arg(long, env = "SPILLWAY_STORE_TIMEOUT", value_name = "DURATION",
          value_parser = parse_grace)]
    pub store_timeout: Option<Duration>,

    /// Log line format.
    #[arg(long, env = "SPILLWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's `EnvFilter` syntax (e.g. `info` or `spillway_server=debug`).
    #[arg(
        long,
        env = "SPILLWAY_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_filter: String,

    /// Threads serving HTTP, each with its own event loop and its share of the connections;
    /// one per CPU when unset.
    #[arg(long, env = "SPILLWAY_HTTP_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub http_threads: Option<u16>,

    /// Most connections open at once on each port (HTTP, and gRPC when on). With every one
    /// taken, new clients wait in the kernel's backlog until a connection closes; keep it below
    /// the process's file-descriptor limit.
    #[arg(long, env = "SPILLWAY_MAX_CONNECTIONS", value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most concurrent HTTP/2 streams on one connection, on both ports. Envoy multiplexes many
    /// calls on a few connections, so keep it generous.
    #[arg(long, env = "SPILLWAY_MAX_STREAMS", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,

    /// HTTP/1: longest time a client may take to send a request's headers (a slowloris is cut
    /// off after it). It also bounds the wait for the next request on a keep-alive connection.
    #[arg(long, env = "SPILLWAY_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_grace)]
    pub header_timeout: Duration,

    /// Longest time a connection (HTTP/1 or HTTP/2, either port) stays open with no request
    /// in flight; it is then closed gracefully.
    #[arg(long, env = "SPILLWAY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = parse_grace)]
    pub idle_timeout: Duration,

    /// Longest time a request body may take to arrive once the server waits for it; past it
    /// the request is cut off with HTTP 408 or gRPC DEADLINE_EXCEEDED.
    #[arg(long, env = "SPILLWAY_BODY_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_grace)]
    pub body_timeout: Duration,

    /// Most memory held at once, across every port, by requests waiting for the rest of
    /// their bodies: 16 KiB for each one's head plus the body bytes received (bodies that come
    /// whole, as Envoy's calls do, count nothing). A request that would pass it is refused at
    /// once: HTTP 503 on /v1/check and /v1/report, gRPC RESOURCE_EXHAUSTED. At least 32KiB.
    #[arg(long, env = "SPILLWAY_MAX_BODY_MEMORY", value_name = "SIZE", default_value = "64MiB",
          value_parser = parse_size)]
    pub max_body_memory: u64,

    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    #[arg(long, env = "SPILLWAY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s",
          value_parser = parse_grace)]
    pub shutdown_grace: Duration,

    /// Status /v1/authorize answers on deny. nginx auth_request only understands 401 and 403
    /// (anything else becomes a 500), so set 403 behind nginx and map it back to 429 there.
    #[arg(long, env = "SPILLWAY_DENY_STATUS", value_name = "STATUS", default_value_t = 429,
          value_parser = clap::value_parser!(u16).range(400..500))]
    pub deny_status: u16,

    /// Status /v1/authorize answers when the request's headers cannot be read (a cost that is
    /// not a number, two values for one descriptor, a value that is not UTF-8). Behind nginx
    /// set 401: nginx treats anything but 2xx/401/403 as its own error, which a fail-open
    /// `error_page` would let through unlimited; map 401 back to 400 there.
    #[arg(long, env = "SPILLWAY_INVALID_STATUS", value_name = "STATUS", default_value_t = 400,
          value_parser = clap::value_parser!(u16).range(400..500))]
    pub invalid_status: u16,

    /// Status /v1/authorize answers on allow: 200 (what Envoy requires) or 204.
    #[arg(long, env = "SPILLWAY_ALLOW_STATUS", value_name = "STATUS", default_value_t = 200,
          value_parser = parse_allow_status)]
    pub allow_status: u16,

    /// Comma-separated CIDRs whose forwarding headers are believed for the client IP on
    /// /v1/authorize; `none` trusts no one. Requests from anywhere else are keyed by their TCP
    /// peer address.
    #[arg(long, env = "SPILLWAY_TRUSTED_PROXIES", value_name = "CIDRS",
          default_value = "127.0.0.0/8,::1/128", value_parser = parse_trusted)]
    pub trusted_proxies: TrustedProxies,

    /// Headers carrying the original method on /v1/authorize, tried in order; two with
    /// different values are refused.
    #[arg(long, env = "SPILLWAY_METHOD_HEADER", value_name = "NAMES", value_delimiter = ',',
          default_value = "X-Original-Method,X-Forwarded-Method", value_parser = parse_header)]
    pub method_header: Vec<HeaderName>,

    /// Headers carrying the original path on /v1/authorize, tried in order; two with
    /// different values are refused.
    #[arg(long, env = "SPILLWAY_PATH_HEADER", value_name = "NAMES", value_delimiter = ',',
          default_value = "X-Original-URI,X-Forwarded-Uri", value_parser = parse_header)]
    pub path_header: Vec<HeaderName>,

    /// Headers carrying the tenant on /v1/authorize, tried in order; two with
    /// different values are refused.
    #[arg(long, env = "SPILLWAY_TENANT_HEADER", value_name = "NAMES", value_delimiter = ',',
          default_value = "X-Tenant-Id", value_parser = parse_header)]
    pub tenant_header: Vec<HeaderName>,

    /// Headers carrying the user on /v1/authorize, tried in order; two with
    /// different values are refused.
    #[arg(long, env = "SPILLWAY_USER_HEADER", value_name = "NAMES", value_delimiter = ',',
          default_value = "X-User-Id", value_parser = parse_header)]
    pub user_header: Vec<HeaderName>,

    /// Headers carrying an explicit tier on /v1/authorize, tried in order (e.g. `X-Tier`).
    /// None by default: proxies pass the client's own headers along, and a client that could
    /// name its tier would pick the largest. Set it only if your proxy sets or removes it.
    #[arg(long, env = "SPILLWAY_TIER_HEADER", value_name = "NAMES", value_delimiter = ',',
          value_parser = parse_header)]
    pub tier_header: Vec<HeaderName>,

    /// Headers carrying an explicit cost on /v1/authorize, tried in order (e.g.
    /// `X-RateLimit-Cost`). None by default: a client that could send its own cost would send
    /// 0 and never be counted. Set it only if your proxy sets or removes it.
    #[arg(long, env = "SPILLWAY_COST_HEADER", value_name = "NAMES", value_delimiter = ',',
          value_parser = parse_header)]
    pub cost_header: Vec<HeaderName>,

    /// Header name prefix for custom descriptors on /v1/authorize: `X-Descriptor-Region: eu`
    /// sets descriptor `region`. The rest of the name matches a declared descriptor ignoring
    /// case, `-` and `_` (`X-Descriptor-Api-Key` reaches `api_key`, `api-key` or `apiKey`).
    #[arg(
        long,
        env = "SPILLWAY_DESCRIPTOR_HEADER_PREFIX",
        value_name = "PREFIX",
        default_value = "X-Descriptor-"
    )]
    pub descriptor_header_prefix: String,

    /// Header a trusted proxy puts the client IP in; consulted before the forwarded-for chain.
    /// Only for proxies that overwrite it (nginx with `proxy_set_header X-Real-IP`); `none`
    /// for those that pass a client's own along and append the chain instead (Envoy, Traefik).
    #[arg(long, env = "SPILLWAY_REAL_IP_HEADER", value_name = "NAME|none",
          default_value = "X-Real-IP", value_parser = parse_real_ip_header)]
    pub real_ip_header: RealIpHeader,

    /// Header holding the forwarded-for chain; its rightmost untrusted hop is the client.
    #[arg(long, env = "SPILLWAY_FORWARDED_FOR_HEADER", value_name = "NAME",
          default_value = "X-Forwarded-For", value_parser = parse_header)]
    pub forwarded_for_header: HeaderName,

    /// Serve Envoy's rate-limit gRPC service (RLS v3) and gRPC health on this address; off
    /// when unset. Port 0 picks a free port (logged as `grpc listening on <addr>`).
    #[arg(long, env = "SPILLWAY_GRPC_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    pub grpc_listen: Option<SocketAddr>,

    /// The gRPC domain whose descriptors are judged by the main policy (entries `tenant`,
    /// `user`, `ip`/`remote_address`, `method`, `path`, `tier`, or a declared descriptor).
    #[arg(
        long,
        env = "SPILLWAY_GRPC_POLICY_DOMAIN",
        value_name = "DOMAIN",
        default_value = "spillway"
    )]
    pub grpc_policy_domain: String,

    /// Threads serving gRPC, each with its own event loop and its share of the connections;
    /// one per CPU when unset. HTTP/2 costs far less per call when a connection's streams
    /// stay on one thread.
    #[arg(long, env = "SPILLWAY_GRPC_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub grpc_threads: Option<u16>,

    /// envoyproxy/ratelimit config file or directory (one domain per file); repeat, or
    /// separate with commas in the variable. Watched and reloaded like the policy.
    #[arg(
        long,
        env = "SPILLWAY_ENVOY_CONFIG",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub envoy_config: Vec<PathBuf>,

    /// The logins of a `redis_sentinel` store.
    #[command(flatten)]
    pub sentinel_login: crate::store::sentinel_login::SentinelLoginArgs,
    /// The tenant catalog's database and the admin API.
    #[command(flatten)]
    pub catalog: crate::catalog::settings::CatalogArgs,
    /// The decision log (off by default).
    #[command(flatten)]
    pub decision_log: DecisionLogArgs,
    /// OpenTelemetry traces (off by default).
    #[command(flatten)]
    pub trace: crate::telemetry::trace::TraceArgs,
    /// This node's name in `/v1/top` answers, in the summaries it shares through Redis, in
    /// decision-log records and as traces' `service.instance.id` (default: the host name).
    #[arg(long, env = "SPILLWAY_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Count nothing for `/v1/top` and `spillway_top_blocked` (the hot-key and most-denied
    /// sketches cost each decision a few tens of nanoseconds per limit when on).
    #[arg(long, env = "SPILLWAY_NO_TOP_K")]
    pub no_top_k: bool,

    /// Count one consuming decision in N for `/v1/top` and `spillway_top_blocked`, each with
    /// weight N: a power of two from 1 (every decision, exact) to 1024. Sampling keeps the
    /// sketches' cost per decision low; counts become estimates (a heavy key's within a few
    /// percent, either way).
    #[arg(long, env = "SPILLWAY_TOP_K_SAMPLE", value_name = "N",
          default_value_t = crate::telemetry::top::DEFAULT_SAMPLE, value_parser = parse_top_k_sample)]
    pub top_k_sample: u32,

    /// Serve the dashboard's data (`/ui/api/*`) and `/v1/top` to every peer when no admin
    /// token is set (by default they answer only loopback peers that name a loopback `Host`).
    #[arg(long, env = "SPILLWAY_UI_OPEN")]
    pub ui_open: bool,

    /// How often this node publishes its top-k summaries to a Redis store.
    #[arg(long, env = "SPILLWAY_TOP_PUBLISH_EVERY", value_name = "DURATION",
          default_value = "5s", value_parser = parse_grace, hide = true)]
    pub top_publish_every: Duration,

    /// TEST ONLY: run on a manual clock starting at this many milliseconds since the epoch,
    /// and expose `POST /debug/clock` to move it. Never use in production.
    #[arg(long, value_name = "START_MS", hide = true)]
    pub manual_clock: Option<u64>,

    /// TEST ONLY: with `--manual-clock`, a Redis store's scripts run at the manual clock's
    /// time instead of Redis `TIME`, so tests can step a shared store's time too.
    #[arg(long, hide = true, requires = "manual_clock")]
    pub manual_clock_in_store: bool,
}

/// Arguments of `spillway validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The policy file to check (optional when --envoy-config is given).
    #[arg(value_name = "FILE", required_unless_present = "envoy_config")]
    pub file: Option<PathBuf>,

    /// envoyproxy/ratelimit config files or directories to check as well (or alone), read
    /// exactly as `serve --envoy-config` reads them: repeat, or separate with commas.
    #[arg(long, value_name = "PATH", value_delimiter = ',')]
    pub envoy_config: Vec<PathBuf>,
}

/// Arguments of `spillway check`: the attributes of the request to ask about.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base URL of the running server.
    #[arg(
        long,
        env = "SPILLWAY_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Tenant of the request.
    #[arg(long)]
    pub tenant: Option<String>,
    /// User of the request.
    #[arg(long)]
    pub user: Option<String>,
    /// Client IP address of the request (per-IP limits count it by network, so it must be
    /// an IPv4 or IPv6 address).
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// HTTP method of the request.
    #[arg(long)]
    pub method: Option<String>,
    /// Path of the request.
    #[arg(long)]
    pub path: Option<String>,
    /// Explicit tier (otherwise the tenant's or the policy's default tier applies).
    #[arg(long)]
    pub tier: Option<String>,
    /// Explicit cost (otherwise the matched route's cost, or 1).
    #[arg(long, value_name = "N")]
    pub cost: Option<u64>,
    /// A custom descriptor as NAME=VALUE; repeat for several.
    #[arg(long = "descriptor", value_name = "NAME=VALUE", value_parser = parse_descriptor)]
    pub descriptors: Vec<(String, String)>,
    /// Only report what would happen; consume nothing.
    #[arg(long)]
    pub peek: bool,
}

/// An address to listen on, `IP:PORT`; host names are not resolved, and the message says so
/// (the standard library's says only "invalid socket address syntax").
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not IP:PORT (a host name is not resolved, and the port is 0 to 65535): \
             e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
        )
    })
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    spillway_core::rate::parse_duration(text).map(Duration::from_micros)
}

/// Reads a size: a whole number of bytes, optionally followed by `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let unit_size: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_size))
        .ok_or_else(|| format!("`{text}` is not a size such as 100MiB"))
}

fn parse_top_k_sample(text: &str) -> Result<u32, String> {
    let max = crate::telemetry::top::MAX_SAMPLE;
    match text.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= max => Ok(n),
        _ => Err(format!(
            "`{text}` is not a power of two from 1 to {max} (one decision in N is counted)"
        )),
    }
}

fn parse_allow_status(text: &str) -> Result<u16, String> {
    match text.trim() {
        "200" => Ok(200),
        "204" => Ok(204),
        other => Err(format!("`{other}` is not 200 or 204")),
    }
}

fn parse_trusted(text: &str) -> Result<TrustedProxies, String> {
    text.parse()
}

fn parse_header(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("`{text}` is not a valid HTTP header name"))
}

/// `--real-ip-header`: a header name, or `none` to walk the forwarded-for chain only.
#[derive(Debug, Clone)]
pub struct RealIpHeader(pub Option<HeaderName>);

fn parse_real_ip_header(text: &str) -> Result<RealIpHeader, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(RealIpHeader(None));
    }
    parse_header(text).map(|name| RealIpHeader(Some(name)))
}

fn parse_descriptor(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` must look like NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_takes_only_an_address_for_ip() {
        let cli = Cli::try_parse_from(["spillway", "check", "--ip", "2001:DB8::1"])
            .expect("an address parses");
        let Command::Check(args) = cli.command else {
            panic!("expected check");
        };
        assert_eq!(args.ip, "2001:db8::1".parse().ok());
        let err = Cli::try_parse_from(["spillway", "check", "--ip", "office"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--ip") && err.contains("office"), "{err}");
    }

    #[test]
    fn serve_defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["spillway", "serve"]).expect("defaults parse");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.deny_status, 429);
        assert_eq!(args.allow_status, 200);
        assert_eq!(args.shutdown_grace, Duration::from_secs(10));
        assert_eq!(args.method_header.len(), 2);
        assert_eq!(args.method_header[0], "x-original-method");
        assert_eq!(args.invalid_status, 400);
        // A client's own tier or cost is never read unless the operator names a header.
        assert!(args.tier_header.is_empty() && args.cost_header.is_empty());
        assert_eq!(
            args.real_ip_header.0.as_ref().map(|h| h.as_str()),
            Some("x-real-ip")
        );
        assert!(args.manual_clock.is_none());
        assert_eq!(args.top_k_sample, crate::telemetry::top::DEFAULT_SAMPLE);
        let limits = crate::serving::ConnectionLimits::DEFAULT;
        assert_eq!(args.max_connections as usize, limits.max_connections);
        assert_eq!(args.max_streams, limits.max_streams);
        assert_eq!(args.header_timeout, limits.header_timeout);
        assert_eq!(args.idle_timeout, limits.idle_timeout);
        assert_eq!(args.body_timeout, limits.body_timeout);
        assert_eq!(args.max_body_memory as usize, limits.max_body_memory);

        let cli = Cli::try_parse_from(["spillway", "serve", "--real-ip-header", "none"])
            .expect("none parses");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert!(args.real_ip_header.0.is_none());
    }

    #[test]
    fn bad_values_are_refused() {
        for argv in [
            &["spillway", "serve", "--deny-status", "200"][..],
            &["spillway", "serve", "--allow-status", "201"],
            &["spillway", "serve", "--invalid-status", "500"],
            &["spillway", "serve", "--trusted-proxies", "10.0.0.0/33"],
            &["spillway", "serve", "--shutdown-grace", "10"],
            &["spillway", "serve", "--max-keys", "0"],
            &["spillway", "serve", "--max-connections", "0"],
            &["spillway", "serve", "--max-streams", "0"],
            &["spillway", "serve", "--idle-timeout", "soon"],
            &["spillway", "serve", "--top-k-sample", "0"],
            &["spillway", "serve", "--top-k-sample", "6"],
            &["spillway", "serve", "--top-k-sample", "2048"],
            &["spillway", "serve", "--top-k-sample", "1/8"],
            &["spillway", "check", "--descriptor", "novalue"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} should fail");
        }
    }

    #[test]
    fn manual_clock_is_hidden_from_help() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve exists");
        let help = serve.render_long_help().to_string();
        assert!(!help.contains("manual-clock"), "{help}");
        assert!(help.contains("SPILLWAY_LISTEN"), "{help}");
    }
}
