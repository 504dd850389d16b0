//! Outbox pages: the rows one batch gives one (table, partition), stored as one value.
//!
//! Why pages: what an outbox row costs is its bytes, not its key. Every byte put goes
//! through the write-ahead log, the memtable, a flush and compactions; on the peers'
//! input, putting each JSON row as its own value took ~10 µs of CPU per event, and the
//! same number of puts with 8-byte values cost nothing measurable. A page compresses a
//! batch's rows together (LZ4; the rows of one table repeat their field names, so a
//! page is a fraction of the rows' size) before RocksDB sees them, on the commit
//! thread.
//!
//! A page is keyed like a row was, by its *first* sequence (`keys::outbox_key`), and
//! holds the rows `first .. first + count` with no gap. Rows delivered from a page the
//! relay has not finished are hidden by the stream's floor (`keys::meta::outbox_floor`,
//! the first undelivered sequence), written with the delete of the pages before it.
//!
//! Value layout: `TAG`, the row count (u32 BE), then an LZ4 block (its decompressed
//! size prepended, u32 LE) of `len (u32 BE), bytes` per row. A value that does not start
//! with `TAG` is a single row written by an earlier build (JSON, which never starts
//! with the byte 0xB2), so state directories from before pages still drain.

use crate::StateError;

/// First byte of a page. Not a byte any UTF-8 text (so no JSON row) starts with.
pub const TAG: u8 = 0xB2;

/// A page larger than this when decompressed is corrupt, not a batch (a batch's rows
/// of one stream are a few MB): refuse it instead of allocating what it claims.
const MAX_DECOMPRESSED: usize = 1 << 30;

/// Encodes rows (in sequence order, no gap) as one page value, in buffers of its own
/// (what a commit's reused buffers must give the same bytes as; commits use
/// [`encode_into`]).
pub fn encode<R: AsRef<[u8]>>(rows: &[R]) -> Vec<u8> {
    let mut buffers = PageBuffers::default();
    encode_into(rows, &mut buffers).to_vec()
}

/// The memory one page is built in, kept from one commit to the next.
///
/// Why: a commit builds a page or more of several hundred KB; allocated afresh each
/// time (and the output zeroed first), they were new memory at every commit, which
/// the allocator returned to the kernel between commits and took back with a page
/// fault a page: a few per cent of the commit thread's samples on the peers' input.
#[derive(Debug, Default)]
pub struct PageBuffers {
    /// The rows, length-prefixed, before compression.
    plain: Vec<u8>,
    /// The value: header and LZ4 block. Never shrunk (but by [`PageBuffers::trim`]),
    /// so growing it zeroes only what it never had; past the page just built it holds
    /// an earlier, larger page's bytes, which never leave it.
    value: Vec<u8>,
}

impl PageBuffers {
    /// Lets go of buffers grown past `max_bytes` (a restore commits a whole state in
    /// one batch: its pages' memory should not stay for the process's life).
    pub fn trim(&mut self, max_bytes: usize) {
        let_go_past(&mut self.plain, max_bytes);
        let_go_past(&mut self.value, max_bytes);
    }
}

/// Replaces `buffer` by an empty one if it grew past `max_bytes` (a kept buffer's
/// memory bound).
pub fn let_go_past(buffer: &mut Vec<u8>, max_bytes: usize) {
    if buffer.capacity() > max_bytes {
        *buffer = Vec::new();
    }
}

/// [`encode`] into `buffers`: the page value, borrowed from them.
pub fn encode_into<'b, R: AsRef<[u8]>>(rows: &[R], buffers: &'b mut PageBuffers) -> &'b [u8] {
    let PageBuffers { plain, value } = buffers;
    plain.clear();
    plain.reserve(rows.iter().map(|r| 4 + r.as_ref().len()).sum());
    for r in rows {
        let r = r.as_ref();
        plain.extend_from_slice(&(r.len() as u32).to_be_bytes());
        plain.extend_from_slice(r);
    }
    // Compressed straight into the value, after its header and the size LZ4 prepends.
    let room = 9 + lz4_flex::block::get_maximum_output_size(plain.len());
    if value.len() < room {
        value.resize(room, 0);
    }
    value[0] = TAG;
    value[1..5].copy_from_slice(&(rows.len() as u32).to_be_bytes());
    value[5..9].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    let n = lz4_flex::block::compress_into(plain, &mut value[9..room])
        .expect("the buffer has LZ4's maximum output size");
    // The page only: what lies past it is an earlier page's.
    &value[..9 + n]
}

/// How many rows a stored value holds, from its header alone.
pub fn row_count(value: &[u8]) -> Result<u64, StateError> {
    if value.first() != Some(&TAG) {
        return Ok(1);
    }
    let n = value.get(1..5).ok_or(StateError::BadValue {
        what: "outbox page header",
        len: value.len(),
    })?;
    Ok(u64::from(u32::from_be_bytes([n[0], n[1], n[2], n[3]])))
}

/// The rows of a stored value whose first sequence is `first_seq`, as (seq, row), with
/// the rows below `from_seq` left out.
pub fn decode(
    first_seq: u64,
    value: &[u8],
    from_seq: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
    let mut rows = Vec::with_capacity(row_count(value)?.min(1 << 16) as usize);
    visit(first_seq, value, from_seq, &mut Vec::new(), |seq, row| {
        rows.push((seq, row.to_vec()));
        true
    })?;
    Ok(rows)
}

/// [`decode`] without a copy of each row: calls `each(seq, row)` for the rows from
/// `from_seq` on, in order, while it returns `true`, with each row borrowed from
/// `scratch`, which holds the decompressed page (a reader of many pages passes the same
/// one, so their bytes land in memory it already has). The whole page is checked
/// either way: a damaged page is an error even if `each` stopped before the damage.
/// Returns whether `each` asked for more.
pub fn visit(
    first_seq: u64,
    value: &[u8],
    from_seq: u64,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> Result<bool, StateError> {
    if value.first() != Some(&TAG) {
        return Ok(first_seq < from_seq || each(first_seq, value));
    }
    let count = row_count(value)?;
    let body = &value[5..];
    let claimed = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(StateError::BadValue {
            what: "outbox page (size)",
            len: value.len(),
        })?;
    if claimed > MAX_DECOMPRESSED {
        return Err(StateError::BadValue {
            what: "outbox page (claimed size)",
            len: claimed,
        });
    }
    // Zeroed only where the scratch never reached. Rows are read from the bytes the
    // block wrote, never from what an earlier page left past them.
    if scratch.len() < claimed {
        // Exact: a kept scratch is let go of past a bound, which doubling overshoots.
        scratch.reserve_exact(claimed - scratch.len());
        scratch.resize(claimed, 0);
    }
    let plain = &mut scratch[..claimed];
    let n =
        lz4_flex::block::decompress_into(&body[4..], plain).map_err(|_| StateError::BadValue {
            what: "outbox page (LZ4 block)",
            len: value.len(),
        })?;
    let plain = &plain[..n];
    let mut more = true;
    let mut at = 0;
    for i in 0..count {
        let len = plain
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(StateError::BadValue {
                what: "outbox page (row length)",
                len: plain.len(),
            })?;
        let row = plain
            .get(at + 4..at + 4 + len)
            .ok_or(StateError::BadValue {
                what: "outbox page (row)",
                len: plain.len(),
            })?;
        at += 4 + len;
        let seq = first_seq + i;
        if more && seq >= from_seq {
            more = each(seq, row);
        }
    }
    if at != plain.len() {
        return Err(StateError::BadValue {
            what: "outbox page (trailing bytes)",
            len: plain.len() - at,
        });
    }
    Ok(more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_the_floor_hides_delivered_ones() {
        let rows: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("{{\"transaction_id\":\"tx-{i}\",\"amount_minor\":{i}}}").into_bytes())
            .collect();
        let page = encode(&rows);
        assert_eq!(page[0], TAG);
        assert_eq!(row_count(&page).unwrap(), 50);
        // Repeated field names compress: the page is smaller than its rows.
        assert!(page.len() < rows.iter().map(Vec::len).sum::<usize>() / 2);
        let all = decode(100, &page, 0).unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(all[7], (107, rows[7].clone()));
        let rest = decode(100, &page, 140).unwrap();
        assert_eq!(rest.first().map(|r| r.0), Some(140));
        assert_eq!(rest.len(), 10);
        assert!(decode(100, &page, 150).unwrap().is_empty());
        // An empty row is a row.
        let page = encode(&[b"".to_vec(), b"x".to_vec()]);
        assert_eq!(
            decode(0, &page, 0).unwrap(),
            vec![(0, vec![]), (1, b"x".to_vec())]
        );
    }

    /// 400 rows of different lengths: a page larger than the small ones after it.
    fn big_rows() -> Vec<Vec<u8>> {
        (0..400)
            .map(|i| format!("row {i} {}", i * 7919).into_bytes())
            .collect()
    }

    #[test]
    fn reused_buffers_give_the_bytes_of_a_fresh_page() {
        // A large page first, then smaller ones: what the larger left in the buffers
        // must not reach a later page.
        let big = big_rows();
        let small = [b"abc".to_vec(), b"".to_vec(), b"z".to_vec()];
        let mut buffers = PageBuffers::default();
        for rows in [&big[..], &small[..], &big[..10], &small[..1]] {
            let page = encode_into(rows, &mut buffers).to_vec();
            assert_eq!(page, encode(rows));
            let back: Vec<Vec<u8>> = decode(0, &page, 0)
                .unwrap()
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            assert_eq!(back, rows);
        }
        // Trimmed, the buffers let go of what they grew to, and build the same pages.
        buffers.trim(0);
        assert_eq!(buffers.plain.capacity() + buffers.value.capacity(), 0);
        assert_eq!(encode_into(&big, &mut buffers), &encode(&big)[..]);
    }

    /// What `visit` hands out, as owned rows.
    fn visited(
        page: &[u8],
        from: u64,
        scratch: &mut Vec<u8>,
        stop_after: usize,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut seen = Vec::new();
        visit(100, page, from, scratch, |seq, row| {
            seen.push((seq, row.to_vec()));
            seen.len() < stop_after
        })
        .unwrap();
        seen
    }

    #[test]
    fn a_scratch_reused_after_a_larger_page_gives_only_this_pages_rows() {
        // A large page first: what it left in the scratch must not reach a later page.
        let big = big_rows();
        let small = [b"abc".to_vec(), b"".to_vec(), b"z".to_vec()];
        let mut scratch = Vec::new();
        for rows in [&big[..], &small[..], &big[..10], &small[..1]] {
            let page = encode(rows);
            assert_eq!(
                visited(&page, 0, &mut scratch, usize::MAX),
                decode(100, &page, 0).unwrap()
            );
            let back: Vec<Vec<u8>> = visited(&page, 0, &mut scratch, usize::MAX)
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            assert_eq!(back, rows);
        }
        // The floor hides delivered rows here too.
        let page = encode(&big);
        let rest = visited(&page, 490, &mut scratch, usize::MAX);
        assert_eq!(rest.first().map(|r| r.0), Some(490));
        assert_eq!(rest.len(), 10);
    }

    #[test]
    fn a_page_shorter_than_it_claims_never_reads_what_an_earlier_page_left() {
        // The scratch holds a larger page's rows; a damaged page then claims one row
        // (and its bytes) more than its block holds. Past the bytes the block wrote lie
        // the earlier page's next row, well formed: it must not be read as this page's.
        let big = big_rows();
        let mut scratch = Vec::new();
        assert_eq!(
            visited(&encode(&big), 0, &mut scratch, usize::MAX).len(),
            400
        );
        let k = 10;
        let prefixed = |rows: &[Vec<u8>]| {
            let mut plain = Vec::new();
            for r in rows {
                plain.extend_from_slice(&(r.len() as u32).to_be_bytes());
                plain.extend_from_slice(r);
            }
            plain
        };
        let claimed = prefixed(&big[..k + 1]).len() as u32;
        let mut damaged = vec![TAG];
        damaged.extend_from_slice(&(k as u32 + 1).to_be_bytes());
        damaged.extend_from_slice(&claimed.to_le_bytes());
        damaged.extend_from_slice(&lz4_flex::block::compress(&prefixed(&big[..k])));
        assert!(visit(0, &damaged, 0, &mut scratch, |_, _| true).is_err());
        // Every damaged page of the fresh-scratch test fails through a used one too.
        let page = encode(&[b"abc".to_vec(), b"defgh".to_vec()]);
        for cut in 1..page.len() {
            visited(&encode(&big), 0, &mut scratch, usize::MAX);
            assert!(
                visit(0, &page[..cut], 0, &mut scratch, |_, _| true).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn visiting_stops_where_asked_but_checks_the_whole_page() {
        let rows = [b"abc".to_vec(), b"defgh".to_vec(), b"ij".to_vec()];
        let page = encode(&rows);
        let mut scratch = Vec::new();
        let mut seen = 0;
        let more = visit(0, &page, 0, &mut scratch, |_, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert!(!more, "the visit was asked to stop");
        assert_eq!(seen, 2, "no row after the stop");
        assert!(visit(0, &page, 0, &mut scratch, |_, _| true).unwrap());
        // Damage after the rows a visit stops at is an error all the same.
        let mut wrong_count = page.clone();
        wrong_count[4] = 4;
        let mut seen = 0;
        let damaged = visit(0, &wrong_count, 0, &mut scratch, |_, _| {
            seen += 1;
            false
        });
        assert!(damaged.is_err());
        assert_eq!(seen, 1);
        // A legacy row is visited once, or not at all below the floor.
        let legacy = br#"{"transaction_id":"tx-1"}"#;
        assert_eq!(
            visited(legacy, 0, &mut scratch, usize::MAX),
            vec![(100, legacy.to_vec())]
        );
        assert!(visited(legacy, 101, &mut scratch, usize::MAX).is_empty());
    }

    #[test]
    fn a_value_from_before_pages_is_one_row() {
        let legacy = br#"{"transaction_id":"tx-1"}"#;
        assert_eq!(row_count(legacy).unwrap(), 1);
        assert_eq!(decode(9, legacy, 0).unwrap(), vec![(9, legacy.to_vec())]);
        assert!(decode(9, legacy, 10).unwrap().is_empty());
    }

    #[test]
    fn damaged_pages_are_errors_not_rows() {
        let page = encode(&[b"abc".to_vec(), b"defgh".to_vec()]);
        for cut in 1..page.len() {
            assert!(decode(0, &page[..cut], 0).is_err(), "cut at {cut}");
        }
        let mut wrong_count = page.clone();
        wrong_count[4] = 3;
        assert!(decode(0, &wrong_count, 0).is_err());
        let mut huge = page.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(0, &huge, 0).is_err());
    }
}
