//! Record times as RFC 3339 in UTC with milliseconds (`2027-01-15T08:00:00.123Z`): written
//! into every record and file name, read back by `spillway decisions` and the file sink's
//! retention.

use spillway_core::time::Micros;

/// `micros` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(micros: Micros) -> String {
    let ms = micros / 1_000;
    let secs = ms / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX / 2));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

/// Reads what [`rfc3339_ms`] writes (and the same without the milliseconds).
pub fn parse_rfc3339_ms(text: &str) -> Option<Micros> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = text.get(from..to)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let millis = match &text[19..text.len() - 1] {
        "" => 0,
        frac if frac.len() == 4 && frac.starts_with('.') => num(20, 23)?,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + s;
    u64::try_from(secs * 1_000 + millis)
        .ok()
        .map(|ms| ms * 1_000)
}

/// Days since 1970-01-01 to a (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds_and_read_back() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_ms(1_800_000_000_123_456),
            "2027-01-15T08:00:00.123Z"
        );
        assert_eq!(rfc3339_ms(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        for micros in [
            0,
            951_782_400_000_000,
            1_800_000_000_123_000,
            4_102_444_799_999_000,
        ] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(micros)), Some(micros));
        }
        assert_eq!(
            parse_rfc3339_ms("2027-01-15T08:00:00Z"),
            Some(1_800_000_000_000_000)
        );
        assert_eq!(parse_rfc3339_ms("2027-01-15 08:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2027-13-15T08:00:00.000Z"), None);
    }
}
