//! How a thread connection tries again: [`connected`] makes it, waiting longer after each
//! failed attempt (on a Sentinel store, a master switch cuts a wait short), and [`answers`]
//! pings it after a failure until it answers (on a single server; see "After a failure:
//! stepping aside" in [`super`]).

use super::THREAD_CONN_FAILURES;
use crate::runner::Conn;
use std::time::Duration;
use tokio::sync::watch;

/// The first wait after a thread connection failed (to be made, or to answer a ping); it
/// doubles up to [`RETRY_MAX`].
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts on a thread connection.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(1);

/// Makes a thread connection with `open`, again after a wait while that fails (warning once,
/// counting every failure in [`THREAD_CONN_FAILURES`]). On a Sentinel store, `switches` (the
/// store's count of master switches) cuts a wait short and starts the waits over from
/// [`RETRY_FIRST`]: the master the store follows now may take the connection the old one
/// refused, and the thread's requests should not stay on the shared path for the rest of a
/// wait of up to [`RETRY_MAX`]. A single server passes `None`.
pub(super) async fn connected<T, F, Fut>(
    mut open: F,
    mut switches: Option<&mut watch::Receiver<u64>>,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut wait = RETRY_FIRST;
    let mut warned = false;
    loop {
        match open().await {
            Ok(conn) => return conn,
            Err(err) => {
                metrics::counter!(THREAD_CONN_FAILURES).increment(1);
                if warned {
                    tracing::debug!(error = %err, retry_ms = wait.as_millis() as u64,
                        "a serving thread's Redis connection failed again");
                } else {
                    warned = true;
                    tracing::warn!(error = %err, retry_ms = wait.as_millis() as u64,
                        "a serving thread could not make its own Redis connection; its \
                         requests take the shared one while it keeps trying");
                }
                wait = if pause(wait, switches.as_deref_mut()).await {
                    // A new master: its first refusal is waited on as the first one was.
                    RETRY_FIRST
                } else {
                    (wait * 2).min(RETRY_MAX)
                };
            }
        }
    }
}

/// Waits `wait`, or until `switches` changes if that comes first; whether a switch cut it
/// short. (`switches` does not close while its thread connection's task runs: the task holds
/// the store's master connection, which holds the sending half. What ends a task when its
/// store is gone is the store's failure count closing, which drops this wait with the task.)
async fn pause(wait: Duration, switches: Option<&mut watch::Receiver<u64>>) -> bool {
    let Some(switches) = switches else {
        tokio::time::sleep(wait).await;
        return false;
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        Ok(()) = switches.changed() => true,
    }
}

/// Pings `conn` until it answers, waiting longer after each failure (up to [`RETRY_MAX`]);
/// a ping on a connection that failed makes it again (our own connection and the client's
/// alike).
pub(super) async fn answers(conn: &Conn, limit: Duration) {
    let mut wait = RETRY_FIRST;
    loop {
        let mut pinged = conn.clone();
        let cmd = redis::cmd("PING");
        let ping = async move { crate::functions::lift(pinged.query(&cmd).await) };
        match tokio::time::timeout(limit, ping).await {
            Ok(Ok(_)) => return,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "a serving thread's Redis connection is still down");
            }
            Err(_) => {
                tracing::debug!("a serving thread's Redis connection did not answer a ping");
                // As for a call: a master's connection to an address gone silent goes.
                conn.no_answer();
            }
        }
        metrics::counter!(THREAD_CONN_FAILURES).increment(1);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// While a Sentinel store's thread connection cannot be made, a master switch cuts the
    /// wait before the next attempt short, and the waits after it start over from
    /// [`RETRY_FIRST`] (on the paused clock, the attempts' times show it): the new master is
    /// tried at once, not up to [`RETRY_MAX`] later.
    #[tokio::test(start_paused = true)]
    async fn a_switch_cuts_the_wait_between_attempts_short() {
        let (switched, mut switches) = watch::channel(0);
        let start = tokio::time::Instant::now();
        let attempts = RefCell::new(Vec::new());
        let opening = connected(
            || {
                let mut at = attempts.borrow_mut();
                at.push(start.elapsed());
                let refused = at.len() < 8;
                async move {
                    if refused {
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
                    } else {
                        Ok(())
                    }
                }
            },
            Some(&mut switches),
        );
        let switching = async {
            // Within the wait of RETRY_MAX that follows the attempt at 1.5 s.
            tokio::time::sleep(Duration::from_millis(1_600)).await;
            switched.send_replace(1);
        };
        tokio::join!(opening, switching);
        let ms: Vec<u128> = attempts.borrow().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 100, 300, 700, 1_500, 1_600, 1_700, 1_900]);
    }

    /// A cluster master's connection pinged after a failure, its old address gone silent (the
    /// old process stopped) and the master reported at its new one (the same node ID): the
    /// pings that get no answer close it (see `OwnConn::no_answer`), and a later one makes it
    /// again at the new address, where it is answered. Without that, nothing but the kernel
    /// would ever close it, and it would not serve again.
    #[tokio::test]
    async fn pings_unanswered_where_a_master_was_move_its_conn_where_it_is_reported() {
        use crate::own_conn::{Master, OwnConn, Target};
        use spillway_testkit::redis::{command, RedisServer};
        let mut node = RedisServer::start_with(&["--cluster-enabled", "yes"]);
        let reply = command(node.port(), "CLUSTER MYID").expect("answers");
        let id = reply.lines().nth(1).expect("a bulk string").to_owned();
        let at = std::sync::Arc::new(parking_lot::Mutex::new(node.port()));
        let located = std::sync::Arc::clone(&at);
        let master = Master {
            id,
            locate: std::sync::Arc::new(move || Some(("127.0.0.1".to_owned(), *located.lock()))),
        };
        let target = Target::of_url(&node.url(), Duration::from_secs(2))
            .expect("a RESP2 URL")
            .for_master(master);
        let conn = Conn::Own(OwnConn::connect(target).await.expect("made"));
        let port = node.move_leaving_silent();
        *at.lock() = port;
        tokio::time::timeout(
            Duration::from_secs(10),
            answers(&conn, Duration::from_millis(200)),
        )
        .await
        .expect("answered at the new address");
        // The stopped process answers nothing: an answer comes from the new one.
        let mut conn = conn;
        let answered = conn.query(redis::cmd("CLUSTER").arg("MYID")).await;
        assert!(
            matches!(answered, Ok(redis::Value::BulkString(_))),
            "{answered:?}"
        );
    }
}
