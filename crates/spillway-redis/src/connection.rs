//! The connection the server's other Redis users share: the decision log's stream, the
//! exchange between regions, the top-k board and `spillway decisions`.
//!
//! Each is made within a deadline the caller sets, and a refused login is told naming the
//! server that refused it (see [`crate::login`]). When to connect is the caller's: the sink
//! and the exchange on first use and again after a failure, the board once at start,
//! `spillway decisions` once per read. How hard to try is the caller's to say too
//! ([`ConnectOptions`]): how many times the client retries, and when a cluster's seeds are
//! asked which one refused the login.

use crate::config::UrlTarget;
use crate::login::{AskSeeds, Refusal};
use crate::sentinel::SentinelConn;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult};
use tokio::time::Instant;

/// A connection to one server, a cluster, or the master Sentinel names. Cloning it shares
/// the connection (each is multiplexed).
#[derive(Clone)]
pub enum Conn {
    /// One server (reconnects by itself).
    Server(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
    /// The master Sentinel names, followed across failovers (made by
    /// [`SentinelConn::connect_quiet`]: a Sentinel deployment is named by more than URLs).
    Sentinel(SentinelConn),
}

/// How [`Conn::connect`] tries.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions<'a> {
    /// Tells a refused login, naming whose Redis and the setting to check.
    pub refusal: Refusal<'a>,
    /// When connecting gives up (an `Io` error). The client's own waits (connecting, an
    /// answer) are half the time left at the start, so that a cluster's refusal leaves
    /// time to ask which seed refused, and they bound every later answer too.
    pub deadline: Instant,
    /// How many times the client tries again after a failed attempt.
    pub retries: usize,
    /// When a cluster's seeds are asked which one refused the login.
    pub ask: AskSeeds,
}

impl Conn {
    /// Connects to `target` as `how` says; a refused login is told by `how.refusal`,
    /// naming the server (on a cluster, the seed that refused when the seeds are asked).
    pub async fn connect(target: &UrlTarget, how: ConnectOptions<'_>) -> RedisResult<Self> {
        let ConnectOptions {
            refusal,
            deadline,
            retries,
            ask,
        } = how;
        let given = deadline.saturating_duration_since(Instant::now());
        let wait = given / 2;
        let connecting = async {
            Ok(match target {
                UrlTarget::Server(url) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(wait))
                        .set_response_timeout(Some(wait))
                        .set_number_of_retries(retries)
                        .set_max_delay(wait.min(std::time::Duration::from_millis(500)));
                    Self::Server(refusal.connect_server(url, config).await?)
                }
                UrlTarget::Cluster(nodes) => {
                    let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .connection_timeout(wait)
                        .response_timeout(wait)
                        .retries(u32::try_from(retries).unwrap_or(u32::MAX))
                        .build()?;
                    Self::Cluster(
                        refusal
                            .connect_cluster(&client, nodes, deadline, ask)
                            .await?,
                    )
                }
            })
        };
        match tokio::time::timeout_at(deadline, connecting).await {
            Ok(conn) => conn,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "no connection",
                format!("within {given:?}"),
            ))),
        }
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Self::Server(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
            Self::Sentinel(c) => cmd.query_async(c).await,
        }
    }

    /// Runs a pipeline.
    pub async fn pipeline<T: FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> RedisResult<T> {
        match self {
            Self::Server(c) => pipe.query_async(c).await,
            Self::Cluster(c) => pipe.query_async(c).await,
            Self::Sentinel(c) => pipe.query_async(c).await,
        }
    }

    /// Runs a pipeline, cut after `within` with an `Io` error "no answer ... within": for
    /// callers that must not wait on a hung server for as long as the client would (it may
    /// try a cluster's call again).
    pub async fn pipeline_within<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
        within: std::time::Duration,
    ) -> RedisResult<T> {
        match tokio::time::timeout(within, self.pipeline(pipe)).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "no answer",
                format!("within {within:?}"),
            ))),
        }
    }
}
