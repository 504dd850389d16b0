//! Rewriting fraud keys of an earlier layout: the one-time upgrade of a state directory
//! whose fraud state was written under keys a newer build no longer reads.
//!
//! The store does not know what a fraud key means (the fraud crate does), so the caller
//! says which key prefixes are old and what each old key becomes. Each chunk of keys
//! is one atomic write, the new key put with the old value and the old key deleted:
//! a crash mid-way leaves every key under exactly one name, and the next run rewrites
//! the rest. The iterator reads a snapshot, so the keys written behind it are not met
//! again.
//!
//! Old keys are only ever in the per-key `fraud` family: the builds that wrote them
//! predate the fraud log (`store::fraud_log`), whose pages hold current keys only.
//! A rewrite deletes keys, so its commits fold the log first.
//!
//! The renamed keys' old names are then compacted away: until a compaction drops
//! their tombstones, every later start's scan for old keys would step over all of
//! them (1.2 M renamed keys: 0.3 s a start, measured), time a restart cannot spare.

use super::StateStore;
use crate::cf::CF_FRAUD;
use crate::{StateBatch, StateError};

/// Keys rewritten per atomic write.
const CHUNK: u64 = 10_000;

impl StateStore {
    /// Rewrites every fraud key under one of `prefixes` to `current(key)` (a key for
    /// which it answers `None` is left as it is). Returns how many keys were
    /// rewritten; 0, and no write, when there are none (every start after the first).
    pub fn rekey_fraud(
        &self,
        prefixes: &[&[u8]],
        current: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<u64, StateError> {
        let handle = self.cf(CF_FRAUD)?;
        let mut rewritten = 0u64;
        for prefix in prefixes {
            let before = rewritten;
            let mut batch = StateBatch::new();
            let mut in_batch = 0u64;
            self.scan_prefix(CF_FRAUD, prefix, |old, value| {
                let Some(new) = current(old) else {
                    return Ok(());
                };
                batch.put_fraud(new, value);
                batch.delete_fraud(old);
                in_batch += 1;
                if in_batch == CHUNK {
                    self.commit(std::mem::take(&mut batch))?;
                    rewritten += in_batch;
                    in_batch = 0;
                }
                Ok(())
            })?;
            self.commit(batch)?;
            rewritten += in_batch;
            if rewritten > before {
                self.db
                    .compact_range_cf(handle, Some(prefix), Some(&prefix_end(prefix)));
            }
        }
        Ok(rewritten)
    }
}

/// The first key after every key that starts with `prefix` (whose last byte is below
/// 0xFF, as the callers' `…/` prefixes are).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn upper(old: &[u8]) -> Option<Vec<u8>> {
        let rest = old.strip_prefix(b"old/")?;
        (rest != b"keep").then(|| [b"NEW/".as_slice(), rest].concat())
    }

    #[test]
    fn old_keys_move_to_their_new_names_once_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        // Written per key, as the builds that wrote old keys did.
        let per_key = StoreOptions {
            fraud_log: false,
            ..StoreOptions::default()
        };
        let s = StateStore::open(dir.path(), &per_key).unwrap();
        let mut b = StateBatch::new();
        let value = |i: u64| [i.to_be_bytes().as_slice(), b"v"].concat();
        // More than a chunk, so the rewrite takes several writes.
        let n = CHUNK + 5;
        for i in 0..n {
            b.put_fraud(format!("old/{i:06}").into_bytes(), value(i));
        }
        b.put_fraud(b"old/keep", value(1));
        b.put_fraud(b"other/1", value(2));
        s.commit(b).unwrap();
        drop(s);
        let s = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        // A paged change of a current key before the rewrite, which stays.
        let mut b = StateBatch::new();
        b.put_fraud(b"other/2", value(3));
        s.commit(b).unwrap();

        assert_eq!(s.rekey_fraud(&[b"old/"], upper).unwrap(), n);
        let new_keys: Vec<Vec<u8>> = [0, n - 1]
            .iter()
            .map(|i| format!("NEW/{i:06}").into_bytes())
            .collect();
        let got = s.get_fraud_many(&new_keys).unwrap();
        assert_eq!(got, vec![Some(value(0)), Some(value(n - 1))]);
        assert_eq!(s.get_fraud(b"old/000000").unwrap(), None);
        assert_eq!(s.get_fraud(b"old/keep").unwrap(), Some(value(1)));
        assert_eq!(s.get_fraud(b"other/1").unwrap(), Some(value(2)));
        assert_eq!(s.get_fraud(b"other/2").unwrap(), Some(value(3)));
        assert_eq!(s.stats().unwrap().fraud_keys, n + 3);
        // A second start finds nothing to do.
        assert_eq!(s.rekey_fraud(&[b"old/"], upper).unwrap(), 0);
    }
}
