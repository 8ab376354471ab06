//! The Redis sink: every node appends to one stream (`XADD key MAXLEN ~ N * tenant T outcome O
//! record JSON`), so the fleet's decisions land in one place, in the Redis the deployment
//! already runs, and trimmed to about N entries.
//!
//! On a Redis Cluster the stream is a single key, so it lives on one node: fine for a log that
//! is written in batches and read rarely. A failed or slow write (2 s budget) drops its batch;
//! the sink then waits before trying again (1 s, doubling to 30 s), dropping batches in
//! between, so an outage costs records, never memory or a waiting request.
//!
//! The sink connects on its first batch, so a Redis that refuses its login does not stop the
//! start either: the refusal is told once, as an error naming the server that refused (see
//! [`spillway_redis::login`]), and the batches it costs are counted like any failed write,
//! without telling it again until a write succeeds.

use super::super::settings::RedisTarget;
use super::{Formatted, SinkError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult};
use spillway_redis::login::{self, Refusal};
use std::time::Duration;
use tokio::time::Instant;

/// Time budget of one batch (connecting included).
const BUDGET: Duration = Duration::from_secs(2);
/// First wait after a failure; doubled on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long each seed node of a cluster that failed to connect is asked whether it refuses
/// the login (within the batch's budget).
const ASK_SEEDS: Duration = Duration::from_millis(500);

/// A connection to a server or a cluster.
pub enum Conn {
    /// One server (reconnects by itself).
    Server(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `target`; a refused login is told by `refusal`, naming the server.
    pub async fn connect(target: &RedisTarget, refusal: Refusal<'_>) -> RedisResult<Self> {
        Ok(match target {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(BUDGET))
                    .set_response_timeout(Some(BUDGET))
                    .set_number_of_retries(1);
                let addr = login::address(url);
                let mut conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| refusal.explain(e, "Redis server", &addr))?;
                login::first_command(&mut conn, refusal, &addr).await?;
                Self::Server(conn)
            }
            RedisTarget::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(BUDGET)
                    .response_timeout(BUDGET)
                    .retries(1)
                    .build()?;
                match client.get_async_connection().await {
                    Ok(conn) => Self::Cluster(conn),
                    Err(e) => return Err(refusal.explain_cluster(e, nodes, ASK_SEEDS).await),
                }
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
    /// Which setting a refusal asks to check: the store's URL or the sink's own.
    check: &'static str,
    key: String,
    maxlen: u64,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Whether a refused login was told since the last write that succeeded.
    refusal_told: bool,
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
    /// A sink appending to `key` on `target`; it connects on its first batch. `check` names
    /// the setting a refused login asks to check (where `target`'s URL came from).
    pub fn new(target: RedisTarget, check: &'static str, key: String, maxlen: u64) -> Self {
        Self {
            target,
            check,
            key,
            maxlen,
            conn: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            refusal_told: false,
        }
    }

    /// Appends a batch, or says why not.
    pub async fn write(&mut self, batch: &[Formatted]) -> Result<(), SinkError> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(SinkError::BackingOff);
        }
        let (why, refused) = match tokio::time::timeout(BUDGET, self.append(batch)).await {
            Ok(Ok(())) => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                self.refusal_told = false;
                return Ok(());
            }
            Ok(Err(e)) => (e.to_string(), login::refused(&e)),
            Err(_) => (format!("no answer within {BUDGET:?}"), false),
        };
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        let why = format!("Redis stream `{}` on {:?}: {why}", self.key, self.target);
        if !refused {
            return Err(SinkError::Failed(why));
        }
        // Trying again will not help until the setting (or the server's) changes: told once.
        let first = !std::mem::replace(&mut self.refusal_told, true);
        Err(SinkError::Refused(first.then_some(why)))
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
            None => {
                let refusal = Refusal {
                    whose: "decision log's ",
                    check: self.check,
                };
                self.conn
                    .insert(Conn::connect(&self.target, refusal).await?)
            }
        };
        conn.pipeline(&pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::decision_log::record::Kind;
    use spillway_testkit::redis::{command_as, RedisServer};

    /// Writes one record at once (no backoff wait: the attempts are what is tested).
    async fn write(sink: &mut RedisSink) -> Result<(), SinkError> {
        let batch = [Formatted {
            json: "{}".into(),
            tenant: None,
            outcome: Kind::Allowed,
        }];
        sink.retry_at = None;
        sink.write(&batch).await
    }

    /// A Redis refusing the sink's login, given a wrong password or none: the first failed
    /// batch tells the refusal (naming the decision log's server, never the password), the
    /// next ones only fail; a write that succeeds ends it, and a later refusal is told anew.
    #[tokio::test]
    async fn a_refused_login_is_told_once_until_a_write_succeeds() {
        const GIVEN: &str = "given-pw-Wq2";
        const OTHER: &str = "other-pw-Jv8";
        let redis = RedisServer::start_with(&["--requirepass", OTHER]);
        let port = redis.port();
        let named =
            format!("the decision log's Redis server at 127.0.0.1:{port} refused the login");
        for url in [
            format!("redis://:{GIVEN}@127.0.0.1:{port}"),
            format!("redis://127.0.0.1:{port}"),
        ] {
            let target = RedisTarget::Server(url.clone());
            let mut sink = RedisSink::new(target, "its URL", "log".into(), 100);
            match write(&mut sink).await {
                Err(SinkError::Refused(Some(why))) => assert!(
                    why.contains(&named) && why.contains("check its URL") && !why.contains(GIVEN),
                    "{url}: {why}"
                ),
                other => panic!("{url}: {other:?}"),
            }
            let again = write(&mut sink).await;
            assert!(
                matches!(again, Err(SinkError::Refused(None))),
                "{url}: {again:?}"
            );
        }
        let url = format!("redis://:{GIVEN}@127.0.0.1:{port}");
        let mut sink = RedisSink::new(RedisTarget::Server(url), "its URL", "log".into(), 100);
        assert!(matches!(
            write(&mut sink).await,
            Err(SinkError::Refused(Some(_)))
        ));
        let set = |now: &str, to: &str| {
            command_as(port, Some(now), &format!("CONFIG SET requirepass {to}"))
        };
        assert!(set(OTHER, GIVEN).is_some_and(|r| r.starts_with("+OK")));
        assert!(write(&mut sink).await.is_ok());
        assert!(set(GIVEN, OTHER).is_some_and(|r| r.starts_with("+OK")));
        command_as(port, Some(OTHER), "CLIENT KILL TYPE normal");
        let mut told = 0;
        for _ in 0..3 {
            match write(&mut sink).await {
                Err(SinkError::Refused(Some(_))) => told += 1,
                Err(SinkError::Refused(None) | SinkError::Failed(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(told, 1, "told anew once");
    }
}
