//! Where records go: standard output, a rotated file, or a Redis stream.
//!
//! A sink takes a batch of formatted records. When it fails, the batch is lost (and counted by
//! the writer); a sink that needs a connection backs off and tries again later, so an outage
//! costs dropped records, never memory or a waiting request.

pub mod file;
pub mod redis;

use super::record::{Kind, Line};
use super::settings::{DecisionLogSettings, RedisTarget, SinkSpec};
use spillway_core::time::Clock;
use std::io::Write;
use std::sync::Arc;

/// One record, ready to write.
#[derive(Debug)]
pub struct Formatted {
    /// The JSON line (no newline).
    pub json: String,
    /// Its tenant, a field of its own in the stream.
    pub tenant: Option<String>,
    /// Its outcome, a field of its own in the stream.
    pub outcome: Kind,
}

impl Formatted {
    /// Formats `line`.
    pub fn new(line: Line) -> Option<Self> {
        let json = serde_json::to_string(&line).ok()?;
        Some(Self {
            json,
            tenant: line.tenant,
            outcome: line.outcome,
        })
    }
}

/// Why a batch was not written.
#[derive(Debug)]
pub enum SinkError {
    /// The sink failed now.
    Failed(String),
    /// A server refused the sink's login: trying again will not help until a setting
    /// changes. The reason comes the first time in a row (to be logged as an error), `None`
    /// after (counted like a failure, not logged again).
    Refused(Option<String>),
    /// The sink failed recently and is not tried again yet.
    BackingOff,
}

/// A configured sink.
#[derive(Debug)]
pub enum Sink {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines in a rotated file.
    File(file::FileSink),
    /// A Redis stream.
    Redis(redis::RedisSink),
}

impl Sink {
    /// The sink `settings` name; `store_redis` is the store's Redis, for `--decision-log
    /// redis`, with the setting a refused login of it asks to check (the caller names it
    /// once, with
    /// [`store_target`](super::settings::store_target), when it checks its settings).
    /// A file sink opens its file (and creates its directory) here, so a path that cannot be
    /// written fails start-up; a Redis sink connects on its first batch, so a Redis outage
    /// never keeps the server from starting.
    pub fn open(
        settings: &DecisionLogSettings,
        store_redis: Option<(RedisTarget, &str)>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        Ok(match &settings.sink {
            SinkSpec::Off | SinkSpec::Stdout => Self::Stdout,
            SinkSpec::File(path) => Self::File(file::FileSink::open(
                path.clone(),
                settings.rotation,
                clock,
            )?),
            SinkSpec::StoreRedis => {
                let (target, hint) = store_redis
                    .ok_or("--decision-log redis was given no store Redis to write to")?;
                Self::Redis(redis::RedisSink::new(
                    target,
                    hint,
                    settings.stream.clone(),
                    settings.stream_maxlen,
                ))
            }
            SinkSpec::Redis(target) => Self::Redis(redis::RedisSink::new(
                target.clone(),
                crate::store::login_hints::DECISION_LOG,
                settings.stream.clone(),
                settings.stream_maxlen,
            )),
        })
    }

    /// Writes one batch.
    pub async fn write(&mut self, batch: &[Formatted]) -> Result<(), SinkError> {
        match self {
            Self::Stdout => {
                let mut text = String::with_capacity(batch.iter().map(|f| f.json.len() + 1).sum());
                for record in batch {
                    text.push_str(&record.json);
                    text.push('\n');
                }
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| SinkError::Failed(format!("stdout: {e}")))
            }
            Self::File(file) => file.write(batch).map_err(SinkError::Failed),
            Self::Redis(redis) => redis.write(batch).await,
        }
    }

    /// Pushes out anything buffered (at exit).
    pub fn flush(&mut self) {
        if let Self::File(file) = self {
            file.flush();
        }
    }
}
