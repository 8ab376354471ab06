//! The Redis sink: every node appends to one stream (`XADD key MAXLEN ~ N * tenant T outcome O
//! record JSON`), so the fleet's decisions land in one place, in the Redis the deployment
//! already runs, and trimmed to about N entries.
//!
//! On a Redis Cluster the stream is a single key, so it lives on one node: fine for a log that
//! is written in batches and read rarely. A failed or slow write (2 s budget) drops its batch;
//! the sink then waits before trying again (1 s, doubling to 30 s), dropping batches in
//! between, so an outage costs records, never memory or a waiting request.

use super::super::settings::RedisTarget;
use super::{Formatted, SinkError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult};
use std::time::Duration;
use tokio::time::Instant;

/// Time budget of one batch (connecting included).
const BUDGET: Duration = Duration::from_secs(2);
/// First wait after a failure; doubled on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection to a server or a cluster.
pub enum Conn {
    /// One server (reconnects by itself).
    Server(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `target`.
    pub async fn connect(target: &RedisTarget) -> RedisResult<Self> {
        Ok(match target {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(BUDGET))
                    .set_response_timeout(Some(BUDGET))
                    .set_number_of_retries(1);
                Self::Server(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTarget::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(BUDGET)
                    .response_timeout(BUDGET)
                    .retries(1)
                    .build()?;
                Self::Cluster(client.get_async_connection().await?)
            }
        })
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Self::Server(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn pipeline(&mut self, pipe: &redis::Pipeline) -> RedisResult<()> {
        match self {
            Self::Server(c) => pipe.query_async(c).await,
            Self::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// The stream writer.
pub struct RedisSink {
    target: RedisTarget,
    key: String,
    maxlen: u64,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("target", &self.target)
            .field("key", &self.key)
            .field("maxlen", &self.maxlen)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// A sink appending to `key` on `target`; it connects on its first batch.
    pub fn new(target: RedisTarget, key: String, maxlen: u64) -> Self {
        Self {
            target,
            key,
            maxlen,
            conn: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Appends a batch, or says why not.
    pub async fn write(&mut self, batch: &[Formatted]) -> Result<(), SinkError> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(SinkError::BackingOff);
        }
        let why = match tokio::time::timeout(BUDGET, self.append(batch)).await {
            Ok(Ok(())) => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {BUDGET:?}"),
        };
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Err(SinkError::Failed(format!(
            "Redis stream `{}` on {:?}: {why}",
            self.key, self.target
        )))
    }

    async fn append(&mut self, batch: &[Formatted]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for record in batch {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg("tenant")
                .arg(record.tenant.as_deref().unwrap_or(""))
                .arg("outcome")
                .arg(record.outcome.as_str())
                .arg("record")
                .arg(&record.json)
                .ignore();
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::connect(&self.target).await?),
        };
        conn.pipeline(&pipe).await
    }
}
