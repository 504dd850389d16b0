//! Compact rows: how the outbox stores the two rows nearly every event produces
//! (`payments` and `dedup_audit`). The relay renders them as JSON ([`to_json`]) when it
//! reads them, byte for byte what [`JsonRow`] wrote into the outbox before.
//!
//! Why: every outbox byte is written twice on the commit path (the write-ahead log, then
//! a blob file at flush) and LZ4-compressed on the commit thread. LZ4 removes a JSON
//! row's repeated field names but not its hex digits (4 bits of information in each 8
//! bits) nor its decimal text. A compact row has no names (the [`Schema`] holds them),
//! numbers in a few bytes, and lowercase hex packed two digits to a byte: card
//! fingerprints, transaction and device ids, content hashes.
//!
//! Layout: [`MARKER`], the schema's id, then each column's value in the schema's order.
//! No JSON text starts with [`MARKER`] (a control byte), so rows written as JSON (the
//! rare tables, and every row an earlier build stored) pass through [`to_json`] as they
//! are.
//!
//! | kind | bytes |
//! |---|---|
//! | int, timestamp, category | zigzag LEB128 varint |
//! | bool | one byte, 0 or 1 |
//! | 128-bit hex | 16 bytes, big-endian |
//! | optional timestamp | 0, or 1 and the varint |
//! | string list | count (varint), then each string |
//! | string | see [`put_str`] |

use std::borrow::Cow;

use paydedup_event::hex::{is_lower_hex, LOWER_HEX_VALUE};
use thiserror::Error;

use super::json_row::JsonRow;

/// First byte of a compact row.
pub const MARKER: u8 = 0x01;

/// What a column holds, and so how it is stored and rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Ts,
    OptTs,
    Bool,
    Hex128,
    Padded4,
    StrList,
}

/// A table's columns, in the order its rows are written and rendered.
#[derive(Debug)]
pub struct Schema {
    pub id: u8,
    pub columns: &'static [(&'static str, Kind)],
}

/// The schemas, by id. An id is never reused for other columns: stored rows keep it.
static SCHEMAS: [&Schema; 2] = [&PAYMENTS, &DEDUP_AUDIT];

/// The columns of [`super::rows::PaymentRow`].
pub static PAYMENTS: Schema = Schema {
    id: 1,
    columns: &[
        ("transaction_id", Kind::Str),
        ("event_time", Kind::Ts),
        ("amount_minor", Kind::Int),
        ("amount", Kind::Str),
        ("currency", Kind::Str),
        ("merchant_id", Kind::Str),
        ("merchant_category", Kind::Padded4),
        ("card_fingerprint", Kind::Str),
        ("card_country", Kind::Str),
        ("customer_id", Kind::Str),
        ("ip_country", Kind::Str),
        ("device_id", Kind::Str),
        ("region", Kind::Str),
        ("payment_method", Kind::Str),
        ("schema_version", Kind::Int),
        ("content_hash", Kind::Hex128),
        ("fraud_score", Kind::Int),
        ("fraud_flagged", Kind::Bool),
        ("fraud_reasons", Kind::StrList),
        ("card_count_10m", Kind::Int),
        ("card_count_1h", Kind::Int),
        ("kafka_timestamp", Kind::OptTs),
        ("source_partition", Kind::Int),
        ("source_offset", Kind::Int),
        ("outbox_seq", Kind::Int),
    ],
};

/// The columns of [`super::rows::DedupAuditRow`].
pub static DEDUP_AUDIT: Schema = Schema {
    id: 2,
    columns: &[
        ("kind", Kind::Str),
        ("transaction_id", Kind::Str),
        ("event_time", Kind::Ts),
        ("first_event_time", Kind::Ts),
        ("amount_minor", Kind::Int),
        ("currency", Kind::Str),
        ("first_content_hash", Kind::Hex128),
        ("repeat_content_hash", Kind::Hex128),
        ("first_partition", Kind::Int),
        ("first_offset", Kind::Int),
        ("kafka_timestamp", Kind::OptTs),
        ("source_partition", Kind::Int),
        ("source_offset", Kind::Int),
        ("outbox_seq", Kind::Int),
    ],
};

/// A row written column by column, with the same calls as [`JsonRow`] (the names are
/// checked against the schema in debug builds; the tests render every column).
pub struct CompactRow {
    buf: Vec<u8>,
    schema: &'static Schema,
    column: usize,
}

impl CompactRow {
    pub fn new(schema: &'static Schema, capacity: usize) -> CompactRow {
        CompactRow::reusing(schema, Vec::new(), capacity)
    }

    /// A row written into `buf`, whose bytes are dropped and whose memory is kept
    /// (growing it to `capacity` if smaller).
    pub fn reusing(schema: &'static Schema, mut buf: Vec<u8>, capacity: usize) -> CompactRow {
        buf.clear();
        buf.reserve(capacity);
        buf.push(MARKER);
        buf.push(schema.id);
        CompactRow {
            buf,
            schema,
            column: 0,
        }
    }

    fn column(&mut self, name: &'static str, kind: Kind) {
        debug_assert_eq!(
            self.schema.columns.get(self.column),
            Some(&(name, kind)),
            "column {} of schema {}",
            self.column,
            self.schema.id
        );
        self.column += 1;
    }

    pub fn str(&mut self, name: &'static str, value: &str) -> &mut CompactRow {
        self.column(name, Kind::Str);
        put_str(&mut self.buf, value);
        self
    }

    pub fn int(&mut self, name: &'static str, value: impl Into<i128>) -> &mut CompactRow {
        self.column(name, Kind::Int);
        put_varint(&mut self.buf, zigzag(value.into()));
        self
    }

    pub fn ts(&mut self, name: &'static str, micros: i64) -> &mut CompactRow {
        self.column(name, Kind::Ts);
        put_varint(&mut self.buf, zigzag(micros.into()));
        self
    }

    pub fn opt_ts(&mut self, name: &'static str, micros: Option<i64>) -> &mut CompactRow {
        self.column(name, Kind::OptTs);
        match micros {
            Some(m) => {
                self.buf.push(1);
                put_varint(&mut self.buf, zigzag(m.into()));
            }
            None => self.buf.push(0),
        }
        self
    }

    pub fn bool(&mut self, name: &'static str, value: bool) -> &mut CompactRow {
        self.column(name, Kind::Bool);
        self.buf.push(u8::from(value));
        self
    }

    pub fn hex128(&mut self, name: &'static str, value: u128) -> &mut CompactRow {
        self.column(name, Kind::Hex128);
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn padded4(&mut self, name: &'static str, value: u16) -> &mut CompactRow {
        self.column(name, Kind::Padded4);
        put_varint(&mut self.buf, value.into());
        self
    }

    pub fn str_list<'s>(
        &mut self,
        name: &'static str,
        values: impl ExactSizeIterator<Item = &'s str>,
    ) -> &mut CompactRow {
        self.column(name, Kind::StrList);
        put_varint(&mut self.buf, values.len() as u128);
        for v in values {
            put_str(&mut self.buf, v);
        }
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        debug_assert_eq!(self.column, self.schema.columns.len(), "columns missing");
        std::mem::take(&mut self.buf)
    }
}

/// Why a stored compact row could not be rendered: the row is damaged, or was written
/// by a newer build with a schema this one does not know.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompactRowError {
    #[error("compact row of unknown schema {0}")]
    UnknownSchema(u8),
    #[error("compact row (schema {schema}) ends inside column `{column}`")]
    Truncated { schema: u8, column: &'static str },
    #[error("compact row (schema {schema}) has a bad value in column `{column}`")]
    BadValue { schema: u8, column: &'static str },
    #[error("compact row (schema {schema}) has {extra} bytes after its last column")]
    TrailingBytes { schema: u8, extra: usize },
}

/// The row as the warehouse receives it: a compact row rendered as JSON, any other row
/// (JSON already) copied unchanged. Borrowed, so that the relay renders straight from a
/// decompressed outbox page, without a copy of each row first.
pub fn to_json(row: &[u8]) -> Result<Vec<u8>, CompactRowError> {
    if row.first() != Some(&MARKER) {
        return Ok(row.to_vec());
    }
    let id = row.get(1).copied().unwrap_or(0);
    let schema = SCHEMAS
        .iter()
        .find(|s| s.id == id)
        .ok_or(CompactRowError::UnknownSchema(id))?;
    let mut r = Reader {
        bytes: row,
        at: 2,
        schema: id,
        column: "",
    };
    // The JSON form is a few times the compact one (names, digits, hex).
    let mut json = JsonRow::with_capacity(row.len() * 4 + 256);
    for &(name, kind) in schema.columns {
        r.column = name;
        match kind {
            Kind::Str => {
                let s = r.str()?;
                json.str(name, &s);
            }
            Kind::Int => {
                json.int(name, unzigzag(r.varint()?));
            }
            Kind::Ts => {
                let t = r.i64()?;
                json.ts(name, t);
            }
            Kind::OptTs => match r.byte()? {
                0 => {
                    json.opt_ts(name, None);
                }
                1 => {
                    let t = r.i64()?;
                    json.opt_ts(name, Some(t));
                }
                _ => return Err(r.bad()),
            },
            Kind::Bool => match r.byte()? {
                0 => {
                    json.bool(name, false);
                }
                1 => {
                    json.bool(name, true);
                }
                _ => return Err(r.bad()),
            },
            Kind::Hex128 => {
                let b = r.take(16)?;
                let mut v = [0u8; 16];
                v.copy_from_slice(b);
                json.hex128(name, u128::from_be_bytes(v));
            }
            Kind::Padded4 => {
                let v = u16::try_from(r.varint()?).map_err(|_| r.bad())?;
                json.padded4(name, v);
            }
            Kind::StrList => {
                let n = r.varint()?;
                // Each string takes at least two bytes: a count beyond that is damage.
                if n > (row.len() / 2) as u128 {
                    return Err(r.bad());
                }
                let mut list = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    list.push(r.str()?);
                }
                json.str_list(name, list.iter().map(|s| s.as_ref()));
            }
        }
    }
    if r.at != row.len() {
        return Err(CompactRowError::TrailingBytes {
            schema: id,
            extra: row.len() - r.at,
        });
    }
    Ok(json.finish())
}

/// A string: `0`, its length (varint) and its bytes; or, when it ends in at least
/// [`MIN_HEX_DIGITS`] lowercase hex digits (an even number of them), `1`, the length
/// and bytes of what comes before them, the number of digit pairs (varint) and the
/// pairs as bytes. `tx-1f8ee2b870262c12` is 3 + 8 bytes of content, not 19.
/// Upper-case hex stays as text, since rendering writes lower case.
fn put_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // One table load a byte, no branch but the loop's: every row has a handful of
    // strings, most ending in a long hex run (ids, fingerprints).
    let hex_run = bytes.iter().rev().take_while(|&&b| is_lower_hex(b)).count();
    let digits = hex_run & !1;
    // At most: the marker, two varints of up to 10 bytes each, and the bytes.
    buf.reserve(21 + bytes.len());
    if digits < MIN_HEX_DIGITS {
        buf.push(0);
        put_varint(buf, bytes.len() as u128);
        buf.extend_from_slice(bytes);
        return;
    }
    let (prefix, hex) = bytes.split_at(bytes.len() - digits);
    buf.push(1);
    put_varint(buf, prefix.len() as u128);
    buf.extend_from_slice(prefix);
    put_varint(buf, (digits / 2) as u128);
    let value = |b: u8| LOWER_HEX_VALUE[usize::from(b)];
    buf.extend(
        hex.chunks_exact(2)
            .map(|pair| value(pair[0]) << 4 | value(pair[1])),
    );
}

/// Shorter runs of hex digits are not worth the extra length byte.
const MIN_HEX_DIGITS: usize = 8;

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a row's columns in order, naming the column in any error.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    schema: u8,
    column: &'static str,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> CompactRowError {
        CompactRowError::Truncated {
            schema: self.schema,
            column: self.column,
        }
    }

    fn bad(&self) -> CompactRowError {
        CompactRowError::BadValue {
            schema: self.schema,
            column: self.column,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CompactRowError> {
        let end = self.at.checked_add(n).ok_or_else(|| self.truncated())?;
        let b = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| self.truncated())?;
        self.at = end;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, CompactRowError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u128, CompactRowError> {
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            let bits = u128::from(b & 0x7f);
            // The nineteenth byte may carry only the top two bits of a u128: more is
            // damage, not a number to cut short.
            if shift == 126 && bits > 0b11 {
                return Err(self.bad());
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad())
    }

    fn len(&mut self) -> Result<usize, CompactRowError> {
        usize::try_from(self.varint()?).map_err(|_| self.bad())
    }

    fn i64(&mut self) -> Result<i64, CompactRowError> {
        i64::try_from(unzigzag(self.varint()?)).map_err(|_| self.bad())
    }

    /// A string as stored: borrowed from the row when it is text, built only when it
    /// has packed digits (the relay renders every row, so no copy per column).
    fn str(&mut self) -> Result<Cow<'a, str>, CompactRowError> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let packed = match self.byte()? {
            0 => false,
            1 => true,
            _ => return Err(self.bad()),
        };
        let n = self.len()?;
        let text = std::str::from_utf8(self.take(n)?).map_err(|_| self.bad())?;
        if !packed {
            return Ok(Cow::Borrowed(text));
        }
        let pairs = self.take_len()?;
        let mut s = String::with_capacity(text.len() + 2 * pairs.len());
        s.push_str(text);
        for &b in pairs {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 0xf) as usize]));
        }
        Ok(Cow::Owned(s))
    }

    /// A varint length, then that many bytes.
    fn take_len(&mut self) -> Result<&'a [u8], CompactRowError> {
        let n = self.len()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rendered(row: &mut CompactRow) -> String {
        String::from_utf8(to_json(&row.finish()).unwrap()).unwrap()
    }

    #[test]
    fn strings_keep_every_byte_whether_packed_or_not() {
        let cases = [
            "",
            "tx-1f8ee2b870262c12",
            "603432320813988518e9a6fd5882a6d3",
            "d-bff1301b4418",
            "d-bff1301b441",    // odd run: one digit stays text
            "ABCDEF0123456789", // upper case: text
            "m-017870",
            "é-0123456789abcdef",
            "0123456789abcdef\"\n\u{1}",
            "abcdefa",
        ];
        for s in cases {
            let mut buf = Vec::new();
            put_str(&mut buf, s);
            let mut r = Reader {
                bytes: &buf,
                at: 0,
                schema: 0,
                column: "",
            };
            assert_eq!(r.str().unwrap(), s);
            assert_eq!(r.at, buf.len(), "{s:?}");
        }
        // Packing is what makes the row short.
        let mut buf = Vec::new();
        put_str(&mut buf, "603432320813988518e9a6fd5882a6d3");
        assert_eq!(buf.len(), 1 + 1 + 1 + 16);
        // The layout, byte for byte (stored rows are read back with it): marker, the
        // text before the run (length, bytes), the number of digit pairs, the pairs.
        let mut buf = Vec::new();
        put_str(&mut buf, "tx-1f8ee2b870262c12");
        let packed = [0x1f, 0x8e, 0xe2, 0xb8, 0x70, 0x26, 0x2c, 0x12];
        assert_eq!(buf, [&[1, 3][..], b"tx-", &[8], &packed].concat());
        let mut buf = Vec::new();
        put_str(&mut buf, "m-017870");
        assert_eq!(buf, [&[0, 8][..], b"m-017870"].concat());
    }

    #[test]
    fn rows_that_are_not_compact_pass_through() {
        for row in [&b"{\"a\":1}"[..], b"row7", b""] {
            assert_eq!(to_json(row).unwrap(), row);
        }
    }

    #[test]
    fn a_varint_that_overflows_or_never_ends_is_refused() {
        let read = |bytes: &[u8]| {
            Reader {
                bytes,
                at: 0,
                schema: 0,
                column: "",
            }
            .varint()
        };
        let mut max = vec![0xff; 18];
        max.push(0b11);
        assert_eq!(read(&max), Ok(u128::MAX));
        let mut over = vec![0xff; 18];
        over.push(0b111);
        assert!(matches!(read(&over), Err(CompactRowError::BadValue { .. })));
        assert!(matches!(
            read(&[0xff; 19]),
            Err(CompactRowError::BadValue { .. })
        ));
        let mut buf = Vec::new();
        put_varint(&mut buf, zigzag(i128::MIN));
        assert_eq!(read(&buf).map(unzigzag), Ok(i128::MIN));
    }

    #[test]
    fn damaged_rows_are_errors_naming_the_column() {
        let mut row = CompactRow::new(&DEDUP_AUDIT, 64);
        row.str("kind", "duplicate")
            .str("transaction_id", "tx-00ff00ff00ff00ff")
            .ts("event_time", 1)
            .ts("first_event_time", 2)
            .int("amount_minor", -3)
            .str("currency", "EUR")
            .hex128("first_content_hash", 4)
            .hex128("repeat_content_hash", 5)
            .int("first_partition", 6)
            .int("first_offset", 7)
            .opt_ts("kafka_timestamp", None)
            .int("source_partition", 8)
            .int("source_offset", 9)
            .int("outbox_seq", u64::MAX);
        let row = row.finish();
        assert!(to_json(&row).is_ok());
        for cut in 2..row.len() {
            assert!(
                matches!(
                    to_json(&row[..cut]),
                    Err(CompactRowError::Truncated { schema: 2, .. })
                ),
                "cut at {cut}"
            );
        }
        let mut longer = row.clone();
        longer.push(0);
        assert_eq!(
            to_json(&longer),
            Err(CompactRowError::TrailingBytes {
                schema: 2,
                extra: 1
            })
        );
        assert_eq!(
            to_json(&[MARKER, 99]),
            Err(CompactRowError::UnknownSchema(99))
        );
        // The string kind byte of `kind` is neither 0 nor 1.
        let mut bad = row.clone();
        bad[2] = 7;
        assert_eq!(
            to_json(&bad),
            Err(CompactRowError::BadValue {
                schema: 2,
                column: "kind"
            })
        );
    }

    proptest! {
        /// Every kind of column renders as `JsonRow` writes it, on random values.
        #[test]
        fn a_compact_row_renders_as_the_json_row_of_its_values(
            s in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,12}",
                    "[a-z]{0,3}-?[0-9a-f]{0,40}",
                    "\\PC{0,6}[0-9a-fA-F]{0,20}",
                ],
                13,
            ),
            ints in proptest::collection::vec(any::<i64>(), 9),
            seq in any::<u64>(),
            t in proptest::collection::vec(-62_135_596_800_000_000i64..253_402_300_799_999_999, 2),
            kafka in proptest::option::of(any::<i64>()),
            hash in any::<u128>(),
            category in any::<u16>(),
            flagged in any::<bool>(),
            reasons in proptest::collection::vec("[a-z_]{0,10}", 0..4),
        ) {
            let mut compact = CompactRow::new(&PAYMENTS, 256);
            let mut json = JsonRow::with_capacity(256);
            macro_rules! both {
                ($($call:ident($name:expr, $value:expr)),* $(,)?) => {
                    $( compact.$call($name, $value); json.$call($name, $value); )*
                };
            }
            both!(
                str("transaction_id", &s[0]),
                ts("event_time", t[0]),
                int("amount_minor", ints[0]),
                str("amount", &s[1]),
                str("currency", &s[2]),
                str("merchant_id", &s[3]),
                padded4("merchant_category", category),
                str("card_fingerprint", &s[4]),
                str("card_country", &s[5]),
                str("customer_id", &s[6]),
                str("ip_country", &s[7]),
                str("device_id", &s[8]),
                str("region", &s[9]),
                str("payment_method", &s[10]),
                int("schema_version", ints[1]),
                hex128("content_hash", hash),
                int("fraud_score", ints[2] as u8),
                bool("fraud_flagged", flagged),
                str_list("fraud_reasons", reasons.iter().map(String::as_str)),
                int("card_count_10m", ints[3] as u32),
                int("card_count_1h", ints[4] as u32),
                opt_ts("kafka_timestamp", kafka),
                int("source_partition", ints[5] as i32),
                int("source_offset", ints[6]),
                int("outbox_seq", seq),
            );
            let expected = String::from_utf8(json.finish()).unwrap();
            prop_assert_eq!(rendered(&mut compact), expected);
        }
    }
}
