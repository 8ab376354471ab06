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
//! Each master address gets a domain index and keeps it while it serves slots; an address
//! that serves none any more (a failed master replaced by its replica, a removed node) gives
//! its index back, and an index given to another address bumps the generation, so the server
//! starts that index's breaker afresh: the slots of a failed-over master are never left
//! behind the old master's open breaker. Indices are bounded: index 0 ([`OTHER`]) holds the
//! slots no master is known for (before the first answer, or uncovered) and every master past
//! the first 63; the others hold one master each. The names are `host:port` as Redis reports
//! them, never anything a client sent.

use parking_lot::Mutex;
use redis::Value;
use spillway_core::store::MAX_DOMAINS;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Weak;
use std::time::Duration;

/// How often the slot map is asked again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The domain of slots with no known master, and of masters past the bound.
pub const OTHER: usize = 0;
/// The name of [`OTHER`].
pub const OTHER_NAME: &str = "other";

/// One range of slots and the address of the master serving it.
pub type SlotRange = (u16, u16, String);

/// The slot-to-domain view; see the module docs.
pub struct Topology {
    /// The domain index of each slot.
    slots: Box<[AtomicU8]>,
    /// The master address of each domain index (index 0 is [`OTHER_NAME`]).
    names: Mutex<Vec<Option<String>>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("names", &*self.names.lock())
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
        let mut names = vec![None; MAX_DOMAINS];
        // Every slot is in `OTHER` until the first map arrives.
        names[OTHER] = Some(OTHER_NAME.to_owned());
        Self {
            slots: (0..crate::keys::SLOTS).map(|_| AtomicU8::new(0)).collect(),
            names: Mutex::new(names),
            generation: AtomicU64::new(0),
        }
    }

    /// The domain index of hash slot `slot`.
    pub fn domain_of_slot(&self, slot: u16) -> usize {
        self.slots
            .get(usize::from(slot))
            .map_or(OTHER, |d| usize::from(d.load(Ordering::Relaxed)))
    }

    /// The master address of domain `index`, if it is in use. [`OTHER`] is named
    /// [`OTHER_NAME`] only while some slot is in it: once every slot has its own master,
    /// nothing can be refused on its account, and the server's breaker for it starts afresh.
    pub fn name(&self, index: usize) -> Option<String> {
        self.names.lock().get(index).cloned().flatten()
    }

    /// Changes whenever an index is given to another address.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Takes in a slot map (as `CLUSTER SLOTS` gives it). Returns whether any index changed
    /// hands.
    pub fn apply(&self, ranges: &[SlotRange]) -> bool {
        let mut names = self.names.lock();
        let serving = |name: &str| ranges.iter().any(|(_, _, addr)| addr == name);
        let mut changed = false;
        for name in names.iter_mut().skip(OTHER + 1) {
            if name.as_deref().is_some_and(|n| !serving(n)) {
                *name = None;
                changed = true;
            }
        }
        let mut table = vec![OTHER as u8; usize::from(crate::keys::SLOTS)];
        for (start, end, addr) in ranges {
            let index = match names
                .iter()
                .skip(OTHER + 1)
                .position(|n| n.as_ref() == Some(addr))
            {
                Some(i) => i + OTHER + 1,
                None => match names.iter().skip(OTHER + 1).position(Option::is_none) {
                    Some(i) => {
                        names[i + OTHER + 1] = Some(addr.clone());
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
        if names[OTHER] != other {
            names[OTHER] = other;
            changed = true;
        }
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
            let masters: Vec<&str> = names.iter().skip(1).flatten().map(String::as_str).collect();
            tracing::info!(?masters, "cluster masters (failure domains) changed");
        }
        changed
    }
}

/// Reads a `CLUSTER SLOTS` reply: each range's first and last slot and its master's
/// `host:port`. `None` if the reply does not have that shape.
pub fn parse_cluster_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = int(master.get(1)?)?;
            Some((start, end, format!("{host}:{port}")))
        })
        .collect()
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

/// Refreshes `topology` every [`REFRESH_EVERY`] on the current runtime until the store drops
/// it.
pub(crate) fn keep_fresh(
    topology: Weak<Topology>,
    mut conn: redis::cluster_async::ClusterConnection,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(topology) = topology.upgrade() else {
                return;
            };
            refresh(&topology, &mut conn, timeout).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(a: &str, b: &str, c: &str) -> Vec<SlotRange> {
        vec![
            (0, 5460, a.into()),
            (5461, 10922, b.into()),
            (10923, 16383, c.into()),
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
    fn a_failover_gives_the_slots_a_new_domain_and_frees_the_old_one() {
        let t = Topology::new();
        t.apply(&three("h:1", "h:2", "h:3"));
        let old = t.domain_of_slot(0);
        let g = t.generation();
        // h:1's replica h:4 took over its slots.
        assert!(t.apply(&three("h:4", "h:2", "h:3")));
        assert!(t.generation() > g, "the server must look again");
        let new = t.domain_of_slot(0);
        assert_eq!(t.name(new).as_deref(), Some("h:4"));
        assert_ne!(t.name(old).as_deref(), Some("h:1"), "h:1 no longer named");
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
        assert!(t.apply(&[(0, 5460, "h:1".into()), (5461, 10922, "h:2".into())]));
        assert_eq!(t.domain_of_slot(16383), OTHER);
        assert_eq!(t.name(OTHER).as_deref(), Some(OTHER_NAME));
        assert!(t.generation() > g);
    }

    #[test]
    fn indices_are_bounded_and_extra_masters_share_other() {
        let t = Topology::new();
        let ranges: Vec<SlotRange> = (0..100u16)
            .map(|i| (i * 100, i * 100 + 99, format!("h:{i}")))
            .collect();
        t.apply(&ranges);
        let named = (0..MAX_DOMAINS).filter(|&i| t.name(i).is_some()).count();
        assert_eq!(named, MAX_DOMAINS);
        assert_eq!(t.domain_of_slot(99 * 100), OTHER, "the 100th master shares");
        assert_eq!(t.domain_of_slot(12_000), OTHER, "uncovered slots too");
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            node("127.0.0.1", 7000),
            node("127.0.0.1", 7003),
        ])]);
        assert_eq!(
            parse_cluster_slots(&reply),
            Some(vec![(0, 5460, "127.0.0.1:7000".to_owned())])
        );
        assert_eq!(parse_cluster_slots(&Value::Okay), None);
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert_eq!(parse_cluster_slots(&bad), None);
    }
}
