//! Hot keys and the most denied tenants and users, per node and for the fleet (`GET /v1/top`).
//!
//! Consuming decisions are sampled, one in N (`--top-k-sample`, a power of two, default
//! [`DEFAULT_SAMPLE`]; a thread-local draw, no lock): a kept decision adds N to each of its
//! counters (limit name + key values) in a heavy-hitter sketch, and, when denied, N to its
//! tenant and to its tenant's user ([`spillway_core::topk`]: Space-Saving tables over a ring
//! of 10-second intervals, bounded memory, a spin lock per shard). Summaries for the last
//! minute and the last ten minutes are merged on read. Sampling is what keeps the sketches
//! under 50 ns per decision (each update is a few cache misses; see docs/BENCHMARKS.md): the
//! counts are then estimates that may fall below or above the truth, with a standard
//! deviation of about `sqrt((N - 1) / count)` of the count (2.2% for 14,000 at N = 8), so
//! heavy hitters stay accurate and rare items are noisy; N = 1 counts every decision, and then
//! a count is never below the truth.
//!
//! - [`redis`]: with a Redis store, each node publishes its summaries every few seconds and
//!   `scope=cluster` merges every live node's.
//! - [`prometheus`]: the ten most denied tenants of the last minute as
//!   `spillway_top_blocked{tenant}`, rendered into `/metrics` at each scrape by this module,
//!   not by the metrics recorder (see there why).
//!
//! Labels come from clients: each value is cut to [`MAX_LABEL`] bytes before it is kept, so a
//! row's size is bounded as well as the number of rows.

pub mod prometheus;
pub mod redis;

use crate::decision::{Ask, Outcome, Who};
use crate::telemetry::decision_log::sampling::Sampler;
use serde::{Deserialize, Serialize};
use spillway_core::policy::Planned;
use spillway_core::request::CheckMode;
use spillway_core::time::{Micros, MINUTE};
use spillway_core::topk::{rank, Shape, TopK};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// The longest label value kept, in bytes (cut at a character boundary).
pub const MAX_LABEL: usize = 128;
/// The most rows `limit=` may ask for, and what a node publishes per list.
pub const MAX_ROWS: usize = 100;
/// The most hot keys a node publishes for `scope=cluster` (each limit's [`MAX_ROWS`]
/// heaviest; an equal share of this per limit when the policy's limits hold more).
pub const MAX_PUBLISHED_HOT_KEYS: usize = 2_000;
/// One consuming decision in this many is counted, by default (`--top-k-sample`).
pub const DEFAULT_SAMPLE: u32 = 8;
/// The sparsest sample `--top-k-sample` accepts.
pub const MAX_SAMPLE: u32 = 1024;

/// A window `/v1/top` answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    /// The last minute.
    #[serde(rename = "1m")]
    Minute,
    /// The last ten minutes.
    #[serde(rename = "10m")]
    TenMinutes,
}

impl Window {
    /// Both windows.
    pub const ALL: [Window; 2] = [Window::Minute, Window::TenMinutes];

    /// How the query parameter and the answer spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::TenMinutes => "10m",
        }
    }

    /// Reads `1m` or `10m`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.as_str() == text)
    }

    fn span(self) -> Micros {
        match self {
            Self::Minute => MINUTE,
            Self::TenMinutes => 10 * MINUTE,
        }
    }
}

/// One hammered counter: a limit and its key values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HotKey {
    /// The limit's name.
    pub limit: Arc<str>,
    /// The values of the limit's key dimensions, in the limit's order.
    pub key: Vec<Box<str>>,
}

/// A hot key's row in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotKeyRow {
    /// The limit's name.
    pub limit: Arc<str>,
    /// Its key values.
    pub key: Vec<Box<str>>,
    /// Decisions that checked it in the window: an estimate, never below the truth when
    /// every decision is counted (`--top-k-sample 1`), and within a few percent either way
    /// for heavy keys when one in N is (see the module docs).
    pub count: u64,
}

/// A denied tenant's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRow {
    /// The tenant.
    pub tenant: Arc<str>,
    /// Its denied requests in the window (an estimate when decisions are sampled).
    pub denied: u64,
}

/// A denied user's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    /// The user's tenant (empty when the request named none).
    pub tenant: Arc<str>,
    /// The user.
    pub user: Arc<str>,
    /// Their denied requests in the window (an estimate when decisions are sampled).
    pub denied: u64,
}

/// The three lists for one window, heaviest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The most checked counters.
    pub hot_keys: Vec<HotKeyRow>,
    /// The most denied tenants.
    pub blocked_tenants: Vec<TenantRow>,
    /// The most denied users.
    pub blocked_users: Vec<UserRow>,
}

impl Summary {
    /// Drops the hot keys of every limit but `limit` (the other lists are kept).
    pub fn keep_limit(&mut self, limit: &str) {
        self.hot_keys.retain(|r| &*r.limit == limit);
    }

    /// Adds several summaries (of nodes) row by row and keeps the `n` heaviest of each list.
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Summary>, n: usize) -> Summary {
        let mut hot: HashMap<HotKey, u64> = HashMap::new();
        let mut tenants: HashMap<Arc<str>, u64> = HashMap::new();
        let mut users: HashMap<(Arc<str>, Arc<str>), u64> = HashMap::new();
        for part in parts {
            for r in &part.hot_keys {
                let key = HotKey {
                    limit: r.limit.clone(),
                    key: r.key.clone(),
                };
                *hot.entry(key).or_default() += r.count;
            }
            for r in &part.blocked_tenants {
                *tenants.entry(r.tenant.clone()).or_default() += r.denied;
            }
            for r in &part.blocked_users {
                *users.entry((r.tenant.clone(), r.user.clone())).or_default() += r.denied;
            }
        }
        Summary::from_counts(hot, tenants, users, n)
    }

    fn from_counts(
        hot: HashMap<HotKey, u64>,
        tenants: HashMap<Arc<str>, u64>,
        users: HashMap<(Arc<str>, Arc<str>), u64>,
        n: usize,
    ) -> Summary {
        Summary {
            hot_keys: rank(hot, n)
                .into_iter()
                .map(|(k, count)| HotKeyRow {
                    limit: k.limit,
                    key: k.key,
                    count,
                })
                .collect(),
            blocked_tenants: rank(tenants, n)
                .into_iter()
                .map(|(tenant, denied)| TenantRow { tenant, denied })
                .collect(),
            blocked_users: rank(users, n)
                .into_iter()
                .map(|((tenant, user), denied)| UserRow {
                    tenant,
                    user,
                    denied,
                })
                .collect(),
        }
    }
}

/// Which hot keys a summary ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotKeys<'a> {
    /// Every limit's, ranked together.
    All,
    /// Only the keys of the limit with this name, ranked among themselves (none when no
    /// limit has that name or none of its keys is held).
    Of(&'a str),
    /// The `n` heaviest of each limit, heaviest first overall, at most `total` rows in all:
    /// what a node publishes ([`MAX_PUBLISHED_HOT_KEYS`]), so that a reader can pick one
    /// limit's keys and still find that limit's `n` heaviest, while a policy of many limits
    /// does not make every publication large. When the limits' heaviest are more than
    /// `total`, each limit keeps an equal share (`total / limits`, at least one row) and the
    /// rest of the room goes to the heaviest of the others.
    EachLimit {
        /// The most rows kept over every limit (the heaviest).
        total: usize,
    },
}

/// This node's sketches; see the module docs.
pub struct Top {
    /// Off (`--no-top-k`): nothing is counted, and `/v1/top` says so.
    enabled: bool,
    node: Arc<str>,
    /// Which decisions are counted: one in [`Top::sample`] (the decision log's sampler).
    sampler: Sampler,
    /// The weight of a counted decision: one in how many is counted.
    weight: u32,
    hasher: foldhash::fast::RandomState,
    hot: TopK<HotKey>,
    tenants: TopK<Arc<str>>,
    users: TopK<(Arc<str>, Arc<str>)>,
}

impl Top {
    /// Empty sketches for the node named `node`, counting every decision (see
    /// [`Top::sampled`]): ten minutes in 10-second intervals, 1,024 counters, 1,024 tenants
    /// and 1,024 users per interval ([`Shape::DEFAULT`] for all three). At most 184,320 rows
    /// in all, each label value cut to [`MAX_LABEL`] bytes, whatever the traffic: about 26 MB
    /// with short names and about 62 MB with every name at the cap, counted by the allocator
    /// with every row filled (`examples/top_memory.rs`; docs/BENCHMARKS.md).
    ///
    /// The tenants and users get as many rows as the counters: when the denials spread over a
    /// long tail (every tenant of a Zipf stream over 1,000,000 denied), 256 rows per interval
    /// (32 per shard) missed the heaviest ten even counting every decision
    /// (`tests::at_the_default_sample_a_long_tail_of_denials_keeps_the_most_denied`).
    pub fn new(node: &str) -> Self {
        Self::with_shapes(node, Shape::DEFAULT, Shape::DEFAULT)
    }

    /// Empty sketches of the given shapes: counters, then tenants and users.
    pub fn with_shapes(node: &str, keys: Shape, denials: Shape) -> Self {
        Self {
            enabled: true,
            node: Arc::from(cut(node)),
            sampler: Sampler::new(1.0),
            weight: 1,
            hasher: foldhash::fast::RandomState::default(),
            hot: TopK::new(keys),
            tenants: TopK::new(denials),
            users: TopK::new(denials),
        }
    }

    /// Counts one consuming decision in `one_in` (a power of two from 1 to [`MAX_SAMPLE`],
    /// as `--top-k-sample` checks), each with weight `one_in`.
    ///
    /// # Panics
    /// When `one_in` is not such a power of two.
    pub fn sampled(self, one_in: u32) -> Self {
        assert!(
            one_in.is_power_of_two() && one_in <= MAX_SAMPLE,
            "sample one in {one_in}: not a power of two from 1 to {MAX_SAMPLE}"
        );
        Self {
            sampler: Sampler::new(1.0 / f64::from(one_in)),
            weight: one_in,
            ..self
        }
    }

    /// One in how many consuming decisions is counted.
    pub fn sample(&self) -> u32 {
        self.weight
    }

    /// Counts a finished decision (`crate::decision::observe` calls this): consuming
    /// decisions that reached a verdict, by the store or by a failure mode.
    pub fn observe(&self, now: Micros, ask: &Ask<'_>, outcome: &Outcome) {
        if !self.enabled {
            return;
        }
        if let (Outcome::Decided(decided), CheckMode::Consume) = (outcome, ask.mode) {
            self.record(now, ask.planned, &ask.who, !decided.verdict.allowed);
        }
    }

    /// Sketches that count nothing (`--no-top-k`), so a decision pays one branch for them.
    pub fn off(node: &str) -> Self {
        let tiny = Shape {
            capacity: 1,
            ..Shape::DEFAULT
        };
        Self {
            enabled: false,
            ..Self::with_shapes(node, tiny, tiny)
        }
    }

    /// Whether the sketches count decisions.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// This node's name, as summaries and `/v1/top` answers carry it.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// Counts one consuming decision at `now`, if the sample keeps it: each of its counters,
    /// and, when it was denied, its tenant and user, with the sample's weight.
    pub fn record(&self, now: Micros, planned: &[Planned], who: &Who<'_>, denied: bool) {
        if !self.sampler.keep() {
            return;
        }
        let weight = u64::from(self.weight);
        for p in planned {
            let mut h = self.hasher.build_hasher();
            h.write_u64(p.key.fingerprint);
            p.key.hash_values_into(&mut h);
            self.hot.add(now, h.finish(), weight, || HotKey {
                limit: p.key.limit.clone(),
                key: p.key.values.iter().map(|v| Box::from(cut(v))).collect(),
            });
        }
        if !denied {
            return;
        }
        let tenant = who.tenant.unwrap_or_default();
        if who.tenant.is_some() {
            let h = self.hasher.hash_one(tenant);
            self.tenants.add(now, h, weight, || Arc::from(cut(tenant)));
        }
        if let Some(user) = who.user {
            let h = self.hasher.hash_one((tenant, user));
            self.users.add(now, h, weight, || {
                (Arc::from(cut(tenant)), Arc::from(cut(user)))
            });
        }
    }

    /// This node's `n` heaviest of each list over `window` at `now`.
    pub fn summary(&self, now: Micros, window: Window, n: usize) -> Summary {
        self.summary_with(now, window, n, HotKeys::All)
    }

    /// Like [`Top::summary`], with the hot keys chosen by `hot` before they are ranked.
    pub fn summary_with(&self, now: Micros, window: Window, n: usize, hot: HotKeys<'_>) -> Summary {
        let span = window.span();
        let mut counts = self.hot.counts(now, span);
        let ranked = match hot {
            HotKeys::All => rank(counts, n),
            HotKeys::Of(limit) => {
                counts.retain(|k, _| &*k.limit == limit);
                rank(counts, n)
            }
            HotKeys::EachLimit { total } => {
                let mut by_limit: HashMap<Arc<str>, HashMap<HotKey, u64>> = HashMap::new();
                for (k, count) in counts {
                    by_limit
                        .entry(k.limit.clone())
                        .or_default()
                        .insert(k, count);
                }
                // Each limit keeps an equal share of `total` (at most `n`, at least one row),
                // so a hot limit cannot push a cold one out; the room left goes to the
                // heaviest of the rest.
                let share = n.min((total / by_limit.len().max(1)).max(1));
                let (mut kept, mut rest) = (Vec::new(), Vec::new());
                for counts in by_limit.into_values() {
                    let mut ranked = rank(counts, n);
                    rest.extend(ranked.split_off(share.min(ranked.len())));
                    kept.extend(ranked);
                }
                rest.sort_by_key(|r| std::cmp::Reverse(r.1));
                let room = total.saturating_sub(kept.len());
                kept.extend(rest.into_iter().take(room));
                kept.sort_by_key(|r| std::cmp::Reverse(r.1));
                kept.truncate(total);
                kept
            }
        };
        Summary {
            hot_keys: ranked
                .into_iter()
                .map(|(k, count)| HotKeyRow {
                    limit: k.limit,
                    key: k.key,
                    count,
                })
                .collect(),
            blocked_tenants: self
                .tenants
                .top(now, span, n)
                .into_iter()
                .map(|(tenant, denied)| TenantRow { tenant, denied })
                .collect(),
            blocked_users: self
                .users
                .top(now, span, n)
                .into_iter()
                .map(|((tenant, user), denied)| UserRow {
                    tenant,
                    user,
                    denied,
                })
                .collect(),
        }
    }

    /// Rows held now, over the three sketches (bounded by [`Top::max_rows`]).
    pub fn rows(&self) -> usize {
        self.hot.len() + self.tenants.len() + self.users.len()
    }

    /// The most rows the three sketches can hold, whatever traffic they see.
    pub fn max_rows(&self) -> usize {
        self.hot.max_rows() + self.tenants.max_rows() + self.users.max_rows()
    }

    /// The `spillway_top_blocked` lines for the last minute at `now`, rendered at each scrape
    /// so the list is never older than the scrape.
    pub fn blocked_exposition(&self, now: Micros) -> String {
        prometheus::render(
            &self
                .tenants
                .top(now, Window::Minute.span(), prometheus::ASKED),
        )
    }
}

/// `text` cut to at most [`MAX_LABEL`] bytes, at a character boundary.
pub fn cut(text: &str) -> &str {
    super::cut_to(text, MAX_LABEL)
}

#[cfg(test)]
mod tests;
