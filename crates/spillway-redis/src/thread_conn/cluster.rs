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
//! no change of hands, and its connections follow it: each time one is made (at first, by a
//! call or ping finding it closed, after a failure) it goes to the address the view last
//! reported for the master ([`crate::topology::Topology::address_of`]) and checks that the
//! master answers there (`CLUSTER MYID` with the login; [`crate::own_conn::Master`]). A
//! connection that is up stays where it is, whatever a node reports (the process it reaches
//! is the master it logged in to), unless two calls or pings on it in a row get no answer in
//! time, no reply read in between, while the view reports the master elsewhere: then it is
//! closed, and made again there
//! ([`crate::own_conn::OwnConn::no_answer`]), so that an old address gone silent (a host gone
//! without a reset) does not hold it until the kernel gives up. A connection that cannot be
//! made again fails its call as not sent: the call goes through the store's cluster
//! connection within its budget, the view is asked for again, and the master's connections
//! step aside until one answers a ping.

use super::{open_own, AbortOnDrop, ClusterConnect, Pinged, ATTACHED};
use super::{Listed, Own, OWN};
use crate::login::{authority, Refusal};
use crate::own_conn::{Master, Target};
use crate::runner::Runner;
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
    /// Where the view reported the master when this one was made (for messages, and should
    /// the view no longer say).
    at: Address,
    /// The seed's login and settings.
    seed: Target,
    owner: String,
    login_hint: String,
}

impl Node {
    /// Lists the connection on this thread, makes it (again after a wait while that fails,
    /// each time at the master's latest address), and serves on it as a single server's is
    /// served, `failures` counting this master's failed checks; its place on the list goes
    /// when the task ends or is dropped.
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
        // Each time the connection is made, it goes where the master was last reported
        // (while it has slots) and checks who answers there.
        let topology = Arc::clone(&self.topology);
        let id = self.master.clone();
        let master = Master {
            id: self.master.clone(),
            locate: Arc::new(move || topology.address_of(&id)),
        };
        let target = self.seed.at(&self.at.0, self.at.1).for_master(master);
        let open = || {
            let refusal = Refusal::of(&self.owner, &self.login_hint);
            let (host, port) = self
                .topology
                .address_of(&self.master)
                .unwrap_or_else(|| self.at.clone());
            let address = authority(&host, port);
            let target = target.clone();
            async move { open_own(target, refusal, "Redis Cluster master", &address).await }
        };
        let conn = tokio::select! {
            conn = super::retry::connected(open, None) => conn,
            () = retired() => return,
        };
        self.pinged.serve(conn, template, failures, retired()).await;
    }
}
