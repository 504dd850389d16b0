//! ISO 4217 currencies with their minor-unit exponent.
//!
//! The exponent says how many minor units make a major unit: JPY 0 (no subunit),
//! USD 2 (cents), BHD 3 (fils). `amount_minor / 10^exponent` is the major amount.
//! The list is deliberately explicit: an unknown code is bad input, not a guess.

use std::fmt;

use arrayvec::ArrayString;

/// A currency paydedup accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// (code, minor-unit exponent), from ISO 4217.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// The largest amount accepted, in major units of any currency. Anything above is
/// treated as absurd input (`amount_too_large`): it also keeps every amount well inside
/// BigQuery's NUMERIC(38, 9).
pub const MAX_AMOUNT_MAJOR: i64 = 1_000_000_000;

impl Currency {
    /// Looks a code up; `None` for anything that is not an accepted ISO 4217 code.
    pub fn from_code(code: &str) -> Option<Currency> {
        let i = PACKED_CODES.binary_search(&packed(code)).ok()?;
        Some(Currency {
            code: CURRENCIES[i].0,
            exponent: CURRENCIES[i].1,
        })
    }

    /// Every accepted currency, sorted by code.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES
            .iter()
            .map(|&(code, exponent)| Currency { code, exponent })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Minor units per major unit, as a power of ten.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// The largest accepted amount in minor units.
    pub fn max_amount_minor(&self) -> i64 {
        MAX_AMOUNT_MAJOR * 10_i64.pow(u32::from(self.exponent))
    }

    /// The amount as an exact decimal string in major units (`12345` USD → `"123.45"`).
    /// Used for BigQuery NUMERIC columns; never goes through floating point.
    pub fn format_major(&self, amount_minor: i64) -> String {
        self.major(amount_minor).to_string()
    }

    /// [`Currency::format_major`]'s text, on the stack: every unique payment's row
    /// carries it, and formatting through `format!` (an allocation and the formatter's
    /// machinery) was ~2 % of the pipeline thread's time.
    pub fn major(&self, amount_minor: i64) -> MajorAmount {
        // Digits from the last: at most 19 of an `i64`, the point and the sign.
        let mut text = [0u8; MAJOR_AMOUNT_LEN];
        let mut at = text.len();
        let mut rest = amount_minor.unsigned_abs();
        let fraction_digits = usize::from(self.exponent);
        let mut written = 0;
        loop {
            if written == fraction_digits && written > 0 {
                at -= 1;
                text[at] = b'.';
            }
            at -= 1;
            text[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            written += 1;
            if rest == 0 && written > fraction_digits {
                break;
            }
        }
        if amount_minor < 0 {
            at -= 1;
            text[at] = b'-';
        }
        let mut out = MajorAmount::new();
        for &b in &text[at..] {
            out.push(char::from(b));
        }
        out
    }
}

/// The longest major amount: 19 digits of an `i64`, a point and a sign.
const MAJOR_AMOUNT_LEN: usize = 21;

/// An amount in major units as text ([`Currency::major`]).
pub type MajorAmount = ArrayString<MAJOR_AMOUNT_LEN>;

/// A three-letter code as one number (its bytes, big-endian; `u32::MAX` for anything
/// not three bytes long), so a lookup compares integers, not strings (the strings'
/// comparisons were ~1 % of the pipeline thread's time). Big-endian keeps the codes'
/// order.
const fn packed(code: &str) -> u32 {
    match code.as_bytes() {
        &[a, b, c] => (a as u32) << 16 | (b as u32) << 8 | c as u32,
        _ => u32::MAX,
    }
}

/// [`CURRENCIES`]' codes, [`packed`], in the same order.
static PACKED_CODES: [u32; CURRENCIES.len()] = {
    let mut out = [0; CURRENCIES.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = packed(CURRENCIES[i].0);
        // `Currency::major`'s text fits `MAJOR_AMOUNT_LEN` for up to 18 fraction
        // digits: checked when this table is built, at compile time.
        assert!(CURRENCIES[i].1 <= 18);
        i += 1;
    }
    out
};

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(PACKED_CODES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_code_is_found_and_nothing_else() {
        for (code, exponent) in CURRENCIES {
            let c = Currency::from_code(code).unwrap();
            assert_eq!((c.code(), c.exponent()), (*code, *exponent));
        }
        for code in [
            "", "U", "US", "USDX", "usd", "Usd", "US\u{0}", "\u{ff}SD", "ÉUR",
        ] {
            assert_eq!(Currency::from_code(code), None, "{code:?}");
        }
    }

    /// The formatter the stack version replaced, kept as the reference.
    fn format_major_reference(c: &Currency, amount_minor: i64) -> String {
        let exp = u32::from(c.exponent);
        if exp == 0 {
            return amount_minor.to_string();
        }
        let scale = 10_u64.pow(exp);
        let sign = if amount_minor < 0 { "-" } else { "" };
        let abs = amount_minor.unsigned_abs();
        format!(
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }

    #[test]
    fn major_is_the_reference_formatters_text_at_every_width() {
        let mut amounts = vec![
            0,
            1,
            -1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            1001,
            i64::MAX,
            i64::MIN,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every magnitude, both signs.
            let magnitude = (x >> (x % 64)) as i64;
            amounts.push(if x & 1 == 0 {
                magnitude
            } else {
                magnitude.wrapping_neg()
            });
        }
        for c in Currency::all() {
            for &a in &amounts {
                assert_eq!(
                    c.major(a).as_str(),
                    format_major_reference(&c, a),
                    "{c} {a}"
                );
            }
        }
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::from_code("JPY").map(|c| c.exponent()), Some(0));
        assert_eq!(Currency::from_code("USD").map(|c| c.exponent()), Some(2));
        assert_eq!(Currency::from_code("BHD").map(|c| c.exponent()), Some(3));
        assert_eq!(Currency::from_code("XXX"), None);
        assert_eq!(Currency::from_code("usd"), None);
    }

    #[test]
    fn format_major_is_exact() {
        let usd = Currency::from_code("USD").unwrap();
        let jpy = Currency::from_code("JPY").unwrap();
        let bhd = Currency::from_code("BHD").unwrap();
        assert_eq!(usd.format_major(12345), "123.45");
        assert_eq!(usd.format_major(5), "0.05");
        assert_eq!(usd.format_major(-5), "-0.05");
        assert_eq!(jpy.format_major(500), "500");
        assert_eq!(bhd.format_major(1001), "1.001");
        assert_eq!(usd.format_major(usd.max_amount_minor()), "1000000000.00");
    }
}
