//! What a [`crate::RedisStore`] needs to know to connect.
//!
//! Passwords never show: the `Debug` forms of [`Target`], [`Credentials`] and [`RedisConfig`]
//! print `****` for a password, whether it came as a [`Credentials`] field or inside a URL
//! (`redis://user:password@host`), so a config can be logged or put in an error message.

pub use spillway_core::redact::{mask_text, mask_url};
use std::fmt;
use std::time::Duration;

/// Where the Redis deployment is.
#[derive(Clone, PartialEq, Eq)]
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
        /// How to log in on the sentinels and on the master (the sentinels name the master
        /// by address only, so its password cannot ride in a URL).
        auth: SentinelAuth,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(url) => debug_server(f, url),
            Self::Cluster(urls) => debug_cluster(f, urls),
            Self::Sentinel {
                sentinels,
                master,
                auth,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &masked(sentinels))
                .field("master", master)
                .field("auth", auth)
                .finish(),
        }
    }
}

/// A login (`AUTH [username] password`) on one kind of server. The `Debug` form hides the
/// password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user (Redis 6 and later); `None` logs in as the default user, the one
    /// `requirepass` sets the password of.
    pub username: Option<String>,
    /// The password; `None` sends no `AUTH` (unless a URL carries a password of its own).
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish()
    }
}

impl Credentials {
    /// `info` with this login filled in where `info` (from a URL) names none: a URL's own
    /// username or password wins.
    pub(crate) fn apply(&self, info: redis::ConnectionInfo) -> redis::ConnectionInfo {
        let mut redis = info.redis_settings().clone();
        if let (None, Some(user)) = (redis.username(), &self.username) {
            redis = redis.set_username(user);
        }
        if let (None, Some(password)) = (redis.password(), &self.password) {
            redis = redis.set_password(password);
        }
        info.set_redis_settings(redis)
    }
}

/// The logins of a Sentinel deployment: the data nodes' (the master and the replicas that may
/// replace it, usually `requirepass`/`masterauth`) and the sentinels' own (their
/// `requirepass`), which are often different.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentinelAuth {
    /// The login on the master the sentinels name.
    pub master: Credentials,
    /// The login on each sentinel (a sentinel URL's own `user:password@` wins).
    pub sentinels: Credentials,
}

/// Why text naming Redis by URL was refused. The `Display` form shows the text with its
/// passwords masked ([`mask_text`]); callers put the flag or field name in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A part of a server or cluster's text is not a `redis://` URL.
    #[error("`{0}` is not a redis:// URL (or cluster+redis://a,redis://b)")]
    NotRedis(String),
    /// A part of a list (a Sentinel deployment's sentinels) is not a `redis://` URL.
    #[error("`{0}` is not a comma-separated list of redis:// URLs")]
    NotRedisList(String),
    /// A `rediss://` URL: this build's Redis client has no TLS, so it could only fail later,
    /// at connection, as if the server were down.
    #[error("`{0}`: rediss:// (TLS) is not supported by this build; use redis://")]
    Tls(String),
    /// A `redis://` URL the client cannot read (a port past 65535, a database that is not a
    /// number, no host): a setting to fix, not a server that is down.
    #[error("`{url}` is not a Redis URL this client can read: {why}")]
    Malformed {
        /// The URL, its password masked.
        url: String,
        /// What the client said.
        why: String,
    },
    /// Several URLs without `cluster+`: a server is one URL.
    #[error("`{0}`: several URLs need the cluster+ prefix")]
    SeveralWithoutCluster(String),
    /// Seed nodes of one cluster with different logins (see [`seeds_agree`]).
    #[error("`{urls}`: {why}")]
    SeedsDisagree {
        /// The seed list, passwords masked.
        urls: String,
        /// Which seeds differ, and in what.
        why: spillway_core::redact::SeedsDisagree,
    },
}

/// A Redis deployment named by URLs alone, as [`parse_target`] reads it: one server or a
/// cluster's seed nodes. Its `Debug` form masks passwords, like [`Target`]'s.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlTarget {
    /// One server, by URL.
    Server(String),
    /// A cluster, by seed node URLs.
    Cluster(Vec<String>),
}

impl fmt::Debug for UrlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(url) => debug_server(f, url),
            Self::Cluster(urls) => debug_cluster(f, urls),
        }
    }
}

/// `urls`, each with its password masked.
fn masked(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| mask_url(u)).collect()
}

/// The `Debug` form of a server target, password masked ([`Target`] and [`UrlTarget`] alike).
fn debug_server(f: &mut fmt::Formatter<'_>, url: &str) -> fmt::Result {
    f.debug_tuple("Server").field(&mask_url(url)).finish()
}

/// The `Debug` form of a cluster target, passwords masked.
fn debug_cluster(f: &mut fmt::Formatter<'_>, urls: &[String]) -> fmt::Result {
    f.debug_tuple("Cluster").field(&masked(urls)).finish()
}

/// Reads text naming Redis by URL, the one reading every flag that takes such text shares:
/// one `redis://` URL for a server, or `cluster+` and a comma-separated list of seed nodes for
/// a cluster. Spaces around each URL are dropped.
pub fn parse_target(text: &str) -> Result<UrlTarget, UrlError> {
    let text = text.trim();
    let (cluster, list) = match text.strip_prefix("cluster+") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let urls = parse_url_list(list).map_err(|error| match error {
        UrlError::Tls(_) => UrlError::Tls(mask_text(text)),
        malformed @ UrlError::Malformed { .. } => malformed,
        _ => UrlError::NotRedis(mask_text(text)),
    })?;
    if cluster {
        seeds_agree(&urls)?;
        return Ok(UrlTarget::Cluster(urls));
    }
    match <[String; 1]>::try_from(urls) {
        Ok([url]) => Ok(UrlTarget::Server(url)),
        Err(_) => Err(UrlError::SeveralWithoutCluster(mask_text(text))),
    }
}

/// Whether the seed node URLs of one cluster give one login, read as the policy's seeds are
/// ([`spillway_core::redact::seeds_disagree`]): the difference is a setting to fix, said
/// before any connection, naming the first two seeds that differ and never a password.
pub fn seeds_agree(urls: &[String]) -> Result<(), UrlError> {
    match spillway_core::redact::seeds_disagree(urls) {
        None => Ok(()),
        Some(why) => Err(UrlError::SeedsDisagree {
            urls: mask_text(&urls.join(",")),
            why,
        }),
    }
}

/// The comma-separated URLs of `list`, each `redis://` (a Sentinel deployment's sentinels are
/// written this way too).
pub fn parse_url_list(list: &str) -> Result<Vec<String>, UrlError> {
    let urls: Vec<String> = list.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.iter().any(|u| u.starts_with("rediss://")) {
        return Err(UrlError::Tls(mask_text(list.trim())));
    }
    if urls.iter().any(|u| !u.starts_with("redis://")) {
        return Err(UrlError::NotRedisList(mask_text(list.trim())));
    }
    for url in &urls {
        if let Err(err) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            return Err(UrlError::Malformed {
                url: mask_text(url),
                why: mask_text(&err.to_string()),
            });
        }
    }
    Ok(urls)
}

/// How long connecting, logging in and the one-off questions outside a request (`ROLE`, the
/// sentinels', loading the library) may take: the store's timeout, but never under a second,
/// since a call budget of a few milliseconds is no budget for a handshake on a loaded machine.
pub(crate) fn setup_limit(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
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
    /// Whose Redis a refused login names (`region eu`); empty for the node's own store.
    pub owner: String,
    /// The setting a refused login of a server or cluster asks to check (see
    /// [`crate::login::Refusal`]), given by the caller, which knows where the URLs came from.
    /// A Sentinel deployment's logins are not in URLs: its refusals ask to check the
    /// sentinels' or the master's username/password, worded in [`crate::login`].
    pub login_hint: String,
    /// When a cluster's seeds are asked which one refused the login: after any failure by
    /// default, for a store connected once at start; a store connected again on each call
    /// until it answers (a far region's) asks less (see [`crate::login::AskSeeds`]).
    pub ask_seeds: crate::login::AskSeeds,
    /// Whether every caller of [`Store::check`](spillway_core::store::Store::check) on a
    /// [`crate::RedisStore`] bounds each call by [`RedisConfig::timeout`] itself and drops it once
    /// that has passed (the server's failure guard does, with its budget as this timeout). The
    /// store then puts no timer of its own on each check's wait (about 680 instructions per check,
    /// `docs/BENCHMARKS.md`, session 24): a check given up is skipped once its caller is gone, and
    /// each Redis call keeps its own timer. A report's charge keeps its timer (it waits in a task
    /// of its own). Off by default: a caller that does not bound its checks could wait behind a
    /// hung server's queue for longer than the timeout.
    pub timed_by_caller: bool,
}

impl RedisConfig {
    /// Settings for `target`, a refused login of which asks to check `login_hint` (where
    /// the caller read the URLs: only it knows), with the defaults: prefix `rl`, a 100 ms
    /// timeout, a local cache of 100,000 keys, a refusal told as the store's, a cluster's
    /// seeds asked after any failure.
    pub fn new(target: Target, login_hint: &str) -> Self {
        Self {
            target,
            prefix: "rl".into(),
            timeout: Duration::from_millis(100),
            local_cache_keys: 100_000,
            owner: String::new(),
            login_hint: login_hint.to_owned(),
            ask_seeds: crate::login::AskSeeds::Always,
            timed_by_caller: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-hunter2";

    #[test]
    fn a_url_list_is_read_once_for_every_flag() {
        assert_eq!(
            parse_target(" redis://h:1 "),
            Ok(UrlTarget::Server("redis://h:1".into()))
        );
        assert_eq!(
            parse_target("cluster+redis://a:1, redis://b:2"),
            Ok(UrlTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(
            parse_target("cluster+redis://a:1"),
            Ok(UrlTarget::Cluster(vec!["redis://a:1".into()]))
        );
        for (text, want) in [
            (
                "redis://u:s3cret@a,redis://b",
                UrlError::SeveralWithoutCluster("redis://u:****@a,redis://b".into()),
            ),
            (
                "cluster+redis://a,http://u:s3cret@b",
                UrlError::NotRedis("cluster+redis://a,http://u:****@b".into()),
            ),
            ("", UrlError::NotRedis(String::new())),
            (
                "cluster+redis://a,rediss://u:s3cret@b",
                UrlError::Tls("cluster+redis://a,rediss://u:****@b".into()),
            ),
        ] {
            assert_eq!(parse_target(text), Err(want), "{text}");
        }
        // URLs the client cannot read are said to be so (they failed later as a connection
        // that might work if tried again), their passwords masked.
        for text in [
            "redis://:s3cret@127.0.0.1:99999",
            "redis://127.0.0.1:1/abc",
            "redis://",
            "cluster+redis://a:1,redis://b:99999",
        ] {
            let err = parse_target(text).expect_err(text);
            assert!(matches!(err, UrlError::Malformed { .. }), "{text}: {err:?}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        assert_eq!(
            parse_url_list("redis://a,b"),
            Err(UrlError::NotRedisList("redis://a,b".into()))
        );
        assert_eq!(
            parse_url_list("rediss://a"),
            Err(UrlError::Tls("rediss://a".into()))
        );
    }

    #[test]
    fn seeds_of_one_cluster_must_give_one_login() {
        for agree in [
            format!("cluster+redis://u:{SECRET}@a:1,redis://u:{SECRET}@b:2"),
            // No user named is the `default` user.
            format!("cluster+redis://:{SECRET}@a:1,redis://default:{SECRET}@b:2"),
            // Without a password the client does not log in: a user alone changes nothing.
            "cluster+redis://a:1,redis://default@b:2".to_owned(),
        ] {
            assert!(
                matches!(parse_target(&agree), Ok(UrlTarget::Cluster(_))),
                "{agree}"
            );
        }
        for (text, other, what) in [
            (
                format!("cluster+redis://:{SECRET}@a:1,redis://:other@b:2"),
                "b:2",
                "password",
            ),
            (
                format!("cluster+redis://:{SECRET}@a:1,redis://b:2"),
                "b:2",
                "password",
            ),
            (
                format!(
                    "cluster+redis://u:{SECRET}@a:1,redis://u:{SECRET}@b:2,redis://v:{SECRET}@c:3"
                ),
                "c:3",
                "username",
            ),
        ] {
            let err = parse_target(&text).expect_err(&text);
            assert!(
                matches!(&err, UrlError::SeedsDisagree { why, .. }
                    if why.first == "a:1" && why.other == other && why.what == what),
                "{err:?}"
            );
            let told = err.to_string();
            assert!(
                !told.contains(SECRET) && !told.contains("other@") && told.contains("disagree"),
                "{told}"
            );
        }
    }

    #[test]
    fn no_password_shows_in_a_configs_debug_form() {
        let login = Credentials {
            username: Some("spillway".into()),
            password: Some(SECRET.into()),
        };
        for target in [
            Target::Server(format!("redis://:{SECRET}@h:1")),
            Target::Cluster(vec![
                format!("redis://u:{SECRET}@h:1"),
                "redis://h:2".into(),
            ]),
            Target::Sentinel {
                sentinels: vec![format!("redis://:{SECRET}@s:26379")],
                master: "m".into(),
                auth: SentinelAuth {
                    master: login.clone(),
                    sentinels: login.clone(),
                },
            },
        ] {
            let text = format!(
                "{:?} {:#?}",
                RedisConfig::new(target.clone(), "the test's URL"),
                target
            );
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("****"), "{text}");
        }
        let shown = format!("{login:?}");
        assert!(
            shown.contains("spillway") && !shown.contains(SECRET),
            "{shown}"
        );
    }

    #[test]
    fn a_urls_own_login_wins_and_the_rest_is_filled_in() {
        let login = Credentials {
            username: Some("app".into()),
            password: Some("given".into()),
        };
        let info = |url: &str| {
            let info = redis::IntoConnectionInfo::into_connection_info(url).unwrap();
            let info = login.apply(info);
            let r = info.redis_settings();
            (
                r.username().map(str::to_owned),
                r.password().map(str::to_owned),
            )
        };
        assert_eq!(
            info("redis://h:1"),
            (Some("app".into()), Some("given".into()))
        );
        assert_eq!(
            info("redis://:own@h:1"),
            (Some("app".into()), Some("own".into()))
        );
    }
}
