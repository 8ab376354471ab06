//! Sharing the nodes' summaries through the Redis the store already uses, so `/v1/top?
//! scope=cluster` on any node answers for the fleet.
//!
//! Every [`PUBLISH_EVERY`] (`--top-publish-every`) a node writes its summaries of both windows
//! (the [`super::MAX_ROWS`] heaviest tenants and users, and the `MAX_ROWS` heaviest
//! hot keys *of each limit*, so a reader asking for one limit's keys finds that limit's
//! heaviest; at most [`MAX_PUBLISHED_HOT_KEYS`] hot keys in all, the heaviest) and its sample as one JSON value at
//! `{<prefix>:top}:node:<name>` with a TTL of three periods, and adds its name to the set
//! `{<prefix>:top}:nodes`. A reader takes the set, fetches every node's value in one `MGET`
//! (the hash tag keeps them in one slot of a cluster), drops the names whose value expired
//! (nodes that stopped), and adds the rest row by row, using its own live summary in place of
//! what it last published. A node that stops therefore leaves the merge within three periods.
//! What a reader fetched is reused by its answers for a period (at most a second), so many
//! readers cost Redis, and the node's parsing, one fetch each interval.

use super::{HotKeys, Summary, Top, Window, MAX_PUBLISHED_HOT_KEYS, MAX_ROWS};
use crate::config::SettingsError;
use crate::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use spillway_core::policy::{RedisSettings, StoreConfig};
use spillway_core::time::Clock;
use spillway_redis::connection::{Conn, ConnectOptions};
use spillway_redis::login::{self, Refusal};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the board's start waits for its Redis (asking a cluster's seeds which refused a
/// login included). The connection's own waits, for connecting and for each answer, are half
/// of it, 2.5 s (see [`Conn::connect`]).
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The shortest bound on one call to the board's Redis, whatever the period: a short period
/// (tests run at 100 ms) must not fail a Redis that is merely slow.
const SHORTEST_CALL_LIMIT: Duration = Duration::from_secs(1);

/// How often a node publishes, by default.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// What a node publishes: its name, its sample and a summary per window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    /// The node's name (`--node-name`).
    pub node: Arc<str>,
    /// One consuming decision in how many the node counts (`--top-k-sample`), so a reader
    /// knows its counts are estimates. Summaries published before nodes said it read as 1
    /// (builds between sampling's arrival and this field sampled without saying so).
    #[serde(default = "every_decision")]
    pub sample: u32,
    /// Its summaries, by window.
    pub windows: HashMap<Window, Summary>,
}

fn every_decision() -> u32 {
    1
}

/// The other nodes' summaries as fetched, with the real time of the fetch.
type Fetched = (std::time::Instant, Arc<Vec<Published>>);

/// A node whose summary went into a merged answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Its name.
    pub node: Arc<str>,
    /// Its sample (see [`Published::sample`]).
    pub sample: u32,
}

/// The shared board of summaries on Redis; see the module docs.
#[derive(Clone)]
pub struct Board {
    conn: Conn,
    /// `{<prefix>:top}`: one hash slot for every key of the board.
    tag: String,
    period: Duration,
    /// The other nodes' summaries as last fetched, and when: a `scope=cluster` answer within
    /// [`Board::fresh_for`] of the last fetch reuses them instead of fetching and parsing
    /// every node's value again (they change once a period), so many readers cost Redis
    /// and this node one fetch per interval.
    others: Arc<std::sync::Mutex<Option<Fetched>>>,
}

impl Board {
    /// Connects to the Redis deployment `store` names; `None` for the in-memory store.
    ///
    /// It uses the store's URLs and logins, and connects after the store, so a login the
    /// store's servers refuse stops the start there first; a refusal met here all the same
    /// (a password changed in between) is a [`SettingsError`] too, naming the board and the
    /// server, never the password, and asking to check `hint` (where the store's URLs came
    /// from, see [`crate::store::login_hints`]).
    pub async fn connect(
        store: &StoreConfig,
        hint: &str,
        sentinel_auth: &spillway_redis::SentinelAuth,
        period: Duration,
    ) -> anyhow::Result<Option<Self>> {
        Self::connect_unexplained(store, hint, sentinel_auth, period)
            .await
            .map_err(|err| match err.downcast_ref::<redis::RedisError>() {
                Some(redis) if login::refused(redis) => {
                    let told = format!("cannot connect to Redis for the top-k summaries: {err:#}");
                    anyhow::Error::new(SettingsError(told))
                }
                _ => err.context("cannot connect to Redis for the top-k summaries"),
            })
    }

    async fn connect_unexplained(
        store: &StoreConfig,
        hint: &str,
        sentinel_auth: &spillway_redis::SentinelAuth,
        period: Duration,
    ) -> anyhow::Result<Option<Self>> {
        if let StoreConfig::RedisSentinel(s) = store {
            let master = s.master.as_deref().unwrap_or_default();
            let timeout = Duration::from_secs(1);
            let conn = spillway_redis::sentinel::SentinelConn::connect_quiet(
                &s.urls,
                master,
                sentinel_auth,
                timeout,
                "top-k board",
            )
            .await
            .map_err(|e| {
                // A refusal names the sentinel or master itself; any other error is an
                // outage of the board's Sentinel.
                let refused = login::refused(&e);
                let e = anyhow::Error::new(e);
                if refused {
                    e
                } else {
                    e.context("top-k board: no master through Sentinel")
                }
            })?;
            return Ok(Some(Self::new(Conn::Sentinel(conn), s, period)));
        }
        // A server or a cluster, named by URL; nothing to share for the in-memory store.
        let (Some(target), Some(settings)) = (crate::store::url_target(store), store.redis())
        else {
            return Ok(None);
        };
        let how = ConnectOptions {
            refusal: Refusal::of("top-k board", hint),
            deadline: tokio::time::Instant::now() + CONNECT_LIMIT,
            // Few, short waits between attempts: a refusal is told in about a second.
            retries: 2,
            // Connected once, at start: any failure is worth asking the seeds.
            ask: login::AskSeeds::Always,
        };
        let conn = Conn::connect(&target, how).await?;
        Ok(Some(Self::new(conn, settings, period)))
    }

    fn new(conn: Conn, settings: &RedisSettings, period: Duration) -> Self {
        let prefix = settings.prefix.as_deref().unwrap_or("rl");
        Self {
            conn,
            tag: format!("{{{prefix}:top}}"),
            period: period.max(Duration::from_millis(10)),
            others: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// How long fetched summaries are reused: a period, at most a second.
    fn fresh_for(&self) -> Duration {
        self.period.min(Duration::from_secs(1))
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.tag)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.tag)
    }

    /// Runs `pipe`. The client fails an answer that takes longer than its own wait (2.5 s),
    /// but a cluster's client may try again; so the call is also cut, with an `Io` error,
    /// after a period or [`SHORTEST_CALL_LIMIT`], whichever is longer: a hung Redis holds up
    /// neither the publishing task for long past its next tick nor a reader.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        let within = self.period.max(SHORTEST_CALL_LIMIT);
        conn.pipeline_within(pipe, within).await
    }

    /// Writes this node's summaries at `now`.
    pub async fn publish(&self, top: &Top, now: spillway_core::time::Micros) -> anyhow::Result<()> {
        let published = Published {
            node: top.node().clone(),
            sample: top.sample(),
            windows: Window::ALL
                .into_iter()
                .map(|w| {
                    (
                        w,
                        top.summary_with(
                            now,
                            w,
                            MAX_ROWS,
                            HotKeys::EachLimit {
                                total: MAX_PUBLISHED_HOT_KEYS,
                            },
                        ),
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string(&published)?;
        let ttl = u64::try_from((self.period * 3).as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.node_key(top.node()))
            .arg(json)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(self.nodes_key())
            .arg(&**top.node())
            .ignore();
        self.run::<()>(&pipe).await?;
        Ok(())
    }

    /// Every other live node's published summaries (not `own`'s), fetched at most once per
    /// [`Board::fresh_for`]; the names whose value expired are dropped from the set.
    async fn others(&self, own: &str) -> anyhow::Result<Arc<Vec<Published>>> {
        if let Some((at, cached)) = &*self.others.lock().expect("top board cache") {
            if at.elapsed() < self.fresh_for() {
                return Ok(cached.clone());
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.nodes_key());
        let (names,): (Vec<String>,) = self.run(&pipe).await?;
        let others: Vec<String> = names.into_iter().filter(|n| **n != *own).collect();
        let mut published = Vec::new();
        if !others.is_empty() {
            let mut pipe = redis::pipe();
            let mget = pipe.cmd("MGET");
            for name in &others {
                mget.arg(self.node_key(name));
            }
            let (values,): (Vec<Option<String>>,) = self.run(&pipe).await?;
            let mut gone = Vec::new();
            for (name, value) in others.iter().zip(values) {
                let Some(value) = value else {
                    gone.push(name);
                    continue;
                };
                match serde_json::from_str::<Published>(&value) {
                    Ok(p) => published.push(p),
                    Err(err) => tracing::warn!(node = %name, %err, "unreadable top-k summary"),
                }
            }
            if !gone.is_empty() {
                let mut pipe = redis::pipe();
                pipe.cmd("SREM").arg(self.nodes_key()).arg(gone).ignore();
                let _ = self.run::<()>(&pipe).await;
            }
        }
        let published = Arc::new(published);
        // Real time, not the decision clock: this only bounds how often Redis is asked, and a
        // manual clock that never moves would freeze the fleet's view.
        #[allow(clippy::disallowed_methods)]
        let at = std::time::Instant::now();
        *self.others.lock().expect("top board cache") = Some((at, published.clone()));
        Ok(published)
    }

    /// Every live node's summary of `window` merged with this node's own (live) one, the `n`
    /// heaviest of each list, the hot keys only of the limit named `limit` when one is; and
    /// the nodes merged, sorted by name.
    pub async fn merged(
        &self,
        top: &Top,
        now: spillway_core::time::Micros,
        window: Window,
        n: usize,
        limit: Option<&str>,
    ) -> anyhow::Result<(Vec<Merged>, Summary)> {
        let mut nodes = vec![Merged {
            node: top.node().clone(),
            sample: top.sample(),
        }];
        // This node's own part is cut as it publishes (each limit's heaviest), then filtered
        // like every other node's, so the answer does not depend on which node is asked.
        let mut own = top.summary_with(
            now,
            window,
            MAX_ROWS,
            HotKeys::EachLimit {
                total: MAX_PUBLISHED_HOT_KEYS,
            },
        );
        if let Some(limit) = limit {
            own.keep_limit(limit);
        }
        let mut parts = vec![own];
        for p in self.others(top.node()).await?.iter() {
            if let Some(summary) = p.windows.get(&window) {
                let mut summary = summary.clone();
                if let Some(limit) = limit {
                    summary.keep_limit(limit);
                }
                nodes.push(Merged {
                    node: p.node.clone(),
                    sample: p.sample,
                });
                parts.push(summary);
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok((nodes, Summary::merge(&parts, n)))
    }
}

/// Publishes `top` every period until `shutdown`; a failed publication is logged (at most
/// once a minute) and retried at the next period.
pub fn spawn(
    board: Board,
    top: Arc<Top>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(board.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            if let Err(err) = board.publish(&top, clock.now()).await {
                let now = tokio::time::Instant::now();
                if last_warning.is_none_or(|t| now - t >= Duration::from_secs(60)) {
                    last_warning = Some(now);
                    tracing::warn!("cannot publish the top-k summary to Redis: {err:#}");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
