//! A cluster's thread connections: one per master on each attached serving thread, made from
//! the store's view of the slots ([`crate::topology`]) and made again whenever that view
//! changes hands (a failover, a master added or removed).
//!
//! A check goes to the connection of the master its slot maps to in the view as it is when the
//! check starts (see `ThreadConns::usable_here`). The view may be up to a second stale, or
//! change under the check: a master that does not serve the slot (any more, or yet) refuses
//! the call with `MOVED`, `ASK` or `TRYAGAIN` before running anything, and the call's checks
//! go to the store's cluster connection, which follows redirects (`Again::Elsewhere` in
//! [`crate::runner`]), and the view is asked for again at once
//! ([`crate::topology::Topology::refresh_soon`]). So a stale view costs a resend, never an
//! answer from the wrong master.
//!
//! After a check fails as unavailable, the connections to the master of its slot (on every
//! thread) are taken down until they answer a ping, as on a single server, and the others
//! keep serving: a master that is gone stays down until the view names its successor, and the
//! connections are made again.
//!
//! A master that comes back at another address under the same node ID (a restarted pod) is
//! no change of hands, and only its connections follow it: every attempt to make one goes to
//! the address last reported ([`crate::topology::Topology::address`]), and once the view
//! reports the master at another address than its connection's, the connection asks who it
//! is talking to (`CLUSTER MYID`). The same master answering (one node reporting another
//! address for it than the others do) keeps it; anything else (no answer: the old address is
//! dead; another node ID: another node took the old address) makes it again at the new one.

use super::{open_own, AbortOnDrop, ClusterConnect, Pinged, ATTACHED};
use super::{Listed, Own, OWN};
use crate::login::{authority, Refusal};
use crate::own_conn::Target;
use crate::runner::{Conn, Runner};
use crate::topology::{Address, Topology};
use std::sync::Arc;
use tokio::sync::watch;

/// Runs the thread's connections to the masters of `cluster`'s view, one task each, for as
/// long as the view keeps its masters; when an index changes hands, each one retires by
/// itself (its batcher leaves the thread's list, and the calls already queued or sent finish
/// on it), and once they all have, a set for the new view starts. Ends with the store (the
/// caller's `select!`), taking them with it.
pub(super) async fn run_cluster(
    id: u64,
    cluster: &ClusterConnect,
    template: Runner,
    per_node: Vec<watch::Receiver<u64>>,
) {
    let template = template.on_cluster_node();
    let mut changes = cluster.topology.subscribe();
    loop {
        // The generation as announced, which each connection's retiring waits past (the view
        // bumps its count just before announcing it; a check that reads the count in between
        // takes the shared path for that moment).
        let generation = *changes.borrow_and_update();
        let nodes: Vec<AbortOnDrop> = cluster
            .topology
            .masters()
            .into_iter()
            .filter_map(|(node, master, at)| {
                let failures = per_node.get(node)?.clone();
                let node = Node {
                    pinged: Pinged {
                        id,
                        node,
                        generation,
                        ping_limit: cluster.ping_limit,
                    },
                    changes: changes.clone(),
                    topology: cluster.topology.clone(),
                    master,
                    at,
                    seed: cluster.seed.clone(),
                    owner: cluster.owner.clone(),
                    login_hint: cluster.login_hint.clone(),
                };
                let template = template.clone();
                Some(AbortOnDrop::new(tokio::spawn(node.run(template, failures))))
            })
            .collect();
        // Fails only once the view is gone, which is after the store.
        if changes.changed().await.is_err() {
            return;
        }
        // Each one off the list before its successor goes on (both would list one node).
        for node in nodes {
            node.finished().await;
        }
    }
}

/// One master's thread connection, for one view of the masters.
struct Node {
    /// The store's id, the master's index in the view, the view's generation.
    pinged: Pinged,
    /// The view's generations, to retire once it is past this one's.
    changes: watch::Receiver<u64>,
    /// The view, for where the master was last reported.
    topology: Arc<Topology>,
    /// The master's node ID.
    master: String,
    /// Where the view reported the master when this one was made.
    at: Address,
    /// The seed's login and settings, placed at the master's address.
    seed: Target,
    owner: String,
    login_hint: String,
}

impl Node {
    /// Lists the connection on this thread, makes it (again after a wait while that fails,
    /// each attempt at the master's latest address), and serves on it as a single server's
    /// is served, `failures` counting this master's failed checks; made again at the new
    /// address when the master is reported elsewhere while it is down. Its place on the list
    /// goes when the task ends or is dropped.
    async fn run(self, template: Runner, failures: watch::Receiver<u64>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Pinged {
            id,
            node,
            generation,
            ..
        } = self.pinged;
        let listed = OWN.with_borrow_mut(|list| {
            // The thread's attached mark goes with the store; without it the store is gone.
            if !list
                .iter()
                .any(|own| own.store == id && own.node == ATTACHED)
            {
                return None;
            }
            list.push(Own::new(
                id,
                node,
                handle.id(),
                generation,
                failures.clone(),
            ));
            Some(Listed {
                store: id,
                node: Some(node),
                thread: std::thread::current().id(),
            })
        });
        let Some(_listed) = listed else {
            return;
        };
        // Retired by a later view, while connecting (a master gone for good) or serving.
        let retired = || {
            let mut changes = self.changes.clone();
            async move {
                let _ = changes.wait_for(|now| *now != generation).await;
            }
        };
        // Each attempt goes where the master was last reported (while the index is its).
        let open = || {
            let at = self
                .topology
                .address(node, generation)
                .unwrap_or_else(|| self.at.clone());
            let (target, address) = (self.seed.at(&at.0, at.1), authority(&at.0, at.1));
            let refusal = Refusal::of(&self.owner, &self.login_hint);
            async move {
                let conn = open_own(target, refusal, "Redis Cluster master", &address).await?;
                Ok((conn, at))
            }
        };
        loop {
            let (conn, at) = tokio::select! {
                made = super::retry::connected(open, None) => made,
                () = retired() => return,
            };
            let elsewhere = self.reported_elsewhere(&at, conn.clone());
            let (serving, failures) = (template.clone(), failures.clone());
            if !self
                .pinged
                .serve(conn, serving, failures, retired(), elsewhere)
                .await
            {
                return;
            }
            tracing::info!(
                was = %authority(&at.0, at.1),
                "a serving thread's connection to a Redis Cluster master follows it to the \
                 address it was reported at since"
            );
        }
    }

    /// Resolves once the view reports this one's master at another address than `at`, the
    /// connection made there (`conn`), and `conn` does not answer as that master (see the
    /// module docs).
    fn reported_elsewhere(
        &self,
        at: &Address,
        conn: Conn,
    ) -> impl std::future::Future<Output = ()> + '_ {
        // Subscribed before the first look, so that no move in between is missed.
        let mut moves = self.topology.subscribe_moves();
        let (node, generation, at) = (self.pinged.node, self.pinged.generation, at.clone());
        async move {
            loop {
                let now = self.topology.address(node, generation);
                if now.is_some_and(|now| now != at) && !self.still_there(&conn).await {
                    return;
                }
                // Never fails: the view (which sends) is held here.
                if moves.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Whether `conn` answers, within the ping limit, as this one's master.
    async fn still_there(&self, conn: &Conn) -> bool {
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("MYID");
        let asked = async move { crate::functions::lift(conn.query(&cmd).await) };
        match tokio::time::timeout(self.pinged.ping_limit, asked).await {
            Ok(Ok(id)) => redis::from_redis_value::<String>(id).is_ok_and(|id| id == self.master),
            _ => false,
        }
    }
}
