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
use redis::RedisResult;
use spillway_redis::connection::{Conn, ConnectOptions};
use spillway_redis::login::{self, Refusal, TellOnce};
use std::time::Duration;
use tokio::time::Instant;

/// Time budget of one batch (connecting included).
const BUDGET: Duration = Duration::from_secs(2);
/// First wait after a failure; doubled on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The stream writer.
pub struct RedisSink {
    target: RedisTarget,
    /// Which setting a refusal asks to check: the store's URL or the sink's own.
    check: String,
    key: String,
    maxlen: u64,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Whether a refused login was told since the last write that succeeded.
    refusal: TellOnce,
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
    pub fn new(target: RedisTarget, check: &str, key: String, maxlen: u64) -> Self {
        Self {
            target,
            check: check.to_owned(),
            key,
            maxlen,
            conn: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            refusal: TellOnce::default(),
        }
    }

    /// Appends a batch, or says why not.
    pub async fn write(&mut self, batch: &[Formatted]) -> Result<(), SinkError> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(SinkError::BackingOff);
        }
        let deadline = Instant::now() + BUDGET;
        let appending = self.append(batch, deadline);
        let (why, refused) = match tokio::time::timeout_at(deadline, appending).await {
            Ok(Ok(())) => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                self.refusal.reset();
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
        Err(SinkError::Refused(self.refusal.first().then_some(why)))
    }

    async fn append(&mut self, batch: &[Formatted], deadline: Instant) -> RedisResult<()> {
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
                let refusal = Refusal::of("decision log", &self.check);
                let ask = self.refusal.ask_seeds();
                let how = ConnectOptions {
                    refusal,
                    deadline,
                    retries: 1,
                    ask,
                };
                self.conn.insert(Conn::connect(&self.target, how).await?)
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
        // The killed connection may fail one write as an outage; then the refusal is told
        // anew, once: a refusal read as an outage would fail (and warn) on every write.
        let mut seen = String::new();
        for _ in 0..3 {
            seen.push(match write(&mut sink).await {
                Err(SinkError::Refused(Some(_))) => 'T',
                Err(SinkError::Refused(None)) => 'r',
                Err(SinkError::Failed(_)) => 'F',
                other => panic!("{other:?}"),
            });
        }
        assert!(matches!(seen.as_str(), "Trr" | "FTr"), "{seen}");
    }

    /// A Redis Cluster refusing the sink's login (a wrong password, or none): the refusal is
    /// told on the first batch, naming a seed node, within the batch's budget (asking the
    /// seeds included), and not again; the right password writes. Real cluster.
    #[tokio::test]
    async fn a_cluster_refusing_the_login_is_told_once_naming_a_node() {
        const RIGHT: &str = "right-pw-Lc5";
        const WRONG: &str = "wrong-pw-Px3";
        let cluster = spillway_testkit::redis::RedisCluster::with_password(RIGHT);
        for login in [format!(":{WRONG}@"), String::new()] {
            let target = RedisTarget::Cluster(cluster.urls_with_login(&login));
            let mut sink = RedisSink::new(target, "its URL", "log".into(), 100);
            match write(&mut sink).await {
                Err(SinkError::Refused(Some(why))) => assert!(
                    why.contains("the decision log's cluster node at 127.0.0.1:")
                        && why.contains("check its URL")
                        && !why.contains(WRONG),
                    "{login}: {why}"
                ),
                other => panic!("{login}: {other:?}"),
            }
            let again = write(&mut sink).await;
            assert!(
                matches!(again, Err(SinkError::Refused(None))),
                "{login}: {again:?}"
            );
        }
        let target = RedisTarget::Cluster(cluster.urls_with_login(&format!(":{RIGHT}@")));
        let mut sink = RedisSink::new(target, "its URL", "log".into(), 100);
        assert!(write(&mut sink).await.is_ok());
    }
}
