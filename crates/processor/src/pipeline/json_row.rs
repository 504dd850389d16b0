//! A JSON object written field by field, for the two rows nearly every event produces
//! (`payments` and `dedup_audit`). The outbox stores them as compact rows; the relay
//! renders each through this writer (`compact_row::to_json`) before the sink sees it.
//!
//! Why not serde: rendering a payment row through `serde_json` (a struct of owned
//! `String`s: timestamps through chrono's formatter, hashes and categories through
//! `format!`) was ~13 % of the pipeline thread on the peers' input, when the pipeline
//! rendered rows itself. This writer appends straight to one buffer: no intermediate
//! strings, digits written by hand.
//!
//! **Invariant:** the bytes are exactly what `serde_json::to_vec` gives for the same
//! fields in the same order (the rows are compared byte for byte with serde's in the
//! tests, escapes and all), so a row re-rendered after a crash is byte-identical to one
//! an earlier build wrote, and readers see no difference.

use chrono::{Datelike, TimeZone, Timelike, Utc};

pub struct JsonRow {
    buf: Vec<u8>,
    empty: bool,
}

impl JsonRow {
    pub fn with_capacity(bytes: usize) -> JsonRow {
        let mut buf = Vec::with_capacity(bytes);
        buf.push(b'{');
        JsonRow { buf, empty: true }
    }

    fn name(&mut self, name: &'static str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        // Field names are this module's constants: plain ASCII, nothing to escape.
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, name: &'static str, value: &str) -> &mut JsonRow {
        self.name(name);
        escaped(&mut self.buf, value);
        self
    }

    fn null(&mut self, name: &'static str) -> &mut JsonRow {
        self.name(name);
        self.buf.extend_from_slice(b"null");
        self
    }

    pub fn int<I: itoa::Integer>(&mut self, name: &'static str, value: I) -> &mut JsonRow {
        self.name(name);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    pub fn bool(&mut self, name: &'static str, value: bool) -> &mut JsonRow {
        self.name(name);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn str_list<'s>(
        &mut self,
        name: &'static str,
        values: impl IntoIterator<Item = &'s str>,
    ) -> &mut JsonRow {
        self.name(name);
        self.buf.push(b'[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            escaped(&mut self.buf, v);
        }
        self.buf.push(b']');
        self
    }

    /// A 128-bit hash as 32 lowercase hex digits (`format!("{:032x}")`).
    pub fn hex128(&mut self, name: &'static str, value: u128) -> &mut JsonRow {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.name(name);
        self.buf.push(b'"');
        for i in (0..32).rev() {
            self.buf.push(HEX[((value >> (i * 4)) & 0xf) as usize]);
        }
        self.buf.push(b'"');
        self
    }

    /// An unsigned number zero-padded to at least four digits (`format!("{:04}")`), as
    /// a string.
    pub fn padded4(&mut self, name: &'static str, value: u16) -> &mut JsonRow {
        self.name(name);
        self.buf.push(b'"');
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value).as_bytes();
        for _ in digits.len()..4 {
            self.buf.push(b'0');
        }
        self.buf.extend_from_slice(digits);
        self.buf.push(b'"');
        self
    }

    /// A timestamp as [`super::rows::ts`] renders it: RFC 3339, UTC, microseconds.
    pub fn ts(&mut self, name: &'static str, micros: i64) -> &mut JsonRow {
        self.name(name);
        self.buf.push(b'"');
        write_ts(&mut self.buf, micros);
        self.buf.push(b'"');
        self
    }

    pub fn opt_ts(&mut self, name: &'static str, micros: Option<i64>) -> &mut JsonRow {
        match micros {
            Some(m) => self.ts(name, m),
            None => self.null(name),
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.buf.push(b'}');
        std::mem::take(&mut self.buf)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for years 0–9999 (every event time validation lets
/// through); anything else through chrono, which is what [`super::rows::ts`] does.
fn write_ts(buf: &mut Vec<u8>, micros: i64) {
    let t = Utc.timestamp_micros(micros).single();
    let Some(t) = t.filter(|t| (0..=9999).contains(&t.year())) else {
        buf.extend_from_slice(super::rows::ts(micros).as_bytes());
        return;
    };
    // A timestamp in µs never lands on a leap second, so the fraction is < 1 s.
    let fields = [
        (t.year() as u32, 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, b'T'),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (t.second(), 2, b'.'),
        (t.nanosecond() / 1_000, 6, b'Z'),
    ];
    for (n, width, after) in fields {
        let mut d = [b'0'; 6];
        let mut n = n;
        for slot in d[..width].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        buf.extend_from_slice(&d[..width]);
        buf.push(after);
    }
}

/// A JSON string, escaped as `serde_json` escapes it: `"`, `\`, and control bytes
/// (`\b \t \n \f \r` by name, the rest as `\u00XX`); everything else as is (UTF-8).
fn escaped(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every string of a row needs no escape: checked without a branch a byte,
    // then copied whole.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // A named escape, `None` for a control byte without one, or no escape at all.
        let named: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            b'\t' => Some(b"\\t"),
            b'\n' => Some(b"\\n"),
            0x0c => Some(b"\\f"),
            b'\r' => Some(b"\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        match named {
            Some(escape) => buf.extend_from_slice(escape),
            None => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}",
            "é 漢字 🎉",
            // One byte to escape alone, and the bytes either side of the plain range:
            // the fast path must send each of these to the escaping loop, or not.
            "\\",
            "a\"b",
            "\u{1f}",
            " ",
            "\u{7f}",
        ] {
            let mut buf = Vec::new();
            escaped(&mut buf, s);
            assert_eq!(buf, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn timestamps_match_the_chrono_rendering() {
        for micros in [
            0,
            1,
            -1,
            1_709_251_199_875_000,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
            -62_135_596_800_000_000, // 0001-01-01
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // year -1: chrono's own form
            253_402_300_800_000_000, // year 10000
            i64::MIN,
            i64::MAX,
        ] {
            let mut buf = Vec::new();
            write_ts(&mut buf, micros);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                super::super::rows::ts(micros),
                "{micros}"
            );
        }
    }

    proptest! {
        #[test]
        fn a_row_is_the_bytes_serde_json_writes(
            s in "\\PC*",
            raw in proptest::collection::vec(any::<char>(), 0..8),
            n in any::<i64>(),
            u in any::<u64>(),
            h in any::<u128>(),
            c in any::<u16>(),
            t in -62_167_219_200_000_000i64..253_402_300_799_999_999,
            b in any::<bool>(),
            o in proptest::option::of(0i64..253_402_300_799_999_999),
        ) {
            let raw: String = raw.into_iter().collect();
            let row = JsonRow::with_capacity(16)
                .str("s", &s)
                .str("raw", &raw)
                .int("n", n)
                .int("u", u)
                .hex128("h", h)
                .padded4("c", c)
                .ts("t", t)
                .bool("b", b)
                .opt_ts("o", o)
                .str_list("l", [s.as_str(), raw.as_str()])
                .finish();
            #[derive(serde::Serialize)]
            struct Expected<'a> {
                s: &'a str,
                raw: &'a str,
                n: i64,
                u: u64,
                h: String,
                c: String,
                t: String,
                b: bool,
                o: Option<String>,
                l: [&'a str; 2],
            }
            let expected = serde_json::to_vec(&Expected {
                s: &s,
                raw: &raw,
                n,
                u,
                h: format!("{h:032x}"),
                c: format!("{c:04}"),
                t: super::super::rows::ts(t),
                b,
                o: o.map(super::super::rows::ts),
                l: [&s, &raw],
            })
            .unwrap();
            prop_assert_eq!(String::from_utf8(row).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}
