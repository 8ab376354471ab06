//! The sliding log (code 5), ported from `lua/sliding_log.lua`: a sorted set at the limit's
//! key, one member `<end>:<n>` per admitted timestamp, scored by the timestamp. It reads and
//! writes the set through the same commands the Lua sends, so a log written here reads the
//! same in Lua and back.

use crate::algorithms::Six;
use crate::num::{digits, div, int, match_digits, max};
use crate::redis::{Redis, Reply};
use redis_module::RedisError;

/// One entry: its timestamp, the running end through it, its units and its member.
struct Entry {
    at: f64,
    end: f64,
    n: f64,
    member: Vec<u8>,
}

fn bad_entry() -> RedisError {
    RedisError::Str("ERR spillway.check: a sliding log entry is not <end>:<n>")
}

/// An entry from its member and score (Lua `log_entry`).
fn entry(member: &Reply, score: Option<&Reply>) -> Result<Entry, RedisError> {
    let member = member.bytes()?.to_vec();
    let [end, n] = match_digits::<2>(&member, b"", b':').ok_or_else(bad_entry)?;
    let at = match score {
        Some(s) => std::str::from_utf8(s.bytes()?)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(bad_entry)?,
        None => 0.0,
    };
    Ok(Entry { at, end, n, member })
}

/// The first entry of a `... WITHSCORES` reply, if any.
fn first_scored(reply: Reply) -> Result<Option<Entry>, RedisError> {
    let items = reply.array()?;
    match items.as_slice() {
        [] => Ok(None),
        [member, score, ..] => entry(member, Some(score)).map(Some),
        _ => Err(bad_entry()),
    }
}

/// What an admission writes: trim at `edge`, drop the replaced newest entry, add `member` at
/// `at` (Lua's plan).
pub struct Plan {
    edge: f64,
    drop: Option<Vec<u8>>,
    at: f64,
    member: Option<Vec<u8>>,
}

/// Rewrites the text log of earlier versions as the sorted set (Lua `log_upgrade`).
fn upgrade(r: &Redis, key: &[u8]) -> Result<(), RedisError> {
    let raw = r.read("GET", &[key])?;
    let ttl = r.read("PTTL", &[key])?.int()?;
    r.write("DEL", &[key])?;
    let raw = match raw {
        Reply::Bytes(b) if b.first() == Some(&b'L') => b,
        _ => return Ok(()),
    };
    let mut total = 0.0;
    // The Lua's gmatch of ';(%d+),(%d+)': every ';' followed by digits, ',' and digits.
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b';' {
            let a_len = raw[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let comma = i + 1 + a_len;
            if a_len > 0 && raw.get(comma) == Some(&b',') {
                let n_len = raw[comma + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if n_len > 0 {
                    let a = &raw[i + 1..comma];
                    let n = &raw[comma + 1..comma + 1 + n_len];
                    total += digits(n).ok_or_else(bad_entry)?;
                    let mut member = int(total).into_bytes();
                    member.push(b':');
                    member.extend_from_slice(n);
                    r.write("ZADD", &[key, a, &member])?;
                    i = comma + 1 + n_len;
                    continue;
                }
            }
        }
        i += 1;
    }
    if ttl > 0 && r.read("EXISTS", &[key])?.int()? == 1 {
        r.write("PEXPIRE", &[key, ttl.to_string().as_bytes()])?;
    }
    Ok(())
}

/// Evaluates the log at `key` (Lua `ALG[5]`): the decision and, when admitted, the plan and
/// the time the log reads like a fresh key from.
pub fn evaluate(
    r: &Redis,
    limit: f64,
    window: f64,
    key: &[u8],
    now: f64,
    cost: f64,
) -> Result<(Six, Option<(Plan, f64)>), RedisError> {
    let newest = b"0" as &[u8];
    let top = match r.read("ZREVRANGE", &[key, newest, newest, b"WITHSCORES"]) {
        Ok(top) => top,
        Err(_) => {
            upgrade(r, key)?;
            r.read("ZREVRANGE", &[key, newest, newest, b"WITHSCORES"])?
        }
    };
    let edge = now - window;
    let edge_text = int(edge);
    let mut last = None;
    let mut first = None;
    let mut used = 0.0;
    if let Some(top) = first_scored(top)? {
        if top.at > edge {
            let from = format!("({edge_text}");
            let f = r.read(
                "ZRANGEBYSCORE",
                &[
                    key,
                    from.as_bytes(),
                    b"+inf",
                    b"WITHSCORES",
                    b"LIMIT",
                    b"0",
                    b"1",
                ],
            )?;
            let f = first_scored(f)?.ok_or_else(bad_entry)?;
            used = top.end - (f.end - f.n);
            last = Some(top);
            first = Some(f);
        }
    }
    let mut reset = 0.0;
    if let Some(last) = &last {
        reset = max(last.at + window - now, 0.0);
    }
    let left = max(limit - used, 0.0);
    if cost > limit {
        return Ok(([0.0, limit, left, reset, -1.0, 2.0], None));
    }
    if used + cost > limit {
        let first = first.ok_or_else(bad_entry)?;
        let target = first.end - first.n + used + cost - limit;
        let mut lo = r
            .read("ZCOUNT", &[key, b"-inf", edge_text.as_bytes()])?
            .int()? as f64;
        let mut hi = r.read("ZCARD", &[key])?.int()? as f64 - 1.0;
        while lo < hi {
            let mid = div(lo + hi, 2.0);
            let at = int(mid);
            let m = r
                .read("ZRANGE", &[key, at.as_bytes(), at.as_bytes()])?
                .array()?;
            let m = entry(m.first().ok_or_else(bad_entry)?, None)?;
            if m.end >= target {
                hi = mid;
            } else {
                lo = mid + 1.0;
            }
        }
        let lo = int(lo);
        let hit = r.read(
            "ZRANGE",
            &[key, lo.as_bytes(), lo.as_bytes(), b"WITHSCORES"],
        )?;
        let hit = first_scored(hit)?.ok_or_else(bad_entry)?;
        return Ok(([0.0, limit, left, reset, hit.at + window - now, 1.0], None));
    }
    let mut plan = Plan {
        edge,
        drop: None,
        at: 0.0,
        member: None,
    };
    let mut r_at = reset;
    if cost > 0.0 {
        match &last {
            Some(last) if last.at >= now => {
                plan.drop = Some(last.member.clone());
                plan.at = last.at;
                plan.member =
                    Some(format!("{}:{}", int(last.end + cost), int(last.n + cost)).into_bytes());
            }
            _ => {
                plan.at = now;
                let end = last.as_ref().map_or(0.0, |l| l.end);
                plan.member = Some(format!("{}:{}", int(end + cost), int(cost)).into_bytes());
            }
        }
        r_at = plan.at + window - now;
    }
    Ok((
        [1.0, limit, limit - used - cost, r_at, -1.0, 0.0],
        Some((plan, now + r_at)),
    ))
}

/// Applies an admission's plan (Lua `log_write`); `px` None deletes the emptied log.
pub fn write(r: &Redis, key: &[u8], plan: &Plan, px: Option<f64>) -> Result<(), RedisError> {
    let Some(px) = px else {
        r.write("DEL", &[key])?;
        return Ok(());
    };
    r.write(
        "ZREMRANGEBYSCORE",
        &[key, b"-inf", int(plan.edge).as_bytes()],
    )?;
    if let Some(drop) = &plan.drop {
        r.write("ZREM", &[key, drop])?;
    }
    if let Some(member) = &plan.member {
        r.write("ZADD", &[key, int(plan.at).as_bytes(), member])?;
    }
    r.write("PEXPIRE", &[key, int(px).as_bytes()])?;
    Ok(())
}

/// What a compensating refund needs (Lua `log_undo`): the entry the call replaced and the one
/// it left newest.
pub fn undo(plan: &Plan) -> (Vec<u8>, Vec<u8>) {
    let Some(member) = &plan.member else {
        return (Vec::new(), Vec::new());
    };
    let at = int(plan.at);
    let mut before = b"Z".to_vec();
    if let Some(drop) = &plan.drop {
        before.extend_from_slice(at.as_bytes());
        before.push(b' ');
        before.extend_from_slice(drop);
    }
    let mut after = format!("Z{at} ").into_bytes();
    after.extend_from_slice(member);
    (before, after)
}
