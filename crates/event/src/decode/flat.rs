//! The flat-record scanner: the shape almost every record on the wire has, read in one
//! pass without serde.
//!
//! A producer writes each payment as one flat JSON object: the fifteen schema fields,
//! each once, strings without escapes, integers as plain digits. [`scan`] reads exactly
//! that shape and nothing else: on any other byte string (an escape, an unknown or
//! repeated field, a float, a null, whitespace it does not expect, non-ASCII text,
//! anything after the closing brace) it answers `None`, and the caller hands the bytes to
//! `serde_json`, which either reads them or says precisely what is wrong.
//!
//! **The invariant: when `scan` answers `Some(wire)`, `serde_json` would have produced
//! the same `wire` from the same bytes.** So this path can only be faster, never decide
//! anything differently; error codes stay serde's and the classifier's. The property
//! test `the_flat_scanner_agrees_with_serde` checks the invariant on valid, mutated
//! and random records.
//!
//! Why: on the peers' input serde's struct visitor (field-name matching, per-string
//! escape scanning and UTF-8 checks) was 8 % of all CPU samples of the core, two thirds
//! of decoding.

use std::borrow::Cow;

use super::{is_integer_field, Wire, FIELDS};

/// Reads `bytes` if they are a flat record (see the module docs), else `None`.
pub(crate) fn scan(bytes: &[u8]) -> Option<Wire<'_>> {
    if !plain(bytes) {
        return None;
    }
    // Checked once for the whole record (ASCII: the fast path of the check),
    // so that each string is a slice of it, not a check of its own.
    let text_of_record = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        b: bytes,
        s: text_of_record,
        i: 0,
    };
    let mut text: [&str; 15] = [""; 15];
    let mut ints = [0i64; 15];
    let mut seen = 0u16;
    r.skip_ws();
    r.expect(b'{')?;
    loop {
        r.skip_ws();
        let field = field_index(r.string()?)?;
        let bit = 1u16 << field;
        if seen & bit != 0 {
            // serde refuses a repeated field: let it say so.
            return None;
        }
        seen |= bit;
        r.skip_ws();
        r.expect(b':')?;
        r.skip_ws();
        if is_integer_field(FIELDS[field]) {
            ints[field] = r.integer()?;
        } else {
            text[field] = r.string()?;
        }
        r.skip_ws();
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    r.skip_ws();
    if r.i != bytes.len() || seen != (1 << FIELDS.len()) - 1 {
        return None;
    }
    let s = |i: usize| Cow::Borrowed(text[i]);
    Some(Wire {
        transaction_id: s(0),
        event_time: s(1),
        amount_minor: ints[2],
        currency: s(3),
        merchant_id: s(4),
        merchant_category: s(5),
        card_fingerprint: s(6),
        card_country: s(7),
        customer_id: s(8),
        ip_address: s(9),
        ip_country: s(10),
        device_id: s(11),
        region: s(12),
        payment_method: s(13),
        schema_version: ints[14],
    })
}

/// Whether every byte is ASCII from 0x20 to 0x7f other than a backslash, in one pass
/// the compiler vectorises. Such a record has no escapes and no control bytes anywhere,
/// so a string is whatever lies between two quotes, and is valid UTF-8. (A record with a
/// newline or a tab between its tokens is valid JSON, but not the producers' shape:
/// serde reads it.)
fn plain(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &c| ok & (0x20..0x80).contains(&c) & (c != b'\\'))
}

/// The place of `key` in [`FIELDS`]; `None` for a field the schema does not have (serde
/// skips those, so the slow path reads such a record).
fn field_index(key: &str) -> Option<usize> {
    // A `match` compares lengths first, then bytes: cheaper than a search of `FIELDS`.
    let i = match key {
        "transaction_id" => 0,
        "event_time" => 1,
        "amount_minor" => 2,
        "currency" => 3,
        "merchant_id" => 4,
        "merchant_category" => 5,
        "card_fingerprint" => 6,
        "card_country" => 7,
        "customer_id" => 8,
        "ip_address" => 9,
        "ip_country" => 10,
        "device_id" => 11,
        "region" => 12,
        "payment_method" => 13,
        "schema_version" => 14,
        _ => return None,
    };
    debug_assert_eq!(FIELDS[i], key);
    Some(i)
}

/// The position of the first `"` in `b`, eight bytes at a time (ids and codes are
/// 2–40 bytes: too short for a vectorised search's setup to pay, too long for a loop
/// that branches on every byte).
fn find_quote(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = 0x2222_2222_2222_2222;
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // A zero byte of `x` is a quote of `word`; the lowest flagged byte is exact (a
        // borrow can only flag bytes above a true zero).
        let x = u64::from_le_bytes(bytes) ^ QUOTES;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter().position(|&c| c == b'"').map(|i| at + i)
}

struct Reader<'a> {
    b: &'a [u8],
    /// The same bytes as text.
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// Spaces between tokens (the other JSON whitespace bytes never pass [`plain`]).
    fn skip_ws(&mut self) {
        while self.b.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }

    /// A string: everything up to the next quote ([`plain`] ruled out escapes and
    /// control bytes, which serde would decode or reject).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        let len = find_quote(&self.b[start..])?;
        self.i = start + len + 1;
        self.s.get(start..start + len)
    }

    /// An integer as JSON writes one: an optional minus, then `0` or a digit run that
    /// does not start with `0`, not followed by a fraction or an exponent, within `i64`;
    /// not `-0`, which serde reads as a float.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let start = self.i;
        // Accumulated negatively: i64::MIN has no positive counterpart.
        let mut v: i64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_sub(i64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        match (negative, v) {
            // serde_json reads `-0` as the float -0.0, which no integer field takes.
            (true, 0) => None,
            (true, v) => Some(v),
            (false, v) => v.checked_neg(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_text(w: &Wire<'_>) -> String {
        format!("{w:?}")
    }

    const VALID: &str = r#"{"transaction_id":"tx-1","event_time":"2026-11-23T11:59:00Z","amount_minor":1999,"currency":"USD","merchant_id":"m-42","merchant_category":"5411","card_fingerprint":"9f86d081884c7d659a2feaa0c55ad015","card_country":"US","customer_id":"c-7","ip_address":"203.0.113.7","ip_country":"US","device_id":"d-1","region":"us-east","payment_method":"card","schema_version":1}"#;

    #[test]
    fn a_flat_record_reads_as_serde_reads_it() {
        let ours = scan(VALID.as_bytes()).expect("flat");
        let serde: Wire<'_> = serde_json::from_str(VALID).unwrap();
        assert_eq!(wire_text(&ours), wire_text(&serde));
        assert_eq!(ours.amount_minor, 1999);
        assert_eq!(ours.card_fingerprint, "9f86d081884c7d659a2feaa0c55ad015");
    }

    #[test]
    fn spaces_between_tokens_and_any_field_order_are_read() {
        let spaced = VALID
            .replace(',', " , ")
            .replace("\":", "\"  : ")
            .replace('{', " { ");
        let reordered = {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(VALID).unwrap();
            let mut pairs: Vec<_> = v.into_iter().collect();
            pairs.reverse();
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect();
            format!("{{{}}}  ", body.join(","))
        };
        for text in [spaced, reordered] {
            let ours = scan(text.as_bytes()).expect("flat");
            let serde: Wire<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(wire_text(&ours), wire_text(&serde), "{text}");
        }
    }

    #[test]
    fn the_first_quote_is_found_wherever_it_lies() {
        for len in 0..40 {
            for at in 0..len {
                let mut b = vec![b'a'; len];
                b[at] = b'"';
                // A later quote, and bytes whose borrow could flag a false match.
                if at + 1 < len {
                    b[at + 1] = 0x21;
                }
                if at + 3 < len {
                    b[at + 3] = b'"';
                }
                assert_eq!(find_quote(&b), Some(at), "{len} {at}");
            }
            assert_eq!(find_quote(&vec![0x21; len]), None);
        }
    }

    #[test]
    fn integers_at_the_edges_of_i64_read_exactly_and_as_serde_reads_them() {
        for (amount, expect) in [
            ("0", Some(0)),
            ("-0", None),
            ("-00", None),
            ("-01", None),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("18446744073709551616", None),
            ("01", None),
            ("1.0", None),
            ("1e3", None),
            ("1E3", None),
            ("-", None),
            ("+1", None),
        ] {
            let text = VALID.replace("1999", amount);
            let ours = scan(text.as_bytes());
            assert_eq!(ours.as_ref().map(|w| w.amount_minor), expect, "{amount}");
            // Whatever the scanner reads, serde reads the same (the module's invariant).
            if let Some(ours) = ours {
                let serde: Wire<'_> = serde_json::from_str(&text).unwrap();
                assert_eq!(wire_text(&ours), wire_text(&serde), "{amount}");
            }
        }
    }

    #[test]
    fn every_shape_serde_must_judge_is_left_to_serde() {
        let cases = [
            // An escape, in a value and in a key.
            VALID.replace("m-42", r"m-\u0034"),
            VALID.replace("\"region\"", r#""regio\u006e""#),
            // A field the schema lacks, a repeated field, a missing one.
            VALID.replace("\"region\"", "\"extra\":1,\"region\""),
            VALID.replace("\"region\"", "\"device_id\":\"d-2\",\"region\""),
            VALID.replace("\"region\":\"us-east\",", ""),
            // Null, a wrong type, non-ASCII text, trailing bytes, a raw control byte.
            VALID.replace("\"us-east\"", "null"),
            VALID.replace("1999", "\"1999\""),
            VALID.replace("us-east", "us-ést"),
            format!("{VALID}x"),
            format!("{VALID}{{}}"),
            VALID.replace("us-east", "us\u{1}east"),
            // JSON whitespace other than spaces.
            VALID.replace(',', ",\n"),
            VALID.replace(',', ",\t"),
            VALID.replace(',', ",\r"),
            // A trailing comma, an empty object, not an object.
            VALID.replace("\"schema_version\":1}", "\"schema_version\":1,}"),
            "{}".to_string(),
            "[]".to_string(),
            String::new(),
        ];
        for text in cases {
            assert!(scan(text.as_bytes()).is_none(), "{text}");
        }
    }
}
