//! The rate-limit policy: which limits exist, which tiers, routes and tenants they apply to,
//! and how one request resolves into the limits and counter keys that govern it.
//!
//! A policy is written in YAML (see `examples/spillway.yaml`), read into the loose structs of
//! `raw`, checked and compiled by `validate` into an immutable [`Policy`], and then
//! consulted on every request through [`Policy::resolve`]. Everything that can be worked out
//! ahead of time is: each tier's limit list for each route is built at load, so resolving a
//! request is a few lookups plus the allocation of its counter keys.
//!
//! Layout, in the order a load goes through them: `raw` (serde structs mirroring the file),
//! `locate` (field paths for YAML reader errors), `validate` (raw to compiled, driving
//! `limit` for definitions, `params` for per-algorithm fields and fingerprints, `route` for
//! path patterns, `tenant` for overrides and `principal` for who is calling), `error` (what
//! a rejected file reports) and
//! `resolve` (the per-request hot path).

mod emergency;
pub(crate) mod error;
mod ip_prefix;
mod limit;
pub(crate) mod locate;
mod name;
mod params;
pub mod principal;
mod raw;
mod region;
mod resolve;
mod route;
mod store;
mod tenant;
mod validate;

#[cfg(test)]
mod tests;

pub use emergency::{scaled as emergency_params, Emergency};
pub use error::{PolicyError, PolicyIssue};
pub use ip_prefix::{carried_v4, IpPrefix};
pub use name::LimitName;
pub(crate) use params::Algorithm;
pub use region::{Regions, Scope};
pub use store::{RedisSettings, StoreConfig};
pub(crate) use tenant::Owner as OverrideOwner;

use crate::algorithm::LimitParams;
use crate::catalog::{Catalog, FieldIssue, OverrideRecord};
use crate::key::StateKey;
use route::RoutePattern;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// What to do when the store holding a limit's state cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailureMode {
    /// Let the request through, unlimited: availability over protection, for routes that
    /// must stay up whatever happens to the limiter.
    Open,
    /// Refuse the request: protection over availability, for costly or abusable routes.
    Closed,
    /// Fall back to a local, per-node approximation of the limit (emergency quotas). The
    /// default: a limiter under stress keeps limiting, at a smaller per-node quota, instead of
    /// admitting everything (a store that is merely slow would otherwise turn into "no limits").
    #[default]
    Degrade,
}

impl FailureMode {
    /// The more protective of two modes (`closed`, then `degrade`, then `open`): where several
    /// routes or descriptors decide one request, the strictest applies.
    pub fn stricter(self, other: Self) -> Self {
        use FailureMode::{Closed, Degrade, Open};
        match (self, other) {
            (Closed, _) | (_, Closed) => Closed,
            (Degrade, _) | (_, Degrade) => Degrade,
            (Open, Open) => Open,
        }
    }

    /// The lowercase name used in policy files, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Degrade => "degrade",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the lowercase names written in policy files, so CLI flags and env vars can share
/// the spelling.
impl FromStr for FailureMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "degrade" => Ok(Self::Degrade),
            other => Err(format!(
                "unknown failure mode `{other}` (use open, closed or degrade)"
            )),
        }
    }
}

/// One attribute of a request that a limit counts separately: each distinct combination of
/// a limit's dimensions gets its own counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The request's tenant.
    Tenant,
    /// The request's user.
    User,
    /// The client IP address.
    Ip,
    /// The matched route, so one limit definition can count each route apart.
    Route,
    /// A custom dimension declared under `descriptors` (an API key, a region, ...).
    Descriptor(Arc<str>),
}

impl Dimension {
    /// The name used in a limit's `key` list.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tenant => "tenant",
            Self::User => "user",
            Self::Ip => "ip",
            Self::Route => "route",
            Self::Descriptor(name) => name,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compiled limit: what it counts (its key), how (its algorithm and numbers), and whether
/// it may deny. Shared by `Arc` between tiers, routes and resolutions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitDef {
    /// The limit's name in the policy; a tenant override keeps the name of the limit it
    /// replaces, so headers and metrics stay comparable across tenants. Its quoted forms
    /// are made here, once per compiled policy.
    pub name: LimitName,
    /// The algorithm and its validated numbers.
    pub params: LimitParams,
    /// The dimensions that identify one counter, in the order the policy lists them.
    pub key: Vec<Dimension>,
    /// Shadow limits are evaluated and counted but never deny, so a new limit can be
    /// observed on real traffic before it is enforced.
    pub shadow: bool,
    /// Metered after the fact (`charge: after`): a request is admitted while the limit has
    /// room for at least one unit, is charged nothing up front, and its real cost is recorded
    /// afterwards (`/v1/report`, or Envoy's charge when the stream is done), even past the
    /// limit.
    pub metered: bool,
    /// Where it is counted when the deployment spans regions (`store.regions`): decided once
    /// here, so a decision reads it from the limit instead of looking it up by name. A tenant's
    /// override keeps its limit's scope. Without regions every scope counts as `regional`.
    pub scope: Scope,
    /// A hash of the name, algorithm and key, identical in every process and across
    /// restarts: each counter's identity. The numbers are left out, so a counter keeps its
    /// state through a change of them (read under the new numbers, `crate::algorithm::carry`);
    /// a tenant's override shares the limit's identity.
    pub fingerprint: u64,
}

/// A route: requests whose method and path match its pattern, with their cost, their extra
/// limits and their failure mode.
#[derive(Debug, Clone)]
pub struct Route {
    /// The pattern in canonical form, e.g. `POST /v1/generate`; also the value of the
    /// [`Dimension::Route`] dimension.
    pub name: Arc<str>,
    /// What one request on this route costs, unless the request states its own cost.
    pub cost: u64,
    /// Limits that apply only on this route, on top of the global and tier limits (before
    /// any tenant override).
    pub limits: Vec<Arc<LimitDef>>,
    /// Overrides the policy's failure mode for this route.
    pub failure_mode: Option<FailureMode>,
    pattern: RoutePattern,
}

/// A validated, immutable policy, ready to resolve requests, with the tenant catalog it
/// resolves them against. Built once per load or reload (and per catalog change, sharing
/// everything else) and shared (e.g. through `arc-swap`) by every request handler.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This compilation's identity: a catalog compiled against it carries the same.
    id: u64,
    default_tier: usize,
    failure_mode: FailureMode,
    tiers: Vec<resolve::Tier>,
    tier_index: HashMap<Box<str>, usize>,
    routes: Vec<Arc<Route>>,
    /// `route_matching.format_suffixes`: a path's last segment is also read without its
    /// `.format` suffix, as Rails and Spring route (`/v1/generate.json` is `/v1/generate`).
    format_suffixes: bool,
    /// `route_matching.method_overrides` (on unless set `false`): a `POST` naming another
    /// method is matched under it too.
    method_overrides: bool,
    /// Tenants, users and API keys: the `tenants:` section, or the database's catalog.
    catalog: Arc<Catalog>,
    /// Each valid limit as written and compiled, for compiling catalog overrides of it.
    bases: Arc<HashMap<Arc<str>, tenant::OwnedBase>>,
    has_static_tenants: bool,
    limits: Vec<Arc<LimitDef>>,
    /// The declared descriptors, by the form their names take in proxy headers.
    descriptors: HashMap<String, Arc<str>>,
    store: StoreConfig,
    emergency: HashMap<Arc<str>, Emergency>,
    ip_prefix: IpPrefix,
    /// Who is calling (`principals:`); `None` believes what requests say about themselves.
    principals: Option<Arc<principal::Principals>>,
    /// The regions of `store.regions`, if any (`region`).
    regions: Option<Arc<Regions>>,
    /// Whether any limit's scope is not `regional`.
    has_global_limits: bool,
    /// Clusters whose seeds disagree on the login ([`Policy::check_seed_logins`]).
    seed_logins: Vec<store::SeedLogins>,
}

/// What applies to one request: its tier, route, cost and failure mode, and each limit it
/// must pass together with the counter key that limit keeps for it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The explicit tier if the policy knows it, else the tenant's tier, else the default.
    pub tier: Arc<str>,
    /// The route the request falls under: the first, in file order, whose pattern matches
    /// it; for a request servers could read several ways (an oddly spelled path, a method
    /// override) that match different routes, the costliest of those (on a tie, the one its
    /// own method and the lenient reading match), while `limits` holds all of theirs.
    pub route: Option<Arc<Route>>,
    /// The request's own cost, else the route's, else 1. Zero means "look, do not consume".
    pub cost: u64,
    /// The route's failure mode (the strictest of the routes matched), else the policy's.
    pub failure_mode: FailureMode,
    /// Global, then tier, then route limits, with the tenant's overrides in place, and only
    /// those whose every key dimension the request carries; each counter once (a limit keyed
    /// by `route`, for a request under several routes, once per route); each costs `cost`,
    /// a metered one 0.
    pub limits: Vec<Planned>,
}

/// One limit a request is checked against: the limit, its counter for this request, and what
/// the request costs against it. The policy resolves a request into these; the Envoy service
/// builds them from descriptors, each with its own cost.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The limit.
    pub def: Arc<LimitDef>,
    /// Its counter for this request.
    pub key: StateKey,
    /// What this request costs against it.
    pub cost: u64,
}

impl Resolved {
    /// The limits a report of `cost` known after the response charges: the request's
    /// metered limits (`charge: after`), each costing `cost`.
    pub fn metered(&self, cost: u64) -> Vec<Planned> {
        self.limits
            .iter()
            .filter(|p| p.def.metered)
            .map(|p| Planned { cost, ..p.clone() })
            .collect()
    }
}

impl Policy {
    /// Reads and validates the policy at `path`; errors name the path as their source.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_yaml_str(&text, &origin),
            Err(e) => Err(PolicyError::unreadable(
                &origin,
                format!("cannot read the policy: {e}"),
            )),
        }
    }

    /// Parses and validates policy text; `source` names it in error messages (a path, or
    /// e.g. `<embedded default>`).
    pub fn from_yaml_str(text: &str, source: &str) -> Result<Policy, PolicyError> {
        let raw: raw::RawPolicy = serde_saphyr::from_str(text)
            .map_err(|e| PolicyError::new(source, vec![locate::issue_from_yaml(text, &e)]))?;
        validate::compile(&raw).map_err(|issues| issues.into_error(source))
    }

    /// Refuses seed nodes of one cluster (`store.nodes`, a region's `nodes`) that disagree on
    /// the login, each at the differing seed's position, as [`PolicyError`] tells any other
    /// problem (`origin` names the file). Checked apart from the rest (a policy that fails
    /// other checks reports these with them): with `own_store_replaced` (`--store-url`
    /// stands in for the policy's store), `store.nodes` is not used and not checked; every
    /// region's seeds always are, though a far region connects only on first use.
    pub fn check_seed_logins(
        &self,
        origin: &str,
        own_store_replaced: bool,
    ) -> Result<(), PolicyError> {
        let issues: Vec<PolicyIssue> = self
            .seed_logins
            .iter()
            .filter(|s| !(own_store_replaced && s.own_store))
            .map(|s| s.issue.clone())
            .collect();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::new(origin, issues))
        }
    }

    /// The tier a request gets when neither it nor its tenant names one.
    pub fn default_tier(&self) -> &str {
        &self.tiers[self.default_tier].name
    }

    /// Where limit state lives (the `store:` section; in-memory when absent). Read once at
    /// start: the server does not switch stores on reload.
    pub fn store(&self) -> &StoreConfig {
        &self.store
    }

    /// The regions the deployment spans (`store.regions`), if it names any. Like the store,
    /// read once at start.
    pub fn regions(&self) -> Option<&Arc<Regions>> {
        self.regions.as_ref()
    }

    /// Whether any limit counts beyond its region (`home` or `aggregate`).
    pub fn has_global_limits(&self) -> bool {
        self.has_global_limits
    }

    /// The failure mode of routes that do not set their own.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// Every distinct limit, tenant overrides included, so a reload can tell which counters
    /// survive and metrics can describe each limit once.
    pub fn limits(&self) -> impl Iterator<Item = &Arc<LimitDef>> {
        self.limits.iter()
    }

    /// The declared descriptor a proxy header names, ignoring case, `-` and `_` (header names
    /// arrive lower-cased, and `_` is awkward in them): `X-Descriptor-Api-Key` finds a
    /// descriptor declared as `api_key`, `api-key` or `apiKey`. Validation refuses two
    /// descriptors that would read the same this way.
    pub fn descriptor_for_header(&self, name: &str) -> Option<&Arc<str>> {
        self.descriptors.get(&limit::header_form(name))
    }

    /// The emergency quota a limit sets for itself (`emergency:`), if any; see
    /// [`Emergency::quota`] for the default.
    pub fn emergency(&self, limit: &str) -> Option<Emergency> {
        self.emergency.get(limit).copied()
    }

    /// The network sizes the `ip` dimension counts by (`ip_prefix:`).
    pub fn ip_prefix(&self) -> IpPrefix {
        self.ip_prefix
    }

    /// How callers are identified (`principals:`), if the policy says; shared by pointer
    /// across [`Self::with_catalog`], so the server can tell a reload that changed nothing
    /// here from one that did.
    pub fn principals(&self) -> Option<&Arc<principal::Principals>> {
        self.principals.as_ref()
    }

    /// The routes in match order (file order).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The names of the tiers, in file order.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|t| &*t.name)
    }

    /// The limits every request of tier `name` passes off any route (the policy's global
    /// limits, then the tier's own), before overrides; `None` for a tier the policy lacks.
    pub fn tier_limits(&self, name: &str) -> Option<&[Arc<LimitDef>]> {
        let tier = &self.tiers[*self.tier_index.get(name)?];
        tier.plans.first().map(Vec::as_slice)
    }

    /// The tenant catalog requests are resolved against: built from the `tenants:` section,
    /// until [`Self::with_catalog`] puts another in its place.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Whether the file has a `tenants:` section with any tenant in it.
    pub fn has_static_tenants(&self) -> bool {
        self.has_static_tenants
    }

    /// This policy resolving against `catalog`, which must have been compiled against it
    /// ([`Catalog::build`], [`Catalog::apply`] or [`Catalog::recompile`] with this policy).
    /// Cheap: the rest of the policy is shared or copied shallowly.
    ///
    /// # Panics
    /// If `catalog` was compiled against another policy: its tier indices and overrides
    /// would be read against the wrong tiers and limits.
    pub fn with_catalog(&self, catalog: Arc<Catalog>) -> Policy {
        assert_eq!(
            catalog.policy_id(),
            self.id,
            "a catalog must be compiled against the policy that resolves with it"
        );
        Policy {
            catalog,
            ..self.clone()
        }
    }

    /// This compilation's identity (unique within the process); unchanged by
    /// [`Self::with_catalog`].
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The index of the tier named `name`.
    pub(crate) fn tier_position(&self, name: &str) -> Option<usize> {
        self.tier_index.get(name).copied()
    }

    /// The index of the default tier.
    pub(crate) fn default_tier_index(&self) -> usize {
        self.default_tier
    }

    /// The name of the tier at `index`.
    pub(crate) fn tier_name(&self, index: usize) -> &str {
        &self.tiers[index].name
    }

    /// Whether a request on tier `tier` can meet limit `limit` (globally, through the tier,
    /// or on some route).
    pub(crate) fn tier_meets(&self, tier: usize, limit: &str) -> bool {
        let plans = &self.tiers[tier].plans;
        plans.iter().flatten().any(|d| &*d.name == limit)
    }

    /// A catalog override of limit `limit` compiled as the `tenants:` section would compile
    /// it; its problems are reported under `overrides.<limit>`. A user's override must be of
    /// a limit that counts each user apart: of any other (a tenant-wide cap, a per-IP limit)
    /// it would give the user a counter of their own, outside the one the rest of the tenant
    /// shares, and so a way around the cap. That holds when the entry is written and again
    /// whenever a node compiles it, so a reload that stops a limit counting users apart leaves
    /// the users' overrides of it out.
    pub(crate) fn compile_override(
        &self,
        limit: &str,
        record: &OverrideRecord,
        owner: OverrideOwner<'_>,
    ) -> Result<LimitDef, Vec<FieldIssue>> {
        let path = format!("overrides.{limit}");
        let refused = |message| {
            Err(vec![FieldIssue {
                field: path.clone(),
                message,
            }])
        };
        let Some(base) = self.bases.get(limit) else {
            return refused(format!("no limit named `{limit}` is defined in the policy"));
        };
        if matches!(owner, OverrideOwner::User { .. }) && !base.key().contains(&Dimension::User) {
            let dims: Vec<&str> = base.key().iter().map(Dimension::as_str).collect();
            return refused(format!(
                "limit `{limit}` does not count each user apart (its key is [{}]); a user's \
                 override of it would give the user a counter outside the one the tenant shares: \
                 override it on the tenant instead",
                dims.join(", ")
            ));
        }
        base.overlay(record, &path, owner)
    }
}
