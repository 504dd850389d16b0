//! The binary layout of fraud state values: little-endian integers and floats, lengths
//! as one byte (lists are capped far below 255: `MAX_RECENT`, `MAX_DEVICES`,
//! `MAX_CURRENCIES`) and strings as a two-byte length then UTF-8 (event text fields are
//! at most 64 bytes). A [`Reader`] answers `None` on anything short or malformed, never
//! panics, so a damaged value degrades to "no history".

/// The byte after the 8-byte last-seen time that marks this layout (a JSON value of an
/// earlier build has `{` there).
pub const TAG: u8 = 0xB1;

pub struct Writer(Vec<u8>);

impl Writer {
    pub fn with_capacity(n: usize) -> Writer {
        Writer(Vec::with_capacity(n))
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

    pub fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn str(&mut self, s: &str) {
        let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.bytes(&n.to_le_bytes());
        self.bytes(&s.as_bytes()[..usize::from(n)]);
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
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

    pub fn str(&mut self) -> Option<String> {
        let n = usize::from(u16::from_le_bytes(self.take()?));
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    pub fn opt_str(&mut self) -> Option<Option<String>> {
        match self.take::<1>()? {
            [0] => Some(None),
            [1] => self.str().map(Some),
            _ => None,
        }
    }

    /// Whether every byte was read (trailing bytes mean a layout this build does not know).
    pub fn end(&self) -> bool {
        self.0.is_empty()
    }
}
