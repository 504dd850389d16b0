//! The check that makes a replay from an older state safe: a resent row below the
//! sink's position counts as "already present" only if the sink's row at that sequence
//! is the same row (same [`RowIdentity`]). See `agreement` for when it applies.

use paydedup_sink::{identity, RowIdentity};
use paydedup_state::Table;

use super::RelayError;

/// Compares our rows (JSON, from `first_seq` on) with the sink's identities at the same
/// sequences. A sequence the sink lacks is a difference too.
pub(super) fn compare(
    table: Table,
    partition: i32,
    first_seq: u64,
    ours: &[Vec<u8>],
    theirs: &[(u64, RowIdentity)],
) -> Result<(), RelayError> {
    let mut theirs = theirs.iter().peekable();
    for (i, row) in ours.iter().enumerate() {
        let seq = first_seq + i as u64;
        let mine = identity::of_json_row(table, row).map_err(|source| RelayError::VerifyRead {
            table,
            partition,
            first_seq,
            source,
        })?;
        let stored = loop {
            match theirs.peek() {
                Some((s, _)) if *s < seq => {
                    theirs.next();
                }
                Some((s, id)) if *s == seq => break Some(id),
                _ => break None,
            }
        };
        if stored != Some(&mine) {
            return Err(RelayError::ReplayDiffers {
                table,
                partition,
                seq,
                ours: identity::columns(table)
                    .iter()
                    .zip(&mine)
                    .map(|(c, v)| format!("{c}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                theirs: stored.map_or_else(|| "no row".to_owned(), |id| id.join(" ")),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64, id: &str) -> Vec<u8> {
        format!(r#"{{"transaction_id":"{id}","source_offset":{offset},"fraud_score":7}}"#)
            .into_bytes()
    }

    fn stored(seq: u64, offset: i64, id: &str) -> (u64, RowIdentity) {
        (seq, vec![offset.to_string(), id.to_owned()])
    }

    #[test]
    fn the_same_rows_pass_whatever_their_other_columns() {
        let ours = [row(10, "a"), row(11, "b")];
        let theirs = [stored(5, 10, "a"), stored(6, 11, "b")];
        compare(Table::Payments, 0, 5, &ours, &theirs).unwrap();
    }

    /// Issue 9, hole 1: a replay that makes other rows at the sink's sequences must not
    /// have them acknowledged as present.
    #[test]
    fn another_row_at_the_same_sequence_stops() {
        let ours = [row(10, "a"), row(11, "x")];
        let theirs = [stored(5, 10, "a"), stored(6, 11, "b")];
        match compare(Table::Payments, 3, 5, &ours, &theirs) {
            Err(RelayError::ReplayDiffers {
                seq: 6,
                partition: 3,
                ..
            }) => {}
            other => panic!("expected a difference at seq 6, got {other:?}"),
        }
    }

    #[test]
    fn a_sequence_the_sink_lacks_stops() {
        let ours = [row(10, "a"), row(11, "b")];
        let theirs = [stored(5, 10, "a")];
        assert!(matches!(
            compare(Table::Payments, 0, 5, &ours, &theirs),
            Err(RelayError::ReplayDiffers { seq: 6, .. })
        ));
    }
}
