//! Building the store the policy's `store:` section (or `--store-url`) asks for.
//!
//! The store is chosen once, at start. A reload whose `store:` section differs from the one
//! the server started with is rejected (the old policy stays), because moving counters between
//! stores while serving would silently reset every limit; restart the nodes to switch.
//! `--store-url` / `SPILLWAY_STORE_URL` overrides the file: `memory` for the in-memory store,
//! `redis://host:port` for one server, a comma-separated list of `redis://` seed nodes
//! prefixed with `cluster+` (e.g. `cluster+redis://a:6379,redis://b:6379`) for a cluster, or
//! `sentinel:<master>@` and a comma-separated list of sentinels (e.g.
//! `sentinel:mymaster@redis://a:26379,redis://b:26379`) for a master found through Sentinel.
//!
//! [`sentinel_login`] holds the logins such a store uses, [`login_hints`] the settings a
//! refused login asks to check.

pub mod login_hints;
pub mod sentinel_login;

use crate::config::SettingsError;
use spillway_core::policy::{RedisSettings, StoreConfig};
use spillway_core::store::{MemoryStore, Store};
use spillway_core::time::Clock;
use spillway_redis::config::{parse_target, parse_url_list, UrlError, UrlTarget};
use spillway_redis::error::ConnectError;
use spillway_redis::login::AskSeeds;
use spillway_redis::{RedisConfig, RedisStore, Target};
use std::sync::Arc;
use std::time::Duration;

/// Name of the store round-trip histogram, recorded by the Redis store.
pub const ROUNDTRIP: &str = "spillway_store_roundtrip_seconds";
/// Buckets for [`ROUNDTRIP`]: 50 us to 1 s (a call past the budget is cut there, but a
/// budget raised for a distant Redis should still land in a bucket).
pub const ROUNDTRIP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The `--store-url` override, if one was given (trimmed; an empty one is none).
pub fn given_url(store_url: Option<&str>) -> Option<&str> {
    store_url.map(str::trim).filter(|u| !u.is_empty())
}

/// The store settings in force: the `--store-url` override if given, else the policy's.
pub fn effective(policy: &StoreConfig, url_override: Option<&str>) -> Result<StoreConfig, String> {
    let Some(url) = given_url(url_override) else {
        return Ok(policy.clone());
    };
    let base = policy.redis().cloned().unwrap_or_default();
    if url == "memory" {
        return Ok(StoreConfig::Memory { max_keys: None });
    }
    // Errors show the value with its passwords masked (it may be mistyped anywhere); the
    // URL list itself is read by spillway_redis, as for every flag that names Redis.
    if let Some(rest) = url.strip_prefix("sentinel:") {
        let Some((master, list)) = rest.split_once('@').filter(|(m, _)| !m.is_empty()) else {
            return Err(format!(
                "--store-url `{}` must name the master: sentinel:<master>@redis://host:port,...",
                spillway_redis::config::mask_text(url)
            ));
        };
        let urls = parse_url_list(list).map_err(|err| format!("--store-url sentinels: {err}"))?;
        return Ok(StoreConfig::RedisSentinel(RedisSettings {
            urls,
            master: Some(master.to_owned()),
            ..base
        }));
    }
    let target = parse_target(url).map_err(|err| match err {
        UrlError::NotRedis(_) => format!(
            "--store-url {err}; the store may also be `memory` or sentinel:<master>@redis://..."
        ),
        _ => format!("--store-url {err}"),
    })?;
    let (cluster, urls) = match target {
        UrlTarget::Server(url) => (false, vec![url]),
        UrlTarget::Cluster(urls) => (true, urls),
    };
    let settings = RedisSettings {
        urls,
        master: None,
        ..base
    };
    Ok(if cluster {
        StoreConfig::RedisCluster(settings)
    } else {
        StoreConfig::Redis(settings)
    })
}

/// The server or cluster a `redis` or `redis_cluster` store names by URL, as the store's
/// other Redis users connect to it (the top-k board, `--decision-log redis`, the exchange
/// with a far region); `None` for a store in memory or found through Sentinel, which each
/// of them tells in its own words.
pub fn url_target(store: &StoreConfig) -> Option<UrlTarget> {
    match store {
        StoreConfig::Redis(s) => Some(UrlTarget::Server(
            s.urls.first().cloned().unwrap_or_default(),
        )),
        StoreConfig::RedisCluster(s) => Some(UrlTarget::Cluster(s.urls.clone())),
        StoreConfig::Memory { .. } | StoreConfig::RedisSentinel(_) => None,
    }
}

/// The login [`build`] connects with, beyond the URLs' own, and how a refusal of it is told:
/// whose store it is, the setting to check, and when a cluster's seeds are asked which one
/// refused.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The logins of a `redis_sentinel` store (see [`sentinel_login`]); unused by others.
    pub sentinel: &'a spillway_redis::SentinelAuth,
    /// Empty for the node's own store, `region eu` for a far region's.
    pub owner: &'a str,
    /// The setting a refused login asks to check (see [`login_hints`]): where the store's
    /// URLs came from.
    pub hint: &'a str,
    /// When a cluster's seeds are asked (see [`AskSeeds`]).
    pub ask_seeds: AskSeeds,
}

impl<'a> Login<'a> {
    /// The node's own store, connected once at start, its URLs from where `hint` says
    /// ([`crate::region::own_store`] tells it).
    pub fn own(sentinel: &'a spillway_redis::SentinelAuth, hint: &'a str) -> Self {
        Self {
            sentinel,
            owner: "",
            hint,
            ask_seeds: AskSeeds::Always,
        }
    }
}

/// Builds the store for `config`; Redis stores connect before this returns, with `login`
/// (a refused one told as its owner's).
///
/// `budget` (the failure settings' time budget) bounds each Redis call, so the client's own
/// timeouts agree with the guard around it (see [`crate::failure`]). `guarded`: the caller
/// calls the store only through that guard (`Failover::guard`, with this budget), as the
/// node's own store and a far region's are; the guard then bounds each check, so a Redis
/// store puts no timer of its own on each check (`RedisConfig::timed_by_caller`).
pub async fn build(
    config: &StoreConfig,
    login: Login<'_>,
    default_max_keys: u64,
    clock: Arc<dyn Clock>,
    budget: Duration,
    injected_time: bool,
    guarded: bool,
) -> anyhow::Result<Arc<dyn Store>> {
    let redis = |settings: &RedisSettings, target: Target| {
        let mut c = RedisConfig::new(target, login.hint);
        if let Some(prefix) = &settings.prefix {
            c.prefix = prefix.clone();
        }
        c.timeout = budget;
        c.timed_by_caller = guarded;
        if let Some(n) = settings.local_cache {
            c.local_cache_keys = usize::try_from(n).unwrap_or(usize::MAX);
        }
        c.owner = login.owner.to_owned();
        c.ask_seeds = login.ask_seeds;
        c
    };
    let config = match config {
        StoreConfig::Memory { max_keys } => {
            let max_keys = max_keys.unwrap_or(default_max_keys);
            let max_keys = usize::try_from(max_keys).unwrap_or(usize::MAX);
            return Ok(Arc::new(MemoryStore::new(max_keys, clock)));
        }
        StoreConfig::Redis(s) => redis(
            s,
            Target::Server(s.urls.first().cloned().unwrap_or_default()),
        ),
        StoreConfig::RedisCluster(s) => redis(s, Target::Cluster(s.urls.clone())),
        StoreConfig::RedisSentinel(s) => redis(
            s,
            Target::Sentinel {
                sentinels: s.urls.clone(),
                master: s.master.clone().unwrap_or_default(),
                auth: login.sentinel.clone(),
            },
        ),
    };
    describe();
    if matches!(config.target, Target::Sentinel { .. }) {
        metrics::describe_counter!(
            spillway_redis::sentinel::MASTER_CHANGES,
            "Times this node switched to a new Redis master named by Sentinel."
        );
        metrics::counter!(spillway_redis::sentinel::MASTER_CHANGES).increment(0);
    }
    // Tests (`--manual-clock-in-store`) run the scripts at the manual clock's time.
    let connected = if injected_time {
        RedisStore::connect_with_injected_time(&config, clock).await
    } else {
        RedisStore::connect_with_clock(&config, clock).await
    };
    let store = connected.map_err(|err| match err {
        // An outage, naming whose store (a far region's home calls log it).
        ConnectError::Store(err) => {
            let whose = match login.owner {
                "" => "the Redis store".to_owned(),
                owner => format!("{owner}'s Redis store"),
            };
            anyhow::Error::new(err)
                .context(format!("cannot connect to {whose} {:?}", config.target))
        }
        // A refused login: a setting to fix, not an outage. The message names the server
        // that refused and whose it is.
        ConnectError::LoginRefused(told) => anyhow::Error::new(SettingsError(told)),
    })?;
    tracing::info!(target = ?config.target, prefix = %config.prefix, "using the Redis store");
    Ok(Arc::new(store))
}

fn describe() {
    use metrics::Unit;
    metrics::describe_histogram!(
        ROUNDTRIP,
        Unit::Seconds,
        "Round-trip time of one store call."
    );
    metrics::describe_counter!(
        "spillway_store_errors_total",
        "Store calls that failed, by kind (timeout, unavailable, protocol, overloaded)."
    );
    metrics::describe_counter!(
        "spillway_local_cache_hits_total",
        "Requests denied from the local over-limit cache without a store round trip."
    );
    metrics::describe_gauge!(
        "spillway_local_cache_entries",
        "Requests held in the local over-limit cache."
    );
    for kind in ["timeout", "unavailable", "protocol", "overloaded"] {
        metrics::counter!("spillway_store_errors_total", "kind" => kind).increment(0);
    }
    metrics::counter!("spillway_local_cache_hits_total").increment(0);
    metrics::describe_counter!(
        spillway_redis::error::SCRIPT_ERRORS,
        "Failed script calls, by kind (noscript, timeout, connection, other)."
    );
    for kind in spillway_redis::error::SCRIPT_ERROR_KINDS {
        metrics::counter!(spillway_redis::error::SCRIPT_ERRORS, "kind" => kind).increment(0);
    }
    metrics::describe_histogram!(
        spillway_redis::batch::BATCH_REQUESTS,
        Unit::Count,
        "Requests carried by one Redis call (concurrent requests to one server, or to one \
         cluster slot, share a call)."
    );
    metrics::describe_gauge!(
        spillway_redis::thread_conn::THREAD_CONNS,
        "Serving threads whose own Redis connection is up and taking their checks (a store \
         on a single server or a Sentinel master)."
    );
    metrics::describe_counter!(
        spillway_redis::thread_conn::THREAD_CONN_FAILURES,
        "Failed attempts to make a serving thread's own Redis connection, or to get a ping \
         answered on it after a failure."
    );
    metrics::describe_counter!(
        spillway_redis::thread_conn::THREAD_CONN_RESENT,
        "Requests a serving thread's own Redis connection, lost before their call went out, \
         did not send, and that went on the store's shared connection instead."
    );
    metrics::counter!(spillway_redis::thread_conn::THREAD_CONN_RESENT).increment(0);
    metrics::describe_counter!(
        spillway_redis::batch::BATCH_REFUSED,
        "Requests refused at once because their Redis slot's queue (or the store's) was full."
    );
    metrics::counter!(spillway_redis::batch::BATCH_REFUSED).increment(0);
    metrics::describe_counter!(
        spillway_redis::batch::BATCH_RETRIED,
        "Requests sent again alone after a call they shared was refused during resharding."
    );
    metrics::counter!(spillway_redis::batch::BATCH_RETRIED).increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_wins_and_keeps_the_policy_settings() {
        let policy = StoreConfig::Redis(RedisSettings {
            urls: vec!["redis://a:1".into()],
            prefix: Some("p".into()),
            local_cache: Some(0),
            ..RedisSettings::default()
        });
        let got = effective(&policy, Some("redis://b:2")).unwrap();
        let StoreConfig::Redis(s) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            (s.urls, s.prefix),
            (vec!["redis://b:2".to_owned()], Some("p".to_owned()))
        );
        assert!(matches!(
            effective(&policy, Some("cluster+redis://a:1,redis://b:2")),
            Ok(StoreConfig::RedisCluster(_))
        ));
        assert_eq!(effective(&policy, None).unwrap(), policy);
        assert!(effective(&policy, Some("http://x")).is_err());
        assert!(effective(&policy, Some("redis://a:1,redis://b:2")).is_err());
        // Refused values are shown with their passwords masked.
        for bad in [
            "redis://u:s3cret@a:1,redis://u:s3cret@b:2",
            "sentinel:m@http://u:s3cret@a",
            "redis:/u:s3cret@a",
        ] {
            let err = effective(&policy, Some(bad)).expect_err(bad);
            assert!(!err.contains("s3cret") && err.contains("****"), "{err}");
        }
    }

    #[test]
    fn a_sentinel_override_names_the_master_and_its_sentinels() {
        let policy = StoreConfig::Redis(RedisSettings {
            urls: vec!["redis://a:1".into()],
            prefix: Some("p".into()),
            ..RedisSettings::default()
        });
        let got = effective(
            &policy,
            Some("sentinel:mymaster@redis://s1:26379,redis://s2:26379"),
        );
        let Ok(StoreConfig::RedisSentinel(s)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(s.master.as_deref(), Some("mymaster"));
        assert_eq!(s.urls, ["redis://s1:26379", "redis://s2:26379"]);
        assert_eq!(
            s.prefix.as_deref(),
            Some("p"),
            "the file's settings still apply"
        );
        for bad in [
            "sentinel:redis://s1:26379",
            "sentinel:@redis://s1",
            "sentinel:m@s1:26379",
        ] {
            assert!(effective(&policy, Some(bad)).is_err(), "{bad}");
        }
    }
}
