//! The binary layouts of fraud state values. List lengths are one byte (lists are
//! capped far below 255: `MAX_RECENT`, `MAX_DEVICES`, `MAX_CURRENCIES`); floats are
//! little-endian.
//!
//! - [`TAG_V2`], written today: integers as LEB128 varints (times as zigzag deltas from
//!   the value's last-seen time, so a few bytes each), strings as a varint length then
//!   UTF-8. A card's value is ~35 bytes where v1 took ~60: every fraud value goes
//!   through the write-ahead log, the memtable, a flush and compactions, so its size is
//!   a cost paid several times per payment.
//! - [`TAG`] (v1), written by earlier builds and still read: fixed 8-byte integers,
//!   strings as a two-byte length then UTF-8.
//!
//! A [`Reader`] answers `None` on anything short or malformed, never panics, so a
//! damaged value degrades to "no history".

use paydedup_event::SmolStr;

/// The byte after the 8-byte last-seen time that marks the v1 layout (a JSON value of
/// an earlier build has `{` there).
pub const TAG: u8 = 0xB1;

/// The byte after the 8-byte last-seen time that marks the v2 (varint) layout.
pub const TAG_V2: u8 = 0xB3;

pub struct Writer(Vec<u8>);

impl Writer {
    #[cfg(test)]
    pub fn with_capacity(n: usize) -> Writer {
        Writer(Vec::with_capacity(n))
    }

    /// A writer that appends to `buf` ([`Writer::finish`] gives it back).
    pub fn appending_to(buf: Vec<u8>) -> Writer {
        Writer(buf)
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A list length; returns how many items the caller must then write. Lists are
    /// capped by the state's own limits far below 255; a longer one (never built by
    /// `assess`) keeps its first 255 items.
    pub fn count(&mut self, n: usize) -> usize {
        let n = u8::try_from(n).unwrap_or(u8::MAX);
        self.u8(n);
        usize::from(n)
    }

    /// v1: only tests still write it (what earlier builds stored).
    #[cfg(test)]
    pub fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }

    /// v1: only tests still write it (what earlier builds stored).
    #[cfg(test)]
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_le_bytes());
    }

    /// v1: only tests still write it (what earlier builds stored).
    #[cfg(test)]
    pub fn str(&mut self, s: &str) {
        let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.bytes(&n.to_le_bytes());
        self.bytes(&s.as_bytes()[..usize::from(n)]);
    }

    /// v1: only tests still write it (what earlier builds stored).
    #[cfg(test)]
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }

    /// An unsigned LEB128 varint: 7 bits a byte, low bits first (1–10 bytes).
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A signed integer as a zigzag varint (small magnitudes, either sign, are short).
    pub fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A string as a varint length then its UTF-8 bytes.
    pub fn vstr(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader(b)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub fn count(&mut self) -> Option<usize> {
        self.take::<1>().map(|[n]| usize::from(n))
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    pub fn f64(&mut self) -> Option<f64> {
        self.take().map(f64::from_le_bytes)
    }

    pub fn str(&mut self) -> Option<SmolStr> {
        let n = usize::from(u16::from_le_bytes(self.take()?));
        self.text(n)
    }

    pub fn opt_str(&mut self) -> Option<Option<SmolStr>> {
        match self.take::<1>()? {
            [0] => Some(None),
            [1] => self.str().map(Some),
            _ => None,
        }
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let [b] = self.take::<1>()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may carry only the top bit of a u64.
            if shift == 63 && bits > 1 {
                return None;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn vstr(&mut self) -> Option<SmolStr> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.text(n)
    }

    /// The next `n` bytes as text: held inline when short (a currency, a country, a
    /// device id), so reading a card or a customer allocates no string.
    fn text(&mut self, n: usize) -> Option<SmolStr> {
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        std::str::from_utf8(s).ok().map(SmolStr::new)
    }

    /// Whether every byte was read (trailing bytes mean a layout this build does not know).
    pub fn end(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzags_round_trip_at_every_width() {
        let unsigned = [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX];
        let signed = [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN, i64::MIN + 1];
        let mut w = Writer::with_capacity(0);
        for v in unsigned {
            w.varint(v);
        }
        for v in signed {
            w.zigzag(v);
        }
        w.vstr("d-ü");
        let b = w.finish();
        let mut r = Reader::new(&b);
        for v in unsigned {
            assert_eq!(r.varint(), Some(v));
        }
        for v in signed {
            assert_eq!(r.zigzag(), Some(v));
        }
        assert_eq!(r.vstr().as_deref(), Some("d-ü"));
        assert!(r.end());
        // Short forms are short: one byte up to 127, a small negative delta one byte.
        let one = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::with_capacity(0);
            f(&mut w);
            w.finish().len()
        };
        assert_eq!(one(&|w| w.varint(127)), 1);
        assert_eq!(one(&|w| w.zigzag(-64)), 1);
        assert_eq!(one(&|w| w.varint(u64::MAX)), 10);
    }

    #[test]
    fn a_varint_that_never_ends_or_overflows_is_refused() {
        assert_eq!(Reader::new(&[0x80; 11]).varint(), None);
        assert_eq!(Reader::new(&[0x80, 0x80]).varint(), None);
        // Ten bytes whose last carries more than u64's top bit.
        let mut over = [0xff; 10];
        over[9] = 0x02;
        assert_eq!(Reader::new(&over).varint(), None);
        // A string longer than what is left.
        assert_eq!(Reader::new(&[5, b'a']).vstr(), None);
    }
}
