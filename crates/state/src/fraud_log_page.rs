//! Fraud log pages: one commit's fraud puts, in order, stored as one value of the
//! `fraud_log` column family (see `store::fraud_log` for why and for the fold that
//! moves them into the per-key `fraud` family).
//!
//! Value layout: entries back to back, each `[key length: u8][value length: u16 LE]
//! [key][value]`, in the order the commit made them (a later entry of a key is newer).
//! Only puts that fit those lengths are paged: a commit with a delete or a longer key
//! or value writes its fraud changes per key instead (`store::fraud_log`), so a page
//! holds no tombstones.

use crate::StateError;

/// Bytes of an entry's header.
const HEADER: usize = 3;

/// Whether a put of `key` = `value` can be an entry of a page.
pub fn fits(key: &[u8], value: &[u8]) -> bool {
    key.len() <= usize::from(u8::MAX) && value.len() <= usize::from(u16::MAX)
}

/// Appends the put `key` = `value` to `page`. The caller checked [`fits`].
pub fn push(page: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    debug_assert!(fits(key, value));
    page.push(key.len() as u8);
    page.extend_from_slice(&(value.len() as u16).to_le_bytes());
    page.extend_from_slice(key);
    page.extend_from_slice(value);
}

/// The entries of a stored page, in the order they were put: `(key, value)`. A page
/// that is not whole entries is an error (RocksDB checksums what it stores, so that is
/// a bug or a foreign write, never a torn write).
pub fn entries(page: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), StateError>> {
    spans(page).map(|span| {
        span.map(|s| {
            let value_at = s.key_at + s.key_len;
            (
                &page[s.key_at..value_at],
                &page[value_at..value_at + s.value_len],
            )
        })
    })
}

/// Where one entry's key and value lie in its page: the key at `key_at`, the value
/// right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub key_at: usize,
    pub key_len: usize,
    pub value_len: usize,
}

/// [`entries`] as positions in the page (for a caller that keeps many pages in one
/// buffer and refers to their entries by position).
pub fn spans(page: &[u8]) -> impl Iterator<Item = Result<Span, StateError>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == page.len() {
            return None;
        }
        let bad = StateError::BadValue {
            what: "fraud log page",
            len: page.len(),
        };
        let Some(header) = page.get(at..at + HEADER) else {
            at = page.len();
            return Some(Err(bad));
        };
        let span = Span {
            key_at: at + HEADER,
            key_len: usize::from(header[0]),
            value_len: usize::from(u16::from_le_bytes([header[1], header[2]])),
        };
        let end = span.key_at + span.key_len + span.value_len;
        if end > page.len() {
            at = page.len();
            return Some(Err(bad));
        }
        at = end;
        Some(Ok(span))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_order_with_empty_and_longest_fields() {
        let long_key = vec![7u8; 255];
        let long_value = vec![9u8; 65_535];
        let puts: Vec<(&[u8], &[u8])> = vec![
            (b"card/a", b"v1"),
            (b"", b""),
            (&long_key, &long_value),
            (b"card/a", b"v2"),
        ];
        let mut page = Vec::new();
        for (k, v) in &puts {
            assert!(fits(k, v));
            push(&mut page, k, v);
        }
        let back: Vec<(&[u8], &[u8])> = entries(&page).map(Result::unwrap).collect();
        assert_eq!(back, puts);
    }

    #[test]
    fn lengths_past_the_header_do_not_fit() {
        assert!(!fits(&[0; 256], b""));
        assert!(!fits(b"k", &[0; 65_536]));
    }

    #[test]
    fn a_page_cut_short_is_an_error_not_a_shorter_page() {
        let mut page = Vec::new();
        push(&mut page, b"card/a", b"value");
        push(&mut page, b"card/b", b"value");
        for cut in [1, 2, HEADER + 3, page.len() - 1] {
            let got: Vec<_> = entries(&page[..page.len() - cut]).collect();
            assert!(
                matches!(got.last(), Some(Err(StateError::BadValue { .. }))),
                "cut {cut}: {got:?}"
            );
        }
        assert_eq!(entries(&[]).count(), 0);
    }
}
