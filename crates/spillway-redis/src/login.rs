//! Telling a refused login apart from an outage, and saying who refused it.
//!
//! A wrong or missing password is a setting to fix, not an outage to wait out: the store's
//! [`crate::RedisStore::connect`] reports it as [`crate::error::ConnectError::LoginRefused`]
//! with a message naming the server that refused (a single server, a cluster node, a sentinel
//! or the master it names), never the password.

use redis::{ErrorKind, RedisError};
use std::time::Duration;

/// What every refused login's message says after the server's name.
const REFUSED: &str = "refused the login";

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
/// and drops the server's text, so a server answering `AUTH` with another error (too many
/// clients, protected mode) also reads as a refused login here. Such a start stops with the
/// refusal's status and message; the server's own log says the rest.
pub(crate) fn refused(err: &RedisError) -> bool {
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

/// `err` retold as a refusal by `who` (such as `the sentinel at 10.0.0.1:26379`), naming the
/// setting to check; other errors pass unchanged. The password is never part of it.
pub(crate) fn explain(err: RedisError, who: &str, check: &str) -> RedisError {
    if !refused(&err) {
        return err;
    }
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "login refused",
        format!("{who} {REFUSED} ({err}); check {check}"),
    ))
}

/// `host:port` of a `redis://` URL (no login), or the URL with its password masked if it does
/// not parse.
pub(crate) fn address(url: &str) -> String {
    use redis::IntoConnectionInfo;
    url.into_connection_info().map_or_else(
        |_| crate::config::mask_text(url),
        |info| info.addr().to_string(),
    )
}

/// `err`, met while the cluster client made its first connections, retold as a refused login
/// naming the node when a seed node refuses its URL's login. The client keeps only the error
/// it heard last (a seed that timed out after another refused hides the refusal) and does not
/// say which node refused, so every seed is asked alone, all at once, each question bounded by
/// `limit`; the first refusing seed in the list is named. When none answers with a refusal in
/// time, a refusal the client reported is still told as one, naming the seed list; any other
/// error passes unchanged.
pub(crate) async fn explain_cluster(
    err: RedisError,
    seeds: &[String],
    limit: Duration,
) -> RedisError {
    let check = "the username/password in the cluster's URLs";
    let answers = futures_util::future::join_all(seeds.iter().map(|url| refuses(url, limit))).await;
    if let Some((url, _)) = seeds.iter().zip(answers).find(|(_, refused)| *refused) {
        let refusal = RedisError::from((ErrorKind::AuthenticationFailed, "login refused"));
        let err = if refused(&err) { err } else { refusal };
        return explain(err, &format!("the cluster node at {}", address(url)), check);
    }
    let all: Vec<String> = seeds.iter().map(|u| address(u)).collect();
    explain(
        err,
        &format!("the cluster (seed nodes {})", all.join(", ")),
        check,
    )
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
        let told = explain(folded, "the cluster node at 10.0.0.1:6379", "the URLs");
        let text = told.to_string();
        assert!(
            refused(&told) && text.contains("the cluster node at 10.0.0.1:6379 refused the login"),
            "{text}"
        );
        assert_eq!(explain(down, "x", "y").kind(), ErrorKind::Io);
    }

    #[test]
    fn addresses_carry_no_login() {
        assert_eq!(address("redis://u:s3cret@10.0.0.1:7000"), "10.0.0.1:7000");
        assert!(!address("redis:/u:s3cret@x").contains("s3cret"));
    }
}
