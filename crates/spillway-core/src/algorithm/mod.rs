//! The six rate-limiting algorithms, each a pure state transition
//! `(params, state, now, cost) -> (decision, new state)`.
//!
//! Nothing here reads a clock or touches a store: the caller passes `now` and decides whether
//! to keep the new state (the engine keeps it only when every limit of a request allows it).
//! All arithmetic is on integers (microseconds, and token counts scaled so a refill never
//! rounds), which is what lets a Redis Lua script mirror each function exactly. Stored values
//! stay below 2^53 so the Lua mirror, whose numbers are doubles, never loses precision.
//!
//! Layout: one file per algorithm; this module holds what they share ([`Decision`],
//! [`Denial`], [`State`]) and the dispatch over [`LimitParams`]. [`carry`] reads a state kept
//! under other numbers of the same limit (a counter survives a change of its limit's numbers),
//! and [`units`] names the rates bucket states are scaled by. `metered` holds what limits
//! metered after the fact (`charge: after`) need: the admission and the charge.

pub mod carry;
mod fixed_window;
mod gcra;
mod leaky_bucket;
mod metered;
mod sliding_log;
mod sliding_window;
mod token_bucket;
pub mod units;

pub use fixed_window::{FixedWindow, FixedWindowState};
pub use gcra::{Gcra, GcraState};
pub use leaky_bucket::{LeakyBucket, LeakyBucketState};
pub use sliding_log::{SlidingLog, SlidingLogState};
pub use sliding_window::{SlidingWindow, SlidingWindowState};
pub use token_bucket::{TokenBucket, TokenBucketState};
pub use units::ParamsId;

use crate::time::Micros;
use strength_reduce::StrengthReducedU64;

/// The largest scaled quantity a limit may store; 2^53 keeps every value exact in a Lua double.
pub const MAX_SCALED: u128 = 1 << 53;
// The bucket algorithms do their arithmetic in u64: every stored amount is at most
// MAX_SCALED, and products that could overflow saturate (a saturated refill means "full").

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The limit is used up for now; `retry_after` says when the same cost will pass.
    OverLimit,
    /// The cost is larger than the limit could ever admit at once; retrying cannot help.
    CostExceedsLimit,
}

/// The outcome of checking one limit: whether the request may pass, and the numbers a client
/// needs to back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is within this limit.
    pub allowed: bool,
    /// The most this limit admits at once (the burst, capacity or per-window limit).
    pub limit: u64,
    /// What remains after this request (after admitting it, when it is allowed).
    pub remaining: u64,
    /// Microseconds until the limit is fully reset (back to a fresh key's state).
    pub reset_after: Micros,
    /// On an [`Denial::OverLimit`] denial, microseconds until a request of the same cost would
    /// be allowed with no other traffic; `None` when allowed or when retrying cannot help.
    pub retry_after: Option<Micros>,
    /// Why the request was refused, when it was.
    pub denial: Option<Denial>,
}

impl Decision {
    #[inline]
    fn allow(limit: u64, remaining: u64, reset_after: Micros) -> Self {
        Self {
            allowed: true,
            limit,
            remaining,
            reset_after,
            retry_after: None,
            denial: None,
        }
    }

    #[inline]
    fn over_limit(limit: u64, remaining: u64, reset_after: Micros, retry_after: Micros) -> Self {
        Self {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after: Some(retry_after),
            denial: Some(Denial::OverLimit),
        }
    }

    #[inline]
    fn too_costly(limit: u64, remaining: u64, reset_after: Micros) -> Self {
        Self {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after: None,
            denial: Some(Denial::CostExceedsLimit),
        }
    }
}

/// What an algorithm returns: the decision, and the state to store if the caller commits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<S> {
    /// The decision for this request.
    pub decision: Decision,
    /// The key's state after admitting the request. Meaningful only when the decision allows
    /// it; a denied request consumes nothing, so the caller keeps the old state.
    pub state: S,
    /// When `state` becomes indistinguishable from a fresh key and may be dropped.
    pub expires_at: Micros,
}

/// One algorithm's evaluation as the shared [`State`] (`f` names the variant).
#[inline]
fn wrap<S>(e: Evaluation<S>, f: impl FnOnce(S) -> State) -> Evaluation<State> {
    Evaluation {
        decision: e.decision,
        state: f(e.state),
        expires_at: e.expires_at,
    }
}

/// A limit's algorithm with its validated, precomputed parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitParams {
    /// See [`TokenBucket`].
    TokenBucket(TokenBucket),
    /// See [`Gcra`].
    Gcra(Gcra),
    /// See [`FixedWindow`].
    FixedWindow(FixedWindow),
    /// See [`SlidingWindow`].
    SlidingWindow(SlidingWindow),
    /// See [`SlidingLog`].
    SlidingLog(SlidingLog),
    /// See [`LeakyBucket`].
    LeakyBucket(LeakyBucket),
}

/// One key's state, whichever algorithm it belongs to. Every inline variant is 16 bytes and
/// the sliding log's variable part is boxed, so the in-memory store can keep a key in 40 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// See [`TokenBucketState`].
    TokenBucket(TokenBucketState),
    /// See [`GcraState`].
    Gcra(GcraState),
    /// See [`FixedWindowState`].
    FixedWindow(FixedWindowState),
    /// See [`SlidingWindowState`].
    SlidingWindow(SlidingWindowState),
    /// See [`SlidingLogState`].
    SlidingLog(Box<SlidingLogState>),
    /// See [`LeakyBucketState`].
    LeakyBucket(LeakyBucketState),
}

impl LimitParams {
    /// The algorithm's name as a policy writes it (`token_bucket`, `fixed_window`, ...).
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::TokenBucket(_) => "token_bucket",
            Self::Gcra(_) => "gcra",
            Self::FixedWindow(_) => "fixed_window",
            Self::SlidingWindow(_) => "sliding_window",
            Self::SlidingLog(_) => "sliding_log",
            Self::LeakyBucket(_) => "leaky_bucket",
        }
    }

    /// The most the limit admits at once: the `q` of `RateLimit-Policy`.
    pub fn quota(&self) -> u64 {
        match self {
            Self::TokenBucket(p) => p.burst(),
            Self::Gcra(p) => p.burst(),
            Self::FixedWindow(p) => p.limit(),
            Self::SlidingWindow(p) => p.limit(),
            Self::SlidingLog(p) => p.limit(),
            Self::LeakyBucket(p) => p.capacity(),
        }
    }

    /// The window the quota applies to, in microseconds: the `w` of `RateLimit-Policy`. For
    /// the bucket algorithms it is the time a drained bucket takes to refill completely.
    pub fn window(&self) -> Micros {
        match self {
            Self::TokenBucket(p) => p.refill_time(),
            Self::Gcra(p) => p.refill_time(),
            Self::FixedWindow(p) => p.window(),
            Self::SlidingWindow(p) => p.window(),
            Self::SlidingLog(p) => p.window(),
            Self::LeakyBucket(p) => p.drain_time(),
        }
    }

    /// Checks a request of `cost` at `now` against `state` (`None` for a key never seen or
    /// already expired). A state of another algorithm's shape counts as a fresh key.
    #[inline]
    pub fn evaluate(
        &self,
        state: Option<StateRef<'_>>,
        now: Micros,
        cost: u64,
    ) -> Evaluation<State> {
        use StateRef as R;
        match (self, state) {
            (Self::TokenBucket(p), s) => {
                let s = if let Some(R::TokenBucket(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), State::TokenBucket)
            }
            (Self::Gcra(p), s) => {
                let s = if let Some(R::Gcra(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), State::Gcra)
            }
            (Self::FixedWindow(p), s) => {
                let s = if let Some(R::FixedWindow(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), State::FixedWindow)
            }
            (Self::SlidingWindow(p), s) => {
                let s = if let Some(R::SlidingWindow(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), State::SlidingWindow)
            }
            (Self::SlidingLog(p), s) => {
                let s = if let Some(R::SlidingLog(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), |s| State::SlidingLog(Box::new(s)))
            }
            (Self::LeakyBucket(p), s) => {
                let s = if let Some(R::LeakyBucket(s)) = s {
                    Some(s)
                } else {
                    None
                };
                wrap(p.evaluate(s, now, cost), State::LeakyBucket)
            }
        }
    }
}

/// A borrowed view of one key's state, so a store can hand its stored form to
/// [`LimitParams::evaluate`] without copying it into a [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRef<'a> {
    /// See [`TokenBucketState`].
    TokenBucket(&'a TokenBucketState),
    /// See [`GcraState`].
    Gcra(&'a GcraState),
    /// See [`FixedWindowState`].
    FixedWindow(&'a FixedWindowState),
    /// See [`SlidingWindowState`].
    SlidingWindow(&'a SlidingWindowState),
    /// See [`SlidingLogState`].
    SlidingLog(&'a SlidingLogState),
    /// See [`LeakyBucketState`].
    LeakyBucket(&'a LeakyBucketState),
}

impl State {
    /// Borrows the state for [`LimitParams::evaluate`].
    pub fn as_ref(&self) -> StateRef<'_> {
        match self {
            Self::TokenBucket(s) => StateRef::TokenBucket(s),
            Self::Gcra(s) => StateRef::Gcra(s),
            Self::FixedWindow(s) => StateRef::FixedWindow(s),
            Self::SlidingWindow(s) => StateRef::SlidingWindow(s),
            Self::SlidingLog(s) => StateRef::SlidingLog(s),
            Self::LeakyBucket(s) => StateRef::LeakyBucket(s),
        }
    }
}

/// A rate reduced to lowest terms: `tokens` whole units every `micros` microseconds.
///
/// The bucket algorithms count in scaled units where one token is `micros` units and each
/// elapsed microsecond refills `tokens` units, so refills are exact integers. Both numbers are
/// also kept as strength-reduced divisors: every check divides by them (for the remaining
/// count and the reset time), and a multiply-and-shift is several times cheaper than a
/// hardware division on the hot path.
#[derive(Debug, Clone, Copy)]
pub struct ScaledRate {
    /// Units refilled per elapsed microsecond (the reduced count).
    pub tokens: u64,
    /// Scaled units per whole token (the reduced period).
    pub micros: u64,
    tokens_div: StrengthReducedU64,
    micros_div: StrengthReducedU64,
}

impl PartialEq for ScaledRate {
    fn eq(&self, other: &Self) -> bool {
        (self.tokens, self.micros) == (other.tokens, other.micros)
    }
}

impl Eq for ScaledRate {}

impl std::hash::Hash for ScaledRate {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.tokens, self.micros).hash(state);
    }
}

impl ScaledRate {
    /// Reduces `count` per `period` by their greatest common divisor.
    pub fn new(rate: crate::rate::Rate) -> Self {
        let g = gcd(rate.count, rate.period);
        // `Rate` guarantees both are positive, so neither divisor is zero.
        let (tokens, micros) = ((rate.count / g).max(1), (rate.period / g).max(1));
        Self::reduced(tokens, micros)
    }

    /// The rate from numbers already in lowest terms (both positive), as the register of
    /// parameters keeps them.
    fn reduced(tokens: u64, micros: u64) -> Self {
        Self {
            tokens,
            micros,
            tokens_div: StrengthReducedU64::new(tokens),
            micros_div: StrengthReducedU64::new(micros),
        }
    }

    /// The rate and amount `id` names in the register of parameters, for reading a state
    /// written under them; `None` for [`ParamsId::OVERFLOW`].
    pub(crate) fn registered(id: ParamsId) -> Option<(Self, u64)> {
        let (tokens, micros, amount) = id.numbers()?;
        Some((Self::reduced(tokens.max(1), micros.max(1)), amount))
    }

    /// The register's id for this rate with `amount` (a burst or capacity).
    pub(crate) fn register(&self, amount: u64) -> ParamsId {
        units::intern(self.tokens, self.micros, amount)
    }

    /// `n` whole tokens in scaled units (saturating; stored amounts stay below 2^53).
    #[inline]
    pub fn scale(&self, n: u64) -> u64 {
        n.saturating_mul(self.micros)
    }

    /// Scaled units refilled over `elapsed` microseconds (saturating: a long-idle key simply
    /// refills completely).
    #[inline]
    pub fn refill(&self, elapsed: Micros) -> u64 {
        elapsed.saturating_mul(self.tokens)
    }

    /// `units` scaled units as whole microseconds of refill and the scaled units left over.
    #[inline]
    pub fn split(&self, units: u64) -> (Micros, u64) {
        StrengthReducedU64::div_rem(units, self.tokens_div)
    }

    /// Microseconds needed to refill `units` scaled units, rounded up.
    #[inline]
    pub fn time_for(&self, units: u64) -> Micros {
        let (q, r) = self.split(units);
        q + u64::from(r != 0)
    }

    /// Whole tokens in `units` scaled units, rounded down.
    #[inline]
    pub fn whole(&self, units: u64) -> u64 {
        units / self.micros_div
    }

    /// Checks that `capacity` tokens fit in [`MAX_SCALED`].
    pub fn check_capacity(&self, capacity: u64, what: &str) -> Result<(), String> {
        if capacity == 0 {
            return Err(format!("{what} must be at least 1"));
        }
        if capacity as u128 * self.micros as u128 > MAX_SCALED {
            return Err(format!(
                "{what} {capacity} is too large for this rate's precision \
                 (capacity x period must stay below 2^53 microseconds)"
            ));
        }
        Ok(())
    }
}

/// The most a key of a bucket algorithm may have used after a charge after the fact, in
/// scaled units: `capacity` plus a debt, all of it repaid within ten years ([`MAX_WINDOW`])
/// or within the bucket's own refill time when that is longer (a debt never makes a state
/// outlive what a full bucket already can, so every time stays below 2^53), and at most 2^53
/// (the Lua mirror's exact range). Token bucket, GCRA and leaky bucket share it, so they
/// still agree after overdraw.
#[inline]
pub(crate) fn max_used(rate: &ScaledRate, capacity: u64) -> u64 {
    capacity.max(rate.refill(MAX_WINDOW)).min(MAX_SCALED as u64)
}

/// The longest window a limit may have: ten years. Expiry times are `now` plus up to two
/// windows, and must stay exact integers below 2^53 in every store (the Lua mirror's doubles);
/// a longer window would overflow them, and a limit that never expires would never limit.
pub const MAX_WINDOW: Micros = 3650 * 86_400 * crate::time::SECOND;

/// Validates a window limit's numbers: `limit` in `1..=max` and a window longer than zero and
/// at most [`MAX_WINDOW`]. The counters are stored as exact integers in every store, so `max`
/// is 2^53 (32 bits for the sliding window's packed counters).
pub(crate) fn check_window(limit: u64, window: Micros, max: u64) -> Result<(), String> {
    if limit == 0 {
        return Err("limit must be at least 1".into());
    }
    if limit > max {
        return Err(format!("limit {limit} is too large (at most {max})"));
    }
    if window == 0 {
        return Err("window must be longer than zero".into());
    }
    if window > MAX_WINDOW {
        return Err(format!(
            "window of {}s is too long (at most 3650d, ten years)",
            window / crate::time::SECOND
        ));
    }
    Ok(())
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

pub(crate) fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod testkit;
