//! Telling a refused login apart from an outage, and saying who refused it.
//!
//! A wrong or missing password is a setting to fix, not an outage to wait out: the store's
//! [`crate::RedisStore::connect`] reports it as [`crate::error::ConnectError::LoginRefused`]
//! with a message naming the server that refused (a single server, a cluster node, a sentinel
//! or the master it names), never the password. The server's other Redis users (the decision
//! log's stream, the top-k board, the exchange between regions) name theirs the same way
//! through a [`Refusal`] of their own: "the decision log's Redis server at 10.0.0.1:6379
//! refused the login (...); check ...".

use redis::{ErrorKind, RedisError, RedisResult};
use std::time::Duration;

/// What every refused login's message says after the server's name.
const REFUSED: &str = "refused the login";

/// What a sentinel's refusal asks to check. A Sentinel deployment's logins are flags, not
/// URLs, so its two hints are worded here rather than by the caller (as a server's or a
/// cluster's are, from where their URLs came: [`crate::RedisConfig::login_hint`]).
pub(crate) const SENTINELS_LOGIN: &str = "the sentinels' username/password";
/// What the refusal of the master the sentinels name asks to check.
pub(crate) const MASTER_LOGIN: &str = "the master's username/password";

/// Whether `err` is a refused or missing login (`WRONGPASS`, `NOAUTH`, a failed `AUTH`).
///
/// Judged first by the client's typed error: its `AuthenticationFailed` kind (a refused
/// `AUTH`) and the server's error code (`NOAUTH`, `WRONGPASS` on a command). The text is read
/// too, because the client does not keep the type on every path: the cluster client's first
/// connection folds the seed nodes' last error into an `Io` error that carries it only as
/// text (redis 1.8), so a cluster refusing the password given shows only the client's
/// rendering of that kind there ("Failed to create initial connections - Io: Password
/// authentication failed - AuthenticationFailed"). A cluster that wants a password and was
/// given none answers the client's `CLUSTER SLOTS` with a typed `NOAUTH`.
///
/// A limit of the client: it types *any* error answer to `AUTH` as `AuthenticationFailed`
/// and drops the server's text and code (`WRONGPASS`, or `ERR invalid password` before
/// Redis 6, alike), so the kind cannot tell an auth refusal from another error answer to
/// `AUTH`; `NOPERM` answers a command the user may not run, after a login, and is no refusal. In
/// practice the servers' other refusals come before any command: a server with no room for
/// another client (`ERR max number of clients reached`) or in protected mode (`DENIED`)
/// writes its error and closes, and the client, still sending its set-up commands, meets the
/// closed socket: an `Io` error, read here as an outage (tested against a real server at
/// `maxclients`). A password given to a server that has none (`ERR AUTH <password> called
/// without any password configured`) reads as a refused login, which it is as a setting.
pub fn refused(err: &RedisError) -> bool {
    if err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        return true;
    }
    let text = err.to_string();
    // The client renders an error as "<description> - <kind>[: <detail>]".
    let folded = format!(" - {:?}", ErrorKind::AuthenticationFailed);
    text.contains("NOAUTH") || text.contains("WRONGPASS") || text.contains(&folded)
}

/// Whose Redis a refusal names and which setting it asks to check: the one wording of a
/// refusal, `the [<owner>'s ]<role> at <host:port> refused the login (<the client's error>);
/// check <check>`. The password is never part of it.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// Who uses the connection, such as `decision log`; empty for the store's own servers.
    owner: &'a str,
    /// The setting to check, such as `the username/password in its URL`.
    check: &'a str,
}

impl<'a> Refusal<'a> {
    /// A refusal of `owner`'s Redis (`decision log`, `region eu`; empty for the node's own
    /// store) asking to check `check`.
    pub const fn of(owner: &'a str, check: &'a str) -> Self {
        Self { owner, check }
    }

    /// `err` retold as a refusal by the `role` (such as `Redis server`, `sentinel`) at
    /// `addr` (`host:port`) when it is one ([`refused`]); other errors pass unchanged.
    pub fn explain(&self, err: RedisError, role: &str, addr: &str) -> RedisError {
        self.retell(err, &format!("{role} at {addr}"))
    }

    /// A connection to the server at `url` made with `config`, its login checked
    /// ([`check_login`]): a refused login is told naming the server, other errors pass
    /// unchanged.
    pub async fn connect_server(
        &self,
        url: &str,
        config: redis::aio::ConnectionManagerConfig,
    ) -> RedisResult<redis::aio::ConnectionManager> {
        let client = redis::Client::open(url)?;
        let addr = address(url);
        let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| self.explain(e, "Redis server", &addr))?;
        check_login(&mut conn, *self, &addr).await?;
        Ok(conn)
    }

    /// A connection to the cluster `client` was built for from `seeds`, made by `deadline`.
    /// When it fails, the seeds are asked which one refused the login
    /// ([`Self::explain_cluster`], at most [`ASK_LIMIT`] and ending before the deadline), so
    /// that a refusal is told in time whatever the seeds do; when is set by `ask`. Not
    /// reaching the cluster by the deadline is an `Io` error.
    pub async fn connect_cluster(
        &self,
        client: &redis::cluster::ClusterClient,
        seeds: &[String],
        deadline: tokio::time::Instant,
        ask: AskSeeds,
    ) -> RedisResult<redis::cluster_async::ClusterConnection> {
        let err = match tokio::time::timeout_at(deadline, client.get_async_connection()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(err)) => err,
            Err(_) => {
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "no cluster connection before the deadline",
                )))
            }
        };
        if ask == AskSeeds::Never || (ask == AskSeeds::OnRefusal && !refused(&err)) {
            return Err(err);
        }
        // Ends a little before the deadline, so that a caller cutting at it hears the answer.
        let limit = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(ASK_MARGIN)
            .min(ASK_LIMIT);
        Err(self.explain_cluster(err, seeds, limit).await)
    }

    /// `err`, met while a cluster client made its first connections, retold as a refused
    /// login naming the node when a seed node refuses its URL's login. The client keeps only
    /// the error it heard last (a seed that timed out after another refused hides the
    /// refusal) and does not say which node refused, so every seed is asked alone, all at
    /// once, each question bounded by `limit`; the first refusing seed in the list is named.
    /// When none answers with a refusal in time, a refusal the client reported is still told
    /// as one, naming the seed list; any other error passes unchanged.
    async fn explain_cluster(
        &self,
        err: RedisError,
        seeds: &[String],
        limit: Duration,
    ) -> RedisError {
        let answers =
            futures_util::future::join_all(seeds.iter().map(|url| refuses(url, limit))).await;
        if let Some((url, _)) = seeds.iter().zip(answers).find(|(_, refused)| *refused) {
            let refusal = RedisError::from((ErrorKind::AuthenticationFailed, "login refused"));
            let err = if refused(&err) { err } else { refusal };
            return self.explain(err, "cluster node", &address(url));
        }
        let all: Vec<String> = seeds.iter().map(|u| address(u)).collect();
        self.retell(err, &format!("cluster (seed nodes {})", all.join(", ")))
    }

    fn retell(&self, err: RedisError, who: &str) -> RedisError {
        if !refused(&err) {
            return err;
        }
        let Self { owner, check } = self;
        let whose = if owner.is_empty() {
            String::new()
        } else {
            format!("{owner}'s ")
        };
        RedisError::from((
            ErrorKind::AuthenticationFailed,
            "login refused",
            format!("the {whose}{who} {REFUSED} ({err}); check {check}"),
        ))
    }
}

/// How much before a caller's deadline the seeds' questions end.
const ASK_MARGIN: Duration = Duration::from_millis(50);
/// The longest the seeds of a cluster are asked whether they refuse the login.
const ASK_LIMIT: Duration = Duration::from_secs(1);

/// When [`Refusal::connect_cluster`] asks the seeds which one refused the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskSeeds {
    /// On any failure: the client reports only the error its last seed gave, so a seed
    /// that refuses is hidden by a later one that timed out. For a connection made once
    /// (at start), where a few more connections cost nothing.
    Always,
    /// Only when the client's own error is a refusal, so that an outage costs no extra
    /// connections: for connections retried all along (each batch, each tick). A refusal
    /// hidden behind a slow seed reads as an outage there until that seed answers.
    OnRefusal,
    /// Never: the refusal was already told (see [`TellOnce`]), and the client's own error
    /// is enough to count the failure.
    Never,
}

/// Whether a refused login was told since the last success: a refusal is told once, as an
/// error, until a call succeeds again.
#[derive(Debug, Default)]
pub struct TellOnce(std::sync::atomic::AtomicBool);

impl TellOnce {
    /// Whether this refusal is the first since the last success (and so is to be told).
    pub fn first(&self) -> bool {
        !self.0.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// A call succeeded: the next refusal is told anew.
    pub fn reset(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a refusal was told since the last success.
    pub fn told(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When a connection tried again after each failure (each batch, tick or call) asks a
    /// cluster's seeds which one refused the login: only after the client's own refusal, so
    /// that an outage opens no extra connections, and not again once a refusal was told.
    pub fn ask_seeds(&self) -> AskSeeds {
        if self.told() {
            AskSeeds::Never
        } else {
            AskSeeds::OnRefusal
        }
    }
}

/// `host:port` of a `redis://` URL (no login), or the URL with its password masked if it does
/// not parse.
pub(crate) fn address(url: &str) -> String {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map_or_else(|_| crate::config::mask_text(url), |info| shown(info.addr()))
}

/// How a server's address is named in messages: `host:port` as in a URL (see [`authority`]),
/// or a Unix socket's path.
pub(crate) fn shown(addr: &redis::ConnectionAddr) -> String {
    match addr {
        redis::ConnectionAddr::Tcp(host, port) => authority(host, *port),
        other => other.to_string(),
    }
}

/// `host:port` as a URL's authority: an IPv6 address in brackets (`[fd00::5]:6379`), as a
/// sentinel names it bare (`fd00::5`) and the client keeps it from a URL, so that `redis://`
/// and the address make a URL again.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Checks the login of a server connection with a first command (`PING`): the client logs
/// in only when the URL has a password, so a server that wants one and was given none
/// refuses the first command instead. Only such a refusal is an error here, told by
/// `refusal`; other errors are an outage the caller meets again on its own commands.
async fn check_login<C>(conn: &mut C, refusal: Refusal<'_>, addr: &str) -> RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    match redis::cmd("PING").query_async::<()>(conn).await {
        Err(err) if refused(&err) => Err(refusal.explain(err, "Redis server", addr)),
        _ => Ok(()),
    }
}

/// Whether the server at `url` refuses the URL's login (or wants one and the URL has none),
/// asked within `limit` (connecting and the answer each).
async fn refuses(url: &str, limit: Duration) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    let asking = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    matches!(tokio::time::timeout(limit, asking).await, Ok(Err(err)) if refused(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_typed_or_folded_into_text() {
        let typed = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        // The cluster client's first connection, folding a node's error into text.
        let folded = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            typed.to_string(),
        ));
        let noauth = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            "NOAUTH: Authentication required.".to_owned(),
        ));
        for err in [&typed, &folded, &noauth] {
            assert!(refused(err), "{err}");
        }
        let down = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            "Connection refused (os error 111)".to_owned(),
        ));
        assert!(!refused(&down), "{down}");
        let store = Refusal::of("", "the URLs");
        let told = store.explain(folded, "cluster node", "10.0.0.1:6379");
        let text = told.to_string();
        assert!(
            refused(&told)
                && text.contains("the cluster node at 10.0.0.1:6379 refused the login")
                && text.ends_with("; check the URLs"),
            "{text}"
        );
        let log = Refusal::of("decision log", "its URL");
        let told = log.explain(
            RedisError::from((ErrorKind::AuthenticationFailed, "no")),
            "Redis server",
            "10.0.0.2:6379",
        );
        assert!(
            told.to_string()
                .contains("the decision log's Redis server at 10.0.0.2:6379 refused the login"),
            "{told}"
        );
        assert_eq!(store.explain(down, "x", "y").kind(), ErrorKind::Io);
    }

    #[test]
    fn addresses_carry_no_login() {
        assert_eq!(address("redis://u:s3cret@10.0.0.1:7000"), "10.0.0.1:7000");
        assert!(!address("redis:/u:s3cret@x").contains("s3cret"));
    }

    /// A server with no room for another client (`maxclients` reached) answers `ERR max
    /// number of clients reached` and closes before reading a command: the client meets the
    /// closed socket while it sets the connection up (with its `AUTH` or without), an `Io`
    /// error, so the store's start reads it as an outage (status 1, may work if tried again)
    /// and not as a wrong password, whether the password given is right, wrong or missing.
    /// Real redis-server.
    #[tokio::test]
    async fn a_server_full_of_clients_is_an_outage_not_a_refused_login() {
        use crate::error::ConnectError;
        let redis = spillway_testkit::redis::RedisServer::start_with(&[
            "--requirepass",
            "right-pw-Gm3",
            "--maxclients",
            "1",
        ]);
        let port = redis.port();
        let _only_client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // The server takes the connection in before the store's attempts.
        let full = || spillway_testkit::redis::command_as(port, None, "PING");
        for _ in 0..50 {
            if full().is_some_and(|r| r.contains("max number of clients")) {
                break;
            }
            tokio::task::yield_now().await;
        }
        for login in [":right-pw-Gm3@", ":wrong-pw@", ""] {
            for _ in 0..2 {
                let url = format!("redis://{login}127.0.0.1:{port}");
                let mut config =
                    crate::RedisConfig::new(crate::Target::Server(url), "the test's URL");
                config.timeout = Duration::from_millis(500);
                match crate::RedisStore::connect(&config).await {
                    Err(ConnectError::Store(_)) => {}
                    Err(other) => panic!("{login}: {other}"),
                    Ok(_) => panic!("{login}: connected past maxclients"),
                }
            }
        }
    }
}
