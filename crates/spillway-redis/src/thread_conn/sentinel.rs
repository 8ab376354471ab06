//! A Sentinel store's thread connection through its life: made to the master the store
//! follows now, stepping aside for a failure or a master switch past the one it was made for,
//! and made again (see "After a failure: stepping aside" in [`super`]); made with
//! [`super::retry::connected`], whose waits a switch cuts short.

use super::retry::connected;
use super::{place, AbortOnDrop, Up, SINGLE};
use crate::batch::Batcher;
use crate::runner::{Conn, Runner};
use crate::sentinel::SentinelConn;
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
        let (generation, conn) = connected(|| master.open_current(), Some(&mut switches)).await;
        let (batcher, dispatcher) = Batcher::new(template.clone().with_conn(Conn::Own(conn)));
        if !place(id, SINGLE, Some(batcher), generation) {
            return;
        }
        failures.borrow_and_update();
        let counted = Up::new();
        // A task of its own, as on a single server: its wake-ups do not poll the watches.
        let dispatcher = AbortOnDrop::new(tokio::spawn(dispatcher));
        let aside = until_aside(&mut failures, &mut switches, generation).await;
        drop(counted);
        if !place(id, SINGLE, None, generation) || !aside {
            return;
        }
        // No new request reaches the old batcher; its dispatcher runs on and ends once those
        // it holds are answered (each within the store's timeout).
        dispatcher.detach();
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
                // Not while the task holds the master (see `retry::pause`); were it to close,
                // no switch could be told any more, and the thread connection ends.
                if changed.is_err() {
                    return false;
                }
                // The store counts a switch before it sends the notice, so a connection may
                // be made for switch G+1 while the notice of G is still on its way: only a
                // count past `generation` is a master this connection was not made for. And
                // `generation` is never below a notice taken already: every notice taken
                // before the connection was opened (`run_sentinel` takes the current one, and
                // `retry::connected` those during its waits) carried a count no higher than the
                // one the opening read.
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
    use std::time::Duration;

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
