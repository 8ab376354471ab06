//! The Lua code, how a request's checks become its arguments, and how its replies become
//! [`Decision`]s.
//!
//! `lua/` holds one file per algorithm, each mirroring the Rust function of the same name in
//! `spillway-core/src/algorithm/`, plus shared helpers, the check entry point (`check.lua`) and
//! the compensating refund (`refund.lua`). They are concatenated at compile time into one
//! body, used in two forms:
//!
//! - [`library`]: a Redis Functions library (Redis 7+), loaded once with `FUNCTION LOAD` and
//!   called with `FCALL`. Its functions are defined when it loads, so a call only runs the
//!   work of its limits. The library and function names carry a digest of the code, so nodes
//!   of two versions sharing one Redis during a rolling upgrade each call their own.
//! - [`CHECK_SCRIPT`] and [`REFUND_SCRIPT`]: plain scripts for servers without Functions,
//!   sent by `EVALSHA` through [`redis::Script`] (which reloads one Redis has lost). Their
//!   helpers are re-created by every call, which costs a few microseconds of Redis CPU.
//!
//! Which form a store uses is settled by `crate::functions`.

use redis::Value;
use spillway_core::algorithm::{Decision, Denial, LimitParams};
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, StoreError};
use spillway_core::time::Micros;
use std::sync::LazyLock;

/// The helpers, the six algorithms and the check entry point, in that order.
const CHECK_BODY: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/token_bucket.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/fixed_window.lua"),
    include_str!("../lua/sliding_window.lua"),
    include_str!("../lua/sliding_log.lua"),
    include_str!("../lua/leaky_bucket.lua"),
    include_str!("../lua/check.lua"),
);

/// The compensating refund (one function, no helpers).
const REFUND_BODY: &str = include_str!("../lua/refund.lua");

/// The check as a plain script (`EVALSHA`), for servers without Functions.
pub const CHECK_SCRIPT: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/token_bucket.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/fixed_window.lua"),
    include_str!("../lua/sliding_window.lua"),
    include_str!("../lua/sliding_log.lua"),
    include_str!("../lua/leaky_bucket.lua"),
    include_str!("../lua/check.lua"),
    "\nreturn check(KEYS, ARGV)\n",
);

/// The compensating refund as a plain script, for servers without Functions.
pub const REFUND_SCRIPT: &str = concat!(
    include_str!("../lua/refund.lua"),
    "\nreturn refund(KEYS, ARGV)\n"
);

/// The Functions library: its source and the names of its two functions.
#[derive(Debug)]
pub struct Library {
    /// What `FUNCTION LOAD REPLACE` is given.
    pub source: String,
    /// The SHA-1 of the code (40 hex digits). The native module answers the digest of the code
    /// it mirrors (`SPILLWAY.VERSION`), and a store uses it only when the two are equal.
    pub digest: String,
    /// The library's name, `spillway_<digest>`.
    pub name: String,
    /// The check function (`FCALL <check> numkeys keys... now requests`).
    pub check: String,
    /// The refund function (`FCALL <refund> 1 key written before ttl`).
    pub refund: String,
}

/// The library, built once. Its names end in the first 12 hex digits of the code's SHA-1.
pub fn library() -> &'static Library {
    static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
        let mut digest = sha1_smol::Sha1::new();
        digest.update(CHECK_BODY.as_bytes());
        digest.update(REFUND_BODY.as_bytes());
        let digest = digest.digest().to_string();
        let version = digest[..12].to_owned();
        let name = format!("spillway_{version}");
        let check = format!("spillway_check_{version}");
        let refund = format!("spillway_refund_{version}");
        let source = format!(
            "#!lua name={name}\n{CHECK_BODY}\n{REFUND_BODY}\n\
             redis.register_function('{check}', check)\n\
             redis.register_function('{refund}', refund)\n"
        );
        Library {
            source,
            digest,
            name,
            check,
            refund,
        }
    });
    &LIBRARY
}

/// Request flag: charge the limits if admitted (else only look).
const CONSUME: u64 = 1;
/// Request flag: also return what a compensating refund needs.
const UNDO: u64 = 2;
/// Request flag: charge after the fact (record every cost whatever the limit says).
const CHARGE: u64 = 4;
/// Request flag: the request's keys start with its report marker.
const MARKED: u64 = 8;

/// The algorithm code and three numbers the Lua side needs for `params`.
fn encode_params(params: &LimitParams) -> [u64; 4] {
    match params {
        LimitParams::TokenBucket(p) => [1, p.rate().tokens, p.rate().micros, p.burst()],
        LimitParams::Gcra(p) => [2, p.rate().tokens, p.rate().micros, p.burst()],
        LimitParams::FixedWindow(p) => [3, p.limit(), p.window(), 0],
        LimitParams::SlidingWindow(p) => [4, p.limit(), p.window(), 0],
        LimitParams::SlidingLog(p) => [5, p.limit(), p.window(), 0],
        LimitParams::LeakyBucket(p) => [6, p.drain().tokens, p.drain().micros, p.capacity()],
    }
}

/// A limit's flag: a denial by it blocks the request.
const ENFORCED: u64 = 1;
/// A limit's flag: a metered limit's admission (room for one unit, consumes nothing).
const ADMIT: u64 = 2;

/// One check as the script's six numbers: algorithm code, three numbers, cost, and the
/// limit's flags ([`ENFORCED`], [`ADMIT`]). Owned and `Copy`, so a task that outlives the
/// request can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    params: [u64; 4],
    cost: u64,
    flags: u64,
}

impl Encoded {
    /// The script arguments for `check`.
    pub fn new(check: &Check<'_>) -> Self {
        // Every algorithm refuses a cost above its quota without looking at it further, so a
        // cost that large is sent as the least whole number above the quota that a Lua
        // double holds exactly (see `over_quota`).
        let cost = past_quota_as_one(check.cost, check.params.quota());
        Self {
            params: encode_params(check.params),
            cost,
            flags: flag(check.enforced, ENFORCED) | flag(check.metered, ADMIT),
        }
    }
}

/// `cost` as sent: itself up to the quota (exact, quotas being at most 2^53), and any cost
/// above it as [`over_quota`]. (Capping with `min` would send a cost of 2^53 + 1 over a quota
/// of 2^53 as itself, which a double rounds down to the quota.)
fn past_quota_as_one(cost: u64, quota: u64) -> u64 {
    if cost > quota {
        over_quota(quota)
    } else {
        cost
    }
}

/// The least whole number above `quota` that a double holds exactly. Validation keeps every
/// quota at or below 2^53 (`spillway_core::algorithm::MAX_SCALED`: `check_window`,
/// `check_capacity`), and doubles hold every whole number below it: quota + 1. At 2^53 the
/// next double is 2^53 + 2 (quota + 1 would round back down to the quota, so a cost past the
/// limit would read as exactly the limit and be admitted).
fn over_quota(quota: u64) -> u64 {
    const EXACT: u64 = 1 << 53;
    match quota {
        q if q < EXACT => q + 1,
        EXACT => EXACT + 2,
        // No valid limit gets here; were one to, the largest cost still reads as past it.
        _ => u64::MAX,
    }
}

fn flag(set: bool, bit: u64) -> u64 {
    if set {
        bit
    } else {
        0
    }
}

impl Encoded {
    /// The script arguments for charging `check` after the fact. The cost is recorded whole
    /// (a debt past the limit), so it is only capped at 2^53, where every charge saturates
    /// (and a double is still exact); the sliding log, which records only what fits, gets
    /// the check's cap.
    pub fn charged(check: &Check<'_>) -> Self {
        let cost = if check.params.supports_charge() {
            check.cost.min(spillway_core::algorithm::MAX_SCALED as u64)
        } else {
            past_quota_as_one(check.cost, check.params.quota())
        };
        Self {
            params: encode_params(check.params),
            cost,
            flags: flag(check.enforced, ENFORCED),
        }
    }
}

/// The keys and arguments of one call of the check (either form): one or more requests, each
/// decided all-or-nothing on its own. The keys are borrowed from the requests (they are
/// copied once, into the command).
#[derive(Debug, Default, Clone)]
pub struct CallArgs<'k> {
    /// Every request's keys, request after request.
    pub keys: Vec<&'k str>,
    /// The packed requests (`ARGV[2]`; see `lua/check.lua`).
    pub packed: Vec<u8>,
    /// Per request: its number of checks and whether it asked for undo records of a charge.
    pub shapes: Vec<(usize, bool)>,
}

impl<'k> CallArgs<'k> {
    /// Empty arguments with room for `requests` requests over `checks` checks in all (plus
    /// their report markers, if any: `keys` is the number of keys).
    pub fn with_capacity(requests: usize, keys: usize, checks: usize) -> Self {
        Self {
            keys: Vec::with_capacity(keys),
            packed: Vec::with_capacity(8 * (2 * requests + 6 * checks)),
            shapes: Vec::with_capacity(requests),
        }
    }

    /// Appends one request over `(key, check)` pairs.
    pub fn push(
        &mut self,
        checks: impl IntoIterator<Item = (&'k str, Encoded)>,
        mode: CheckMode,
        undo: bool,
    ) {
        let consume = mode == CheckMode::Consume;
        let flags = if consume { CONSUME } else { 0 } | if undo { UNDO } else { 0 };
        let n = self.push_checks(flags, checks);
        self.shapes.push((n, consume && undo));
    }

    /// Appends one charge after the fact over `(key, check)` pairs (see [`Encoded::charged`]),
    /// with its report marker key first when the report has an id.
    pub fn push_charge(
        &mut self,
        marker: Option<&'k str>,
        checks: impl IntoIterator<Item = (&'k str, Encoded)>,
    ) {
        let flags = CHARGE | if marker.is_some() { MARKED } else { 0 };
        if let Some(marker) = marker {
            self.keys.push(marker);
        }
        let n = self.push_checks(flags, checks);
        self.shapes.push((n, false));
    }

    /// Appends a request's head (its flags and its count of checks) and its checks, each key
    /// to the keys and six numbers to the packed arguments; returns the count.
    fn push_checks(
        &mut self,
        flags: u64,
        checks: impl IntoIterator<Item = (&'k str, Encoded)>,
    ) -> usize {
        let head = self.packed.len();
        self.put(flags);
        self.put(0); // the count, filled in below
        let mut n = 0;
        for (key, check) in checks {
            self.keys.push(key);
            let [code, p1, p2, p3] = check.params;
            for x in [code, p1, p2, p3, check.cost, check.flags] {
                self.put(x);
            }
            n += 1;
        }
        #[allow(clippy::cast_precision_loss)] // a count of checks, far below 2^53
        let count = (n as f64).to_le_bytes();
        self.packed[head + 8..head + 16].copy_from_slice(&count);
        n
    }

    #[allow(clippy::cast_precision_loss)] // the Lua side holds doubles; see `Encoded::new`
    fn put(&mut self, x: u64) {
        self.packed.extend_from_slice(&(x as f64).to_le_bytes());
    }

    /// The first argument: the injected time, or empty for Redis `TIME`.
    pub fn now_arg(now: Option<Micros>) -> String {
        now.map(|t| t.to_string()).unwrap_or_default()
    }
}

/// What a compensating refund needs to restore one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// The value the charge wrote (or the old one when nothing was written).
    pub written: Vec<u8>,
    /// The value before the charge (empty when the key did not exist).
    pub before: Vec<u8>,
    /// The key's PTTL before the charge, in milliseconds.
    pub ttl: String,
}

/// What the check reported for one request.
#[derive(Debug)]
pub struct Reply {
    /// Whether every enforced limit of the request allowed it.
    pub admitted: bool,
    /// The time the call evaluated at (Redis `TIME` or the injected time).
    pub now: Micros,
    /// One decision per check, in order.
    pub decisions: Vec<Decision>,
    /// With undo asked for and an admitted charge, per key: what restores it.
    pub undo: Vec<Undo>,
}

fn bytes(v: &Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(StoreError::Protocol(format!(
            "check script returned {other:?} where a string belongs"
        ))),
    }
}

fn short(n: usize) -> StoreError {
    StoreError::Protocol(format!(
        "check script returned too few values for {n} checks"
    ))
}

/// The packed decisions of a reply (little-endian doubles holding whole numbers), read in
/// order.
struct Packed<'a> {
    rest: &'a [u8],
    checks: usize,
}

impl Packed<'_> {
    /// The next whole number; an error when the script sent fewer, or something that is not
    /// a whole number from -1 up to 2^63.
    fn next(&mut self) -> Result<i64, StoreError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<8>()
            .ok_or_else(|| short(self.checks))?;
        self.rest = rest;
        let x = f64::from_le_bytes(*head);
        // Every whole double below 2^63 fits an i64 exactly.
        const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;
        if x.fract() != 0.0 || !(-1.0..TWO_TO_63).contains(&x) {
            return Err(StoreError::Protocol(format!(
                "check script returned {x} where a whole number belongs"
            )));
        }
        #[allow(clippy::cast_possible_truncation)] // whole and within range: exact
        Ok(x as i64)
    }

    fn unsigned(&mut self) -> Result<u64, StoreError> {
        let i = self.next()?;
        u64::try_from(i)
            .map_err(|_| StoreError::Protocol(format!("check script returned negative {i}")))
    }
}

/// Reads the check's reply to a call shaped by `shapes` (see [`CallArgs::shapes`]): one
/// [`Reply`] per request, in order. The reply is the packed string (the time, then the
/// decisions), or, when a request that asked for undo records was admitted as a consume over
/// at least one limit, an array of that string and the records (see `lua/check.lua`).
pub fn parse_reply(value: Value, shapes: &[(usize, bool)]) -> Result<Vec<Reply>, StoreError> {
    let total: usize = shapes.iter().map(|s| s.0).sum();
    let (packed, items) = match &value {
        Value::BulkString(packed) => (packed, &[][..]),
        Value::Array(items) => match items.split_first() {
            Some((Value::BulkString(packed), items)) => (packed, items),
            _ => {
                return Err(StoreError::Protocol(format!(
                    "check script returned {:?} where the packed decisions belong",
                    items.first()
                )))
            }
        },
        other => {
            return Err(StoreError::Protocol(format!(
                "check script returned {other:?} instead of the packed decisions"
            )))
        }
    };
    let mut packed = Packed {
        rest: packed,
        checks: total,
    };
    let now = packed.unsigned()?;
    // Undo records follow the packed decisions, three strings per key of every admitted
    // request that asked for them.
    let mut at = 0;
    let mut replies = Vec::with_capacity(shapes.len());
    for &(n, undo) in shapes {
        let admitted = packed.next()? == 1;
        let mut decisions = Vec::with_capacity(n);
        for _ in 0..n {
            let allowed = packed.next()? == 1;
            let limit = packed.unsigned()?;
            let remaining = packed.unsigned()?;
            let reset_after = packed.unsigned()?;
            let retry = packed.next()?;
            decisions.push(Decision {
                allowed,
                limit,
                remaining,
                reset_after,
                retry_after: u64::try_from(retry).ok(),
                denial: match packed.next()? {
                    0 => None,
                    1 => Some(Denial::OverLimit),
                    _ => Some(Denial::CostExceedsLimit),
                },
            });
        }
        let mut undos = Vec::new();
        if undo && admitted {
            let block = items.get(at..at + 3 * n).ok_or_else(|| short(total))?;
            at += 3 * n;
            for u in block.chunks_exact(3) {
                undos.push(Undo {
                    before: bytes(&u[0])?,
                    ttl: String::from_utf8_lossy(&bytes(&u[1])?).into_owned(),
                    written: bytes(&u[2])?,
                });
            }
        }
        replies.push(Reply {
            admitted,
            now,
            decisions,
            undo: undos,
        });
    }
    if at != items.len() || !packed.rest.is_empty() {
        return Err(StoreError::Protocol(format!(
            "check script returned {} values and {} bytes of decisions too many for {total} checks",
            items.len().saturating_sub(at),
            packed.rest.len()
        )));
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(xs: &[f64]) -> Value {
        Value::BulkString(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    #[test]
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn a_cost_past_the_quota_stays_past_it_as_a_double() {
        // Quotas are validated to at most 2^53; a larger one (impossible) is sent as u64::MAX,
        // which still reads as past it.
        for quota in [(1 << 53) + 2, 1 << 60] {
            assert_eq!(over_quota(quota), u64::MAX, "{quota}");
        }
        for quota in [0, 1, 1000, (1 << 53) - 1, 1 << 53] {
            let over = over_quota(quota);
            assert!(over > quota, "{quota}");
            assert_eq!(over as f64 as u64, over, "{quota}: {over} is exact");
            assert!(
                over as f64 > quota as f64,
                "{quota}: still above as doubles"
            );
        }
        assert_eq!(over_quota(1 << 53), (1 << 53) + 2);
        for cost in [(1 << 53) + 1, (1 << 53) + 3, u64::MAX] {
            let sent = past_quota_as_one(cost, 1 << 53);
            assert!(
                sent as f64 > (1u64 << 53) as f64,
                "{cost} is sent as {sent}"
            );
        }
        assert_eq!(past_quota_as_one(1 << 53, 1 << 53), 1 << 53);
        assert_eq!(past_quota_as_one(7, 10), 7);
    }

    #[test]
    fn packed_decisions_and_undo_records_are_read_per_request() {
        let reply = Value::Array(vec![
            packed(&[
                7.0, // the time
                1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0, // admitted, one allowed limit
                0.0, 0.0, 10.0, 0.0, 50.0, 50.0, 1.0, // denied over limit
            ]),
            Value::BulkString(b"old".to_vec()),
            Value::BulkString(b"5000".to_vec()),
            Value::BulkString(b"new".to_vec()),
        ]);
        let replies = parse_reply(reply, &[(1, true), (1, true)]).unwrap();
        assert_eq!(replies.len(), 2);
        assert!(replies[0].admitted && !replies[1].admitted);
        assert_eq!(replies[0].now, 7);
        let d = &replies[0].decisions[0];
        assert_eq!((d.limit, d.remaining, d.reset_after), (10, 9, 100));
        assert_eq!((d.retry_after, d.denial), (None, None));
        let d = &replies[1].decisions[0];
        assert_eq!(
            (d.retry_after, d.denial),
            (Some(50), Some(Denial::OverLimit))
        );
        assert_eq!(replies[0].undo.len(), 1);
        assert_eq!(replies[0].undo[0].written, b"new");
        assert!(replies[1].undo.is_empty(), "a denied request wrote nothing");

        // Without undo records the reply is the packed string alone.
        let reply = packed(&[9.0, 1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0]);
        let replies = parse_reply(reply, &[(1, false)]).unwrap();
        assert_eq!((replies[0].now, replies[0].decisions[0].remaining), (9, 9));
    }

    #[test]
    fn a_malformed_packed_reply_is_a_protocol_error() {
        let shapes = [(1, false)];
        let cases = [
            packed(&[7.0, 1.0, 1.0, 10.0, 9.0, 100.0, -1.0]), // one number short
            packed(&[7.0, 1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0, 0.0]), // one too many
            packed(&[7.0, 1.0, 1.0, 10.0, 9.5, 100.0, -1.0, 0.0]), // not whole
            packed(&[7.0, 1.0, 1.0, 10.0, -2.0, 100.0, -1.0, 0.0]), // negative
            packed(&[-1.0, 1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0]), // a negative time
            packed(&[]),                                      // not even the time
            Value::Int(1),
            // The shape before session 15: the time as an integer beside the string.
            Value::Array(vec![
                Value::Int(7),
                packed(&[1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0]),
            ]),
            // Undo records nobody asked for.
            Value::Array(vec![
                packed(&[7.0, 1.0, 1.0, 10.0, 9.0, 100.0, -1.0, 0.0]),
                Value::BulkString(b"old".to_vec()),
            ]),
        ];
        for case in cases {
            assert!(
                matches!(
                    parse_reply(case.clone(), &shapes),
                    Err(StoreError::Protocol(_))
                ),
                "{case:?}"
            );
        }
    }
}
