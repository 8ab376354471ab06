//! The Lua code's arithmetic on doubles, step for step (see `lua/common.lua`).
//!
//! The Lua library computes with Lua 5.1 numbers, which are doubles; the module must give the
//! same bits, so each helper here repeats the Lua expression in the same order, including the
//! floors written as `q - q % 1` and Lua's `%` (`a - floor(a / b) * b`). Nothing here is
//! rewritten into "equivalent" integer arithmetic: the two sides would drift apart on the
//! first value where the equivalence does not hold.

/// 2^53, the largest amount any state holds.
pub const MAX_SCALED: f64 = 9_007_199_254_740_992.0;
/// Ten years in microseconds: the longest a debt may take to repay.
pub const MAX_WINDOW: f64 = 315_360_000_000_000.0;
/// The least slack a new deadline gets, in microseconds: one second.
const MIN_SLACK: f64 = 1_000_000.0;

/// Lua's `a % b` on doubles.
pub fn lua_mod(a: f64, b: f64) -> f64 {
    a - (a / b).floor() * b
}

/// `q - q % 1`: the floor as the Lua writes it.
fn floor_of(q: f64) -> f64 {
    q - lua_mod(q, 1.0)
}

/// Quotient and remainder of `a / b` (Lua `divmod`).
pub fn divmod(a: f64, b: f64) -> (f64, f64) {
    let q = floor_of(a / b);
    (q, a - q * b)
}

/// `a / b` rounded up (Lua `ceil_div`).
pub fn ceil_div(a: f64, b: f64) -> f64 {
    let q = floor_of(a / b);
    if a - q * b > 0.0 {
        q + 1.0
    } else {
        q
    }
}

/// `floor(a / b)` (Lua `div`).
pub fn div(a: f64, b: f64) -> f64 {
    floor_of(a / b)
}

/// Lua `min`: `a` when it is less, else `b` (so a NaN picks `b`, as in Lua).
pub fn min(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}

/// Lua `max`: `a` when it is more, else `b`.
pub fn max(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// The PX (milliseconds) of a key that must live until `deadline` (microseconds) from `now`,
/// plus `slack` milliseconds (Lua `px_until`).
pub fn px_until(deadline: f64, now: f64, slack: f64) -> f64 {
    ceil_div(deadline - now, 1000.0) + 1.0 + slack
}

/// `floor(a * b / c)` and its remainder without forming `a * b`, by binary long
/// multiplication over the bits `top..=0` of `a` (Lua `muldiv_bits`).
pub fn muldiv_bits(mut a: f64, b: f64, c: f64, top: i32) -> (f64, f64) {
    let (bq, br) = divmod(b, c);
    let (mut q, mut r) = (0.0, 0.0);
    for i in (0..=top).rev() {
        q *= 2.0;
        if r >= c - r {
            r -= c - r;
            q += 1.0;
        } else {
            r += r;
        }
        let bit = 2f64.powi(i);
        if a >= bit {
            a -= bit;
            q += bq;
            if br >= c - r {
                r = br - (c - r);
                q += 1.0;
            } else {
                r += br;
            }
        }
    }
    (q, r)
}

/// [`muldiv_bits`] for `a < 2^32` (Lua `muldiv`).
pub fn muldiv(a: f64, b: f64, c: f64) -> (f64, f64) {
    muldiv_bits(a, b, c, 31)
}

/// An amount in units of `from` per token, in units of `to`, capped at `cap` (Lua `rescale`).
pub fn rescale(x: f64, from: f64, to: f64, cap: f64, up: bool) -> f64 {
    if div(x, from) >= cap / to {
        return cap;
    }
    let (mut q, r) = muldiv_bits(x, to, from, 53);
    if up && r > 0.0 {
        q += 1.0;
    }
    if q > cap {
        return cap;
    }
    q
}

/// The most a bucket key may have used after a charge after the fact (Lua `max_used`).
pub fn max_used(rt: f64, capacity: f64) -> f64 {
    min(MAX_SCALED, max(capacity, MAX_WINDOW * rt))
}

/// The deadline stored with a state that reads like a fresh key from `need` on, on a key
/// known to live until `held` (Lua `deadline`).
pub fn deadline(need: f64, held: Option<f64>, now: f64) -> f64 {
    if let Some(held) = held {
        if need <= held {
            return held;
        }
    }
    let mut slack = (need - now) / 4.0;
    if slack < MIN_SLACK {
        slack = MIN_SLACK;
    }
    need + slack - lua_mod(slack, 1.0)
}

/// Lua `int`: `string.format('%d', x)`, which converts the double to a C `long` first.
pub fn int(x: f64) -> String {
    (x as i64).to_string()
}

/// Lua `tonumber` on a run of decimal digits (the text states and the sliding log's
/// members): the correctly rounded double, as Lua's `strtod` gives.
pub fn digits(text: &[u8]) -> Option<f64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Splits `text` at `sep` into exactly `N` runs of digits after the `prefix` (the Lua patterns
/// `^F:(%d+):(%d+)$` and the like), as numbers.
pub fn match_digits<const N: usize>(text: &[u8], prefix: &[u8], sep: u8) -> Option<[f64; N]> {
    let rest = text.strip_prefix(prefix)?;
    let mut out = [0.0; N];
    let mut parts = rest.split(|&b| b == sep);
    for slot in &mut out {
        *slot = digits(parts.next()?)?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_and_remainders_match_lua() {
        assert_eq!(divmod(17.0, 5.0), (3.0, 2.0));
        assert_eq!(ceil_div(17.0, 5.0), 4.0);
        assert_eq!(ceil_div(15.0, 5.0), 3.0);
        assert_eq!(lua_mod(-1.5, 1.0), 0.5);
        assert_eq!(px_until(2_500.0, 0.0, 0.0), 4.0);
    }

    #[test]
    fn muldiv_is_exact_past_two_to_the_53() {
        // 2^40 * 3^20 / 7 would lose bits as a double product.
        let (a, b, c) = (2f64.powi(40), 3_486_784_401.0, 7.0);
        let exact = (2u128.pow(40) * 3_486_784_401u128) / 7;
        let rem = (2u128.pow(40) * 3_486_784_401u128) % 7;
        assert_eq!(muldiv_bits(a, b, c, 53), (exact as f64, rem as f64));
    }

    #[test]
    fn deadlines_keep_a_covering_one_and_add_slack_otherwise() {
        assert_eq!(deadline(10.0, Some(20.0), 0.0), 20.0);
        assert_eq!(deadline(10.0, None, 0.0), 1_000_010.0);
        assert_eq!(deadline(8_000_000.0, None, 0.0), 10_000_000.0);
    }

    #[test]
    fn text_states_parse_as_the_lua_patterns() {
        assert_eq!(match_digits::<2>(b"F:12:3", b"F:", b':'), Some([12.0, 3.0]));
        assert_eq!(match_digits::<2>(b"F:12:3:4", b"F:", b':'), None);
        assert_eq!(match_digits::<2>(b"F:12:", b"F:", b':'), None);
        assert_eq!(match_digits::<2>(b"F:1x:3", b"F:", b':'), None);
        assert_eq!(int(-5000.0), "-5000");
    }
}
