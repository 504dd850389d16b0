//! [`ResidentKeys`]: which keys a column family holds, kept in memory, so that a lookup
//! of a key the store does not hold never reaches RocksDB: nine in ten transaction ids
//! are new, and so is every card and customer on its first payment (on the peers'
//! input, 5.9 M card and customer keys for up to 20 M fraud lookups over 10 M events: most
//! fraud lookups are hits, which the set cannot spare).
//!
//! **The invariant: every key the column family holds is resident** (no false
//! negatives). The converse need not hold: a resident fingerprint whose key is gone
//! (expired, forgotten, or a 64-bit collision with a held key) costs one RocksDB read that
//! answers "absent", which is exactly what the store answered before this index existed.
//! So the set is filled by a full scan when the store opens, gains every key a commit
//! puts *after* that commit is durable, and may lag behind deletions.
//!
//! A key is held as a 64-bit fingerprint and one packed `u64`: its time in whole seconds
//! rounded up (so the set never lets go of a key before the store's own expiry rule
//! would) and the partition whose watermark expires it. 16 bytes and a control byte per
//! key; 10 M keys take about 290 MB (by arithmetic: 2^24 buckets at hashbrown's load factor).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::expiry::is_expired;

/// Fingerprints are already uniform hashes: the map uses them as they are.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this keeps the trait total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A key's time in whole seconds, rounded up, as stored: `u32::MAX` means "never
/// expires" (a time beyond 2106, or one that does not fit).
fn pack(time_micros: i64, partition: i32) -> u64 {
    let secs = time_micros.saturating_add(999_999).div_euclid(1_000_000);
    let secs = u32::try_from(secs.max(0)).unwrap_or(u32::MAX);
    (u64::from(secs) << 32) | u64::from(partition as u32)
}

/// The time to judge a packed entry by (never earlier than its key's real time), and
/// its partition.
fn unpack(v: u64) -> (i64, i32) {
    let secs = (v >> 32) as u32;
    let time = if secs == u32::MAX {
        i64::MAX
    } else {
        i64::from(secs) * 1_000_000
    };
    (time, v as u32 as i32)
}

#[derive(Default)]
pub struct ResidentKeys {
    map: HashMap<u64, u64, BuildHasherDefault<FingerprintHasher>>,
}

impl ResidentKeys {
    pub fn insert(&mut self, fingerprint: u64, time_micros: i64, partition: i32) {
        let packed = pack(time_micros, partition);
        // A key written again keeps the later time (fraud state's last-seen moves on).
        let v = self.map.entry(fingerprint).or_insert(packed);
        if unpack(packed).0 > unpack(*v).0 {
            *v = packed;
        }
    }

    /// Whether the store may hold the key: `false` is certain, `true` must be asked.
    pub fn may_hold(&self, fingerprint: u64) -> bool {
        self.map.contains_key(&fingerprint)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of memory the set takes (by its capacity: 16 bytes and a control byte a
    /// bucket).
    pub fn memory_bytes(&self) -> usize {
        self.map.capacity() * 17
    }

    /// Lets go of every key whose time is expired by `ttl` under its partition's horizon.
    /// Returns how many were let go.
    pub fn sweep(&mut self, ttl_micros: i64, horizon: impl Fn(i32) -> i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| {
            let (time, partition) = unpack(*v);
            !is_expired(time, ttl_micros, horizon(partition))
        });
        before - self.map.len()
    }

    /// Lets go of every key of the given partitions.
    pub fn forget(&mut self, partitions: &[i32]) {
        self.map.retain(|_, v| !partitions.contains(&unpack(*v).1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_time_is_never_earlier_than_the_real_one() {
        for t in [
            0,
            1,
            999_999,
            1_000_000,
            1_000_001,
            -1,
            -5_000_000,
            1_700_000_000_123_456,
        ] {
            let (time, p) = unpack(pack(t, 7));
            assert!(time >= t, "{t} became {time}");
            assert!(time - t < 1_000_000 || t < 0, "{t} became {time}");
            assert_eq!(p, 7);
        }
        assert_eq!(unpack(pack(i64::MAX, -1)), (i64::MAX, -1));
        assert_eq!(unpack(pack(i64::MIN, 3)).1, 3);
    }

    #[test]
    fn sweeping_keeps_what_the_store_would_keep() {
        let mut r = ResidentKeys::default();
        r.insert(1, 10_000_000, 0); // 10 s on partition 0
        r.insert(2, 10_000_000, 1); // 10 s on partition 1
        r.insert(3, 10_500_000, 0); // 10.5 s: packed as 11 s
        assert!(r.may_hold(1) && !r.may_hold(4));
        // ttl 5 s; partition 0's horizon at 15.5 s expires 10 s but not 10.5 s
        // (rounded up, 11 + 5 = 16 ≥ 15.5); partition 1's horizon is behind.
        let gone = r.sweep(5_000_000, |p| if p == 0 { 15_500_000 } else { 0 });
        assert_eq!(gone, 1);
        assert!(!r.may_hold(1) && r.may_hold(2) && r.may_hold(3));
        r.forget(&[1]);
        assert!(!r.may_hold(2) && r.may_hold(3));
    }

    #[test]
    fn a_key_written_again_keeps_its_latest_time() {
        let mut r = ResidentKeys::default();
        r.insert(1, 20_000_000, 0);
        r.insert(1, 10_000_000, 0);
        assert_eq!(r.sweep(5_000_000, |_| 24_000_000), 0);
        assert_eq!(r.len(), 1);
        assert_eq!(r.sweep(5_000_000, |_| 26_000_000), 1);
        assert!(r.is_empty());
    }
}
