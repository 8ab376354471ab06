//! `spillway decisions`: reads the decision log back, from a file (and its rotated files) or
//! from the Redis stream, filters it and prints a table a support engineer can read, or the
//! records as JSON lines.
//!
//! The newest `--limit` matching records of the last `--since` are shown, oldest first. The
//! stream is read newest first with `XREVRANGE key + <since in ms>` in pages, so a long
//! stream is never read whole; files rotated before `--since` are skipped unopened.

use super::record::{parse_rfc3339_ms, Line};
use super::settings::{store_target, RedisTarget, SinkParser, SinkSpec, DEFAULT_STREAM};
use super::sink::file::rotated;
use crate::config::PolicySource;
use clap::Args;
use spillway_core::policy::StoreConfig;
use spillway_core::time::{Clock, Micros, SystemClock};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Entries asked for per `XREVRANGE` call.
const PAGE: usize = 500;

/// Arguments of `spillway decisions`.
#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Only this tenant's decisions.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this user's decisions.
    #[arg(long)]
    pub user: Option<String>,
    /// How far back to look: `15m`, `2h`, `1d`.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub since: Duration,
    /// Only requests that were not let through (denied, refused, or denied while degraded);
    /// reports of costs are not requests and are left out.
    #[arg(long)]
    pub denied: bool,
    /// Most records shown (the newest ones).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub limit: u32,
    /// Print the records as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read this log file and its rotated files.
    #[arg(long, value_name = "PATH", conflicts_with = "redis")]
    pub file: Option<PathBuf>,
    /// Read the stream on this Redis: `redis://host:port`, or `cluster+redis://a,redis://b`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// The stream's key.
    #[arg(long, env = "SPILLWAY_DECISION_LOG_STREAM", value_name = "KEY",
          default_value = DEFAULT_STREAM)]
    pub stream: String,
    /// Without --file or --redis: where `serve` writes (its --decision-log value: `file:PATH`,
    /// a redis:// URL, or `redis` for the store's Redis).
    #[arg(long = "decision-log", env = "SPILLWAY_DECISION_LOG", value_name = "SINK",
          value_parser = SinkParser)]
    pub sink: Option<SinkSpec>,
    /// With `--decision-log redis`: the store's URL, as `serve --store-url` takes it.
    #[arg(long, env = "SPILLWAY_STORE_URL", value_name = "URL")]
    pub store_url: Option<String>,
    /// With `--decision-log redis` and no store URL: the policy whose `store:` names the Redis.
    #[arg(long, env = "SPILLWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where records are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A log file and its rotated files.
    File(PathBuf),
    /// A stream: where, its key, and which setting gave the URL (what a refused login asks
    /// to check).
    Redis(RedisTarget, String, &'static str),
}

/// Which records to show.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Earliest time shown.
    pub since: Micros,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only requests not let through.
    pub denied: bool,
    /// Most records kept (the newest).
    pub limit: usize,
}

impl Filter {
    pub(crate) fn matches(&self, line: &Line) -> bool {
        parse_rfc3339_ms(&line.time).is_some_and(|t| t >= self.since)
            && self
                .tenant
                .as_ref()
                // Records keep a tenant's first bytes: look for those.
                .is_none_or(|t| line.tenant.as_deref() == Some(super::record::kept(t).as_str()))
            && self
                .user
                .as_ref()
                .is_none_or(|u| line.user.as_ref() == Some(u))
            && !(self.denied && (line.allowed || line.outcome.is_report()))
    }
}

/// A record read back, with its text as stored.
#[derive(Debug, Clone)]
pub struct Found {
    /// The record.
    pub line: Line,
    /// Its JSON, as stored.
    pub json: String,
}

/// Runs the subcommand: 0 when the log could be read (even if nothing matched), 2 when not.
pub fn main(args: &DecisionsArgs) -> ExitCode {
    let result = source(args).and_then(|source| {
        let filter = Filter {
            since: SystemClock
                .now()
                .saturating_sub(u64::try_from(args.since.as_micros()).unwrap_or(u64::MAX)),
            tenant: args.tenant.clone(),
            user: args.user.clone(),
            denied: args.denied,
            limit: args.limit as usize,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        runtime.block_on(read(&source, &filter))
    });
    match result {
        Ok(found) => {
            let text = if args.json {
                found.iter().fold(String::new(), |mut out, f| {
                    out.push_str(&f.json);
                    out.push('\n');
                    out
                })
            } else {
                table(&found)
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("spillway decisions: {err}");
            ExitCode::from(2)
        }
    }
}

/// Where to read, from the flags or (as `serve` does) the environment.
pub fn source(args: &DecisionsArgs) -> Result<Source, String> {
    let stream = args.stream.clone();
    if let Some(path) = &args.file {
        return Ok(Source::File(path.clone()));
    }
    if let Some(url) = &args.redis {
        let target =
            spillway_redis::config::parse_target(url).map_err(|e| format!("--redis {e}"))?;
        return Ok(Source::Redis(
            target,
            stream,
            crate::store::login_hints::REDIS_FLAG,
        ));
    }
    match &args.sink {
        Some(SinkSpec::File(path)) => Ok(Source::File(path.clone())),
        Some(SinkSpec::Redis(target)) => Ok(Source::Redis(
            target.clone(),
            stream,
            crate::store::login_hints::DECISION_LOG,
        )),
        Some(SinkSpec::StoreRedis) => {
            use crate::store::login_hints;
            let (store, hint) = match (&args.store_url, &args.config) {
                (Some(url), _) => (
                    crate::store::effective(&StoreConfig::Memory { max_keys: None }, Some(url))?,
                    login_hints::STORE_FLAG,
                ),
                (None, Some(path)) => {
                    let policy = PolicySource::File(path.clone())
                        .load_checked_blocking(false)
                        .map_err(|e| e.to_string())?;
                    (policy.store().clone(), login_hints::STORE_POLICY)
                }
                (None, None) => {
                    return Err(
                        "the log is on the store's Redis: give --store-url or --config \
                                (or --redis URL)"
                            .into(),
                    )
                }
            };
            Ok(Source::Redis(store_target(&store)?, stream, hint))
        }
        Some(SinkSpec::Stdout) => Err(
            "the decision log is written to stdout, which cannot be read back; \
             use --file PATH or --redis URL"
                .into(),
        ),
        Some(SinkSpec::Off) | None => {
            Err("say where the decision log is: --file PATH or --redis URL \
             (or set SPILLWAY_DECISION_LOG as for serve)"
                .into())
        }
    }
}

/// The newest `filter.limit` matching records of `source`, oldest first.
pub async fn read(source: &Source, filter: &Filter) -> Result<Vec<Found>, String> {
    match source {
        Source::File(path) => read_files(path, filter),
        Source::Redis(target, key, check) => read_stream(target, key, check, filter).await,
    }
}

fn read_files(path: &Path, filter: &Filter) -> Result<Vec<Found>, String> {
    let mut files: Vec<PathBuf> = rotated(path)
        .into_iter()
        .filter(|(_, closed)| *closed >= filter.since)
        .map(|(file, _)| file)
        .collect();
    if path.exists() {
        files.push(path.to_path_buf());
    } else if files.is_empty() {
        return Err(format!("{}: no such decision log", path.display()));
    }
    let mut kept = VecDeque::with_capacity(filter.limit.min(4096));
    // Lines that are no record: one torn by a write in progress, or a file that is no
    // decision log at all (which would otherwise read as a log with nothing in it).
    let mut skipped = 0usize;
    for file in files {
        let reader = match std::fs::File::open(&file) {
            Ok(f) => BufReader::new(f),
            // Rotated away or pruned while being listed: its records are elsewhere or gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        for json in reader.lines() {
            let json = json.map_err(|e| format!("{}: {e}", file.display()))?;
            let Ok(line) = serde_json::from_str::<Line>(&json) else {
                skipped += usize::from(!json.trim().is_empty());
                continue;
            };
            if filter.matches(&line) {
                if kept.len() == filter.limit {
                    kept.pop_front();
                }
                kept.push_back(Found { line, json });
            }
        }
    }
    if skipped > 0 {
        eprintln!(
            "spillway decisions: {skipped} lines of {} are not decision records; skipped",
            path.display()
        );
    }
    Ok(kept.into())
}

async fn read_stream(
    target: &RedisTarget,
    key: &str,
    check: &str,
    filter: &Filter,
) -> Result<Vec<Found>, String> {
    let fail = |e: redis::RedisError| format!("Redis stream `{key}` on {target:?}: {e}");
    let refusal = spillway_redis::login::Refusal::of("decision log", check);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Read once: any failure is worth asking the seeds whether one refused the login.
    let ask = spillway_redis::login::AskSeeds::Always;
    let how = spillway_redis::connection::ConnectOptions {
        refusal,
        deadline,
        retries: 1,
        ask,
    };
    let mut conn = spillway_redis::connection::Conn::connect(target, how)
        .await
        .map_err(fail)?;
    let start = format!("{}-0", filter.since / 1_000);
    let mut end = "+".to_owned();
    let mut found = Vec::new();
    'pages: loop {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key).arg(&end).arg(&start).arg("COUNT").arg(PAGE);
        let page: Vec<(String, Vec<String>)> = conn.query(&cmd).await.map_err(fail)?;
        for (id, fields) in &page {
            let json = fields
                .chunks(2)
                .find(|pair| pair[0] == "record")
                .and_then(|pair| pair.get(1));
            if let Some(json) = json {
                if let Ok(line) = serde_json::from_str::<Line>(json) {
                    if filter.matches(&line) {
                        found.push(Found {
                            line,
                            json: json.clone(),
                        });
                        if found.len() == filter.limit {
                            break 'pages;
                        }
                    }
                }
            }
            end = match before(id) {
                Some(id) => id,
                None => break 'pages,
            };
        }
        if page.len() < PAGE {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// The stream id just before `id` (`ms-seq`), for paging backwards on any Redis version.
fn before(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    match (ms, seq) {
        (0, 0) => None,
        (ms, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (ms, seq) => Some(format!("{ms}-{}", seq - 1)),
    }
}

/// The records as an aligned table. Every cell is
/// [`printable`](spillway_core::text::printable): tenants, users and node names come from
/// callers, and a terminal must not run what they hold.
pub fn table(found: &[Found]) -> String {
    const HEAD: [&str; 9] = [
        "TIME",
        "NODE",
        "TENANT",
        "USER",
        "ROUTE",
        "OUTCOME",
        "LIMIT",
        "REMAINING",
        "RETRY",
    ];
    if found.is_empty() {
        return "no matching decisions\n".to_owned();
    }
    let dash = || "-".to_owned();
    let rows: Vec<[String; 9]> = found
        .iter()
        .map(|f| {
            let l = &f.line;
            [
                l.time.clone(),
                l.node.clone(),
                l.tenant.clone().unwrap_or_else(dash),
                l.user.clone().unwrap_or_else(dash),
                l.route
                    .clone()
                    .or_else(|| l.domain.clone())
                    .unwrap_or_else(dash),
                match &l.degraded {
                    Some(mode) if l.outcome.as_str() == "degraded" => {
                        format!(
                            "degraded ({mode}, {})",
                            if l.allowed { "allowed" } else { "denied" }
                        )
                    }
                    // A report's cost is what a reader looks for.
                    _ if l.outcome.is_report() => {
                        format!("{} (cost {})", l.outcome.as_str(), l.cost)
                    }
                    _ => l.outcome.as_str().to_owned(),
                },
                l.limit.as_ref().map_or_else(dash, |g| g.name.clone()),
                l.limit
                    .as_ref()
                    .map_or_else(dash, |g| format!("{}/{}", g.remaining, g.limit)),
                l.retry_after_ms.map_or_else(dash, |ms| {
                    if ms < 1_000 {
                        format!("{ms}ms")
                    } else {
                        format!("{:.1}s", ms as f64 / 1_000.0)
                    }
                }),
            ]
            .map(|cell| spillway_core::text::printable(&cell).into_owned())
        })
        .collect();
    let mut widths = HEAD.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut HEAD.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    spillway_core::rate::parse_duration(text).map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose tenant, user and node hold an escape sequence, a line break and a
    /// right-to-left override prints as one row of plain text.
    #[test]
    fn the_table_prints_what_callers_wrote_as_text() {
        let json = r#"{"time":"2027-01-15T08:00:00.000Z","node":"n\u001b[2J","tenant":"x\u001b]52;c;aGk=\u0007\n2027-01-15 node-1 acme alice allowed","user":"a\u202eb","outcome":"denied","allowed":false,"cost":1,"sample_rate":1.0}"#;
        let line: Line = serde_json::from_str(json).expect("a record");
        let out = table(&[Found {
            line,
            json: json.to_owned(),
        }]);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            !out.contains(|c: char| c.is_control() && c != '\n') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert!(
            out.contains(r"x\u{1b}]52;c;aGk=\u{7}\n2027-01-15")
                && out.contains(r"a\u{202e}b")
                && out.contains(r"n\u{1b}[2J"),
            "{out}"
        );
    }

    #[test]
    fn stream_ids_step_back() {
        assert_eq!(before("1700-3").as_deref(), Some("1700-2"));
        assert_eq!(
            before("1700-0").as_deref(),
            Some("1699-18446744073709551615")
        );
        assert_eq!(before("0-0"), None);
        assert_eq!(before("junk"), None);
    }
}
