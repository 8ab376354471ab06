//! `SPILLWAY.CHECK key... now requests`: the Lua library's `check` (`lua/check.lua`) in
//! compiled code, with the same keys, the same two arguments, the same packed reply and the
//! same stored states and expiry rules. See `lua/check.lua` for what the flags and the reply
//! mean; this file follows it step for step.
//!
//! Unlike the Lua, the whole request blob is read and checked before anything is evaluated:
//! a malformed call is refused with an error and writes nothing.

use crate::algorithms::{self, any_whole, whole, Six, Write};
use crate::key;
use crate::num::{lua_mod, px_until};
use crate::redis::Redis;
use crate::sliding_log::{self, Plan};
use crate::write;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

const CONSUME: f64 = 1.0;
const UNDO: f64 = 2.0;
const CHARGE: f64 = 4.0;
const MARKED: f64 = 8.0;
const ENFORCED: f64 = 1.0;
const ADMIT: f64 = 2.0;
/// How long a report marker lasts, in milliseconds (spillway-core's REPORT_TTL).
const REPORT_TTL_MS: i64 = 3_600_000;
/// The TTL slack (milliseconds) of every new expiry when the time is injected.
const INJECTED_SLACK: f64 = 3_600_000.0;

/// One limit of a request, as packed: algorithm code, three numbers, cost, flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub code: u8,
    pub p: [f64; 3],
    pub cost: f64,
    pub flags: f64,
}

/// One request: its flags and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub flags: f64,
    pub limits: Vec<Limit>,
}

fn refuse(what: String) -> RedisError {
    RedisError::String(format!("ERR spillway.check: {what}"))
}

/// Reads the packed requests and checks every number before anything runs: whole numbers,
/// known algorithm codes, nonzero divisors, and exactly as many keys as the requests name.
pub fn parse(blob: &[u8], keys: usize) -> Result<Vec<Request>, RedisError> {
    if !blob.len().is_multiple_of(8) {
        return Err(refuse(format!(
            "the requests are {} bytes, not a whole number of doubles",
            blob.len()
        )));
    }
    let numbers: Vec<f64> = blob
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let mut requests = Vec::new();
    let mut at = 0;
    let mut needed = 0usize;
    while at < numbers.len() {
        let r = requests.len();
        let [flags, n] = match numbers.get(at..at + 2) {
            Some(&[f, n]) => [f, n],
            _ => return Err(refuse(format!("request {r} is cut short"))),
        };
        at += 2;
        if !whole(flags) || flags >= 16.0 || !whole(n) {
            return Err(refuse(format!(
                "request {r} has flags {flags} and {n} limits"
            )));
        }
        let n = n as usize;
        if n > (numbers.len() - at) / 6 {
            return Err(refuse(format!(
                "request {r} names {n} limits; the requests hold fewer"
            )));
        }
        let mut limits = Vec::with_capacity(n);
        for j in 0..n {
            let x = &numbers[at..at + 6];
            at += 6;
            // The code and flags are small; the parameters and cost only need to be numbers
            // the Lua's arithmetic takes (a cost past a quota of 2^53 is 2^53 + 2, which the
            // Lua answers with a denial, so refusing it would fail the whole batched call).
            if !whole(x[0]) || !whole(x[5]) || !x[1..5].iter().all(|&v| any_whole(v)) {
                return Err(refuse(format!(
                    "limit {j} of request {r} holds a number that is not whole"
                )));
            }
            let code = x[0];
            let divisors_ok = match code as u8 {
                1 | 2 | 6 => x[1] > 0.0 && x[2] > 0.0,
                3..=5 => x[2] > 0.0,
                _ => false,
            };
            if !(1.0..=6.0).contains(&code) || !divisors_ok || x[5] >= 4.0 {
                return Err(refuse(format!(
                    "limit {j} of request {r} is not a known algorithm with valid numbers (code {code})"
                )));
            }
            limits.push(Limit {
                code: code as u8,
                p: [x[1], x[2], x[3]],
                cost: x[4],
                flags: x[5],
            });
        }
        needed += n + usize::from(lua_mod(flags, 16.0) >= MARKED);
        requests.push(Request { flags, limits });
    }
    if needed != keys {
        return Err(refuse(format!(
            "the requests name {needed} keys, the call gives {keys}"
        )));
    }
    Ok(requests)
}

/// The time argument: "" for the server's clock, else whole microseconds.
fn parse_now(arg: &[u8]) -> Result<(f64, f64), RedisError> {
    if arg.is_empty() {
        // The server's own clock, which Redis TIME reads too (gettimeofday): the one source of
        // limit time every node shares. Tests inject theirs through the argument instead.
        #[allow(clippy::disallowed_methods)]
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| refuse("the server's clock is before 1970".into()))?;
        return Ok((since.as_micros() as f64, 0.0));
    }
    let now = std::str::from_utf8(arg)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|&t| whole(t))
        .ok_or_else(|| refuse("the time is neither \"\" nor whole microseconds".into()))?;
    Ok((now, INJECTED_SLACK))
}

/// The state one limit evaluated to, to write if the request is admitted.
enum Pending {
    None,
    State(Write),
    Log(Plan, f64),
}

/// What one limit of a request came to, kept until the request is known to be admitted.
struct Outcome {
    /// Whether it writes: admitted with a cost, or charged.
    writes: bool,
    /// What it writes.
    pending: Pending,
    /// Whether a string state keeps the key's expiry (`SET ... XX KEEPTTL`).
    keep: bool,
    /// The string state read, for the undo record.
    read: Option<Vec<u8>>,
}

/// The command: `SPILLWAY.CHECK key... now requests`.
pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() < 3 {
        return Err(RedisError::WrongArity);
    }
    let keys = &args[1..args.len() - 2];
    let (now, ttl_slack) = parse_now(args[args.len() - 2].as_slice())?;
    let requests = parse(args[args.len() - 1].as_slice(), keys.len())?;
    let r = Redis::new(ctx);
    let mut reply = Vec::with_capacity(8 + requests.len() * 8);
    reply.extend_from_slice(&now.to_le_bytes());
    let mut undos: Vec<Vec<u8>> = Vec::new();
    let mut k = 0;
    for req in &requests {
        let charge = lua_mod(req.flags, 8.0) >= CHARGE;
        let mut fresh = true;
        if lua_mod(req.flags, 16.0) >= MARKED {
            fresh = write::set_new(&r, &keys[k], b"1", REPORT_TTL_MS)?;
            k += 1;
        }
        let admit_at = reply.len();
        reply.extend_from_slice(&0f64.to_le_bytes());
        let mut admitted = true;
        let mut pending: Vec<Outcome> = Vec::with_capacity(req.limits.len());
        for (j, limit) in req.limits.iter().enumerate() {
            let key = &keys[k + j];
            let raw = if limit.code == 5 {
                None
            } else {
                // Read through the key API (RM_StringDMA), which turns a small (embstr) value
                // into a raw one in place on each read; that cost is inside the figures of
                // docs/BENCHMARKS.md.
                let open = ctx.open_key(key);
                open.read().ok().flatten().map(<[u8]>::to_vec)
            };
            let mut charged = limit.cost;
            let chg = charge && fresh && limit.code != 5;
            let (six, p): (Six, Pending) = if chg {
                let w = algorithms::charge(limit.code, limit.p, raw.as_deref(), now, limit.cost)
                    .ok_or_else(|| refuse("no charge for this algorithm".into()))?;
                let six = string_admit(limit, Some(&w.state), now)?;
                (six, Pending::State(w))
            } else if (charge && !fresh) || limit.flags >= ADMIT {
                charged = 0.0;
                let six = if limit.code == 5 {
                    log_admit(&r, limit, key.as_slice(), now)?
                } else {
                    string_admit(limit, raw.as_deref(), now)?
                };
                (six, Pending::None)
            } else if limit.code == 5 {
                let (six, plan) = sliding_log::evaluate(
                    &r,
                    limit.p[0],
                    limit.p[1],
                    key.as_slice(),
                    now,
                    limit.cost,
                )?;
                (
                    six,
                    plan.map_or(Pending::None, |(plan, need)| Pending::Log(plan, need)),
                )
            } else {
                let (six, w) =
                    algorithms::evaluate(limit.code, limit.p, raw.as_deref(), now, limit.cost)
                        .ok_or_else(|| refuse("unknown algorithm".into()))?;
                (six, w.map_or(Pending::None, Pending::State))
            };
            if six[0] == 0.0 && lua_mod(limit.flags, 2.0) == ENFORCED {
                admitted = false;
            }
            for v in six {
                reply.extend_from_slice(&v.to_le_bytes());
            }
            let ok = (six[0] == 1.0 && charged > 0.0) || chg;
            let keep = match &p {
                Pending::State(w) => w.held.is_some_and(|h| w.deadline <= h),
                _ => false,
            };
            pending.push(Outcome {
                writes: ok,
                pending: p,
                keep,
                read: raw,
            });
        }
        if charge {
            admitted = fresh;
        }
        let flag: f64 = if admitted { 1.0 } else { 0.0 };
        reply[admit_at..admit_at + 8].copy_from_slice(&flag.to_le_bytes());
        let undo = !charge && lua_mod(req.flags, 4.0) >= UNDO;
        if admitted && (charge || lua_mod(req.flags, 2.0) == CONSUME) {
            let n = req.limits.len();
            for (j, outcome) in pending.iter().enumerate() {
                let name = &keys[k + j];
                let key = name.as_slice();
                let is_log = req.limits[j].code == 5;
                let (mut old, mut old_ttl, mut new) = (Vec::new(), b"0".to_vec(), Vec::new());
                if undo {
                    // The key as it is now (GET, '' for no string, and PTTL). A key no other
                    // limit of the request names is as it was read above (nothing else touched
                    // it since); one named twice may have been written, or deleted by a
                    // sliding log's upgrade, since, so it is read again.
                    if !is_log {
                        let shared = (0..n).any(|jj| jj != j && keys[k + jj].as_slice() == key);
                        if !shared {
                            old = outcome.read.clone().unwrap_or_default();
                        } else if let Ok(Some(b)) = ctx.open_key(name).read() {
                            old = b.to_vec();
                        }
                    }
                    let ttl = match key::pttl(ctx, name) {
                        Some(ttl) => ttl,
                        None => r.read("PTTL", &[key])?.int()?,
                    };
                    old_ttl = ttl.to_string().into_bytes();
                }
                if !outcome.writes {
                    new = old.clone();
                } else {
                    match &outcome.pending {
                        Pending::Log(plan, need) => {
                            let later = (j + 1..n)
                                .any(|jj| keys[k + jj].as_slice() == key && pending[jj].writes);
                            if !later {
                                let px = (*need > now).then(|| px_until(*need, now, ttl_slack));
                                sliding_log::write(&r, key, plan, px)?;
                                (old, new) = sliding_log::undo(plan);
                            }
                        }
                        Pending::State(w) => {
                            new = put(&r, name, w, outcome.keep, now, ttl_slack)?;
                        }
                        // Lua would fail on a nil state here; no path leads to it.
                        Pending::None => return Err(refuse("nothing to write".into())),
                    }
                }
                if undo {
                    undos.extend([old, old_ttl, new]);
                }
            }
        }
        k += req.limits.len();
    }
    if undos.is_empty() {
        return Ok(RedisValue::StringBuffer(reply));
    }
    let mut out = Vec::with_capacity(1 + undos.len());
    out.push(RedisValue::StringBuffer(reply));
    out.extend(undos.into_iter().map(RedisValue::StringBuffer));
    Ok(RedisValue::Array(out))
}

/// Writes a state (Lua `put`): the bytes written, empty for a delete.
fn put(
    r: &Redis,
    key: &RedisString,
    w: &Write,
    keep: bool,
    now: f64,
    ttl_slack: f64,
) -> Result<Vec<u8>, RedisError> {
    if w.need <= now {
        write::delete(r, key)?;
        return Ok(Vec::new());
    }
    if keep && write::set_keeping_ttl(r, key, &w.state)? {
        return Ok(w.state.clone());
    }
    // Lua's `int`: the double converted to a whole number.
    let px = px_until(w.deadline, now, ttl_slack) as i64;
    write::set_with_px(r, key, &w.state, px)?;
    Ok(w.state.clone())
}

/// A metered limit's admission (Lua `admit`): the zero-cost look when it leaves a unit, else
/// the cost-1 denial; `eval` evaluates the limit at a cost.
fn admit(eval: impl Fn(f64) -> Result<Six, RedisError>) -> Result<Six, RedisError> {
    let six = eval(0.0)?;
    if six[0] != 1.0 || six[2] < 1.0 {
        return eval(1.0);
    }
    Ok(six)
}

/// [`admit`] for a string-state limit whose stored state is `raw`.
fn string_admit(limit: &Limit, raw: Option<&[u8]>, now: f64) -> Result<Six, RedisError> {
    admit(|cost| {
        algorithms::evaluate(limit.code, limit.p, raw, now, cost)
            .map(|(six, _)| six)
            .ok_or_else(|| refuse("unknown algorithm".into()))
    })
}

/// [`admit`] for the sliding log, which reads its own key.
fn log_admit(r: &Redis, limit: &Limit, key: &[u8], now: f64) -> Result<Six, RedisError> {
    admit(|cost| {
        sliding_log::evaluate(r, limit.p[0], limit.p[1], key, now, cost).map(|(six, _)| six)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(numbers: &[f64]) -> Vec<u8> {
        numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    #[test]
    fn well_formed_requests_parse() {
        let b = blob(&[1.0, 1.0, 3.0, 10.0, 1e6, 0.0, 1.0, 1.0, 9.0, 0.0]);
        // The second request is a marked one of no limits: its marker is a key.
        let reqs = parse(&b, 2).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].limits[0].code, 3);
        assert!(reqs[1].limits.is_empty());
    }

    #[test]
    fn malformed_requests_are_refused() {
        // Cut short, too many limits, unknown code, zero window, fraction, key count.
        for (numbers, keys) in [
            (vec![1.0], 0),
            (vec![1.0, 2.0, 3.0, 10.0, 1e6, 0.0, 1.0, 1.0], 2),
            (vec![1.0, 1.0, 7.0, 10.0, 1e6, 0.0, 1.0, 1.0], 1),
            (vec![1.0, 1.0, 3.0, 10.0, 0.0, 0.0, 1.0, 1.0], 1),
            (vec![1.0, 1.0, 3.0, 10.5, 1e6, 0.0, 1.0, 1.0], 1),
            (vec![1.0, 1.0, 3.0, f64::NAN, 1e6, 0.0, 1.0, 1.0], 1),
            (vec![1.0, 1.0, 3.0, 10.0, 1e6, 0.0, 1.0, 1.0], 2),
        ] {
            assert!(parse(&blob(&numbers), keys).is_err(), "{numbers:?}");
        }
        assert!(parse(&[0u8; 7], 0).is_err());
    }
}
