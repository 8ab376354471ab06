//! The decision log's flags on `spillway serve`, and their checked form.
//!
//! The log is configured on the command line (and `SPILLWAY_*` variables), not in the policy
//! file: where a node writes, what it calls itself and how much it may write are facts about
//! the process and its machine, like `--log-format`, and the policy file is shared by every
//! node and reloaded while serving, which a sink (an open file, a connection) should not be.
//! Off by default.

use super::privacy::{IpMode, IpPrivacy};
use clap::Args;
use spillway_core::policy::StoreConfig;
use spillway_redis::config::mask_text;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The stream key records are added to when none is given.
pub const DEFAULT_STREAM: &str = "spillway:decisions";

/// Flags of `spillway serve` that set up the decision log.
#[derive(Debug, Args)]
pub struct DecisionLogArgs {
    /// Where to log decisions: `off`, `stdout`, `file:PATH` (JSON lines, rotated), `redis` (a
    /// stream on the store's Redis) or a `redis://host:port` URL (`cluster+redis://a,redis://b`
    /// for a cluster).
    #[arg(long = "decision-log", env = "SPILLWAY_DECISION_LOG", value_name = "SINK",
          default_value = "off", value_parser = SinkParser)]
    pub sink: SinkSpec,

    /// Share of allowed decisions logged, 0 to 1 (denials, shadow denials and degraded
    /// decisions are always logged, up to --decision-log-max-per-second). Each record carries
    /// the rate, so counts can be scaled back up.
    #[arg(long = "decision-log-sample-allowed", env = "SPILLWAY_DECISION_LOG_SAMPLE_ALLOWED",
          value_name = "RATE", default_value = "0.01", value_parser = parse_rate)]
    pub sample_allowed: f64,

    /// Most denied, shadow-denied, degraded and refused decisions logged per second by this
    /// node; the rest are counted in spillway_decision_log_capped_total.
    #[arg(long = "decision-log-max-per-second", env = "SPILLWAY_DECISION_LOG_MAX_PER_SECOND",
          value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_per_second: u32,

    /// How client addresses are written: `full`, `truncate` (to the policy's `ip_prefix`
    /// network, never finer than /24 or /64) or `hash` (keyed by --decision-log-ip-key).
    #[arg(long = "decision-log-ip", env = "SPILLWAY_DECISION_LOG_IP", value_enum,
          default_value_t = IpMode::Full)]
    pub ip: IpMode,

    /// Secret key of `--decision-log-ip hash` (at least 16 characters). Use the same one on
    /// every node so a client hashes alike everywhere; change it to unlink old records.
    #[arg(
        long = "decision-log-ip-key",
        env = "SPILLWAY_DECISION_LOG_IP_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub ip_key: Option<String>,

    /// Records waiting for the writer, at most; past it new ones are dropped and counted in
    /// spillway_decision_log_dropped_total (a request never waits for the log).
    #[arg(long = "decision-log-queue", env = "SPILLWAY_DECISION_LOG_QUEUE", value_name = "N",
          default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue: u32,

    /// File sink: start a new file once the current one would pass this size (`100MiB`,
    /// `10MB`, `4096`).
    #[arg(long = "decision-log-max-size", env = "SPILLWAY_DECISION_LOG_MAX_SIZE",
          value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub max_size: u64,

    /// File sink: start a new file once the current one's first record is this old.
    #[arg(long = "decision-log-max-age", env = "SPILLWAY_DECISION_LOG_MAX_AGE",
          value_name = "DURATION", default_value = "1d", value_parser = parse_duration)]
    pub max_age: Duration,

    /// File sink: rotated files kept; older ones are deleted.
    #[arg(long = "decision-log-keep", env = "SPILLWAY_DECISION_LOG_KEEP", value_name = "N",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub keep: u32,

    /// File sink: rotated files older than this are deleted.
    #[arg(long = "decision-log-retention", env = "SPILLWAY_DECISION_LOG_RETENTION",
          value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Redis sink: the stream's key.
    #[arg(long = "decision-log-stream", env = "SPILLWAY_DECISION_LOG_STREAM", value_name = "KEY",
          default_value = DEFAULT_STREAM)]
    pub stream: String,

    /// Redis sink: about how many records the stream keeps (`XADD MAXLEN ~ N`).
    #[arg(long = "decision-log-stream-maxlen", env = "SPILLWAY_DECISION_LOG_STREAM_MAXLEN",
          value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_maxlen: u64,
}

/// Where records go, as `--decision-log` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// No log (the default).
    Off,
    /// One JSON line per record on standard output.
    Stdout,
    /// JSON lines in this file, rotated by size and age.
    File(PathBuf),
    /// A stream on the Redis (or Redis Cluster) the store uses.
    StoreRedis,
    /// A stream on this Redis deployment.
    Redis(RedisTarget),
}

/// A Redis deployment to write the stream to (or read it from): a server or a cluster, read by
/// [`spillway_redis::config::parse_target`] (its Debug form masks passwords). In a cluster the
/// stream is one key, so it lives on one node.
pub use spillway_redis::config::UrlTarget as RedisTarget;

/// The value parser of `--decision-log`: [`parse_sink`], with an error that shows the value
/// masked. (clap's own "invalid value" message repeats the raw text, which for a mistyped
/// URL would print its password to the terminal and the service's logs.)
#[derive(Debug, Clone, Copy)]
pub struct SinkParser;

impl clap::builder::TypedValueParser for SinkParser {
    type Value = SinkSpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SinkSpec, clap::Error> {
        let flag = arg.map_or_else(|| "--decision-log".to_owned(), ToString::to_string);
        let invalid = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value for '{flag}': {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("the value is not UTF-8".into()))?;
        parse_sink(text).map_err(invalid)
    }
}

/// The store's Redis, for `--decision-log redis`.
pub fn store_target(store: &StoreConfig) -> Result<RedisTarget, String> {
    crate::store::url_target(store).ok_or_else(|| {
        if matches!(store, StoreConfig::RedisSentinel(_)) {
            "--decision-log redis does not follow Sentinel yet; give the master's redis:// URL"
                .into()
        } else {
            "--decision-log redis writes to the store's Redis, but the store is in memory; \
             give a redis:// URL instead"
                .into()
        }
    })
}

/// When the file sink starts a new file and which old ones it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Largest size of one file, in bytes (a single record larger than this gets a file of
    /// its own).
    pub max_size: u64,
    /// Longest time from a file's first record to its rotation.
    pub max_age: Duration,
    /// Rotated files kept.
    pub keep: usize,
    /// Rotated files older than this are deleted.
    pub retention: Duration,
}

/// The checked decision-log settings.
#[derive(Debug, Clone)]
pub struct DecisionLogSettings {
    /// Where records go (never [`SinkSpec::Off`]).
    pub sink: SinkSpec,
    /// Share of allowed decisions logged.
    pub sample_allowed: f64,
    /// Most always-logged records per second.
    pub max_per_second: u32,
    /// How addresses are written.
    pub ip: IpPrivacy,
    /// Capacity of the queue between requests and the writer.
    pub queue: usize,
    /// The file sink's rotation.
    pub rotation: Rotation,
    /// The Redis sink's stream key.
    pub stream: String,
    /// The Redis sink's approximate length cap.
    pub stream_maxlen: u64,
    /// This node's name.
    pub node: Arc<str>,
}

impl DecisionLogSettings {
    /// Checks the flags; `None` when the log is off. `node` names this node in records
    /// (`--node-name`, else the host name).
    pub fn from_args(args: DecisionLogArgs, node: &str) -> Result<Option<Self>, String> {
        if args.sink == SinkSpec::Off {
            return Ok(None);
        }
        let ip = IpPrivacy::new(args.ip, args.ip_key.as_deref())?;
        if args.stream.trim().is_empty() {
            return Err("--decision-log-stream must not be empty".into());
        }
        Ok(Some(Self {
            sink: args.sink,
            sample_allowed: args.sample_allowed,
            max_per_second: args.max_per_second,
            ip,
            queue: args.queue as usize,
            rotation: Rotation {
                max_size: args.max_size,
                max_age: args.max_age,
                keep: args.keep as usize,
                retention: args.retention,
            },
            stream: args.stream.trim().to_owned(),
            stream_maxlen: args.stream_maxlen,
            node: node.into(),
        }))
    }
}

/// Reads `--decision-log`.
pub fn parse_sink(text: &str) -> Result<SinkSpec, String> {
    let text = text.trim();
    match text {
        "off" | "" => return Ok(SinkSpec::Off),
        "stdout" => return Ok(SinkSpec::Stdout),
        "redis" => return Ok(SinkSpec::StoreRedis),
        _ => {}
    }
    if let Some(path) = text.strip_prefix("file:") {
        if path.trim().is_empty() {
            return Err("`file:` needs a path, e.g. file:/var/log/spillway/decisions.jsonl".into());
        }
        return Ok(SinkSpec::File(PathBuf::from(path.trim())));
    }
    if text.contains("redis://") || text.contains("rediss://") {
        return spillway_redis::config::parse_target(text)
            .map(SinkSpec::Redis)
            .map_err(|err| err.to_string());
    }
    Err(format!(
        "`{}` is not a decision-log sink: use off, stdout, file:PATH, redis or a redis:// URL",
        mask_text(text)
    ))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate between 0 and 1 (e.g. 0.01)"
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    spillway_core::rate::parse_duration(text).map(Duration::from_micros)
}

/// Reads a size as [`crate::cli::parse_size`] does, of at least 1 KiB, so a file holds some
/// records.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size = crate::cli::parse_size(text)?;
    if size < 1024 {
        return Err(format!(
            "`{text}`: a log file must be allowed at least 1KiB"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse_and_nonsense_is_named() {
        assert_eq!(parse_sink("off"), Ok(SinkSpec::Off));
        assert_eq!(parse_sink("stdout"), Ok(SinkSpec::Stdout));
        assert_eq!(parse_sink("redis"), Ok(SinkSpec::StoreRedis));
        assert_eq!(
            parse_sink("file:/var/log/d.jsonl"),
            Ok(SinkSpec::File("/var/log/d.jsonl".into()))
        );
        assert_eq!(
            parse_sink("redis://127.0.0.1:6379"),
            Ok(SinkSpec::Redis(RedisTarget::Server(
                "redis://127.0.0.1:6379".into()
            )))
        );
        assert!(matches!(
            parse_sink("cluster+redis://a:1,redis://b:2"),
            Ok(SinkSpec::Redis(RedisTarget::Cluster(urls))) if urls.len() == 2
        ));
        for bad in ["file:", "kafka", "redis://a:1,redis://b:2"] {
            let err = parse_sink(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn sizes_and_rates_are_checked() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10").is_err(), "too small");
        assert!(parse_size("1TB").is_err(), "unknown unit");
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_rate("0.01"), Ok(0.01));
        assert!(parse_rate("1.5").is_err() && parse_rate("-0.1").is_err());
    }

    #[test]
    fn a_redis_sink_password_is_never_shown() {
        for text in [
            "redis://:s3cret@127.0.0.1:6379",
            "cluster+redis://user:s3cret@a:1,redis://user:s3cret@b:2",
        ] {
            let spec = parse_sink(text).unwrap();
            let shown = format!("{spec:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("****"), "{shown}");
        }
        // Nor in the errors of a mistyped one.
        for text in [
            "redis://:s3cret@a:1,redis://:s3cret@b:2",
            "redis://:s3cret@a:1,http://b",
        ] {
            let err = parse_sink(text).expect_err(text);
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_mistyped_url_is_refused_without_its_password() {
        // (`mask_text`'s own cases are in spillway_redis::config.)
        for text in [
            "redis:/:s3cret@h:1",
            "redis://u:s3c,ret@h:1",
            "cluster+redis://u:s3c,ret@a,http://b",
            "http://:s3cret@h",
            "redis//u:s3cret@h",
        ] {
            let err = parse_sink(text).expect_err(text);
            assert!(
                !err.contains("s3c") && !err.contains("ret@") && err.contains("****"),
                "{err}"
            );
        }
    }
}
