//! The Lua scripts, how a request's checks become their arguments, and how their replies
//! become [`Decision`]s.
//!
//! `lua/` holds one file per algorithm, each mirroring the Rust function of the same name in
//! `spillway-core/src/algorithm/`, plus shared helpers and a dispatcher. They are concatenated
//! at compile time into [`CHECK_SOURCE`], one script that evaluates every limit of a request in
//! one atomic step. Both scripts run through [`redis::Script`], which sends `EVALSHA` and
//! reloads the script when Redis answers `NOSCRIPT` (after `SCRIPT FLUSH`, a restart or a
//! failover), so callers never see that error.

use redis::Value;
use spillway_core::algorithm::{Decision, Denial, LimitParams};
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, StoreError};
use spillway_core::time::Micros;

/// The check script: helpers, the six algorithms and the dispatcher, in that order.
pub const CHECK_SOURCE: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/token_bucket.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/fixed_window.lua"),
    include_str!("../lua/sliding_window.lua"),
    include_str!("../lua/sliding_log.lua"),
    include_str!("../lua/leaky_bucket.lua"),
    include_str!("../lua/dispatch.lua"),
);

/// The compensating refund script for requests spanning several cluster slots.
pub const REFUND_SOURCE: &str = include_str!("../lua/refund.lua");

/// Arguments per check after the three global ones.
const PER_CHECK: usize = 6;

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

/// One check as the script's six arguments: algorithm code, three numbers, cost, enforced.
/// Owned and `Copy`, so a task that outlives the request can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    params: [u64; 4],
    cost: u64,
    enforced: bool,
}

impl Encoded {
    /// The script arguments for `check`.
    pub fn new(check: &Check<'_>) -> Self {
        // Every algorithm refuses a cost above its quota without looking at it further, so a
        // cost that large is sent as quota + 1: it stays exact in a Lua double.
        let cost = check.cost.min(check.params.quota().saturating_add(1));
        Self {
            params: encode_params(check.params),
            cost,
            enforced: check.enforced,
        }
    }
}

/// One invocation of the check script over `(key, check)` pairs (whose keys must share a
/// cluster slot).
pub fn invocation<'a, 'k>(
    script: &'a redis::Script,
    checks: impl IntoIterator<Item = (&'k str, Encoded)>,
    mode: CheckMode,
    now: Option<Micros>,
    undo: bool,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    inv.arg(if mode == CheckMode::Consume { "1" } else { "0" });
    match now {
        Some(now) => inv.arg(now),
        None => inv.arg(""),
    };
    inv.arg(if undo { "1" } else { "0" });
    for (key, check) in checks {
        inv.key(key);
        let [code, p1, p2, p3] = check.params;
        inv.arg(code).arg(p1).arg(p2).arg(p3).arg(check.cost);
        inv.arg(if check.enforced { "1" } else { "0" });
    }
    inv
}

/// What a compensating refund needs to restore one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// The value the charge wrote (or the old one when nothing was written).
    pub written: String,
    /// The value before the charge (empty when the key did not exist).
    pub before: String,
    /// The key's PTTL before the charge, in milliseconds.
    pub ttl: String,
}

/// What one script call reported.
#[derive(Debug)]
pub struct Reply {
    /// Whether every enforced limit in the call allowed the request.
    pub admitted: bool,
    /// The time the script evaluated at (Redis `TIME` or the injected time).
    pub now: Micros,
    /// One decision per check, in order.
    pub decisions: Vec<Decision>,
    /// With `undo`, per written key: (value written, value before, its PTTL then).
    pub undo: Vec<Undo>,
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "check script returned {other:?} where an integer belongs"
        ))),
    }
}

fn text(v: &Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError::Protocol(format!(
            "check script returned {other:?} where a string belongs"
        ))),
    }
}

fn unsigned(v: &Value) -> Result<u64, StoreError> {
    let i = int(v)?;
    u64::try_from(i)
        .map_err(|_| StoreError::Protocol(format!("check script returned negative {i}")))
}

/// Reads the check script's reply for `n` checks.
pub fn parse_reply(value: Value, n: usize) -> Result<Reply, StoreError> {
    let Value::Array(items) = value else {
        return Err(StoreError::Protocol(format!(
            "check script returned {value:?} instead of an array"
        )));
    };
    let head = 2 + n * PER_CHECK;
    if items.len() != head && items.len() != head + 3 * n {
        return Err(StoreError::Protocol(format!(
            "check script returned {} values for {n} checks",
            items.len()
        )));
    }
    let mut decisions = Vec::with_capacity(n);
    for d in items[2..head].chunks_exact(PER_CHECK) {
        let retry = int(&d[4])?;
        decisions.push(Decision {
            allowed: int(&d[0])? == 1,
            limit: unsigned(&d[1])?,
            remaining: unsigned(&d[2])?,
            reset_after: unsigned(&d[3])?,
            retry_after: u64::try_from(retry).ok(),
            denial: match int(&d[5])? {
                0 => None,
                1 => Some(Denial::OverLimit),
                _ => Some(Denial::CostExceedsLimit),
            },
        });
    }
    let undo = items[head..]
        .chunks_exact(3)
        .map(|u| {
            Ok(Undo {
                written: text(&u[2])?,
                before: text(&u[0])?,
                ttl: text(&u[1])?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Reply {
        admitted: int(&items[0])? == 1,
        now: unsigned(&items[1])?,
        decisions,
        undo,
    })
}
