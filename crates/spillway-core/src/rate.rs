//! Parsing of the human-written quantities in a policy: durations (`30s`, `5m`, `1h`, `1d`)
//! and rates (`100/min`, `10/30s`).
//!
//! Both parse into integer microseconds so the algorithms stay exact.

use crate::time::{Micros, DAY, HOUR, MINUTE, SECOND};
use std::fmt;

/// A number of events per period, e.g. `100/min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events allowed per `period`; never zero once parsed.
    pub count: u64,
    /// The period in microseconds; never zero once parsed.
    pub period: Micros,
}

impl Rate {
    /// A rate of `count` events per `period` microseconds; both must be positive.
    pub fn new(count: u64, period: Micros) -> Result<Self, String> {
        if count == 0 {
            return Err("a rate must allow at least 1 request per period (got 0)".into());
        }
        if period == 0 {
            return Err("a rate's period must be longer than zero".into());
        }
        Ok(Self { count, period })
    }

    /// Parses `N/unit` or `N/duration`: `100/s`, `100/min`, `5000/hour`, `10/30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (count, per) = text.trim().split_once('/').ok_or_else(|| {
            format!("rate `{text}` must look like `100/min` or `10/30s` (count/period)")
        })?;
        let count: u64 = count.trim().parse().map_err(|_| {
            format!(
                "rate `{text}`: `{}` is not a whole, non-negative number",
                count.trim()
            )
        })?;
        let period = parse_duration(per.trim()).map_err(|e| format!("rate `{text}`: {e}"))?;
        Self::new(count, period).map_err(|e| format!("rate `{text}`: {e}"))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.period))
    }
}

/// Parses a duration: a bare unit (`s`, `second`, `min`, `minute`, `h`, `hour`, `d`, `day`)
/// or a positive number followed by a unit (`250ms`, `30s`, `5m`, `1h`, `1d`).
pub fn parse_duration(text: &str) -> Result<Micros, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if text.starts_with('-') {
        return Err(format!("duration `{text}` must be longer than zero"));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "duration `{text}` must be a whole number of a unit (write `1.5h` as `90m`)"
        ));
    }
    let unit_micros = match unit.trim() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" | "sec" | "second" | "seconds" => SECOND,
        "m" | "min" | "minute" | "minutes" => MINUTE,
        "h" | "hour" | "hours" => HOUR,
        "d" | "day" | "days" => DAY,
        "" => {
            return Err(format!(
                "duration `{text}` needs a unit (us, ms, s, m, h or d)"
            ))
        }
        other => {
            return Err(format!(
                "duration `{text}` has unknown unit `{other}` (use us, ms, s, m, h or d)"
            ))
        }
    };
    let n: u64 = if digits.is_empty() {
        1
    } else {
        digits
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?
    };
    if n == 0 {
        return Err(format!("duration `{text}` must be longer than zero"));
    }
    n.checked_mul(unit_micros)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// Formats microseconds back into the shortest exact unit form (`1h`, `90s`, `250ms`).
pub fn format_duration(micros: Micros) -> String {
    for (unit, name) in [
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
        (1_000, "ms"),
    ] {
        if micros >= unit && micros.is_multiple_of(unit) {
            return format!("{}{}", micros / unit, name);
        }
    }
    format!("{micros}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_durations() {
        assert_eq!(parse_duration("30s"), Ok(30 * SECOND));
        assert_eq!(parse_duration("5m"), Ok(5 * MINUTE));
        assert_eq!(parse_duration("1h"), Ok(HOUR));
        assert_eq!(parse_duration("day"), Ok(DAY));
        assert_eq!(parse_duration("250ms"), Ok(250_000));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("3 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
        // Fractions and signs are named for what they are, not as odd units.
        assert!(parse_duration("1.5h")
            .unwrap_err()
            .contains("whole number of a unit"));
        assert!(parse_duration("-5s")
            .unwrap_err()
            .contains("longer than zero"));
    }

    #[test]
    fn parses_rates() {
        assert_eq!(
            Rate::parse("100/min"),
            Ok(Rate {
                count: 100,
                period: MINUTE
            })
        );
        assert_eq!(
            Rate::parse("10/30s"),
            Ok(Rate {
                count: 10,
                period: 30 * SECOND
            })
        );
        assert!(Rate::parse("0/s").unwrap_err().contains("at least 1"));
        assert!(Rate::parse("-1/s").unwrap_err().contains("not a whole"));
        assert!(Rate::parse("100").unwrap_err().contains("count/period"));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["1d", "90s", "250ms", "5m", "7us"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
