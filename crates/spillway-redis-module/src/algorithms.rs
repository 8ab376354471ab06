//! The five algorithms kept in a string state (token bucket, GCRA, fixed window, sliding
//! window, leaky bucket), ported from `lua/<algorithm>.lua` line for line: the same doubles,
//! the same order of operations, the same packed state bytes (a tag byte, then little-endian
//! doubles, the last one the key's deadline), and the same reading of the older forms (the
//! packed state without a deadline, and the text form). A key written here reads the same in
//! Lua and back. The sliding log keeps a sorted set and lives in [`crate::sliding_log`].

use crate::num::{
    ceil_div, deadline, div, divmod, lua_mod, match_digits, max, max_used, min, muldiv, rescale,
    MAX_SCALED,
};

/// A decision's six numbers: allowed (1/0), limit, remaining, reset, retry (-1 for none),
/// denial (0 allowed, 1 over the limit, 2 cost past the limit).
pub type Six = [f64; 6];

/// What an admission writes: the packed state, when it reads like a fresh key (`need`), the
/// deadline packed at its end, and the deadline the state read was stored with.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub state: Vec<u8>,
    pub need: f64,
    pub deadline: f64,
    pub held: Option<f64>,
}

/// An evaluation: the decision, and the write when admitted.
pub type Outcome = (Six, Option<Write>);

/// The packed form: `tag`, then each number as a little-endian double.
fn pack(tag: u8, numbers: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * numbers.len());
    out.push(tag);
    for n in numbers {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

/// The `N` doubles after the tag byte of `raw`, when `raw` is exactly that long and tagged
/// `tag`.
fn unpack<const N: usize>(raw: &[u8], tag: u8) -> Option<[f64; N]> {
    if raw.len() != 1 + 8 * N || raw[0] != tag {
        return None;
    }
    let mut out = [0.0; N];
    for (i, slot) in out.iter_mut().enumerate() {
        let at = 1 + 8 * i;
        *slot = f64::from_le_bytes(raw[at..at + 8].try_into().ok()?);
    }
    Some(out)
}

/// A state of `N` numbers: packed with its deadline, packed without, or the text form
/// `<TAG>:<n>:<n>...`; the numbers and the deadline (None without one). Anything else reads as
/// a fresh key.
fn read<const N: usize, const M: usize>(
    raw: &[u8],
    tag: u8,
    text: &[u8],
) -> Option<([f64; N], Option<f64>)> {
    if let Some(all) = unpack::<M>(raw, tag) {
        let mut numbers = [0.0; N];
        numbers.copy_from_slice(&all[..N]);
        return Some((numbers, Some(all[N])));
    }
    if let Some(numbers) = unpack::<N>(raw, tag) {
        return Some((numbers, None));
    }
    match_digits::<N>(raw, text, b':').map(|n| (n, None))
}

/// A denial or a look: six numbers, nothing written.
fn only(six: Six) -> Outcome {
    (six, None)
}

// ---- token bucket (code 1) -------------------------------------------------------------

fn tb_max_debt(rt: f64, capacity: f64) -> f64 {
    max_used(rt, capacity) - capacity
}

/// Tokens, debt and the deadline read (Lua `tb_standing`).
fn tb_standing(
    rt: f64,
    um: f64,
    burst: f64,
    raw: Option<&[u8]>,
    now: f64,
) -> (f64, f64, Option<f64>) {
    let capacity = um * burst;
    let Some(([mut t, mut l, u, b], held)) = raw.and_then(|r| read::<4, 5>(r, b't', b"T:")) else {
        return (capacity, 0.0, None);
    };
    if u != um || b != burst {
        let mut used = max(u * b - t, 0.0);
        let most = max_used(rt, capacity);
        if u != um {
            used = rescale(used, u, um, most, true);
        }
        used = min(used, most);
        if used <= capacity {
            t = capacity - used;
        } else {
            let extra = used - capacity;
            let q = ceil_div(extra, rt);
            t = rt - (extra - (q - 1.0) * rt);
            l += q;
        }
    }
    if l > now {
        let owed = (l - now) * rt;
        if t >= owed {
            return (min(t - owed, capacity), 0.0, held);
        }
        return (0.0, min(owed - t, tb_max_debt(rt, capacity)), held);
    }
    let deficit = capacity - t;
    let elapsed = now - l;
    if deficit <= 0.0 || elapsed >= ceil_div(deficit, rt) {
        return (capacity, 0.0, held);
    }
    (t + elapsed * rt, 0.0, held)
}

/// The packed state holding `tokens` or owing `debt` (Lua `tb_state`).
#[allow(clippy::too_many_arguments)]
fn tb_state(
    um: f64,
    burst: f64,
    rt: f64,
    tokens: f64,
    debt: f64,
    now: f64,
    need: f64,
    held: Option<f64>,
) -> Write {
    let d = deadline(need, held, now);
    let state = if debt == 0.0 {
        pack(b't', &[tokens, now, um, burst, d])
    } else {
        let q = ceil_div(debt, rt);
        pack(b't', &[rt - (debt - (q - 1.0) * rt), now + q, um, burst, d])
    };
    Write {
        state,
        need,
        deadline: d,
        held,
    }
}

fn token_bucket(rt: f64, um: f64, burst: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Outcome {
    let capacity = um * burst;
    let (tokens, debt, held) = tb_standing(rt, um, burst, raw, now);
    let full_in = ceil_div(capacity - tokens + debt, rt);
    if cost > burst {
        return only([0.0, burst, div(tokens, um), full_in, -1.0, 2.0]);
    }
    let need = um * cost;
    if debt == 0.0 && tokens >= need {
        let left = tokens - need;
        let left_full = ceil_div(capacity - left, rt);
        let w = tb_state(um, burst, rt, left, 0.0, now, now + left_full, held);
        return ([1.0, burst, div(left, um), left_full, -1.0, 0.0], Some(w));
    }
    only([
        0.0,
        burst,
        div(tokens, um),
        full_in,
        ceil_div(need - min(tokens, need) + debt, rt),
        1.0,
    ])
}

fn token_bucket_charge(
    rt: f64,
    um: f64,
    burst: f64,
    raw: Option<&[u8]>,
    now: f64,
    cost: f64,
) -> Write {
    let capacity = um * burst;
    let (mut tokens, mut debt, held) = tb_standing(rt, um, burst, raw, now);
    let need = min(um * cost, MAX_SCALED);
    let max_debt = tb_max_debt(rt, capacity);
    if debt == 0.0 && tokens >= need {
        tokens -= need;
    } else if need - min(tokens, need) >= max_debt - min(debt, max_debt) {
        (tokens, debt) = (0.0, max_debt);
    } else {
        (tokens, debt) = (0.0, debt + need - min(tokens, need));
    }
    let full_in = ceil_div(capacity - tokens + debt, rt);
    tb_state(um, burst, rt, tokens, debt, now, now + full_in, held)
}

// ---- GCRA (code 2) ---------------------------------------------------------------------

fn gcra_remaining(window: f64, um: f64, debt: f64) -> f64 {
    div(max(window - debt, 0.0), um)
}

/// The debt at `now` in scaled units and the deadline read (Lua `gcra_debt`).
fn gcra_debt(per: f64, um: f64, window: f64, raw: Option<&[u8]>, now: f64) -> (f64, Option<f64>) {
    let Some(([t, r, p, u], held)) = raw.and_then(|r| read::<4, 5>(r, b'g', b"G:")) else {
        return (0.0, None);
    };
    let mut debt = 0.0;
    if t > now {
        debt = (t - now) * p + r;
    } else if t == now {
        debt = r;
    }
    if p != per || u != um {
        let most = max_used(per, window);
        if u != um {
            debt = rescale(debt, u, um, most, true);
        } else if debt > most {
            debt = most;
        }
    }
    (debt, held)
}

fn gcra(per: f64, um: f64, burst: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Outcome {
    let window = um * burst;
    let (debt, held) = gcra_debt(per, um, window, raw, now);
    if cost > burst {
        return only([
            0.0,
            burst,
            gcra_remaining(window, um, debt),
            ceil_div(debt, per),
            -1.0,
            2.0,
        ]);
    }
    let need = um * cost;
    if need <= window - debt {
        let nd = debt + need;
        let (q, rem) = divmod(nd, per);
        let fresh_in = ceil_div(nd, per);
        let d = deadline(now + fresh_in, held, now);
        let state = pack(b'g', &[now + q, rem, per, um, d]);
        let w = Write {
            state,
            need: now + fresh_in,
            deadline: d,
            held,
        };
        return (
            [
                1.0,
                burst,
                gcra_remaining(window, um, nd),
                fresh_in,
                -1.0,
                0.0,
            ],
            Some(w),
        );
    }
    only([
        0.0,
        burst,
        gcra_remaining(window, um, debt),
        ceil_div(debt, per),
        ceil_div(need - (window - debt), per),
        1.0,
    ])
}

fn gcra_charge(per: f64, um: f64, burst: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Write {
    let window = um * burst;
    let (debt, held) = gcra_debt(per, um, window, raw, now);
    let need = min(um * cost, MAX_SCALED);
    let most = max_used(per, window);
    let used = if need >= most - min(debt, most) {
        most
    } else {
        debt + need
    };
    let (q, rem) = divmod(used, per);
    let fresh_in = ceil_div(used, per);
    let d = deadline(now + fresh_in, held, now);
    let state = pack(b'g', &[now + q, rem, per, um, d]);
    Write {
        state,
        need: now + fresh_in,
        deadline: d,
        held,
    }
}

// ---- fixed window (code 3) -------------------------------------------------------------

/// Where the window counted from `start` ends (Lua `fw_end`, `FixedWindow::end_of`).
fn fw_end(start: f64, window: f64) -> f64 {
    ceil_div(start + window, window) * window
}

/// The counted window's start and count at `now`, and the deadline read.
fn fw_window(window: f64, raw: Option<&[u8]>, now: f64) -> (f64, f64, Option<f64>) {
    let (_, off) = divmod(now, window);
    let (mut start, mut count) = (now - off, 0.0);
    let mut held = None;
    if let Some(([s, c], h)) = raw.and_then(|r| read::<2, 3>(r, b'f', b"F:")) {
        held = h;
        if fw_end(s, window) > now {
            (start, count) = (s, c);
        }
    }
    (start, count, held)
}

fn fixed_window(limit: f64, window: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Outcome {
    let (start, count, held) = fw_window(window, raw, now);
    let finish = fw_end(start, window);
    let mut reset = max(finish - now, 0.0);
    let left = max(limit - count, 0.0);
    if cost > limit {
        if count == 0.0 {
            reset = 0.0;
        }
        return only([0.0, limit, left, reset, -1.0, 2.0]);
    }
    if count + cost <= limit {
        let used = count + cost;
        if used == 0.0 {
            reset = 0.0;
        }
        let d = deadline(finish, held, now);
        let state = pack(b'f', &[start, used, d]);
        let w = Write {
            state,
            need: finish,
            deadline: d,
            held,
        };
        return ([1.0, limit, limit - used, reset, -1.0, 0.0], Some(w));
    }
    only([0.0, limit, left, reset, reset, 1.0])
}

fn fixed_window_charge(window: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Write {
    let (start, count, held) = fw_window(window, raw, now);
    let count = min(count + cost, MAX_SCALED);
    let finish = fw_end(start, window);
    let d = deadline(finish, held, now);
    Write {
        state: pack(b'f', &[start, count, d]),
        need: finish,
        deadline: d,
        held,
    }
}

// ---- sliding window (code 4) -----------------------------------------------------------

fn sw_reset(w: f64, start: f64, prev: f64, curr: f64, now: f64) -> f64 {
    if curr > 0.0 {
        start + 2.0 * w - now
    } else if prev > 0.0 {
        start + w - now
    } else {
        0.0
    }
}

fn sw_free_from(w: f64, old: f64, room: f64) -> f64 {
    if old == 0.0 || room >= old {
        return 0.0;
    }
    let (q, _) = muldiv(room, w, old);
    w - q
}

/// The current window's start, the previous and current counts, and the deadline read.
fn sw_windows(w: f64, raw: Option<&[u8]>, now: f64) -> (f64, f64, f64, Option<f64>) {
    let (_, off) = divmod(now, w);
    let (mut start, mut prev, mut curr) = (now - off, 0.0, 0.0);
    let mut held = None;
    if let Some(([s, p, c], h)) = raw.and_then(|r| read::<3, 4>(r, b'w', b"W:")) {
        held = h;
        if p > 0.0 || c > 0.0 {
            if s + w > now {
                (start, prev, curr) = (s, p, c);
            } else if s + 2.0 * w > now {
                (start, prev) = (s + w, c);
            }
        }
    }
    (start, prev, curr, held)
}

fn sliding_window(limit: f64, w: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Outcome {
    let (start, prev, curr, held) = sw_windows(w, raw, now);
    let elapsed = max(now - start, 0.0);
    let (mut pq, pr) = muldiv(prev, w - elapsed, w);
    if pr > 0.0 {
        pq += 1.0;
    }
    let left = max(limit - curr - pq, 0.0);
    if cost > limit {
        return only([
            0.0,
            limit,
            left,
            sw_reset(w, start, prev, curr, now),
            -1.0,
            2.0,
        ]);
    }
    if pq <= limit - curr - cost {
        let next = curr + cost;
        let reset = sw_reset(w, start, prev, next, now);
        let d = deadline(now + reset, held, now);
        let state = pack(b'w', &[start, prev, next, d]);
        let wr = Write {
            state,
            need: now + reset,
            deadline: d,
            held,
        };
        return (
            [1.0, limit, max(limit - next - pq, 0.0), reset, -1.0, 0.0],
            Some(wr),
        );
    }
    let mut retry_at = None;
    if curr + cost <= limit {
        let e = sw_free_from(w, prev, limit - curr - cost);
        if e < w {
            retry_at = Some(start + e);
        }
    }
    let retry_at = retry_at.unwrap_or_else(|| start + w + sw_free_from(w, curr, limit - cost));
    only([
        0.0,
        limit,
        left,
        sw_reset(w, start, prev, curr, now),
        retry_at - now,
        1.0,
    ])
}

fn sliding_window_charge(w: f64, raw: Option<&[u8]>, now: f64, cost: f64) -> Write {
    let (start, prev, curr, held) = sw_windows(w, raw, now);
    let curr = min(curr + cost, 4_294_967_295.0);
    let need = now + sw_reset(w, start, prev, curr, now);
    let d = deadline(need, held, now);
    Write {
        state: pack(b'w', &[start, prev, curr, d]),
        need,
        deadline: d,
        held,
    }
}

// ---- leaky bucket (code 6) -------------------------------------------------------------

fn lb_space(cap: f64, um: f64, level: f64) -> f64 {
    div(max(cap - level, 0.0), um)
}

/// The level at `now`, the time it is counted from, and the deadline read (Lua `lb_level`).
fn lb_level(rt: f64, um: f64, cap: f64, raw: Option<&[u8]>, now: f64) -> (f64, f64, Option<f64>) {
    let Some(([mut l, t, u], held)) = raw.and_then(|r| read::<3, 4>(r, b'b', b"B:")) else {
        return (0.0, now, None);
    };
    if u != um {
        l = rescale(l, u, um, max_used(rt, cap), true);
    }
    let elapsed = max(now - t, 0.0);
    if elapsed >= ceil_div(l, rt) {
        return (0.0, max(now, t), held);
    }
    (l - elapsed * rt, max(now, t), held)
}

fn leaky_bucket(
    rt: f64,
    um: f64,
    capacity: f64,
    raw: Option<&[u8]>,
    now: f64,
    cost: f64,
) -> Outcome {
    let cap = um * capacity;
    let (level, last, held) = lb_level(rt, um, cap, raw, now);
    if cost > capacity {
        return only([
            0.0,
            capacity,
            lb_space(cap, um, level),
            ceil_div(level, rt),
            -1.0,
            2.0,
        ]);
    }
    let need = um * cost;
    if need <= cap - level {
        let poured = level + need;
        let empty_in = ceil_div(poured, rt);
        let d = deadline(last + empty_in, held, now);
        let state = pack(b'b', &[poured, last, um, d]);
        let w = Write {
            state,
            need: last + empty_in,
            deadline: d,
            held,
        };
        return (
            [
                1.0,
                capacity,
                lb_space(cap, um, poured),
                empty_in,
                -1.0,
                0.0,
            ],
            Some(w),
        );
    }
    only([
        0.0,
        capacity,
        lb_space(cap, um, level),
        ceil_div(level, rt),
        ceil_div(need - (cap - level), rt),
        1.0,
    ])
}

fn leaky_bucket_charge(
    rt: f64,
    um: f64,
    capacity: f64,
    raw: Option<&[u8]>,
    now: f64,
    cost: f64,
) -> Write {
    let cap = um * capacity;
    let (level, last, held) = lb_level(rt, um, cap, raw, now);
    let need = min(um * cost, MAX_SCALED);
    let max_level = max_used(rt, cap);
    let level = if need >= max_level - min(level, max_level) {
        max_level
    } else {
        level + need
    };
    let empty_in = ceil_div(level, rt);
    let d = deadline(last + empty_in, held, now);
    Write {
        state: pack(b'b', &[level, last, um, d]),
        need: last + empty_in,
        deadline: d,
        held,
    }
}

// ---- dispatch --------------------------------------------------------------------------

/// One of the five string-state algorithms by its code (Lua `ALG[code]`); `None` for the
/// sliding log (5) and unknown codes.
pub fn evaluate(code: u8, p: [f64; 3], raw: Option<&[u8]>, now: f64, cost: f64) -> Option<Outcome> {
    let [p1, p2, p3] = p;
    Some(match code {
        1 => token_bucket(p1, p2, p3, raw, now, cost),
        2 => gcra(p1, p2, p3, raw, now, cost),
        3 => fixed_window(p1, p2, raw, now, cost),
        4 => sliding_window(p1, p2, raw, now, cost),
        6 => leaky_bucket(p1, p2, p3, raw, now, cost),
        _ => return None,
    })
}

/// A charge after the fact by code (Lua `CHG[code]`): the state always written. `None` for
/// the sliding log, which has none.
pub fn charge(code: u8, p: [f64; 3], raw: Option<&[u8]>, now: f64, cost: f64) -> Option<Write> {
    let [p1, p2, p3] = p;
    Some(match code {
        1 => token_bucket_charge(p1, p2, p3, raw, now, cost),
        2 => gcra_charge(p1, p2, p3, raw, now, cost),
        3 => fixed_window_charge(p2, raw, now, cost),
        4 => sliding_window_charge(p2, raw, now, cost),
        6 => leaky_bucket_charge(p1, p2, p3, raw, now, cost),
        _ => return None,
    })
}

/// Whether `x` is a whole number the Lua side holds exactly (the fuzzed bytes of a malformed
/// call are refused before any of the above runs on them).
pub fn whole(x: f64) -> bool {
    x.is_finite() && (0.0..=MAX_SCALED).contains(&x) && lua_mod(x, 1.0) == 0.0
}

/// Whether `x` is a finite whole number that is not negative, of any size: what a limit's
/// parameters and cost may be (the Lua takes them as they come; the arithmetic caps them).
pub fn any_whole(x: f64) -> bool {
    x.is_finite() && x >= 0.0 && lua_mod(x, 1.0) == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_window_counts_and_denies() {
        let p = [2.0, 1_000_000.0, 0.0];
        let (six, w) = evaluate(3, p, None, 5_000_000.0, 1.0).unwrap();
        assert_eq!(six, [1.0, 2.0, 1.0, 1_000_000.0, -1.0, 0.0]);
        let w = w.unwrap();
        assert_eq!(w.state.len(), 25);
        let (six, _) = evaluate(3, p, Some(&w.state), 5_100_000.0, 2.0).unwrap();
        assert_eq!(six, [0.0, 2.0, 1.0, 900_000.0, 900_000.0, 1.0]);
    }

    #[test]
    fn text_and_deadline_free_states_still_read() {
        let p = [10.0, 1_000_000.0, 0.0];
        let text = evaluate(3, p, Some(b"F:5000000:4"), 5_000_000.0, 0.0)
            .unwrap()
            .0;
        let packed = pack(b'f', &[5_000_000.0, 4.0]);
        let short = evaluate(3, p, Some(&packed), 5_000_000.0, 0.0).unwrap().0;
        assert_eq!(text, short);
        assert_eq!(text[2], 6.0);
        // Another algorithm's tag reads as a fresh key.
        let other = pack(b'w', &[5_000_000.0, 4.0]);
        assert_eq!(
            evaluate(3, p, Some(&other), 5_000_000.0, 0.0).unwrap().0[2],
            10.0
        );
    }
}
