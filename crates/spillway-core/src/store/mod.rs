//! Where limit state lives. A [`Store`] evaluates all of one request's limits as a single
//! atomic step, so the engine's all-or-nothing rule holds whatever backs it.
//!
//! [`MemoryStore`] is the embedded default (one node, no set-up). Networked stores (Redis)
//! implement the same trait and take time from the server they talk to, which is why `now` is
//! not a parameter here: each store owns its clock.

mod domain;
mod memory;
mod report;
mod slot;

pub use domain::{Domains, MAX_DOMAINS};
pub use memory::{MemoryStore, MAX_REPORTS};
pub use report::{Charged, ReportId, MAX_REPORTED_COST, REPORT_TTL};

use crate::algorithm::{Decision, LimitParams};
use crate::key::StateKey;
use crate::request::CheckMode;
use async_trait::async_trait;

/// One limit to evaluate as part of a request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The counter to check.
    pub key: &'a StateKey,
    /// The limit's algorithm and numbers.
    pub params: &'a LimitParams,
    /// How much the request costs against this limit.
    pub cost: u64,
    /// Whether a denial by this limit blocks the request (`false` for shadow-mode limits).
    pub enforced: bool,
    /// A metered limit's admission (`charge: after`): the check passes only while the limit
    /// has room for at least one unit, and consumes nothing whatever the mode; `cost` is not
    /// used ([`crate::algorithm::LimitParams::admit`]). The real cost is charged afterwards
    /// with [`Store::charge`].
    pub metered: bool,
}

/// A store could not answer. Typed so the server can count and map each kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or the connection failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something the engine cannot use.
    #[error("store error: {0}")]
    Protocol(String),
    /// The call never went to the store: this node's queue to it was full (more requests
    /// waiting than the store answers within the budget). That is this node overloaded, not
    /// the store failing: it says nothing of the store's health (no breaker counts it), and
    /// a route that fails `open` is decided by the emergency quotas instead (a flood that
    /// fills the queue must not buy unlimited admission for itself and everyone else).
    #[error("store overloaded: {0}")]
    Overloaded(String),
}

impl StoreError {
    /// Whether the call never left this node for want of room in its queue
    /// ([`StoreError::Overloaded`]).
    pub fn is_overload(&self) -> bool {
        matches!(self, Self::Overloaded(_))
    }
}

/// A backend that keeps limit state and evaluates checks atomically.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Evaluates `checks` as one atomic step and returns one decision per check, in order.
    ///
    /// With [`CheckMode::Consume`], the new states are written only if every enforced check
    /// allows the request; then every allowing check (shadow ones too) consumes its cost. A
    /// denied request, or any [`CheckMode::Peek`], changes nothing.
    async fn check(
        &self,
        checks: &[Check<'_>],
        mode: CheckMode,
    ) -> Result<Vec<Decision>, StoreError>;

    /// Records costs known only after the response (metered limits): charges every check's
    /// cost unconditionally, even past its limit (the key then owes the excess; see
    /// [`crate::algorithm::LimitParams::charge`]), all in one atomic step. Each decision
    /// tells the key's standing after the charge.
    ///
    /// With a `report` id, the charge is recorded at most once per id for
    /// [`REPORT_TTL`]: a retried report answers `recorded: false` with the keys' current
    /// standing and charges nothing. Stores that cannot record charges refuse with
    /// [`StoreError::Protocol`].
    async fn charge(
        &self,
        _checks: &[Check<'_>],
        _report: Option<ReportId>,
    ) -> Result<Charged, StoreError> {
        Err(StoreError::Protocol(
            "this store cannot record costs after the fact".into(),
        ))
    }

    /// Decisions the store can give for `checks` without asking its backend (a remote store's
    /// cache of keys known to be over their limit), or `None`. They agree with what
    /// [`Store::check`], which always asks the backend, would return. Callers that want the
    /// shortcut ask here first; the server's guard does, and keeps these answers apart from
    /// the backend's health, since they never reached it.
    fn local_answer(&self, _checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        None
    }

    /// The failure domains `checks` touch (see [`Domains`]): the parts of the store whose
    /// failure fails this request. A store that fails as a whole (the default) has one,
    /// [`Domains::WHOLE`]; a Redis Cluster answers with its masters, from its own view of the
    /// slots. Called on every request: it must be cheap and must not allocate.
    fn domains(&self, _checks: &[Check<'_>]) -> Domains {
        Domains::WHOLE
    }

    /// A number that changes whenever some domain index is given to another part of the store
    /// (a master replaced by a failover, or gone): the server then asks
    /// [`Store::domain_name`] again and starts the breaker of each renamed index afresh.
    fn domain_generation(&self) -> u64 {
        0
    }

    /// What domain `index` is now, for metric labels and logs: a name from the store's own
    /// topology (a master's `host:port`), never from a client. `None` for a store that fails
    /// as a whole, or an index in no use.
    fn domain_name(&self, _index: usize) -> Option<String> {
        None
    }

    /// Called once by each serving thread, inside its own single-threaded runtime, before it
    /// serves: a store that talks over the network may set up a lane of its own for the
    /// thread (a connection and whatever drives it, living on that runtime), so that the
    /// thread's calls, their I/O and their answers never leave it. The default does nothing.
    fn attach_thread(&self) {}

    /// Whether a [`Store::check`] of `checks` made now, from this thread, would be served by
    /// the thread's own lane (see [`Store::attach_thread`]): its I/O and timers stay on this
    /// thread's runtime and it spawns nothing that must outlive the call. The failure guard
    /// then polls it where it is instead of on the main runtime. Asked right before the call,
    /// in the same poll, so the answer holds for it. Called on every request: it must be
    /// cheap. The default says no.
    fn served_on_this_thread(&self, _checks: &[Check<'_>]) -> bool {
        false
    }

    /// Whether the store is reachable, for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Number of keys currently held (approximate for remote stores; 0 if unknown).
    fn key_count(&self) -> u64;

    /// Keys dropped to respect the store's size bound since start.
    fn evictions(&self) -> u64;

    /// Drops keys that are indistinguishable from fresh ones; returns how many.
    fn sweep(&self) -> u64;
}

/// Whether a store's decisions, taken together, admit the request.
pub(crate) fn admits(checks: &[Check<'_>], decisions: &[Decision]) -> bool {
    checks
        .iter()
        .zip(decisions)
        .all(|(c, d)| d.allowed || !c.enforced)
}
