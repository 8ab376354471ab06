//! Regions and limit scopes: how a deployment spread over several regions, each with its own
//! Redis (or Redis Cluster), counts limits that must hold worldwide. Plain data and checks
//! only; the server runs the regions (`spillway-server/src/region/`).
//!
//! ```yaml
//! store:
//!   type: redis                      # every region's kind (redis or redis_cluster)
//!   regions:
//!     us: {url: "redis://10.0.0.1:6379"}
//!     eu: {url: "redis://10.1.0.1:6379"}
//!   exchange: {interval: 250ms, partition_after: 1s, partition_share: 0.3}
//! limits:
//!   api:    {algorithm: token_bucket, rate: 100/s, burst: 100, key: [tenant], scope: home}
//!   abuse:  {algorithm: fixed_window, limit: 10000, window: 1m, key: [ip], scope: aggregate}
//! ```
//!
//! A limit's scope is one of:
//! - `regional` (the default): each region counts its own traffic against the whole limit.
//! - `home`: counted only in the tenant's home region (the catalog's `home_region`, else a
//!   stable hash of the tenant over the regions), so the limit is exact worldwide. Every
//!   algorithm; the key must hold `tenant` (the home is the tenant's).
//! - `aggregate`: each region counts locally and admits while its own count plus the last
//!   known counts of the others stay under the limit; counts are exchanged in the background
//!   every `exchange.interval`. Window counters only (`fixed_window`, `sliding_window`): their
//!   counts are sums per aligned window, which regions can add up; a bucket's level cannot be.
//!
//! `exchange.lease_above` (off unless set) turns on leases for `aggregate` limits: past that
//! fraction of a limit used worldwide, a region may add at most `1 / regions` of what remains
//! until its next exchange.
//!
//! Without `regions` (or with one) every scope counts like `regional`: one region is the world.

use super::error::Issues;
use super::params::{check_name, Algorithm};
use super::raw::{Named, Number, RawLimit, RawPolicy, RawStore, Text};
use super::store::{RedisSettings, StoreConfig};
use crate::rate::parse_duration;
use crate::time::Micros;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::hash::Hasher;
use std::sync::Arc;

/// Where a limit is counted when the deployment spans regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// In the node's own region, against the whole limit.
    #[default]
    Regional,
    /// Globally exact: only in the tenant's home region.
    Home,
    /// Globally approximate: in every region, admitting against the sum of all regions'
    /// counts as last exchanged.
    Aggregate,
}

impl Scope {
    /// The name written in policies and shown in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regional => "regional",
            Self::Home => "home",
            Self::Aggregate => "aggregate",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "regional" => Ok(Self::Regional),
            "home" => Ok(Self::Home),
            "aggregate" => Ok(Self::Aggregate),
            other => Err(format!(
                "unknown scope `{other}` (use regional, home or aggregate)"
            )),
        }
    }
}

/// One region as written: its Redis server (`url`) or cluster seed nodes (`nodes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    #[serde(default)]
    pub url: Option<Text>,
    #[serde(default)]
    pub nodes: Option<Vec<Text>>,
}

/// The `store.exchange` settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExchange {
    #[serde(default)]
    pub interval: Option<Text>,
    #[serde(default)]
    pub partition_after: Option<Text>,
    #[serde(default)]
    pub partition_share: Option<Spanned<Number>>,
    #[serde(default)]
    pub home_timeout: Option<Text>,
    #[serde(default)]
    pub lease_above: Option<Spanned<Number>>,
}

/// The regions a deployment spans, each with its store, and how they exchange counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Regions {
    names: Vec<Arc<str>>,
    stores: Vec<StoreConfig>,
    /// How often each node publishes its region's counts and reads the others'.
    pub interval: Micros,
    /// How long a region's counts may go unread before it is taken as cut off.
    pub partition_after: Micros,
    /// The share of an `aggregate` limit a cut-off region is assumed to use (and may use
    /// itself while cut off from all others), as a fraction of the limit.
    pub partition_share: f64,
    /// The time budget of a call to another region's store (a `home` limit counted there).
    pub home_timeout: Micros,
    /// Leases (`store.exchange.lease_above`, off when `None`): once an `aggregate` counter's
    /// worldwide count, as a region last read it, reaches this fraction of the limit, the region
    /// may add at most `1 / regions` of what remains to its own count until its next exchange.
    pub lease_above: Option<f64>,
}

/// The exchange interval when none is written.
pub const DEFAULT_INTERVAL: Micros = 250_000;

/// The budget of a call to another region's store when none is written: one round trip
/// between distant regions, with room to spare.
pub const DEFAULT_HOME_TIMEOUT: Micros = 250_000;

impl Regions {
    /// The region names, in file order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The index of the region named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    /// The store of region `index`.
    pub fn store(&self, index: usize) -> &StoreConfig {
        &self.stores[index]
    }

    /// The home region of a tenant the catalog gives none: rendezvous hashing of the tenant
    /// over the region names (the region whose name hashes highest with the tenant), the same
    /// in every process and release. Adding a region moves only the tenants it wins.
    pub fn hashed_home(&self, tenant: &str) -> usize {
        let score = |name: &str| {
            let mut h =
                siphasher::sip::SipHasher13::new_with_keys(0x7370_696c_6c77_6179, 0x686f_6d65);
            h.write_u32(name.len() as u32);
            h.write(name.as_bytes());
            h.write(tenant.as_bytes());
            h.finish()
        };
        let mut best = (0, 0u64);
        for (i, name) in self.names.iter().enumerate() {
            let s = score(name);
            if i == 0 || s > best.1 {
                best = (i, s);
            }
        }
        best.0
    }
}

/// Checks `store.regions` and `store.exchange` against the already compiled `store` (whose
/// settings every region shares); `None` without regions.
pub(crate) fn compile(
    raw: Option<&Spanned<RawStore>>,
    store: &StoreConfig,
    issues: &mut Issues,
) -> Option<Arc<Regions>> {
    let raw = raw?;
    let s = &raw.value;
    let Some(regions) = &s.regions else {
        if let Some(exchange) = &s.exchange {
            issues.push(
                exchange.referenced,
                "store.exchange",
                "`exchange` applies only to a store with `regions`",
            );
        }
        return None;
    };
    let settings = match store {
        StoreConfig::Redis(r) | StoreConfig::RedisCluster(r) => r,
        StoreConfig::Memory { .. } => {
            issues.push(
                regions.referenced,
                "store.regions",
                "regions need a shared store: use `type: redis` or `type: redis_cluster`",
            );
            return None;
        }
        StoreConfig::RedisSentinel(_) => {
            issues.push(
                regions.referenced,
                "store.regions",
                "regions are not supported on `type: redis_sentinel` yet: use `type: redis` or \
                 `type: redis_cluster` for each region",
            );
            return None;
        }
    };
    let cluster = matches!(store, StoreConfig::RedisCluster(_));
    let shared_url = (s.url.as_ref().map(|u| (u.referenced, "store.url"))).or_else(|| {
        s.nodes
            .iter()
            .flatten()
            .next()
            .map(|n| (n.referenced, "store.nodes"))
    });
    if let Some((at, path)) = shared_url {
        issues.push(
            at,
            path,
            "with `regions`, each region names its own `url` (or `nodes`); remove them from `store`",
        );
    }
    if regions.value.0.is_empty() {
        issues.push(
            regions.referenced,
            "store.regions",
            "name at least one region",
        );
        return None;
    }
    let mut names = Vec::new();
    let mut stores = Vec::new();
    for (name, region) in &regions.value.0 {
        let path = format!("store.regions.{}", name.value);
        if let Err(message) = check_name(name, "region") {
            issues.push(name.referenced, path.clone(), message);
        }
        let urls: Vec<&Text> = if cluster {
            if region.url.is_some() {
                issues.push(
                    name.referenced,
                    format!("{path}.url"),
                    "a `redis_cluster` region takes `nodes`, not `url`",
                );
            }
            region.nodes.iter().flatten().collect()
        } else {
            if region.nodes.is_some() {
                issues.push(
                    name.referenced,
                    format!("{path}.nodes"),
                    "a `redis` region takes `url`, not `nodes`",
                );
            }
            region.url.iter().collect()
        };
        if urls.is_empty() {
            let field = if cluster { "nodes" } else { "url" };
            issues.push(
                name.referenced,
                format!("{path}.{field}"),
                format!("region `{}` needs its `{field}`", name.value),
            );
        }
        for url in &urls {
            if let Some(why) = crate::redact::not_redis_url(&url.value) {
                issues.push(url.referenced, path.clone(), why);
            }
        }
        let own = RedisSettings {
            urls: urls.iter().map(|u| u.value.clone()).collect(),
            ..settings.clone()
        };
        names.push(Arc::from(name.value.as_str()));
        stores.push(if cluster {
            StoreConfig::RedisCluster(own)
        } else {
            StoreConfig::Redis(own)
        });
    }
    let count = names.len();
    let exchange = s.exchange.as_ref().map(|e| &e.value);
    let duration = |t: Option<&Text>, field: &str, issues: &mut Issues| {
        t.and_then(|t| match parse_duration(&t.value) {
            Ok(v) if v >= 1_000 => Some(v),
            Ok(_) => {
                issues.push(
                    t.referenced,
                    format!("store.exchange.{field}"),
                    "must be at least 1ms",
                );
                None
            }
            Err(message) => {
                issues.push(t.referenced, format!("store.exchange.{field}"), message);
                None
            }
        })
    };
    let interval = duration(
        exchange.and_then(|e| e.interval.as_ref()),
        "interval",
        issues,
    )
    .unwrap_or(DEFAULT_INTERVAL);
    let partition_after = duration(
        exchange.and_then(|e| e.partition_after.as_ref()),
        "partition_after",
        issues,
    )
    .unwrap_or((4 * interval).max(1_000_000));
    if partition_after <= interval {
        if let Some(t) = exchange.and_then(|e| e.partition_after.as_ref()) {
            issues.push(
                t.referenced,
                "store.exchange.partition_after",
                "must be longer than `interval` (a region is cut off only after missing exchanges)",
            );
        }
    }
    let home_timeout = duration(
        exchange.and_then(|e| e.home_timeout.as_ref()),
        "home_timeout",
        issues,
    )
    .unwrap_or(DEFAULT_HOME_TIMEOUT);
    let share = exchange.and_then(|e| e.partition_share.as_ref());
    let partition_share = match share {
        None => 1.0 / count as f64,
        Some(n) => match n.value.fraction() {
            Some(f) if f > 0.0 && f <= 1.0 / count as f64 + 1e-9 => f,
            Some(f) if f > 0.0 && f <= 1.0 => {
                issues.push(
                    n.referenced,
                    "store.exchange.partition_share",
                    format!(
                        "must be at most 1 / regions ({:.4} with {count} regions): regions cut off \
                         from each other each keep to their share, and together must stay within \
                         the limit",
                        1.0 / count as f64
                    ),
                );
                1.0 / count as f64
            }
            _ => {
                issues.push(
                    n.referenced,
                    "store.exchange.partition_share",
                    "must be a fraction of the limit above 0 and at most 1 (e.g. 0.34)",
                );
                1.0 / count as f64
            }
        },
    };
    let lease_above =
        exchange
            .and_then(|e| e.lease_above.as_ref())
            .and_then(|n| match n.value.fraction() {
                Some(f) if (0.0..1.0).contains(&f) => Some(f),
                _ => {
                    issues.push(
                    n.referenced,
                    "store.exchange.lease_above",
                    "must be a fraction of the limit from 0 up to but not including 1 (e.g. 0.5): \
                     past it, each region leases a share of what remains",
                );
                    None
                }
            });
    Some(Arc::new(Regions {
        names,
        stores,
        interval,
        partition_after,
        partition_share,
        home_timeout,
        lease_above,
    }))
}

/// Checks a limit's `scope` against its algorithm and key; `regional` when none is written or
/// it is refused (the refusal is recorded in `issues`).
pub(crate) fn scope(
    raw: &RawLimit,
    path: &str,
    algorithm: Option<Algorithm>,
    issues: &mut Issues,
) -> Scope {
    let Some(written) = &raw.scope else {
        return Scope::Regional;
    };
    let path = format!("{path}.scope");
    let scope = match Scope::parse(&written.value) {
        Ok(scope) => scope,
        Err(message) => {
            issues.push(written.referenced, path, message);
            return Scope::Regional;
        }
    };
    match (scope, algorithm) {
        (Scope::Aggregate, Some(a))
            if !matches!(a, Algorithm::FixedWindow | Algorithm::SlidingWindow) =>
        {
            let message = format!(
                "scope `aggregate` adds up window counts across regions, so it takes \
                 fixed_window or sliding_window, not {} (use scope `home` for an exact \
                 global {0})",
                a.name()
            );
            issues.push(written.referenced, path, message);
            Scope::Regional
        }
        (Scope::Home, _) => {
            let keyed_by_tenant = raw
                .key
                .as_ref()
                .is_some_and(|k| k.value.iter().any(|d| d.value == "tenant"));
            if keyed_by_tenant {
                return scope;
            }
            issues.push(
                written.referenced,
                path,
                "scope `home` counts in the tenant's home region, so the limit's `key` \
                 must hold `tenant`",
            );
            Scope::Regional
        }
        _ => scope,
    }
}

/// Checks the `home_region` of each tenant in the `tenants:` section: a region `store.regions`
/// names (any well-formed name when it names none).
pub(crate) fn check_homes(raw: &RawPolicy, regions: Option<&Regions>, issues: &mut Issues) {
    for (name, tenant) in &raw.tenants.0 {
        let Some(home) = &tenant.home_region else {
            continue;
        };
        let path = format!("tenants.{}.home_region", name.value);
        match regions {
            Some(regions) if regions.index(&home.value).is_none() => {
                let names: Vec<&str> = regions.names.iter().map(|n| &**n).collect();
                let message = format!(
                    "no region named `{}` (store.regions names {})",
                    home.value,
                    names.join(", ")
                );
                issues.push(home.referenced, path, message);
            }
            Some(_) => {}
            None => {
                if let Err(message) = check_name(home, "region") {
                    issues.push(home.referenced, path, message);
                }
            }
        }
    }
}

/// The region list with a region's store, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn for_test(names: &[&str]) -> Regions {
    Regions {
        names: names.iter().map(|n| Arc::from(*n)).collect(),
        stores: names.iter().map(|_| StoreConfig::default()).collect(),
        interval: DEFAULT_INTERVAL,
        partition_after: 1_000_000,
        partition_share: 1.0 / names.len() as f64,
        home_timeout: DEFAULT_HOME_TIMEOUT,
        lease_above: None,
    }
}

/// A `Named` list of regions, as `RawStore` holds it.
pub(crate) type RawRegions = Named<RawRegion>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_homes_are_stable_and_spread() {
        let regions = for_test(&["us", "eu", "ap"]);
        let mut seen = [0usize; 3];
        for i in 0..3000 {
            let t = format!("tenant-{i}");
            let home = regions.hashed_home(&t);
            assert_eq!(home, regions.hashed_home(&t));
            seen[home] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        // Fixed values: a release that changed them would move every tenant's home.
        assert_eq!(
            ["acme", "globex", "initech", "umbrella"].map(|t| regions.hashed_home(t)),
            [0, 0, 1, 2]
        );
        // Adding a region moves only tenants to the new one.
        let more = for_test(&["us", "eu", "ap", "sa"]);
        for i in 0..1000 {
            let t = format!("tenant-{i}");
            let after = more.hashed_home(&t);
            assert!(after == 3 || after == regions.hashed_home(&t));
        }
    }
}
