//! Regions: a deployment spread over several regions, each with its own Redis, where some
//! limits hold worldwide (see `spillway-core/src/policy/region.rs` for the policy side and
//! `docs/GLOBAL.md` for the model and its bounds).
//!
//! A node knows its region (`--region`) and uses that region's store as its own. When the
//! policy has `home` or `aggregate` limits, [`RegionNode::check`] (`check.rs`) replaces the
//! single store call of a decision; the exchange task (`exchange.rs`) moves `aggregate`
//! counts between the regions in the background, into the node's [`Tally`] (`tally.rs`).
//! A policy whose limits are all `regional` decides exactly as without regions.

mod check;
pub mod exchange;
pub mod metrics;
#[cfg(test)]
mod simulation;
pub mod tally;

use crate::config::SettingsError;
use crate::failure::{Failover, FailureSettings};
use crate::shutdown::Shutdown;
use anyhow::Context;
use async_trait::async_trait;
use spillway_core::algorithm::Decision;
use spillway_core::policy::{Policy, Regions, StoreConfig};
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Domains, Store, StoreError};
use spillway_core::time::Clock;
use std::sync::Arc;
use std::time::Duration;
use tally::Tally;

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
                    let lazy: Arc<dyn Store> = Arc::new(Remote(Arc::new(Link {
                        name: regions.names()[r].clone(),
                        config: regions.store(r).clone(),
                        refusal: Default::default(),
                        budget,
                        clock: clock.clone(),
                        store: tokio::sync::OnceCell::new(),
                    })));
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

/// Another region's store, connected on first use (and retried on each call until it
/// connects). The guard around it cuts every call at the home budget. A store that refuses
/// the login (a setting to fix) is logged as an error once; every call it fails stays
/// counted (`spillway_region_home_calls_total`, outcome `failed`).
struct Remote(Arc<Link>);

/// What a [`Remote`] connects with, shared with the task connecting it.
struct Link {
    name: Arc<str>,
    config: StoreConfig,
    /// Whether a refused login was logged.
    refusal: spillway_redis::login::TellOnce,
    budget: Duration,
    clock: Arc<dyn Clock>,
    store: tokio::sync::OnceCell<Arc<dyn Store>>,
}

/// How long a task connecting a far region's store (or waiting for another one's attempt)
/// keeps at it, at least: many calls' budgets, so a far link's round trips fit (a budget
/// longer than half of it gets twice its length, so the connection's own limit and the
/// library's load after it fit too). Bounded, so tasks do not outlive a link that swallows
/// packets by long; each call made while the store is not connected starts one (every call
/// until the breaker opens, then one per cooldown), and they queue on one attempt at a time.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

impl Remote {
    /// The connected store. Connecting takes several round trips (the connection, the
    /// library's load, the module's probe), which on a far link can be more than one call's
    /// budget; it runs in a task of its own, so a call cut at the budget leaves it running and
    /// a later call finds the store connected instead of starting over.
    async fn store(&self) -> Result<&Arc<dyn Store>, StoreError> {
        if let Some(store) = self.0.store.get() {
            return Ok(store);
        }
        let link = self.0.clone();
        let within = CONNECT_WITHIN.max(link.budget * 2);
        let attempt = tokio::spawn(async move {
            let made = tokio::time::timeout(within, link.store.get_or_try_init(|| link.connect()));
            match made.await {
                Ok(made) => made.map(drop),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "region {}'s store did not connect within {within:?}",
                    link.name
                ))),
            }
        });
        match attempt.await {
            Ok(Ok(())) => Ok(self.0.store.get().expect("the attempt set the store")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(StoreError::Unavailable(format!(
                "connecting to region {}'s store failed: {e}",
                self.0.name
            ))),
        }
    }
}

impl Link {
    async fn connect(&self) -> Result<Arc<dyn Store>, StoreError> {
        // Regions run on `redis` and `redis_cluster` stores, whose URLs carry logins.
        let no_sentinel = spillway_redis::SentinelAuth::default();
        let (config, clock) = (&self.config, self.clock.clone());
        let owner = format!("region {}", self.name);
        let hint = crate::store::login_hints::region(&self.name);
        let login = crate::store::Login {
            sentinel: &no_sentinel,
            owner: &owner,
            hint: &hint,
            // Connected again on each call until it answers.
            ask_seeds: self.refusal.ask_seeds(),
        };
        let built = crate::store::build(config, login, 1, clock, self.budget, false).await;
        built.map_err(|e| {
            // `build` tells a refused login as a setting error, naming the region's server.
            let refused = e.chain().any(|cause| cause.is::<SettingsError>());
            if refused && self.refusal.first() {
                tracing::error!(
                    region = %self.name,
                    "{e:#}; calls to it fail until it accepts the login (told once)"
                );
            }
            StoreError::Unavailable(format!("{e:#}"))
        })
    }
}

#[async_trait]
impl Store for Remote {
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError> {
        self.store().await?.check(checks, mode).await
    }

    fn local_answer(&self, checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        self.0.store.get()?.local_answer(checks)
    }

    // A far region's cluster gets a breaker per master too (before it connects: one).
    fn domains(&self, checks: &[Check<'_>]) -> Domains {
        self.0
            .store
            .get()
            .map_or(Domains::WHOLE, |s| s.domains(checks))
    }

    fn domain_generation(&self) -> u64 {
        self.0.store.get().map_or(0, |s| s.domain_generation())
    }

    fn domain_name(&self, index: usize) -> Option<String> {
        self.0.store.get()?.domain_name(index)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store().await?.ping().await
    }

    fn key_count(&self) -> u64 {
        0
    }

    fn evictions(&self) -> u64 {
        0
    }

    fn sweep(&self) -> u64 {
        self.0.store.get().map_or(0, |s| s.sweep())
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

    /// The far region `eu` on `config`, called with a one-second budget.
    fn far_region_eu(config: spillway_core::policy::StoreConfig) -> Remote {
        Remote(Arc::new(Link {
            name: "eu".into(),
            config,
            refusal: Default::default(),
            budget: Duration::from_secs(1),
            clock: ServerClock::manual(1_000).shared(),
            store: tokio::sync::OnceCell::new(),
        }))
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

    /// A home call to a far region whose Redis is down fails naming the region's store, not
    /// only its URL. A port with nothing listening (a real refused connection).
    #[tokio::test]
    async fn home_calls_to_a_far_region_that_is_down_name_the_region() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = closed.local_addr().expect("its address").port();
        drop(closed);
        let config =
            spillway_core::policy::StoreConfig::Redis(spillway_core::policy::RedisSettings {
                urls: vec![format!("redis://:s3cret@127.0.0.1:{port}")],
                ..Default::default()
            });
        let remote = far_region_eu(config);
        let err = remote
            .ping()
            .await
            .expect_err("nothing listens")
            .to_string();
        assert!(
            err.contains("cannot connect to region eu's Redis store") && !err.contains("s3cret"),
            "{err}"
        );
    }

    /// Calls to a far region whose store refuses the login fail (and are counted) each time;
    /// the refusal is logged once, naming the region and the server. Real redis-server.
    #[tokio::test]
    async fn home_calls_to_a_far_region_refusing_the_login_log_it_once() {
        let eu =
            spillway_testkit::redis::RedisServer::start_with(&["--requirepass", "right-pw-Tz1"]);
        let config =
            spillway_core::policy::StoreConfig::Redis(spillway_core::policy::RedisSettings {
                urls: vec![format!("redis://:wrong-pw-Ub6@127.0.0.1:{}", eu.port())],
                ..Default::default()
            });
        let remote = far_region_eu(config);
        let logs = crate::test_support::Logs::capture();
        for _ in 0..3 {
            assert!(remote.ping().await.is_err());
        }
        let text = logs.text();
        let named = format!(
            "the region eu's Redis server at 127.0.0.1:{} refused the login",
            eu.port()
        );
        let told: Vec<&str> = text.lines().filter(|l| l.contains(&named)).collect();
        assert_eq!(told.len(), 1, "{text}");
        assert!(
            told[0].contains("ERROR")
                && told[0].contains(&crate::store::login_hints::region("eu"))
                && !text.contains("cannot connect to the Redis store")
                && !text.contains("wrong-pw"),
            "{text}"
        );
    }

    /// Connections the servers of `ports` have taken in so far (asked with `password`).
    fn connections(ports: &[u16], password: &str) -> u64 {
        let received = |port: u16| {
            let info = spillway_testkit::redis::command_as(port, Some(password), "INFO stats")
                .expect("INFO");
            let line = info
                .lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .expect("total_connections_received");
            line.trim().parse::<u64>().expect("a count")
        };
        ports.iter().map(|&p| received(p)).sum()
    }

    /// A far region's cluster refusing the login: the first failed home call asks the seeds
    /// which one refused and logs it, naming the region's cluster node; once told, the
    /// following calls ask no seed again (the store's own start asks every seed on every
    /// failure, which a call retried all along must not). Real cluster.
    #[tokio::test]
    async fn home_calls_to_a_far_cluster_refusing_the_login_ask_the_seeds_once() {
        const RIGHT: &str = "right-pw-Kd4";
        let eu = spillway_testkit::redis::RedisCluster::with_password(RIGHT);
        let seeds = eu.urls_with_login(":wrong-pw-Ra2@");
        let config = spillway_core::policy::StoreConfig::RedisCluster(
            spillway_core::policy::RedisSettings {
                urls: seeds.clone(),
                ..Default::default()
            },
        );
        let remote = far_region_eu(config);
        let logs = crate::test_support::Logs::capture();
        let ports = eu.ports();
        let mut taken = Vec::new();
        for _ in 0..3 {
            let before = connections(&ports, RIGHT);
            assert!(remote.ping().await.is_err());
            taken.push(connections(&ports, RIGHT) - before);
        }
        // Asking opens one connection per seed; the calls after the first open only the
        // client's own.
        assert!(
            taken[1..]
                .iter()
                .all(|&n| taken[0] >= n + seeds.len() as u64),
            "connections per call: {taken:?}"
        );
        let text = logs.text();
        let told: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("the region eu's cluster node at 127.0.0.1:"))
            .collect();
        assert_eq!(told.len(), 1, "{text}");
        assert!(
            told[0].contains("refused the login")
                && !text.contains("cannot connect to the Redis store")
                && !text.contains("wrong-pw"),
            "{text}"
        );
    }
}
