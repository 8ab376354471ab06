//! Three regions' nodes deciding one `aggregate` limit on a manual clock, with the exchange
//! played by hand: deterministic, single-threaded, no Redis. Each period every region sends its
//! requests to its node (an in-memory own store), then every node publishes what it admitted
//! and reads every region's published counts, so each node's view of the others is one period
//! old. What leases add shows exactly here, where `tests/regions.rs` (real processes on a
//! shared machine) can only check both against the plain bound.

use super::tally::{Known, Place};
use super::RegionNode;
use crate::clock::ServerClock;
use crate::config::PolicySource;
use crate::failure::FailureSettings;
use spillway_core::policy::{Planned, Policy};
use spillway_core::request::{CheckMode, RequestAttrs};
use spillway_core::store::MemoryStore;
use spillway_testkit::policy::unreachable_regions;
use std::collections::HashMap;
use std::sync::Arc;

const NAMES: [&str; 3] = ["us", "eu", "ap"];
const LIMIT: u64 = 90;
const START_MS: u64 = 1_728_000_060_000;
pub(super) const PERIOD_MS: u64 = 250;

/// The world: the policy, and per region its node and own store.
struct World {
    policy: Policy,
    nodes: Vec<(Arc<RegionNode>, MemoryStore)>,
    clock: ServerClock,
    /// What each region has published, by counter.
    published: HashMap<Place, [u64; 3]>,
}

/// Three regions (`us`, `eu`, `ap`, whose stores are never called) and one `aggregate`
/// limit, `soft` (LIMIT an hour per tenant), exchanged every PERIOD_MS, with leases past
/// `lease_above` if given. `region/check.rs`'s tests run on it too.
pub(super) fn policy(lease_above: Option<f64>) -> Policy {
    let leases = lease_above.map_or(String::new(), |l| format!(", lease_above: {l}"));
    let exchange = format!("exchange: {{interval: {PERIOD_MS}ms{leases}}}");
    let store = unreachable_regions(&NAMES, &[&exchange]);
    let text = crate::test_support::aggregate_policy_text(&store, LIMIT, "1h");
    PolicySource::Builtin.parse(&text).expect("valid policy")
}

/// The clock every node of a test shares: a minute into an hour.
pub(super) fn clock() -> ServerClock {
    ServerClock::manual(START_MS)
}

/// Region `name`'s node under `policy`, and its own (in-memory) store.
pub(super) fn node(
    policy: &Policy,
    name: &str,
    clock: &ServerClock,
) -> (Arc<RegionNode>, MemoryStore) {
    let failure = FailureSettings::default();
    let node = RegionNode::new(policy, Some(name), &failure, clock.shared())
        .expect("a node")
        .expect("three regions");
    (node, MemoryStore::new(1_000, clock.shared()))
}

/// Tenant `acme`'s one planned limit, `soft`.
pub(super) fn planned(policy: &Policy) -> Planned {
    let attrs = RequestAttrs {
        tenant: Some("acme".into()),
        ..RequestAttrs::default()
    };
    let mut planned = policy.resolve(&attrs).limits;
    assert_eq!(planned.len(), 1);
    planned.remove(0)
}

impl World {
    fn new(lease_above: Option<f64>) -> Self {
        let policy = policy(lease_above);
        let clock = clock();
        let nodes = NAMES
            .iter()
            .map(|name| node(&policy, name, &clock))
            .collect();
        let mut world = Self {
            policy,
            nodes,
            clock,
            published: HashMap::new(),
        };
        // Every node has read every region once: none is taken as cut off.
        world.exchange();
        world
    }

    /// Every node publishes what it admitted, then reads every region's published counts.
    fn exchange(&mut self) {
        let now = self.clock.now();
        for (r, (node, _)) in self.nodes.iter().enumerate() {
            for (place, n) in node.tally.take_pending() {
                self.published.entry(place).or_default()[r] += n;
            }
        }
        for (node, _) in &self.nodes {
            let known = Known {
                counts: (self.published.iter())
                    .map(|(place, counts)| (place.clone(), Box::from(counts.as_slice())))
                    .collect(),
                truncated: Box::new([]),
                lengths: Box::new([]),
            };
            node.tally.publish_known(known, &[0, 1, 2], now);
        }
    }

    /// Sends `rates[r]` requests to region `r` each period, exchanging after each, until no
    /// region admits anything for two periods; returns what each region admitted.
    async fn run(&mut self, rates: [u64; 3]) -> [u64; 3] {
        let planned = planned(&self.policy);
        let mut admitted = [0u64; 3];
        let mut idle = 0;
        while idle < 2 {
            let mut any = false;
            for (r, (node, own)) in self.nodes.iter().enumerate() {
                for _ in 0..rates[r] {
                    let one = std::slice::from_ref(&planned);
                    let (allowed, _) = node
                        .check_failing_closed(&self.policy, own, one, CheckMode::Consume)
                        .await
                        .expect("an in-memory store answers");
                    admitted[r] += u64::from(allowed);
                    any |= allowed;
                }
            }
            idle = if any { 0 } else { idle + 1 };
            let manual = self.clock.manual_control().expect("a manual clock");
            manual.advance(PERIOD_MS * 1_000);
            self.exchange();
        }
        admitted
    }
}

/// What the others admit in one period at most, for the region that sees the most: the plain
/// rule's bound in this model (views one period old).
fn plain_bound(rates: [u64; 3]) -> u64 {
    let total: u64 = rates.iter().sum();
    (0..3).map(|r| total - rates[r]).max().unwrap_or(0)
}

#[tokio::test]
async fn leases_cut_the_over_admission_to_their_rounding() {
    // Uniform and skewed, each starting below the threshold (half of 90) and staying within
    // the limit in the period that crosses it, so what the period past it admits is the
    // leases' doing alone.
    // The model is deterministic, so the over-admissions GLOBAL.md quotes are exact.
    for (rates, quoted) in [([20, 20, 20], (30, 0)), ([40, 10, 10], (20, 0))] {
        let plain: u64 = World::new(None).run(rates).await.iter().sum();
        let leased: u64 = World::new(Some(0.5)).run(rates).await.iter().sum();
        let (plain_over, leased_over) = (plain.saturating_sub(LIMIT), leased.saturating_sub(LIMIT));
        println!("rates {rates:?} a period, limit {LIMIT}: over by {plain_over} plain, {leased_over} with leases");
        // Both fill the limit (no phantom counts).
        assert!(plain >= LIMIT && leased >= LIMIT, "{plain} {leased}");
        assert!(plain_over <= plain_bound(rates), "{plain_over} {rates:?}");
        // Past the threshold every region reads the same counts and leases a third of what
        // remains, rounded up: together at most the remainder plus one per region but one.
        assert!(leased_over < 3, "{leased_over} {rates:?}");
        assert!(
            leased_over < plain_over,
            "leases add nothing: {leased_over} vs {plain_over} ({rates:?})"
        );
        assert_eq!(
            (plain_over, leased_over),
            quoted,
            "GLOBAL.md's figures, {rates:?}"
        );
    }
}
