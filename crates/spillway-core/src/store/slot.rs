//! How the in-memory store keeps one key's state: the algorithm's state, the second it
//! expires, and for the bucket algorithms the id of the numbers that wrote it, in 24 bytes.
//!
//! A counter keeps its identity when its limit's numbers change (see
//! `crate::algorithm::carry`), so a slot may be read under numbers other than the ones that
//! wrote it. The bucket variants keep the writer's [`ParamsId`] in the three bytes the layout
//! leaves spare beside the variant tag, so telling "same numbers" apart is one comparison and
//! the single-limit path still updates a slot in place.

use crate::algorithm::{
    FixedWindowState, GcraState, LeakyBucketState, LimitParams, ParamsId, SlidingLogState,
    SlidingWindowState, State, StateRef, TokenBucketState,
};
use crate::time::Micros;

/// Where a slot's expiry word keeps how much of its limit the key had used at its last
/// consuming check, its *used level*: the top two bits (0: under half, 1: half or more, 2: all
/// of it, 3: denied). Evicting a key hands its client back what it had used, so eviction takes
/// a sampled slot of the lowest level first (`memory::eviction`). Expiry seconds count from the
/// store's start and stay below these bits (34 years).
pub(super) const USED_SHIFT: u32 = 30;
/// The expiry second's bits of the word.
pub(super) const EXPIRY_MASK: u32 = (1 << USED_SHIFT) - 1;
/// The used level of a key used up (nothing left).
pub(super) const USED_UP: u32 = 2;
/// The used level of a denied key (the highest).
pub(super) const DENIED: u32 = 3;

/// A stored state with its expiry second (and, for buckets, its writer's numbers). Each variant pairs
/// the algorithm's 16-byte state (or the sliding log's box) with the expiry so the compiler
/// packs the expiry and the numbers' id beside the variant tag: 24 bytes, where `(State, u32)`
/// alone would take 32.
#[derive(Debug)]
pub(super) enum Slot {
    TokenBucket(TokenBucketState, u32, ParamsId),
    Gcra(GcraState, u32, ParamsId),
    FixedWindow(FixedWindowState, u32),
    SlidingWindow(SlidingWindowState, u32),
    SlidingLog(Box<SlidingLogState>, u32),
    LeakyBucket(LeakyBucketState, u32, ParamsId),
}

impl Slot {
    /// A slot for `state`, written by a limit whose numbers have the id `id`.
    #[inline]
    pub(super) fn new(state: State, expires: u32, id: ParamsId) -> Self {
        match state {
            State::TokenBucket(s) => Self::TokenBucket(s, expires, id),
            State::Gcra(s) => Self::Gcra(s, expires, id),
            State::FixedWindow(s) => Self::FixedWindow(s, expires),
            State::SlidingWindow(s) => Self::SlidingWindow(s, expires),
            State::SlidingLog(s) => Self::SlidingLog(s, expires),
            State::LeakyBucket(s) => Self::LeakyBucket(s, expires, id),
        }
    }

    #[inline]
    pub(super) fn state(&self) -> StateRef<'_> {
        match self {
            Self::TokenBucket(s, ..) => StateRef::TokenBucket(s),
            Self::Gcra(s, ..) => StateRef::Gcra(s),
            Self::FixedWindow(s, _) => StateRef::FixedWindow(s),
            Self::SlidingWindow(s, _) => StateRef::SlidingWindow(s),
            Self::SlidingLog(s, _) => StateRef::SlidingLog(s),
            Self::LeakyBucket(s, ..) => StateRef::LeakyBucket(s),
        }
    }

    /// The state as `params` read it at `now`: converted when it was written under other
    /// numbers (see `crate::algorithm::carry`), `None` when it reads as it is.
    #[inline]
    pub(super) fn carried(&self, params: &LimitParams, now: Micros) -> Option<State> {
        match self {
            Self::TokenBucket(_, _, id) | Self::Gcra(_, _, id) | Self::LeakyBucket(_, _, id) => {
                params.carry_over_from(*id, self.state(), now)
            }
            _ => None,
        }
    }

    /// Evaluates a check of `cost` at `now` against this slot, reading it under `params`.
    #[inline]
    pub(super) fn evaluate(
        &self,
        params: &LimitParams,
        now: Micros,
        cost: u64,
    ) -> crate::algorithm::Evaluation<State> {
        match self.carried(params, now) {
            Some(carried) => params.evaluate(Some(carried.as_ref()), now, cost),
            None => params.evaluate(Some(self.state()), now, cost),
        }
    }

    /// Admits a metered limit's request at `now` against this slot, reading it under
    /// `params` (see [`LimitParams::admit`]).
    #[inline]
    pub(super) fn admit(
        &self,
        params: &LimitParams,
        now: Micros,
    ) -> crate::algorithm::Evaluation<State> {
        match self.carried(params, now) {
            Some(carried) => params.admit(Some(carried.as_ref()), now),
            None => params.admit(Some(self.state()), now),
        }
    }

    /// Charges `cost` at `now` unconditionally against this slot, reading it under `params`
    /// (see [`LimitParams::charge`]).
    #[inline]
    pub(super) fn charge(
        &self,
        params: &LimitParams,
        now: Micros,
        cost: u64,
    ) -> crate::algorithm::Evaluation<State> {
        match self.carried(params, now) {
            Some(carried) => params.charge(Some(carried.as_ref()), now, cost),
            None => params.charge(Some(self.state()), now, cost),
        }
    }

    /// The expiry second, without the used level.
    pub(super) fn expires(&self) -> u32 {
        self.raw_expiry() & EXPIRY_MASK
    }

    /// How much of its limit the key had used at its last consuming check, its used level
    /// (see [`USED_SHIFT`]).
    pub(super) fn used(&self) -> u32 {
        self.raw_expiry() >> USED_SHIFT
    }

    /// Marks the key as denied (the highest used level): its check was just denied.
    pub(super) fn hold(&mut self) {
        match self {
            Self::TokenBucket(_, e, _)
            | Self::Gcra(_, e, _)
            | Self::FixedWindow(_, e)
            | Self::SlidingWindow(_, e)
            | Self::SlidingLog(_, e)
            | Self::LeakyBucket(_, e, _) => *e |= DENIED << USED_SHIFT,
        }
    }

    fn raw_expiry(&self) -> u32 {
        match self {
            Self::TokenBucket(_, e, _)
            | Self::Gcra(_, e, _)
            | Self::FixedWindow(_, e)
            | Self::SlidingWindow(_, e)
            | Self::SlidingLog(_, e)
            | Self::LeakyBucket(_, e, _) => *e,
        }
    }
}
