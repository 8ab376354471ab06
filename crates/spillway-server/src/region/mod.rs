//! Regions: a deployment spread over several regions, each with its own Redis, where some
//! limits hold worldwide (see `spillway-core/src/policy/region.rs` for the policy side and
//! `docs/GLOBAL.md` for the model and its bounds).
//!
//! A node knows its region (`--region`) and uses that region's store as its own. When the
//! policy has `home` or `aggregate` limits, [`RegionNode::check`] (`check.rs`) replaces the
//! single store call of a decision; the exchange task (`exchange.rs`) moves `aggregate`
//! counts between the regions in the background, into the node's [`Tally`] (`tally.rs`).
//! Another region's store, for `home` limits, connects on first use (`remote.rs`).
//! A policy whose limits are all `regional` decides exactly as without regions.

mod check;
pub mod exchange;
pub mod metrics;
mod remote;
#[cfg(test)]
mod remote_tests;
#[cfg(test)]
mod simulation;
pub mod tally;

use crate::failure::{Failover, FailureSettings};
use crate::shutdown::Shutdown;
use anyhow::Context;
use remote::Remote;
use spillway_core::policy::{Policy, Regions, StoreConfig};
use spillway_core::store::Store;
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;
use tally::Tally;

pub use check::{Checked, FarFailure, FellBack};

/// The header (HTTP) and response header (Envoy RLS) naming the request's tenant's home
/// region, so a gateway can send the tenant's traffic there.
pub const HOME_HEADER: &str = "spillway-home-region";

/// The store settings a node uses as its own: its region's when the policy names regions
/// (then `--region` must name one of them, and `--store-url` cannot stand in), else `policy`'s
/// `store:` with the `--store-url` override; with them, the setting a refused login of that
/// store asks to check, naming where its URLs came from (see [`crate::store::login_hints`]).
pub fn own_store(
    policy: &Policy,
    region: Option<&str>,
    store_url: Option<&str>,
) -> Result<(StoreConfig, String), String> {
    use crate::store::login_hints;
    let Some(regions) = policy.regions() else {
        if let Some(region) = region {
            return Err(format!(
                "--region {region}: the policy's store names no regions (store.regions)"
            ));
        }
        let replaced = crate::store::given_url(store_url).is_some();
        let hint = if replaced {
            login_hints::STORE_FLAG
        } else {
            login_hints::STORE_POLICY
        };
        return crate::store::effective(policy.store(), store_url).map(|c| (c, hint.to_owned()));
    };
    let names: Vec<&str> = regions.names().iter().map(|n| &**n).collect();
    let Some(region) = region else {
        return Err(format!(
            "the policy's store names regions ({}): say which this node is in with --region",
            names.join(", ")
        ));
    };
    let Some(index) = regions.index(region) else {
        return Err(format!(
            "--region {region}: the policy's store names {}",
            names.join(", ")
        ));
    };
    if crate::store::given_url(store_url).is_some() {
        return Err("--store-url cannot replace a store with regions; edit store.regions".into());
    }
    Ok((regions.store(index).clone(), login_hints::region(region)))
}

/// This node's view of the regions: its own, every other region's store, and the counts the
/// exchange brings.
pub struct RegionNode {
    regions: Arc<Regions>,
    own: usize,
    /// Each other region's store behind its own budget and breaker (`None` at the own index:
    /// the engine's store serves it).
    stores: Vec<Option<Arc<dyn Store>>>,
    tally: Arc<Tally>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RegionNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionNode")
            .field("own", &self.regions.names()[self.own])
            .finish_non_exhaustive()
    }
}

impl RegionNode {
    /// The node of region `region` (validated by [`own_store`]) of `policy`'s regions; `None`
    /// without regions. Other regions' stores connect on first use, so a region that is down
    /// when this node starts does not keep it from starting.
    pub fn new(
        policy: &Policy,
        region: Option<&str>,
        failure: &FailureSettings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let (Some(regions), Some(region)) = (policy.regions(), region) else {
            return Ok(None);
        };
        if regions.names().len() < 2 {
            // One region: nothing to exchange or call elsewhere; decide as without regions.
            return Ok(None);
        }
        let own = regions
            .index(region)
            .with_context(|| format!("no region named {region}"))?;
        let budget = Duration::from_micros(regions.home_timeout);
        let stores = (0..regions.names().len())
            .map(|r| {
                (r != own).then(|| {
                    let lazy: Arc<dyn Store> = Arc::new(Remote::new(
                        regions.names()[r].clone(),
                        regions.store(r).clone(),
                        budget,
                        failure.breaker_cooldown,
                        clock.clone(),
                    ));
                    // Its own breaker: a far region that fails must not stop the near one.
                    let settings = FailureSettings { budget, ..*failure };
                    Failover::for_region(settings, clock.clone()).guard(lazy, true)
                })
            })
            .collect();
        metrics::describe(regions.names());
        let tally = Arc::new(
            Tally::new(
                own,
                regions.names().len(),
                regions.partition_after,
                regions.partition_share,
            )
            .with_leases(regions.lease_above, regions.interval),
        );
        Ok(Some(Arc::new(Self {
            regions: regions.clone(),
            own,
            stores,
            tally,
            clock,
        })))
    }

    /// Starts the exchange of `aggregate` counts; it reads the policy in force on each tick.
    /// It stops, after a last publication, once `stop` is notified.
    pub fn spawn_exchange(
        &self,
        policy: impl Fn() -> Arc<Policy> + Send + 'static,
        shutdown: Shutdown,
        stop: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        exchange::Exchange::new(&self.regions, self.tally.clone(), self.clock.clone())
            .spawn(policy, shutdown, stop)
    }

    /// This node's region.
    pub fn own_name(&self) -> &Arc<str> {
        &self.regions.names()[self.own]
    }

    /// The index of `tenant`'s home region: the catalog's, else the hash of the tenant.
    pub fn home_of(&self, policy: &Policy, tenant: &str) -> usize {
        policy
            .catalog()
            .home_region(tenant)
            .and_then(|name| self.regions.index(name))
            .unwrap_or_else(|| self.regions.hashed_home(tenant))
    }

    /// The name of `tenant`'s home region, for the response header.
    pub fn home_name(&self, policy: &Policy, tenant: &str) -> Arc<str> {
        self.regions.names()[self.home_of(policy, tenant)].clone()
    }

    /// What the node knows of the other regions' counts (tests and metrics).
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ServerClock;
    use crate::test_support::aggregate_policy;

    fn policy(regions: &str) -> Policy {
        aggregate_policy(&format!("store:\n  type: redis\n  regions:\n{regions}\n"))
    }

    #[test]
    fn one_region_decides_as_without_regions() {
        let clock = ServerClock::manual(1_000);
        let failure = FailureSettings::default();
        let one = policy("    us: {url: \"redis://127.0.0.1:1\"}");
        let node = RegionNode::new(&one, Some("us"), &failure, clock.shared()).expect("ok");
        assert!(node.is_none(), "one region: no region node, no exchange");
        let two = policy(
            "    us: {url: \"redis://127.0.0.1:1\"}\n    eu: {url: \"redis://127.0.0.1:2\"}",
        );
        let node = RegionNode::new(&two, Some("us"), &failure, clock.shared()).expect("ok");
        assert!(node.is_some());
    }
}
