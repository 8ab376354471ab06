//! What a [`crate::RedisStore`] needs to know to connect.

use std::time::Duration;

/// Where the Redis deployment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server (or a proxy in front of several), e.g. `redis://127.0.0.1:6379`.
    Server(String),
    /// A Redis Cluster, given by one or more seed nodes; the rest is discovered.
    Cluster(Vec<String>),
    /// One master found through Redis Sentinel and followed across failovers (see
    /// [`crate::sentinel`]).
    Sentinel {
        /// The sentinels (`redis://host:port`), asked in this order.
        sentinels: Vec<String>,
        /// The name the sentinels know the master by.
        master: String,
    },
}

/// Connection and layout settings for the Redis store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server or cluster to use.
    pub target: Target,
    /// The first segment of every key (see [`crate::keys`]).
    pub prefix: String,
    /// How long one store call may take before it fails with `StoreError::Timeout`; it also
    /// bounds connecting.
    pub timeout: Duration,
    /// Most keys the local over-limit cache remembers; 0 turns it off.
    pub local_cache_keys: usize,
}

impl RedisConfig {
    /// Settings for `target` with the defaults: prefix `rl`, a 100 ms timeout and a local
    /// cache of 100,000 keys.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            prefix: "rl".into(),
            timeout: Duration::from_millis(100),
            local_cache_keys: 100_000,
        }
    }
}
