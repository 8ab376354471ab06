//! [`Topology`]: which cluster master serves each hash slot, as failure domains.
//!
//! The server keeps one circuit breaker per failure domain (see
//! [`spillway_core::store::Domains`]); on a Redis Cluster a domain is a master. The cluster
//! client routes calls by its own slot map but does not show it, so the store keeps a view of
//! its own: `CLUSTER SLOTS`, asked of any node once at connect and then every
//! [`REFRESH_EVERY`] by a task that ends with the store. A node that does not answer within
//! the store's timeout, or names no master, leaves the last view in place until the next
//! round.
//!
//! Each master gets a domain index, keyed by its node ID (the same whichever node answers,
//! unlike its address, which each node reports as it knows it), and keeps it while it serves
//! slots; a master that serves none any more (a failed master replaced by its replica, a
//! removed node) gives its index back, and an index given to another master bumps the
//! generation, so the server starts that index's breaker afresh: the slots of a failed-over
//! master are never left behind the old master's open breaker. Indices are bounded: index 0
//! ([`OTHER`]) holds the slots no master is known for (before the first answer, uncovered,
//! or in an entry of the reply that cannot be read) and every master past the first 63; the
//! others hold one master each. A domain's name (its label in metrics, logs and `/readyz`) is
//! the master's `host:port` as first reported (its node ID if no address was readable), never
//! anything a client sent.
//!
//! The same view tells a serving thread where to send a slot's checks on a connection of its
//! own to each master ([`crate::thread_conn`]): [`Topology::masters`] gives each index's
//! address, and a change of hands is announced ([`Topology::subscribe`]) so those
//! connections follow it. Unlike the name, the address is the latest any node reported
//! ([`Topology::address_of`]): a master that comes back at another address (a restarted pod
//! keeping its node ID) is reached there by the next connection made to it, without a change
//! of hands. A node that no longer serves a slot refuses its calls with a
//! redirect before running anything, so a view a moment stale costs a resend, never a wrong
//! answer; such a refusal asks for the map again at once ([`Topology::refresh_soon`], at most
//! every [`NUDGE_GAP`]).

use parking_lot::Mutex;
use redis::Value;
use spillway_core::store::MAX_DOMAINS;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How often the slot map is asked again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The least time between two refreshes asked for by a redirect ([`Topology::refresh_soon`]).
pub const NUDGE_GAP: Duration = Duration::from_millis(100);
/// The domain of slots with no known master, and of masters past the bound.
pub const OTHER: usize = 0;
/// The name of [`OTHER`].
pub const OTHER_NAME: &str = "other";

/// One range of slots: first slot, last slot, the node ID of the master serving it, and
/// that master's label (`host:port`, or the node ID if no address was readable).
pub type SlotRange = (u16, u16, String, String);

/// Who holds each domain index.
#[derive(Debug)]
struct Names {
    /// The node ID of each index's master (`None` for [`OTHER`] and free indices).
    ids: Vec<Option<String>>,
    /// The name of each index in use (index 0 is [`OTHER_NAME`] while some slot is in it).
    labels: Vec<Option<String>>,
    /// The address each index's master was last reported at (`None` while none was).
    addresses: Vec<Option<Address>>,
}

/// A master's address: host and port.
pub(crate) type Address = (String, u16);

/// The address in a [`SlotRange`]'s label, if it holds one rather than the node ID.
fn address_in(label: &str) -> Option<Address> {
    let (host, port) = label.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The slot-to-domain view; see the module docs.
pub struct Topology {
    /// The domain index of each slot.
    slots: Box<[AtomicU8]>,
    names: Mutex<Names>,
    generation: AtomicU64,
    /// The generation again, for those who wait for it to change (the serving threads'
    /// connections to each master).
    changes: watch::Sender<u64>,
    /// Asks the refreshing task for the map now (a redirect met); shared with that task, which
    /// holds the view itself only weakly.
    nudged: Arc<Notify>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("names", &self.names.lock().labels)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// A view that knows no master yet: every slot is in [`OTHER`].
    pub fn new() -> Self {
        let mut labels = vec![None; MAX_DOMAINS];
        // Every slot is in `OTHER` until the first map arrives.
        labels[OTHER] = Some(OTHER_NAME.to_owned());
        Self {
            slots: (0..crate::keys::SLOTS).map(|_| AtomicU8::new(0)).collect(),
            names: Mutex::new(Names {
                ids: vec![None; MAX_DOMAINS],
                labels,
                addresses: vec![None; MAX_DOMAINS],
            }),
            generation: AtomicU64::new(0),
            changes: watch::channel(0).0,
            nudged: Arc::default(),
        }
    }

    /// The domain index of hash slot `slot`.
    pub fn domain_of_slot(&self, slot: u16) -> usize {
        self.slots
            .get(usize::from(slot))
            .map_or(OTHER, |d| usize::from(d.load(Ordering::Relaxed)))
    }

    /// The name of domain `index` (its master's label), if it is in use. [`OTHER`] is named
    /// [`OTHER_NAME`] only while some slot is in it: once every slot has its own master,
    /// nothing can be refused on its account, and the server's breaker for it starts afresh.
    pub fn name(&self, index: usize) -> Option<String> {
        self.names.lock().labels.get(index).cloned().flatten()
    }

    /// Changes whenever an index is given to another master, [`OTHER`] is named or unnamed,
    /// or a master known until then only by its node ID is first reported at an address (so
    /// that connections to it are made).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Told whenever [`Topology::generation`] changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Asks for the slot map again now rather than at the next round (a node redirected a
    /// call); a refresh asked for this way is followed by at least [`NUDGE_GAP`] before the
    /// next.
    pub(crate) fn refresh_soon(&self) {
        self.nudged.notify_one();
    }

    /// Each master with an index of its own, as its index, its node ID and its address (as
    /// last reported); a master whose address no node reported is left out.
    pub(crate) fn masters(&self) -> Vec<(usize, String, Address)> {
        let names = self.names.lock();
        (OTHER + 1..MAX_DOMAINS)
            .filter_map(|i| Some((i, names.ids[i].clone()?, names.addresses[i].clone()?)))
            .collect()
    }

    /// Where the master with node ID `id` was last reported, while it has an index (`None`
    /// once no slot is its, or before any node reported its address).
    pub(crate) fn address_of(&self, id: &str) -> Option<Address> {
        let names = self.names.lock();
        let index = names.ids.iter().position(|n| n.as_deref() == Some(id))?;
        names.addresses[index].clone()
    }

    /// Takes in a slot map (as `CLUSTER SLOTS` gives it). Returns whether any index changed
    /// hands.
    pub fn apply(&self, ranges: &[SlotRange]) -> bool {
        let mut guard = self.names.lock();
        let Names {
            ids,
            labels,
            addresses,
        } = &mut *guard;
        let serving = |id: &str| ranges.iter().any(|(_, _, node, _)| node == id);
        let mut changed = false;
        let mut moved = Vec::new();
        for ((id, label), address) in ids
            .iter_mut()
            .zip(labels.iter_mut())
            .zip(addresses.iter_mut())
            .skip(OTHER + 1)
        {
            if id.as_deref().is_some_and(|n| !serving(n)) {
                *id = None;
                *label = None;
                *address = None;
                changed = true;
            }
        }
        let mut table = vec![OTHER as u8; usize::from(crate::keys::SLOTS)];
        for (start, end, node, label) in ranges {
            // A label that is the node's ID holds no address: the last one known stays.
            let reported = (label != node).then(|| address_in(label)).flatten();
            let index = match ids
                .iter()
                .skip(OTHER + 1)
                .position(|n| n.as_ref() == Some(node))
            {
                // The label stays as first given: another node may report the same master's
                // address differently, and a name that flips would reset its breaker. The
                // address to connect to follows the report; a first one for a master known
                // only by its ID until now is told as a change, so that connections to it
                // are made.
                Some(i) => {
                    let i = i + OTHER + 1;
                    if reported.is_some() && addresses[i] != reported {
                        changed |= addresses[i].is_none();
                        addresses[i].clone_from(&reported);
                        moved.extend(labels[i].clone().zip(reported));
                    }
                    i
                }
                None => match ids.iter().skip(OTHER + 1).position(Option::is_none) {
                    Some(i) => {
                        ids[i + OTHER + 1] = Some(node.clone());
                        labels[i + OTHER + 1] = Some(label.clone());
                        addresses[i + OTHER + 1] = reported;
                        changed = true;
                        i + OTHER + 1
                    }
                    // More masters than indices: this one shares `OTHER`.
                    None => OTHER,
                },
            };
            let end = usize::from(*end).min(table.len() - 1);
            for entry in table.iter_mut().take(end + 1).skip(usize::from(*start)) {
                *entry = index as u8;
            }
        }
        for (entry, &index) in self.slots.iter().zip(&table) {
            entry.store(index, Ordering::Relaxed);
        }
        // `OTHER` is named while some slot is in it; its name coming or going bumps the
        // generation, so an `OTHER` breaker opened before the first map (or for uncovered
        // slots) is started afresh rather than left open with nothing to probe it.
        let other = table
            .contains(&(OTHER as u8))
            .then(|| OTHER_NAME.to_owned());
        if labels[OTHER] != other {
            labels[OTHER] = other;
            changed = true;
        }
        if changed {
            let generation = self.generation.fetch_add(1, Ordering::Release) + 1;
            self.changes.send_replace(generation);
            let masters: Vec<&str> = labels
                .iter()
                .skip(OTHER + 1)
                .flatten()
                .map(String::as_str)
                .collect();
            tracing::info!(?masters, "cluster masters (failure domains) changed");
        }
        for (name, (host, port)) in &moved {
            tracing::info!(
                master = name.as_str(),
                now = %crate::login::authority(host, *port),
                "a cluster master was reported at another address (its name stays); thread \
                 connections made to it from now on go there"
            );
        }
        changed
    }
}

/// Reads a `CLUSTER SLOTS` reply: each range's first and last slot, its master's node ID and
/// label. `None` if the reply is not a list; an entry that cannot be read (no slot numbers, no
/// node ID) is left out, its slots staying in [`OTHER`], rather than losing the whole map.
pub fn parse_cluster_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
        .filter(|t| !t.is_empty())
    };
    let read = |entry: &Value| {
        let Value::Array(fields) = entry else {
            return None;
        };
        let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let id = text(master.get(2)?)?;
        // The address is only a label: a node that does not know it (a Nil or `?` host)
        // still names the master by its ID.
        let address = match (master.first().and_then(text), master.get(1).and_then(int)) {
            (Some(host), Some(port)) if host != "?" => Some(format!("{host}:{port}")),
            _ => None,
        };
        let label = address.unwrap_or_else(|| id.clone());
        Some((start, end, id, label))
    };
    let ranges: Vec<SlotRange> = entries.iter().filter_map(read).collect();
    if ranges.len() < entries.len() {
        tracing::debug!(
            skipped = entries.len() - ranges.len(),
            "CLUSTER SLOTS entries without slots or a node ID left out"
        );
    }
    Some(ranges)
}

/// Asks `conn` for the slot map once, within `timeout`, and applies it.
pub(crate) async fn refresh(
    topology: &Topology,
    conn: &mut redis::cluster_async::ClusterConnection,
    timeout: Duration,
) {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let asked = cmd.query_async::<Value>(conn);
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(reply)) => match parse_cluster_slots(&reply) {
            // A node that serves no slots (just restarted, not yet joined) knows less than
            // the last map.
            Some(ranges) if ranges.is_empty() => {
                tracing::debug!("CLUSTER SLOTS named no master; the last slot map stays");
            }
            Some(ranges) => {
                topology.apply(&ranges);
            }
            None => tracing::warn!("CLUSTER SLOTS answered in an unexpected shape"),
        },
        Ok(Err(err)) => tracing::debug!(%err, "CLUSTER SLOTS failed; the last slot map stays"),
        Err(_) => tracing::debug!("CLUSTER SLOTS timed out; the last slot map stays"),
    }
}

/// Refreshes `topology` every [`REFRESH_EVERY`] on the current runtime, and soon after it is
/// asked to ([`Topology::refresh_soon`]), until the store drops it.
pub(crate) fn keep_fresh(
    topology: Weak<Topology>,
    mut conn: redis::cluster_async::ClusterConnection,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        let Some(asked) = topology.upgrade().map(|t| t.nudged.clone()) else {
            return;
        };
        loop {
            let nudged = tokio::select! {
                _ = every.tick() => false,
                () = asked.notified() => true,
            };
            let Some(topology) = topology.upgrade() else {
                return;
            };
            refresh(&topology, &mut conn, timeout).await;
            drop(topology);
            if nudged {
                // The map is fresh: the next round is a whole interval away.
                every.reset();
                tokio::time::sleep(NUDGE_GAP).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range served by the master labelled `name`, whose node ID is derived from it.
    fn range(start: u16, end: u16, name: &str) -> SlotRange {
        (start, end, format!("id-{name}"), name.into())
    }

    fn three(a: &str, b: &str, c: &str) -> Vec<SlotRange> {
        vec![
            range(0, 5460, a),
            range(5461, 10922, b),
            range(10923, 16383, c),
        ]
    }

    #[test]
    fn each_master_is_a_domain_and_unknown_slots_are_other() {
        let t = Topology::new();
        assert_eq!(t.domain_of_slot(100), OTHER);
        assert!(t.apply(&three("h:1", "h:2", "h:3")));
        let (a, b, c) = (
            t.domain_of_slot(0),
            t.domain_of_slot(6000),
            t.domain_of_slot(16383),
        );
        assert!(a != b && b != c && a != c && ![a, b, c].contains(&OTHER));
        assert_eq!(t.domain_of_slot(5460), a);
        assert_eq!(t.name(b).as_deref(), Some("h:2"));
        assert_eq!(t.name(OTHER), None, "no slot is left in other");
        let g = t.generation();
        assert!(
            !t.apply(&three("h:1", "h:2", "h:3")),
            "the same map changes nothing"
        );
        assert_eq!(t.generation(), g);
    }

    #[test]
    fn a_failover_renames_the_freed_index_and_moves_the_generation() {
        let t = Topology::new();
        t.apply(&three("h:1", "h:2", "h:3"));
        let old = t.domain_of_slot(0);
        let g = t.generation();
        // h:1's replica h:4 took over its slots: h:1's index is freed and given to h:4.
        assert!(t.apply(&three("h:4", "h:2", "h:3")));
        let new = t.domain_of_slot(0);
        assert_eq!(old, new, "the freed index is reused");
        assert_eq!(t.name(new).as_deref(), Some("h:4"));
        assert!(
            t.generation() > g,
            "so the server renames (restarts) its breaker"
        );
    }

    #[test]
    fn masters_are_keyed_by_node_id_not_by_the_address_a_node_reports() {
        let t = Topology::new();
        t.apply(&three("h:1", "h:2", "h:3"));
        let (a, g) = (t.domain_of_slot(0), t.generation());
        // Another node reports the same master (same ID) under another address.
        let mut other_view = three("h:1", "h:2", "h:3");
        other_view[0].3 = "10.0.0.9:7000".into();
        assert!(!t.apply(&other_view), "the same masters: nothing changes");
        assert_eq!(t.generation(), g, "no breaker is reset");
        assert_eq!(t.domain_of_slot(0), a);
        assert_eq!(t.name(a).as_deref(), Some("h:1"), "the first label stays");
        // But a connection made to it now goes where it was last reported.
        assert_eq!(t.address_of("id-h:1"), Some(("10.0.0.9".into(), 7000)));
        let master = (a, "id-h:1".into(), ("10.0.0.9".into(), 7000));
        assert!(t.masters().contains(&master));
        // A node that does not know the address (the ID as label) moves nothing.
        other_view[0].3 = other_view[0].2.clone();
        assert!(!t.apply(&other_view));
        assert_eq!(t.address_of("id-h:1"), Some(("10.0.0.9".into(), 7000)));
        // A change elsewhere in the map leaves it where it was reported.
        let mut elsewhere = other_view.clone();
        elsewhere[1].2 = "id-h:5".into();
        elsewhere[1].3 = "h:5".into();
        assert!(t.apply(&elsewhere), "master 2 changed hands");
        assert_eq!(t.address_of("id-h:1"), Some(("10.0.0.9".into(), 7000)));
        // Once its slots have gone to another master, it is not located at all.
        t.apply(&three("h:4", "h:2", "h:3"));
        assert_eq!(t.address_of("id-h:1"), None);
        assert_eq!(t.address_of("id-h:4"), Some(("h".into(), 4)));
    }

    #[test]
    fn masters_are_listed_with_their_addresses_and_changes_are_told() {
        let t = Topology::new();
        let mut told = t.subscribe();
        assert!(t.masters().is_empty(), "none known before the first map");
        t.apply(&[
            range(0, 5460, "10.0.0.1:7000"),
            range(5461, 10922, "::1:7001"),
            // Known only by its node ID: no address to connect to.
            (10923, 16383, "c3".into(), "c3".into()),
        ]);
        assert!(told.has_changed().unwrap(), "a new map is told");
        told.borrow_and_update();
        let masters = t.masters();
        assert_eq!(
            masters,
            vec![
                (
                    t.domain_of_slot(0),
                    "id-10.0.0.1:7000".into(),
                    ("10.0.0.1".into(), 7000)
                ),
                (
                    t.domain_of_slot(6000),
                    "id-::1:7001".into(),
                    ("::1".into(), 7001)
                ),
            ]
        );
        // The same masters, a slot moved between them: no index changed hands.
        t.apply(&[
            range(0, 5461, "10.0.0.1:7000"),
            range(5462, 10922, "::1:7001"),
            (10923, 16383, "c3".into(), "c3".into()),
        ]);
        assert!(
            !told.has_changed().unwrap(),
            "a moved slot is no change of hands"
        );
        assert_eq!(t.domain_of_slot(5461), t.domain_of_slot(0));
        // The master known only by its ID is reported with an address: told, so that
        // connections to it are made, and listed from then on.
        let c = t.domain_of_slot(16383);
        t.apply(&[
            range(0, 5461, "10.0.0.1:7000"),
            range(5462, 10922, "::1:7001"),
            (10923, 16383, "c3".into(), "10.0.0.3:7002".into()),
        ]);
        assert!(told.has_changed().unwrap(), "a first address is told");
        told.borrow_and_update();
        assert!(t
            .masters()
            .contains(&(c, "c3".into(), ("10.0.0.3".into(), 7002))));
        assert_eq!(t.name(c).as_deref(), Some("c3"), "its name stays");
        // A failover: told.
        t.apply(&[
            range(0, 5461, "10.0.0.9:7000"),
            range(5462, 10922, "::1:7001"),
            (10923, 16383, "c3".into(), "c3".into()),
        ]);
        assert!(told.has_changed().unwrap());
        assert_eq!(*told.borrow(), t.generation());
    }

    #[test]
    fn other_is_named_only_while_some_slot_is_in_it() {
        let t = Topology::new();
        assert_eq!(
            t.name(OTHER).as_deref(),
            Some(OTHER_NAME),
            "before the first map"
        );
        let g = t.generation();
        assert!(t.apply(&three("h:1", "h:2", "h:3")));
        assert_eq!(t.name(OTHER), None, "every slot has a master");
        assert!(
            t.generation() > g,
            "so the server renames (closes) its breaker"
        );
        // A map leaving slots uncovered names it again.
        let g = t.generation();
        assert!(t.apply(&[range(0, 5460, "h:1"), range(5461, 10922, "h:2")]));
        assert_eq!(t.domain_of_slot(16383), OTHER);
        assert_eq!(t.name(OTHER).as_deref(), Some(OTHER_NAME));
        assert!(t.generation() > g);
    }

    #[test]
    fn indices_are_bounded_and_extra_masters_share_other() {
        let t = Topology::new();
        let ranges: Vec<SlotRange> = (0..100u16)
            .map(|i| range(i * 100, i * 100 + 99, &format!("h:{i}")))
            .collect();
        t.apply(&ranges);
        let named = (0..MAX_DOMAINS).filter(|&i| t.name(i).is_some()).count();
        assert_eq!(named, MAX_DOMAINS);
        assert_eq!(t.domain_of_slot(99 * 100), OTHER, "the 100th master shares");
        assert_eq!(t.domain_of_slot(12_000), OTHER, "uncovered slots too");
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |host: Value, port: i64, id: &str| {
            Value::Array(vec![
                host,
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let ip = |h: &str| Value::BulkString(h.as_bytes().to_vec());
        let entry = |start, end, master| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                master,
                node(ip("127.0.0.1"), 7003, "replica"),
            ])
        };
        let reply = Value::Array(vec![entry(0, 5460, node(ip("127.0.0.1"), 7000, "a1"))]);
        assert_eq!(
            parse_cluster_slots(&reply),
            Some(vec![(0, 5460, "a1".into(), "127.0.0.1:7000".into())])
        );
        assert_eq!(parse_cluster_slots(&Value::Okay), None);
    }

    #[test]
    fn unreadable_cluster_slots_entries_are_left_out_not_the_whole_reply() {
        let node = |host: Value, id: Value| Value::Array(vec![host, Value::Int(7000), id]);
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry =
            |start, end, master| Value::Array(vec![Value::Int(start), Value::Int(end), master]);
        let reply = Value::Array(vec![
            // A Nil host (a node that does not know the address): labelled by its ID.
            entry(0, 5460, node(Value::Nil, text("b2"))),
            // No node ID: left out, its slots stay in `other`.
            entry(5461, 10922, node(text("10.0.0.2"), Value::Nil)),
            Value::Array(vec![Value::Int(0)]),
            entry(10923, 16383, node(text("10.0.0.3"), text("c3"))),
        ]);
        assert_eq!(
            parse_cluster_slots(&reply),
            Some(vec![
                (0, 5460, "b2".into(), "b2".into()),
                (10923, 16383, "c3".into(), "10.0.0.3:7000".into()),
            ])
        );
    }
}
