//! The policy's optional `store:` section: where limit state lives. Plain data only; the
//! server builds the store from it (spillway-core has no Redis code).
//!
//! ```yaml
//! store: {type: memory, max_keys: 1000000}          # the default
//! store: {type: redis, url: "redis://127.0.0.1:6379", prefix: rl, timeout: 100ms}
//! store: {type: redis_cluster, nodes: ["redis://10.0.0.1:6379"], prefix: rl}
//! store: {type: redis_sentinel, sentinels: ["redis://10.0.0.1:26379"], master: mymaster}
//! ```
//!
//! A shared store can fail, so the Redis forms also say how a node copes (see
//! `docs/FAILURE.md`): `timeout` (the budget of one store call), `breaker_failures` and
//! `breaker_cooldown` (the circuit breaker), `retry_after` (what a fail-closed 503 advises)
//! and `expected_nodes` (how many nodes split a `degrade` route's emergency quota).

use super::error::{Issues, PolicyIssue};
use super::raw::{Number, RawStore};
use crate::rate::parse_duration;
use crate::time::Micros;
use serde_saphyr::Spanned;

/// Where limit state lives, as the policy's `store:` section says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded in-memory store (one node, the default).
    Memory {
        /// The most keys it holds; `None` keeps the server's `--max-keys`.
        max_keys: Option<u64>,
    },
    /// One Redis server shared by every node.
    Redis(RedisSettings),
    /// A Redis Cluster shared by every node; `urls` are seed nodes.
    RedisCluster(RedisSettings),
    /// One Redis master found through Sentinel and followed across failovers; `urls` are the
    /// sentinels and `master` the name they know it by.
    RedisSentinel(RedisSettings),
}

/// The settings the Redis forms share. Its `Debug` form masks the URLs' passwords.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisSettings {
    /// The server URL (`redis`), the seed nodes (`redis_cluster`) or the sentinels
    /// (`redis_sentinel`).
    pub urls: Vec<String>,
    /// The name the sentinels know the master by (`redis_sentinel` only).
    pub master: Option<String>,
    /// First segment of every key; `None` for the store's default (`rl`).
    pub prefix: Option<String>,
    /// Deadline of one store call; `None` for the store's default.
    pub timeout: Option<Micros>,
    /// Size of the local over-limit cache (0 turns it off); `None` for the default.
    pub local_cache: Option<u64>,
    /// Nodes expected to share the store, which split emergency quotas; `None` for the default.
    pub expected_nodes: Option<u64>,
    /// Consecutive failed calls that open the circuit breaker; `None` for the default.
    pub breaker_failures: Option<u64>,
    /// How long an open breaker waits before probing the store; `None` for the default.
    pub breaker_cooldown: Option<Micros>,
    /// The `Retry-After` of a fail-closed refusal; `None` for the default.
    pub retry_after: Option<Micros>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| crate::redact::mask_url(u))
            .collect();
        f.debug_struct("RedisSettings")
            .field("urls", &urls)
            .field("master", &self.master)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("local_cache", &self.local_cache)
            .field("expected_nodes", &self.expected_nodes)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Memory { max_keys: None }
    }
}

impl StoreConfig {
    /// The `type` name as written in a policy.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory { .. } => "memory",
            Self::Redis(_) => "redis",
            Self::RedisCluster(_) => "redis_cluster",
            Self::RedisSentinel(_) => "redis_sentinel",
        }
    }

    /// The Redis settings, for any of the Redis forms.
    pub fn redis(&self) -> Option<&RedisSettings> {
        match self {
            Self::Memory { .. } => None,
            Self::Redis(s) | Self::RedisCluster(s) | Self::RedisSentinel(s) => Some(s),
        }
    }
}

/// A cluster's seed nodes that disagree on the login (see
/// [`crate::redact::seeds_disagree`]), at the differing seed's position: `store.nodes[i]`
/// (`own_store`) or `store.regions.<name>.nodes[i]`.
#[derive(Debug, Clone)]
pub(crate) struct SeedLogins {
    /// Whether the seeds are `store.nodes`, which `--store-url` may replace.
    pub own_store: bool,
    pub issue: PolicyIssue,
}

/// Every cluster of the `store:` section whose seeds disagree on the login. Kept apart from
/// the other checks: a node whose `--store-url` replaces `store.nodes` does not use them
/// (see [`super::Policy::check_seed_logins`]).
pub(crate) fn seed_logins(raw: Option<&Spanned<RawStore>>) -> Vec<SeedLogins> {
    let Some(raw) = raw.filter(|r| r.value.kind.value == "redis_cluster") else {
        return Vec::new();
    };
    let s = &raw.value;
    let own = s
        .nodes
        .iter()
        .map(|nodes| ("store.nodes".to_owned(), true, nodes));
    let regions = s
        .regions
        .iter()
        .flat_map(|r| &r.value.0)
        .filter_map(|(name, region)| {
            let path = format!("store.regions.{}.nodes", name.value);
            region.nodes.as_ref().map(|nodes| (path, false, nodes))
        });
    own.chain(regions)
        .filter_map(|(path, own_store, nodes)| {
            let urls: Vec<&str> = nodes.iter().map(|n| n.value.as_str()).collect();
            let why = crate::redact::seeds_disagree(&urls)?;
            let at = nodes[why.index].referenced;
            Some(SeedLogins {
                own_store,
                issue: PolicyIssue {
                    line: at.line(),
                    column: at.column(),
                    path: format!("{path}[{}]", why.index),
                    message: why.to_string(),
                },
            })
        })
        .collect()
}

/// Checks the section; problems go to `issues` and the default is returned in their place.
pub(crate) fn compile(raw: Option<&Spanned<RawStore>>, issues: &mut Issues) -> StoreConfig {
    let Some(raw) = raw else {
        return StoreConfig::default();
    };
    let s = &raw.value;
    let kind = s.kind.value.as_str();
    let misplaced = |field: &str, present: bool, issues: &mut Issues| {
        if present {
            issues.push(
                raw.referenced,
                format!("store.{field}"),
                format!("`{field}` does not apply to a store of type `{kind}`"),
            );
        }
    };
    let number = |n: &Option<Spanned<Number>>, field: &str, issues: &mut Issues| {
        n.as_ref().and_then(|n| match n.value.positive() {
            Ok(v) => Some(v),
            Err(message) => {
                issues.push(n.referenced, format!("store.{field}"), message);
                None
            }
        })
    };
    match kind {
        "memory" => {
            misplaced("url", s.url.is_some(), issues);
            misplaced("nodes", s.nodes.is_some(), issues);
            misplaced("sentinels", s.sentinels.is_some(), issues);
            misplaced("master", s.master.is_some(), issues);
            misplaced("prefix", s.prefix.is_some(), issues);
            misplaced("timeout", s.timeout.is_some(), issues);
            misplaced("local_cache", s.local_cache.is_some(), issues);
            misplaced("expected_nodes", s.expected_nodes.is_some(), issues);
            misplaced("breaker_failures", s.breaker_failures.is_some(), issues);
            misplaced("breaker_cooldown", s.breaker_cooldown.is_some(), issues);
            misplaced("retry_after", s.retry_after.is_some(), issues);
            StoreConfig::Memory {
                max_keys: number(&s.max_keys, "max_keys", issues),
            }
        }
        "redis" | "redis_cluster" | "redis_sentinel" => {
            misplaced("max_keys", s.max_keys.is_some(), issues);
            if kind != "redis_sentinel" {
                misplaced("sentinels", s.sentinels.is_some(), issues);
                misplaced("master", s.master.is_some(), issues);
            }
            // Where each URL came from, for error paths.
            let (urls, field) = match kind {
                "redis" => {
                    misplaced("nodes", s.nodes.is_some(), issues);
                    let urls = match &s.url {
                        Some(url) => vec![url.value.clone()],
                        // With `regions`, each region names its own (`super::region`).
                        None if s.regions.is_some() => vec![],
                        None => {
                            issues.push(
                                raw.referenced,
                                "store.url",
                                "a `redis` store needs a `url`",
                            );
                            vec![]
                        }
                    };
                    (urls, "url")
                }
                "redis_cluster" => {
                    misplaced("url", s.url.is_some(), issues);
                    let nodes: Vec<String> =
                        s.nodes.iter().flatten().map(|n| n.value.clone()).collect();
                    if nodes.is_empty() && s.regions.is_none() {
                        issues.push(
                            raw.referenced,
                            "store.nodes",
                            "a `redis_cluster` store needs at least one seed node in `nodes`",
                        );
                    }
                    (nodes, "nodes")
                }
                _ => {
                    misplaced("url", s.url.is_some(), issues);
                    misplaced("nodes", s.nodes.is_some(), issues);
                    let sentinels: Vec<String> = s
                        .sentinels
                        .iter()
                        .flatten()
                        .map(|n| n.value.clone())
                        .collect();
                    if sentinels.is_empty() {
                        issues.push(
                            raw.referenced,
                            "store.sentinels",
                            "a `redis_sentinel` store needs at least one sentinel in `sentinels`",
                        );
                    }
                    match &s.master {
                        Some(m) if m.value.is_empty() || m.value.contains(char::is_whitespace) => {
                            issues.push(
                                m.referenced,
                                "store.master",
                                "the master name must be non-empty without spaces",
                            );
                        }
                        Some(_) => {}
                        None => issues.push(
                            raw.referenced,
                            "store.master",
                            "a `redis_sentinel` store needs `master`, the name the sentinels know it by",
                        ),
                    }
                    (sentinels, "sentinels")
                }
            };
            for (i, url) in urls.iter().enumerate() {
                if let Some(why) = crate::redact::not_redis_url(url) {
                    let path = if kind == "redis" {
                        "store.url".into()
                    } else {
                        format!("store.{field}[{i}]")
                    };
                    issues.push(raw.referenced, path, why);
                }
            }
            if let Some(prefix) = &s.prefix {
                let ok = !prefix.value.is_empty()
                    && prefix.value.len() <= 64
                    && prefix
                        .value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    issues.push(
                        prefix.referenced,
                        "store.prefix",
                        "must be 1 to 64 characters of letters, digits, `_`, `.` or `-`",
                    );
                }
            }
            let duration = |t: &Option<Spanned<String>>, field: &str, issues: &mut Issues| {
                t.as_ref().and_then(|t| match parse_duration(&t.value) {
                    Ok(v) => Some(v),
                    Err(message) => {
                        issues.push(t.referenced, format!("store.{field}"), message);
                        None
                    }
                })
            };
            let timeout = duration(&s.timeout, "timeout", issues);
            let settings = RedisSettings {
                urls,
                master: s.master.as_ref().map(|m| m.value.clone()),
                prefix: s.prefix.as_ref().map(|p| p.value.clone()),
                timeout,
                local_cache: s.local_cache.as_ref().and_then(|n| match n.value {
                    Number::Int(0) => Some(0),
                    _ => number(&s.local_cache, "local_cache", issues),
                }),
                expected_nodes: number(&s.expected_nodes, "expected_nodes", issues),
                breaker_failures: number(&s.breaker_failures, "breaker_failures", issues),
                breaker_cooldown: duration(&s.breaker_cooldown, "breaker_cooldown", issues),
                retry_after: duration(&s.retry_after, "retry_after", issues),
            };
            match kind {
                "redis" => StoreConfig::Redis(settings),
                "redis_cluster" => StoreConfig::RedisCluster(settings),
                _ => StoreConfig::RedisSentinel(settings),
            }
        }
        other => {
            issues.push(
                s.kind.referenced,
                "store.type",
                format!(
                    "unknown store type `{other}` (use memory, redis, redis_cluster or redis_sentinel)"
                ),
            );
            StoreConfig::default()
        }
    }
}
