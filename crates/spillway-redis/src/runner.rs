//! [`Runner`]: script calls on the shared connection, bounded and timed.
//!
//! It holds what a call needs (the connection, the two scripts, the time bound and, in tests,
//! the injected clock) and is cheap to clone (a connection handle and three `Arc`s), so a task
//! spawned to finish a request on its own (see [`crate::multi_slot`]) can own one.

use crate::error::{classify, record, record_script, CountNoScript};
use crate::script::{self, Encoded, Reply, Undo};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use spillway_core::request::CheckMode;
use spillway_core::store::StoreError;
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;

/// The shared connection, whichever deployment it talks to.
#[derive(Clone)]
pub(crate) enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Script calls on the shared connection; see the module docs.
#[derive(Clone)]
pub(crate) struct Runner {
    pub(crate) conn: Conn,
    check_script: Arc<redis::Script>,
    refund_script: Arc<redis::Script>,
    /// How long one call may take before it fails with `StoreError::Timeout`.
    pub(crate) timeout: Duration,
    /// When set, scripts evaluate at this clock's time instead of Redis `TIME` (tests only).
    pub(crate) injected: Option<Arc<dyn Clock>>,
}

impl Runner {
    /// A runner on `conn` whose calls are bounded by `timeout`.
    pub(crate) fn new(conn: Conn, timeout: Duration) -> Self {
        Self {
            conn,
            check_script: Arc::new(redis::Script::new(script::CHECK_SOURCE)),
            refund_script: Arc::new(redis::Script::new(script::REFUND_SOURCE)),
            timeout,
            injected: None,
        }
    }

    /// Runs `work` on the shared connection within `limit`, timing it.
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        #[allow(clippy::disallowed_methods)] // a latency timer, not a source of limit time
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(limit, work(self.conn.clone())).await;
        metrics::histogram!("spillway_store_roundtrip_seconds")
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(record(classify(err, limit))),
            Err(_) => Err(record(StoreError::Timeout(limit))),
        }
    }

    /// Runs `work` on the shared connection within the configured timeout.
    pub(crate) async fn call<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.timeout, work).await
    }

    /// One check-script call within `limit` over `(key, check)` pairs sharing a slot.
    pub(crate) async fn run_script<'k>(
        &self,
        limit: Duration,
        checks: impl IntoIterator<Item = (&'k str, Encoded)>,
        n: usize,
        mode: CheckMode,
        undo: bool,
    ) -> Result<Reply, StoreError> {
        let now = self.injected.as_ref().map(|c| c.now());
        let inv = script::invocation(&self.check_script, checks, mode, now, undo);
        let value: redis::Value = self
            .call_within(limit, |conn| async move {
                match conn {
                    Conn::Server(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                    Conn::Cluster(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                }
            })
            .await
            .map_err(record_script)?;
        script::parse_reply(value, n)
            .map_err(record)
            .map_err(record_script)
    }

    /// Restores one key charged by a request that was then denied (or abandoned); `false` if
    /// the key was written since (the charge stays) or the call failed.
    pub(crate) async fn refund(&self, limit: Duration, key: &str, undo: &Undo) -> bool {
        let Undo {
            written,
            before,
            ttl,
        } = undo;
        if written == before {
            return true;
        }
        let mut inv = self.refund_script.prepare_invoke();
        inv.key(key).arg(written).arg(before).arg(ttl);
        let restored: Result<i64, _> = self
            .call_within(limit, |conn| async move {
                match conn {
                    Conn::Server(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                    Conn::Cluster(mut c) => inv.invoke_async(&mut CountNoScript(&mut c)).await,
                }
            })
            .await
            .map_err(record_script);
        matches!(restored, Ok(1))
    }
}
