//! The event time producers write, read without a general RFC 3339 parser.
//!
//! Why: every payment carries one, nearly always in the one shape
//! `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, and chrono's parser (which takes every RFC 3339
//! form: offsets, a lowercase `t`, a space, leap seconds, any number of fraction
//! digits) with the conversions after it was about a quarter of the decode's
//! validation on the peers' input (`perf record`, 10 M run).
//!
//! **The invariant: [`utc_micros`] answers only for strings chrono parses, and then
//! with chrono's instant, truncated to microseconds.** Anything else (another shape,
//! an out-of-range field, a leap second, more than nine fraction digits) is `None`,
//! and the caller asks chrono, so the two never disagree on what a string means.

/// Microseconds from 1970-01-01T00:00:00Z to the instant `s` names, if `s` is exactly
/// `YYYY-MM-DDTHH:MM:SS` then `.` and 1–9 digits or nothing, then `Z`, with every
/// field in range (seconds up to 59); `None` for anything else.
pub(super) fn utc_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let micros = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            // Scaled to nanoseconds, then truncated to microseconds as chrono's
            // instant is by the caller.
            let nanos = digits(fraction)? * 10i64.pow(9 - fraction.len() as u32);
            nanos / 1_000
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// The number `b` spells in decimal digits (at most nine here, so no overflow).
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`: years counted from March, so the leap day is last).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    /// chrono's reading of `s`, truncated to microseconds as `event_time` does.
    fn chrono_micros(s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_micros())
    }

    #[test]
    fn the_producers_shape_is_read_as_chrono_reads_it() {
        for s in [
            "2024-03-01T00:00:00Z",
            "2024-02-29T23:59:55.150Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999999Z",
            "2000-01-01T00:00:00.000001Z",
            "2000-02-29T12:34:56.7Z",
            "9999-12-31T23:59:59.123456789Z",
            "0000-03-01T00:00:00Z",
            "2100-02-28T01:02:03.0450Z",
        ] {
            assert_eq!(utc_micros(s), chrono_micros(s), "{s}");
            assert!(utc_micros(s).is_some(), "{s}");
        }
    }

    #[test]
    fn every_other_shape_is_left_to_chrono() {
        for s in [
            "",
            "2024-03-01",
            "2024-03-01t00:00:00Z",
            "2024-03-01 00:00:00Z",
            "2024-03-01T00:00:00z",
            "2024-03-01T00:00:00+00:00",
            "2024-03-01T00:00:00.Z",
            "2024-03-01T00:00:00.1234567891Z",
            "2024-03-01T00:00:60Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-03-01T24:00:00Z",
            "2024-03-01T00:60:00Z",
            "2024-03-01T00:00:00ZZ",
            "+024-03-01T00:00:00Z",
            "2024-03-01T00:00:0xZ",
            "2024-03-01T00:00:00.1x3Z",
        ] {
            assert_eq!(utc_micros(s), None, "{s}");
        }
    }

    /// Random strings near the producers' shape (each byte of a valid one replaced, at
    /// random, by a digit or a separator or dropped): wherever the fast path answers,
    /// chrono answers the same.
    #[test]
    fn wherever_it_answers_chrono_agrees() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let alphabet = b"0123456789-:.TZz+ ";
        let mut answered = 0;
        for _ in 0..200_000 {
            let base = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}Z",
                next(10_000),
                next(14),
                next(33),
                next(25),
                next(61),
                next(62),
                match next(4) {
                    0 => String::new(),
                    _ => format!(".{}", &"123456789012"[..1 + next(11) as usize]),
                }
            );
            let mut b = base.into_bytes();
            for _ in 0..next(3) {
                let i = next(b.len() as u64) as usize;
                match next(3) {
                    0 => {
                        b.remove(i);
                    }
                    _ => b[i] = alphabet[next(alphabet.len() as u64) as usize],
                }
            }
            let s = String::from_utf8(b).expect("ASCII");
            if let Some(m) = utc_micros(&s) {
                answered += 1;
                assert_eq!(Some(m), chrono_micros(&s), "{s}");
            }
        }
        assert!(answered > 10_000, "only {answered} answered");
    }
}
