//! Turning client errors into the engine's typed [`StoreError`], and counting them.
//!
//! Every error the store returns goes through [`record`], which increments
//! `spillway_store_errors_total{kind}` with `kind` one of `timeout`, `unavailable`,
//! `protocol` or `overloaded` (a bounded label set, never a key).
//!
//! Script calls are also counted by what went wrong in `spillway_script_errors_total{kind}`:
//! `noscript` (Redis had lost the Functions library or the script, after a restart, a failover,
//! `FUNCTION FLUSH` or `SCRIPT FLUSH`; the call loads it again and retries, so the call itself
//! usually succeeds), `timeout`,
//! `connection` (refused, dropped, reconnecting, or a server not ready: `LOADING`,
//! `CLUSTERDOWN`...) and `other` (an error from the script or a reply of the wrong shape).

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisFuture, ServerErrorKind, Value};
use spillway_core::store::StoreError;
use std::time::Duration;

/// Why [`crate::RedisStore::connect`] failed. A refused login is told apart from an outage
/// (by the client's typed error: `AuthenticationFailed`, or the server's `NOAUTH`/`WRONGPASS`
/// code), so a caller can treat it as a wrong setting (trying again will not help) without
/// reading messages.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A server refused the login; the message names it (the server, the cluster node, the
    /// sentinel or the master it names) and never the password.
    #[error("{0}")]
    LoginRefused(String),
    /// Anything else: unreachable, timed out, an invalid prefix...
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ConnectError> for StoreError {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::LoginRefused(told) => StoreError::Unavailable(told),
            ConnectError::Store(err) => err,
        }
    }
}

/// Counter of failed script calls, by kind.
pub const SCRIPT_ERRORS: &str = "spillway_script_errors_total";
/// Every `kind` of [`SCRIPT_ERRORS`].
pub const SCRIPT_ERROR_KINDS: [&str; 4] = ["noscript", "timeout", "connection", "other"];

/// Maps a `redis` error to the engine's error kinds.
pub fn classify(err: redis::RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout(timeout)
    } else if unavailable(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Protocol(err.to_string())
    }
}

/// Whether `err` says the store could not serve the call (unreachable, dropped, or there but
/// not ready), as opposed to refusing it or the call failing in it: a call sent again later
/// may be answered.
pub(crate) fn unavailable(err: &redis::RedisError) -> bool {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
    {
        return true;
    }
    match err.kind() {
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => {
            // LOADING, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, BUSY: the store is there but
            // cannot serve yet; READONLY: the server was demoted to a replica by a
            // failover. A script error is a bug or a foreign value under our prefix.
            // Judged by the reply's error code: the client's text for a known code is
            // its own name for it (`ReadOnly: ...`), not the code Redis sent.
            // Redis 6 (plain scripts) wraps a write refused by a demoted server in the
            // script's own error: `ERR Error running script ...: -READONLY You can't ...`.
            matches!(
                err.code(),
                Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY" | "READONLY")
            ) || (err.code() == Some("ERR") && {
                let text = err.to_string();
                text.contains(": -READONLY ") || text.contains(": -MASTERDOWN ")
            })
        }
        redis::ErrorKind::ClusterConnectionNotFound | redis::ErrorKind::Io => true,
        _ => false,
    }
}

/// The metric label for an error kind.
pub fn kind(err: &StoreError) -> &'static str {
    match err {
        StoreError::Timeout(_) => "timeout",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Protocol(_) => "protocol",
        StoreError::Overloaded(_) => "overloaded",
    }
}

/// Counts `err` and hands it back.
pub fn record(err: StoreError) -> StoreError {
    metrics::counter!("spillway_store_errors_total", "kind" => kind(&err)).increment(1);
    err
}

/// Counts a failed script call under [`SCRIPT_ERRORS`] and hands the error back.
pub fn record_script(err: StoreError) -> StoreError {
    let kind = match err {
        StoreError::Timeout(_) => "timeout",
        StoreError::Unavailable(_) => "connection",
        StoreError::Protocol(_) | StoreError::Overloaded(_) => "other",
    };
    metrics::counter!(SCRIPT_ERRORS, "kind" => kind).increment(1);
    err
}

/// A connection that counts the `NOSCRIPT` answers the script helper recovers from (it sends
/// `EVALSHA`, and on `NOSCRIPT` loads the script and sends it again, so the error never
/// reaches the caller).
pub(crate) struct CountNoScript<'c, C>(pub(crate) &'c mut C);

impl<C: ConnectionLike + Send> ConnectionLike for CountNoScript<'_, C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.0.req_packed_command(cmd).await;
            // The error comes back as a value (or, from some clients, as an error).
            let noscript = match &reply {
                Ok(Value::ServerError(err)) => err.kind() == Some(ServerErrorKind::NoScript),
                Err(err) => err.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
                Ok(_) => false,
            };
            if noscript {
                metrics::counter!(SCRIPT_ERRORS, "kind" => "noscript").increment(1);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's error for the reply line `resp`, as a call would meet it.
    fn reply_error(resp: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(resp.as_bytes()).expect("a reply");
        value.extract_error().expect_err("an error reply")
    }

    #[test]
    fn refusals_of_a_server_not_ready_are_unavailable_by_their_code() {
        let timeout = Duration::from_millis(50);
        for code in [
            "LOADING",
            "MASTERDOWN",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "BUSY",
            "READONLY",
        ] {
            let err = classify(reply_error(&format!("-{code} not now\r\n")), timeout);
            assert!(matches!(err, StoreError::Unavailable(_)), "{code}: {err:?}");
        }
        // Redis 6 running a plain script on a server a failover demoted.
        let wrapped = "-ERR Error running script (call to f_0123): @user_script:12: \
                       @user_script: 12: -READONLY You can't write against a read only replica.\r\n";
        let err = classify(reply_error(wrapped), timeout);
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        // A script's own failure, or a foreign value under the prefix, is not an outage; nor
        // is a code merely mentioned in the message.
        for line in [
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-ERR user_script:1: READONLY in a message\r\n",
        ] {
            let err = classify(reply_error(line), timeout);
            assert!(matches!(err, StoreError::Protocol(_)), "{line}: {err:?}");
        }
    }
}
