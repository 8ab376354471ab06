//! A Sentinel store's thread connection through its life: made to the master the store
//! follows now, stepping aside for a failure or a master switch past the one it was made for,
//! and made again (see "After a failure: stepping aside" in [`super`]). Also the retry loop
//! every thread connection is made with ([`following`]), which a switch cuts short here.

use super::{place, AbortOnDrop, Up, RETRY_FIRST, RETRY_MAX, THREAD_CONN_FAILURES};
use crate::batch::Batcher;
use crate::runner::{Conn, Runner};
use crate::sentinel::SentinelConn;
use std::time::Duration;
use tokio::sync::watch;

/// A Sentinel store's thread connection: connects to the master the store's own connection
/// uses now (checked to act as master), and serves until the store follows a switch or
/// reports a failure; then it steps aside (its thread's requests take the shared path), leaves
/// the calls already sent to finish on the old connection in the background, and connects
/// again to the master the store names by then. A demoted master answers `READONLY`, a failure
/// like any other unavailable answer, and the `ROLE` check keeps the thread connection off it.
pub(super) async fn run_sentinel(
    id: u64,
    master: &SentinelConn,
    template: Runner,
    mut failures: watch::Receiver<u64>,
) {
    let mut switches = master.switches();
    loop {
        // A switch from here on cuts a wait between attempts short, and sends the new thread
        // connection aside unless it was made for that switch's master (`until_aside`).
        switches.borrow_and_update();
        let (generation, conn) = following(|| master.open_current(), Some(&mut switches)).await;
        let (batcher, dispatcher) = Batcher::new(template.clone().with_conn(Conn::Own(conn)));
        if !place(id, Some(batcher), generation) {
            return;
        }
        failures.borrow_and_update();
        let counted = Up::new();
        // A task of its own, as on a single server: its wake-ups do not poll the watches.
        let dispatcher = AbortOnDrop::new(tokio::spawn(dispatcher));
        let aside = until_aside(&mut failures, &mut switches, generation).await;
        drop(counted);
        if !place(id, None, generation) || !aside {
            return;
        }
        // No new request reaches the old batcher; its dispatcher runs on and ends once those
        // it holds are answered (each within the store's timeout).
        dispatcher.detach();
    }
}

/// Makes a thread connection with `open`, again after a wait while that fails (warning once,
/// counting every failure). On a Sentinel store, `switches` (the store's count of master
/// switches) cuts a wait short and starts the waits over from [`RETRY_FIRST`]: the master the
/// store follows now may take the connection the old one refused, and the thread's requests
/// should not stay on the shared path for the rest of a wait of up to [`RETRY_MAX`].
pub(super) async fn following<T, F, Fut>(
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

/// Waits until a Sentinel store's thread connection, made for the master of switch count
/// `generation`, must step aside: the store reports a failure or follows a switch past
/// `generation` (`true`), or the store is gone (`false`: `failures` closes once it is, which
/// ends the thread connection anyway). A switch seen while the connection was being made, when
/// the connection went to that switch's master already, is no reason to drop it; nor is a
/// notice of an earlier switch arriving late.
async fn until_aside(
    failures: &mut watch::Receiver<u64>,
    switches: &mut watch::Receiver<u64>,
    generation: u64,
) -> bool {
    loop {
        tokio::select! {
            changed = failures.changed() => return changed.is_ok(),
            changed = switches.changed() => {
                // Not while the task holds the master (see `pause`); were it to close, no
                // switch could be told any more, and the thread connection ends.
                if changed.is_err() {
                    return false;
                }
                // The store counts a switch before it sends the notice, so a connection may
                // be made for switch G+1 while the notice of G is still on its way: only a
                // count past `generation` is a master this connection was not made for. And
                // `generation` is never below a notice taken already: every notice taken
                // before the connection was opened (`run_sentinel` takes the current one, and
                // `pause` those during the waits) carried a count no higher than the one the
                // opening read.
                if *switches.borrow_and_update() > generation {
                    return true;
                }
            }
        }
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
        let opening = following(
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

    /// A Sentinel store's thread connection steps aside for a failure or a switch past the
    /// master it was made for, not for a switch seen while it was being made when it went to
    /// that switch's master already (it would connect to the new master and drop that at
    /// once), nor for an earlier switch's notice arriving late.
    #[tokio::test(start_paused = true)]
    async fn only_a_switch_past_the_conns_master_sends_it_aside() {
        let (failed, mut failures) = watch::channel(0);
        let (switched, mut switches) = watch::channel(0);
        let long = Duration::from_secs(3_600);
        // Switch 1 came while the connection was being made, and it went to switch 1's master.
        switched.send_replace(1);
        let waiting = until_aside(&mut failures, &mut switches, 1);
        assert!(
            tokio::time::timeout(long, waiting).await.is_err(),
            "a connection to the master the store follows now was sent aside"
        );
        switched.send_replace(2);
        assert!(
            until_aside(&mut failures, &mut switches, 1).await,
            "switch 2"
        );
        failed.send_replace(1);
        assert!(
            until_aside(&mut failures, &mut switches, 2).await,
            "a failure"
        );
        // Made for switch 4's master (counted) while switch 3's notice is still on its way.
        switched.send_replace(3);
        let waiting = until_aside(&mut failures, &mut switches, 4);
        assert!(
            tokio::time::timeout(long, waiting).await.is_err(),
            "a late notice of an earlier switch sent the connection aside"
        );
        drop((failed, switched));
        assert!(
            !until_aside(&mut failures, &mut switches, 4).await,
            "the store is gone"
        );
    }
}
