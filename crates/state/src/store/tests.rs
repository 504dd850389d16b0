use super::*;

fn open(dir: &Path) -> StateStore {
    StateStore::open(dir, &StoreOptions::default()).unwrap()
}

fn open_with_fraud_ttl(dir: &Path, ttl_micros: i64) -> StateStore {
    let opts = StoreOptions {
        fraud_ttl_micros: ttl_micros,
        ..StoreOptions::default()
    };
    StateStore::open(dir, &opts).unwrap()
}

/// A store with the dedup retention `retention_micros`, its resident sets loaded.
fn open_loaded_with_retention(dir: &Path, retention_micros: i64) -> StateStore {
    let opts = StoreOptions {
        dedup_retention_micros: Some(retention_micros),
        ..StoreOptions::default()
    };
    let s = StateStore::open(dir, &opts).unwrap();
    s.wait_resident().unwrap();
    s
}

fn entry(t: i64) -> DedupEntry {
    DedupEntry {
        event_time_micros: t,
        content_hash: 7,
        partition: 0,
        offset: t,
    }
}

#[test]
fn commit_is_visible_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let mut b = StateBatch::new();
        b.put_dedup(keys::dedup_key("tx-1"), &entry(5));
        b.put_outbox(Table::Payments, 0, 0, b"row0");
        b.set_next_seq(Table::Payments, 0, 1);
        b.set_next_offset(0, 10);
        b.set_max_event_time(0, 99);
        s.commit(b).unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        s.get_dedup_many(&[keys::dedup_key("tx-1"), keys::dedup_key("tx-2")])
            .unwrap(),
        vec![Some(entry(5)), None]
    );
    assert_eq!(s.next_offsets().unwrap(), BTreeMap::from([(0, 10)]));
    assert_eq!(s.max_event_times().unwrap(), BTreeMap::from([(0, 99)]));
    assert_eq!(
        s.next_seqs().unwrap(),
        BTreeMap::from([((Table::Payments, 0), 1)])
    );
    assert_eq!(
        s.outbox_rows(Table::Payments, 0, 10).unwrap(),
        vec![(0, b"row0".to_vec())]
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match StateStore::open(dir.path(), &StoreOptions::default()) {
        Err(StateError::Locked { .. }) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second writer must be refused"),
    }
}

#[test]
fn corrupt_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Overwrite the CURRENT file (which names the manifest) with garbage.
    std::fs::write(dir.path().join("CURRENT"), b"garbage\n").unwrap();
    let err = StateStore::open(dir.path(), &StoreOptions::default())
        .err()
        .expect("a corrupt directory must not open");
    // The operator gets the Corrupt variant, naming the directory.
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn outbox_iterates_in_sequence_order_and_deletes_through() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut b = StateBatch::new();
    for seq in [3_u64, 1, 2, 0, 255, 256] {
        b.put_outbox(Table::DedupAudit, 2, seq, seq.to_string().into_bytes());
    }
    b.put_outbox(Table::DedupAudit, 3, 0, b"other partition");
    s.commit(b).unwrap();
    let rows = s.outbox_rows(Table::DedupAudit, 2, 100).unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 255, 256]);
    s.outbox_delete_through(Table::DedupAudit, 2, 3).unwrap();
    let seqs: Vec<u64> = s
        .outbox_rows(Table::DedupAudit, 2, 100)
        .unwrap()
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(seqs, vec![255, 256]);
    assert_eq!(s.outbox_rows(Table::DedupAudit, 3, 100).unwrap().len(), 1);
    assert_eq!(
        s.outbox_depths().unwrap(),
        BTreeMap::from([((Table::DedupAudit, 2), 2), ((Table::DedupAudit, 3), 1)])
    );
}

/// A dedup page goes whole, in a commit, once its newest entry has expired under its
/// partition's horizon: no live entry leaves with it.
#[test]
fn expired_dedup_pages_are_deleted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        dedup_retention_micros: Some(100),
        ..StoreOptions::default()
    };
    let s = StateStore::open(dir.path(), &opts).unwrap();
    // Two commits, two pages of partition 0: newest 499 and newest 999.
    for times in [0..500_i64, 500..1000] {
        let mut b = StateBatch::new();
        for t in times {
            b.put_dedup(keys::dedup_key(&format!("tx-{t}")), &entry(t));
        }
        s.commit(b).unwrap();
    }
    let pages = |s: &StateStore| s.count_keys(CF_DEDUP_PAGES).unwrap();
    assert_eq!(pages(&s), 2);
    // Horizon 600: 499 + 100 < 600, the first page has expired; 999 has not. The next
    // commit deletes it.
    let mut b = StateBatch::new();
    b.set_horizon(600);
    s.commit(b).unwrap();
    assert_eq!(pages(&s), 2);
    let mut b = StateBatch::new();
    b.set_horizon(600);
    s.commit(b).unwrap();
    assert_eq!(pages(&s), 1);
    drop(s);
    // Reopened, memory holds what the pages hold.
    let s = StateStore::open(dir.path(), &opts).unwrap();
    let got = s
        .get_dedup_many(&[keys::dedup_key("tx-499"), keys::dedup_key("tx-500")])
        .unwrap();
    assert_eq!(got, vec![None, Some(entry(500))]);
    // `stats` counts the entries the pages hold (an old store's per-key ones too).
    assert_eq!(s.stats().unwrap().dedup_keys, 500);
}

#[test]
fn stats_report_offsets_and_outbox_depth() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut b = StateBatch::new();
    b.put_outbox(Table::Payments, 0, 0, b"x");
    b.put_outbox(Table::LateEvents, 1, 0, b"y");
    b.set_next_offset(1, 7);
    s.commit(b).unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.outbox_depth.get("payments"), Some(&1));
    assert_eq!(st.outbox_depth.get("late_events"), Some(&1));
    assert_eq!(st.next_offsets, BTreeMap::from([(1, 7)]));
    assert!(st.total_bytes > 0);
}

#[test]
fn a_changed_retention_is_refused_and_the_stored_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let with = |secs: i64| StoreOptions {
        dedup_retention_micros: Some(secs * 1_000_000),
        ..StoreOptions::default()
    };
    drop(StateStore::open(dir.path(), &with(3600)).unwrap());
    let err = StateStore::open(dir.path(), &with(7200)).err().unwrap();
    assert!(
        matches!(
            err,
            StateError::RetentionChanged {
                stored_secs: 3600,
                requested_secs: 7200,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--retention-secs"));
    // The refused start changed nothing: the old retention still opens.
    drop(StateStore::open(dir.path(), &with(3600)).unwrap());
}

#[test]
fn identity_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.identity().unwrap(), None);
    s.set_identity(b"{\"topic\":\"payments\"}").unwrap();
    assert_eq!(
        s.identity().unwrap().as_deref(),
        Some(&b"{\"topic\":\"payments\"}"[..])
    );
}

#[test]
fn dedup_entries_expire_by_their_own_partitions_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        dedup_retention_micros: Some(100),
        ..StoreOptions::default()
    };
    let s = StateStore::open(dir.path(), &opts).unwrap();
    let mut b = StateBatch::new();
    for p in 0..3 {
        for t in 0..100_i64 {
            let e = DedupEntry {
                partition: p,
                ..entry(t)
            };
            b.put_dedup(keys::dedup_key(&format!("tx-{p}-{t}")), &e);
        }
    }
    // Partition 0 is far ahead, partition 1 went quiet at 150, partition 2 never
    // published a horizon of its own: it follows the global minimum (150).
    b.set_partition_horizon(0, 1_000);
    b.set_partition_horizon(1, 150);
    b.set_horizon(150);
    s.commit(b).unwrap();
    let pages = |s: &StateStore| s.count_keys(CF_DEDUP_PAGES).unwrap();
    assert_eq!(pages(&s), 3);
    // The next commit deletes partition 0's page (99 + 100 < 1000); 1's and 2's stay.
    let mut b = StateBatch::new();
    b.set_horizon(150);
    s.commit(b).unwrap();
    assert_eq!(pages(&s), 2);
    drop(s);
    // The horizons are committed: a restart applies the same rule.
    let s = StateStore::open(dir.path(), &opts).unwrap();
    let mut b = StateBatch::new();
    b.set_horizon(150);
    s.commit(b).unwrap();
    assert_eq!(pages(&s), 2);
    // Live by `live_dedup`'s own rule: partition 1's t >= 50, and all of partition 2's
    // (it judges a partition without a horizon by none).
    let live = s.live_dedup().unwrap();
    assert_eq!(live.values().map(|l| l.live).sum::<u64>(), 150);
}

/// The resident sets answer "absent" without RocksDB, so a key they miss would be a
/// duplicate let through: they must hold every stored key after a reopen (filled by
/// the scan), after a commit, and only lose a partition's keys when it is forgotten.
#[test]
fn resident_keys_hold_every_stored_key_across_reopen_and_forgetting() {
    let dir = tempfile::tempdir().unwrap();
    let on = |p: i32, t: i64| DedupEntry {
        partition: p,
        ..entry(t)
    };
    let card = |id: &str| {
        let mut v = 5i64.to_be_bytes().to_vec();
        v.extend_from_slice(id.as_bytes());
        v
    };
    {
        let s = open(dir.path());
        assert_eq!(s.resident_keys(), Some((0, 0)));
        let mut b = StateBatch::new();
        b.put_dedup(keys::dedup_key("a"), &on(0, 5));
        b.put_dedup(keys::dedup_key("b"), &on(0, 6));
        b.put_dedup(keys::dedup_key("c"), &on(1, 7));
        b.put_fraud(b"card/k", card("k"));
        s.commit(b).unwrap();
        assert_eq!(s.resident_keys(), Some((3, 1)));
        assert_eq!(
            s.get_fraud_many(&[b"card/k".to_vec(), b"card/z".to_vec()])
                .unwrap(),
            vec![Some(card("k")), None]
        );
    }
    let s = open(dir.path());
    let ids = ["a", "b", "c", "d"].map(keys::dedup_key);
    // The sets fill in the background; lookups are right before that too.
    assert_eq!(
        s.get_dedup_many(&ids).unwrap(),
        vec![Some(on(0, 5)), Some(on(0, 6)), Some(on(1, 7)), None]
    );
    s.wait_resident().unwrap();
    assert_eq!(s.resident_keys(), Some((3, 1)));
    assert_eq!(
        s.get_dedup_many(&ids).unwrap(),
        vec![Some(on(0, 5)), Some(on(0, 6)), Some(on(1, 7)), None]
    );
    assert_eq!(
        s.get_fraud_many(&[b"card/k".to_vec()]).unwrap(),
        vec![Some(card("k"))]
    );
    s.forget_partitions(&[1]).unwrap();
    assert_eq!(s.resident_keys(), Some((2, 1)));
    assert_eq!(s.get_dedup_many(&ids[2..3]).unwrap(), vec![None]);
    drop(s);
    // An inspection loads the dedup entries when first asked for one (paged ones
    // cannot be asked of RocksDB), not at open.
    let ro = StateStore::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.resident_keys(), None);
    assert_eq!(ro.get_dedup_many(&ids[..1]).unwrap(), vec![Some(on(0, 5))]);
    assert_eq!(ro.resident_keys(), Some((2, 0)));
}

/// The sets let go of a dedup key only when the store's own expiry rule would: alive
/// at `time + retention == horizon` (the boundary), gone once the horizon passes it.
/// A sweep that let go early would let a duplicate through as unique.
#[test]
fn resident_dedup_keys_are_swept_by_the_store_expiry_rule() {
    const S: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    // The loader's scan could put back a swept key (a false positive, allowed, but not
    // what this test counts): it finishes on the empty store first.
    let s = open_loaded_with_retention(dir.path(), 10 * S);
    let at = |id: &str, t: i64| {
        let mut b = StateBatch::new();
        b.put_dedup(keys::dedup_key(id), &entry(t));
        b
    };
    s.commit(at("a", 100 * S)).unwrap();
    s.commit(at("b", 105 * S)).unwrap();
    // a's last alive horizon: 100 s + 10 s. A commit after it publishes sweeps.
    s.advance_partition_horizon(0, 110 * S);
    s.commit(at("c", 111 * S)).unwrap();
    assert_eq!(s.resident_keys(), Some((3, 0)));
    let ab = [keys::dedup_key("a"), keys::dedup_key("b")];
    assert_eq!(
        s.get_dedup_many(&ab).unwrap(),
        vec![Some(entry(100 * S)), Some(entry(105 * S))]
    );
    // Past a's expiry by more than a quarter of the retention: the next commit sweeps.
    s.advance_partition_horizon(0, 113 * S);
    s.commit(at("d", 114 * S)).unwrap();
    assert_eq!(s.resident_keys(), Some((3, 0)));
    assert_eq!(
        s.get_dedup_many(&ab).unwrap(),
        vec![None, Some(entry(105 * S))]
    );
}

#[test]
fn a_partly_delivered_page_hides_its_delivered_rows_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let mut b = StateBatch::new();
        for seq in 0..10_u64 {
            b.put_outbox(Table::Payments, 0, seq, format!("row{seq}").into_bytes());
        }
        s.commit(b).unwrap();
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 0, 10, b"row10");
        s.commit(b).unwrap();
        // Rows 0..=3 delivered: the first page (0..10) stays, its first four hidden.
        s.outbox_delete_through(Table::Payments, 0, 3).unwrap();
        let seqs: Vec<u64> = s
            .outbox_rows(Table::Payments, 0, 100)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, (4..=10).collect::<Vec<_>>());
        // A limit inside a page.
        assert_eq!(
            s.outbox_rows(Table::Payments, 0, 2).unwrap(),
            vec![(4, b"row4".to_vec()), (5, b"row5".to_vec())]
        );
    }
    let s = open(dir.path());
    assert_eq!(
        s.outbox_rows(Table::Payments, 0, 1).unwrap(),
        vec![(4, b"row4".to_vec())],
        "the floor is stored, not only held in memory"
    );
    assert_eq!(
        s.outbox_depths().unwrap(),
        BTreeMap::from([((Table::Payments, 0), 7)])
    );
    // Through the end of the first page: it is deleted, the second page is whole.
    s.outbox_delete_through(Table::Payments, 0, 9).unwrap();
    assert_eq!(
        s.outbox_rows(Table::Payments, 0, 100).unwrap(),
        vec![(10, b"row10".to_vec())]
    );
    s.outbox_delete_through(Table::Payments, 0, 10).unwrap();
    assert!(s.outbox_rows(Table::Payments, 0, 100).unwrap().is_empty());
    assert!(
        s.outbox_depths().unwrap().is_empty(),
        "no page is left behind"
    );
    // Forgetting the partition drops its floor: rows put again from 0 are all seen.
    s.forget_partitions(&[0]).unwrap();
    let mut b = StateBatch::new();
    b.put_outbox(Table::Payments, 0, 0, b"again");
    s.commit(b).unwrap();
    assert_eq!(
        s.outbox_rows(Table::Payments, 0, 100).unwrap(),
        vec![(0, b"again".to_vec())]
    );
}

/// While the resident sets are still loading, a lookup must not trust them: a key the
/// loader has not reached yet is held by the store. Many keys, so that the scan is
/// likely still running when the first lookups come; a store dropped mid-scan stops its
/// loader and can be opened again at once. Then, deterministically, sets that are
/// empty and loading (as at open, before the loader reached any key) answer nothing.
#[test]
fn lookups_while_the_resident_sets_load_find_every_stored_key() {
    let dir = tempfile::tempdir().unwrap();
    let ids = numbered_ids("id", 200_000);
    commit_keys(&open(dir.path()), &ids, 20_000, 5);
    for _ in 0..3 {
        let s = open(dir.path());
        let last = &ids[ids.len() - 1000..];
        assert!(s.get_dedup_many(last).unwrap().iter().all(Option::is_some));
        drop(s);
    }
    let s = open(dir.path());
    s.wait_resident().unwrap();
    assert_eq!(s.resident_keys(), Some((ids.len(), 0)));
    assert!(s.get_dedup_many(&ids).unwrap().iter().all(Option::is_some));
    // As at open: the pages are back in memory before the loader scans anything.
    s.reset_resident_to_loading().unwrap();
    assert_eq!(s.resident_keys(), Some((ids.len(), 0)));
    assert!(s.get_dedup_many(&ids).unwrap().iter().all(Option::is_some));
}

/// The WAL stays near its bound although `meta` gets a few bytes per commit and never
/// fills a memtable: without the bound, every WAL file since the first commit is kept
/// (and replayed by a restart after a crash).
#[test]
fn the_wal_is_bounded_although_meta_rarely_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_wal_bytes: 2 << 20,
        ..StoreOptions::default()
    };
    let s = StateStore::open(dir.path(), &opts).unwrap();
    let mut n = 0u64;
    for batch in 0..200 {
        let mut b = StateBatch::new();
        for _ in 0..1_000 {
            b.put_dedup(keys::dedup_key(&format!("id-{n}")), &entry(5));
            n += 1;
        }
        b.set_next_offset(0, batch);
        s.commit(b).unwrap();
    }
    let wal: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    // 200,000 entries of ~60 bytes each went through the WAL: ~12 MB unbounded.
    assert!(wal < 6 << 20, "{wal} bytes of WAL");
}

#[test]
fn outbox_pages_live_in_blob_files_and_delivered_ones_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let blob_bytes = |s: &StateStore| {
        let cf = s.cf(CF_OUTBOX).unwrap();
        s.db.property_int_value_cf(cf, "rocksdb.total-blob-file-size")
            .unwrap()
            .unwrap_or(0)
    };
    // Rows that do not compress (hex of a hash), so each page is far above the blob
    // threshold, as a real batch's page is.
    let row =
        |seq: u64| format!("{:064x}", xxhash_rust::xxh3::xxh3_128(&seq.to_le_bytes())).into_bytes();
    let mut b = StateBatch::new();
    for seq in 0..2_000_u64 {
        b.put_outbox(Table::Payments, 0, seq, row(seq));
    }
    s.commit(b).unwrap();
    let cf = s.cf(CF_OUTBOX).unwrap();
    s.db.flush_cf(cf).unwrap();
    assert!(
        blob_bytes(&s) > 30_000,
        "the page went to a blob file: {}",
        blob_bytes(&s)
    );
    assert!(s.stats().unwrap().bytes["outbox"] >= blob_bytes(&s));
    let rows = s.outbox_rows(Table::Payments, 0, 5_000).unwrap();
    assert_eq!(rows.len(), 2_000);
    assert!(rows.iter().all(|(seq, r)| *r == row(*seq)));

    // Delivered: the keys are deleted; compaction drops them and their blob file.
    s.outbox_delete_through(Table::Payments, 0, 1_999).unwrap();
    s.db.flush_cf(cf).unwrap();
    s.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    assert_eq!(blob_bytes(&s), 0);
    assert!(s.outbox_rows(Table::Payments, 0, 10).unwrap().is_empty());
}

/// The fraud column family is compacted universally (see `cf_options`): its TTL filter
/// must still drop every card and customer not seen within the TTL once the watermark
/// passes, and keep every other one, across many flushed files.
#[test]
fn fraud_history_expires_by_its_ttl_under_universal_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with_fraud_ttl(dir.path(), 1_000);
    let fraud = s.cf(CF_FRAUD).unwrap();
    // Ten flushed files, so there are sorted runs for compaction to merge.
    for file in 0..10_i64 {
        let mut b = StateBatch::new();
        for i in 0..200_i64 {
            let t = file * 200 + i; // last seen at t µs
            let mut v = t.to_be_bytes().to_vec();
            v.push(0);
            b.put_fraud(format!("card/{t:05}").into_bytes(), v);
        }
        s.commit(b).unwrap();
        s.db.flush_cf(fraud).unwrap();
    }
    assert_eq!(s.stats().unwrap().fraud_keys, 2_000);
    // Watermark 1,500 with a TTL of 1,000: last seen before 500 is expired.
    s.advance_partition_horizon(0, 1_500);
    s.compact().unwrap();
    assert_eq!(s.stats().unwrap().fraud_keys, 1_500);
    let got = s
        .get_fraud_many(&[b"card/00499".to_vec(), b"card/00500".to_vec()])
        .unwrap();
    assert_eq!(got[0], None);
    assert!(got[1].is_some());
    // And the layout is the one the store asked for: RocksDB's own record of the
    // options in force (the newest OPTIONS file) has the fraud family universal.
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .max()
        .unwrap();
    let text = std::fs::read_to_string(newest).unwrap();
    let section = |cf: &str| {
        let from = text.split(&format!("[CFOptions \"{cf}\"]")).nth(1).unwrap();
        from.split("[CFOptions ").next().unwrap().to_string()
    };
    let fraud_section = section(CF_FRAUD);
    assert!(fraud_section.contains("compaction_style=kCompactionStyleUniversal"));
    assert!(fraud_section.contains(&format!(
        "periodic_compaction_seconds={FRAUD_PERIODIC_COMPACTION_SECS}"
    )));
    assert!(fraud_section.contains(&format!(
        "level0_file_num_compaction_trigger={FRAUD_RUNS_BEFORE_COMPACTION}"
    )));
    assert!(fraud_section.contains(&format!(
        "level0_slowdown_writes_trigger={}",
        FRAUD_RUNS_BEFORE_COMPACTION + 12
    )));
    assert!(fraud_section.contains(&format!(
        "level0_stop_writes_trigger={}",
        FRAUD_RUNS_BEFORE_COMPACTION + 28
    )));
    // Small memtables, several merged per flush, in both families that take a random
    // key per event.
    for (cf, section, per_flush) in [
        (CF_FRAUD, &fraud_section, FRAUD_MEMTABLES_PER_FLUSH),
        (CF_DEDUP, &section(CF_DEDUP), DEDUP_MEMTABLES_PER_FLUSH),
    ] {
        for expected in [
            format!("write_buffer_size={SMALL_MEMTABLE_BYTES}\n"),
            format!("min_write_buffer_number_to_merge={per_flush}\n"),
            format!("max_write_buffer_number={}\n", per_flush + 2),
        ] {
            assert!(section.contains(&expected), "{cf}: no {expected:?}");
        }
    }
}

/// Fraud values are answered from memory once loaded, so memory must hold exactly what
/// the column family holds: after a reopen whose loader runs while commits rewrite and
/// delete keys (the loader's older snapshot must not bring back a deleted key or an
/// older value), every key reads as RocksDB's own `get` answers.
#[test]
fn resident_fraud_values_equal_the_stored_ones_after_loading_beside_commits() {
    let dir = tempfile::tempdir().unwrap();
    let key = |i: u32| format!("card/{i:06}").into_bytes();
    let value = |i: u32, version: u8| {
        let mut v = 5i64.to_be_bytes().to_vec();
        v.extend(std::iter::repeat_n(
            version,
            (i % 7) as usize + usize::from(version),
        ));
        v
    };
    let n = 60_000u32;
    {
        let s = open(dir.path());
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut b = StateBatch::new();
            for &i in chunk {
                b.put_fraud(key(i), value(i, 1));
            }
            s.commit(b).unwrap();
        }
    }
    let s = open(dir.path());
    // While the loader scans: rewrite every third key (another length) and delete
    // every fifth, from the end of the key range, which the scan reaches last.
    for chunk in (0..n).rev().collect::<Vec<_>>().chunks(2_000) {
        let mut b = StateBatch::new();
        for &i in chunk {
            if i % 5 == 0 {
                b.delete_fraud(key(i));
            } else if i % 3 == 0 {
                b.put_fraud(key(i), value(i, 2));
            }
        }
        s.commit(b).unwrap();
    }
    s.wait_resident().unwrap();
    let keys: Vec<Vec<u8>> = (0..n + 10).map(key).collect();
    let from_memory = s.get_fraud_many(&keys).unwrap();
    for (i, got) in from_memory.iter().enumerate() {
        let i = i as u32;
        let expected = match i {
            i if i >= n || i % 5 == 0 => None,
            i if i % 3 == 0 => Some(value(i, 2)),
            i => Some(value(i, 1)),
        };
        assert_eq!(got, &expected, "key {i}");
        assert_eq!(
            s.get_fraud(&key(i)).unwrap(),
            expected,
            "key {i} in RocksDB"
        );
    }
    // Memory holds the live keys (a key deleted mid-scan may be left to RocksDB).
    let (_, fraud) = s.resident_keys().unwrap();
    assert!(fraud >= (n - n / 5) as usize, "{fraud}");
}

/// A fraud value the TTL has expired reads as absent, from memory or from RocksDB,
/// whether or not a sweep or a compaction has dropped it yet.
#[test]
fn an_expired_fraud_value_reads_as_absent_before_any_sweep_or_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with_fraud_ttl(dir.path(), 1_000);
    s.wait_resident().unwrap();
    let mut b = StateBatch::new();
    for t in [100i64, 600] {
        b.put_fraud(format!("card/{t}").into_bytes(), t.to_be_bytes());
    }
    s.commit(b).unwrap();
    let keys = [b"card/100".to_vec(), b"card/600".to_vec()];
    assert!(s.get_fraud_many(&keys).unwrap().iter().all(Option::is_some));
    // 100 + 1,000 < 1,500: expired; 600 is not.
    s.advance_partition_horizon(0, 1_500);
    assert_eq!(
        s.get_fraud_many(&keys).unwrap(),
        vec![None, Some(600i64.to_be_bytes().to_vec())]
    );
    // RocksDB still holds it (no compaction ran): only the read rule hides it.
    assert!(s.get_fraud(&keys[0]).unwrap().is_some());
}

/// A takeover restores a partition whose watermark is behind the store's (it holds
/// other partitions, further on). The restore's batch carries the partition's horizon,
/// and from that commit on its entries are judged by it — not by the global horizon
/// of the partitions held before, which would expire entries still alive in the
/// restored partition: the commit's own sweep let go of them in memory (a retry of such
/// a payment would then pass as a new one), and a compaction dropped them from disk.
const S: i64 = 1_000_000;

fn on(partition: i32, t: i64) -> DedupEntry {
    DedupEntry {
        partition,
        ..entry(t)
    }
}

/// Commits partition 0 at 100 s (its horizon and the global one, as the checkpoint
/// stamps them), with one live entry.
fn commit_partition_0_at_100_s(s: &StateStore) {
    let mut b = StateBatch::new();
    b.put_dedup(keys::dedup_key("held"), &on(0, 95 * S));
    b.set_horizon(100 * S);
    b.set_partition_horizon(0, 100 * S);
    s.commit(b).unwrap();
}

/// Partition 2 restored at its own watermark, 80 s: 75 s + 10 s is alive there,
/// expired by the global 100 s.
fn partition_2_restored_at_80_s() -> StateBatch {
    let mut b = StateBatch::new();
    b.put_dedup(keys::dedup_key("restored"), &on(2, 75 * S));
    b.set_partition_horizon(2, 80 * S);
    b
}

#[test]
fn a_restored_partition_behind_the_store_keeps_its_live_entries() {
    let dir = tempfile::tempdir().unwrap();
    // The store holds partition 0.
    commit_partition_0_at_100_s(&open_loaded_with_retention(dir.path(), 10 * S));
    // Reopened for the takeover (so the next commit's sweep is due, as a restore's
    // is), then partition 2 restored.
    let s = open_loaded_with_retention(dir.path(), 10 * S);
    let restored = [keys::dedup_key("restored")];
    s.commit(partition_2_restored_at_80_s()).unwrap();
    assert_eq!(
        s.get_dedup_many(&restored).unwrap(),
        vec![Some(on(2, 75 * S))]
    );
    // On disk too: the next commit deletes expired pages by partition 2's horizon, not
    // the global one (and a compaction judges the older per-key family the same way).
    let mut b = StateBatch::new();
    b.set_partition_horizon(0, 100 * S);
    s.commit(b).unwrap();
    s.compact().unwrap();
    s.reset_resident_to_loading().unwrap();
    assert_eq!(
        s.get_dedup_many(&restored).unwrap(),
        vec![Some(on(2, 75 * S))]
    );
}

/// The same restore with its commit written but not yet durable when the next commit
/// is written (`store::durable`): the next write judges the pages by the horizons of
/// the commits written, not only of the durable ones. (A review found this: judged by
/// the published ones, partition 2 fell back to the global 100 s and its page went.)
#[test]
fn the_next_write_judges_pages_by_the_horizons_of_commits_not_yet_durable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_loaded_with_retention(dir.path(), 10 * S);
    commit_partition_0_at_100_s(&s);
    let restored = [keys::dedup_key("restored")];
    let written = s.write_commit(partition_2_restored_at_80_s()).unwrap();
    let mut b = StateBatch::new();
    b.set_partition_horizon(0, 100 * S);
    let next = s.write_commit(b).unwrap();
    s.make_durable(written).unwrap();
    s.make_durable(next).unwrap();
    assert_eq!(s.count_paged_dedup_entries().unwrap(), 2);
    s.reset_resident_to_loading().unwrap();
    assert_eq!(
        s.get_dedup_many(&restored).unwrap(),
        vec![Some(on(2, 75 * S))]
    );
}

/// A directory an earlier build wrote holds one `dedup` key per id. The build with
/// pages opens it as it is: those entries are found while the loader scans them and
/// after, beside the pages new commits write, and across a reopen; a retry of an id
/// the earlier build saw is still found (a miss would let it through as new).
#[test]
fn an_earlier_builds_per_key_dedup_entries_are_found_beside_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<[u8; 16]> = (0..50_000)
        .map(|i| keys::dedup_key(&format!("old-{i}")))
        .collect();
    {
        // What an earlier build's commit left: per-key puts into `dedup`.
        let s = open(dir.path());
        let cf = s.cf(CF_DEDUP).unwrap();
        let mut wb = WriteBatch::default();
        for k in &old {
            wb.put_cf(cf, k, entry(5).encode());
        }
        s.db.write(wb).unwrap();
    }
    let s = open(dir.path());
    // Possibly while the loader still scans: every old id is found.
    assert!(s.get_dedup_many(&old).unwrap().iter().all(Option::is_some));
    // A new id, and one of the old ids written again (expired and seen anew): its
    // page's entry is newer than the per-key one and must win.
    let new = keys::dedup_key("new");
    let mut b = StateBatch::new();
    b.put_dedup(new, &entry(6));
    b.put_dedup(old[7], &entry(9));
    s.commit(b).unwrap();
    s.wait_resident().unwrap();
    assert_eq!(s.resident_keys(), Some((old.len() + 1, 0)));
    assert_eq!(s.get_dedup_many(&[new]).unwrap(), vec![Some(entry(6))]);
    assert_eq!(s.count_keys(CF_DEDUP_PAGES).unwrap(), 1);
    assert_eq!(s.count_keys(CF_DEDUP).unwrap(), old.len() as u64);
    drop(s);
    let s = open(dir.path());
    // Answered from memory alone once the loader is done, with the page's entry for
    // the id written again although the loader read the per-key one after the pages.
    s.wait_resident().unwrap();
    let mut all = old.clone();
    all.push(new);
    let got = s.get_dedup_many(&all).unwrap();
    for (i, e) in got[..old.len()].iter().enumerate() {
        let want = if i == 7 { entry(9) } else { entry(5) };
        assert_eq!(*e, Some(want), "old id {i}");
    }
    assert_eq!(got[old.len()], Some(entry(6)));
    assert_eq!(s.stats().unwrap().dedup_keys, old.len() as u64 + 2);
}

/// Pages are read back in the order they were written, not in key order (by
/// partition): an id written on partition 1 and later again on partition 0 (a producer
/// not keyed by id) keeps its later entry after a restart.
#[test]
fn pages_load_in_write_order_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let on = |p: i32, t: i64| DedupEntry {
        partition: p,
        ..entry(t)
    };
    let k = keys::dedup_key("moved");
    {
        let s = open(dir.path());
        let mut b = StateBatch::new();
        b.put_dedup(k, &on(1, 5));
        s.commit(b).unwrap();
        // More pages between, so the reader's queue is passed more than once.
        for i in 0..10 {
            let mut b = StateBatch::new();
            b.put_dedup(keys::dedup_key(&format!("filler-{i}")), &on(i % 3, 6));
            s.commit(b).unwrap();
        }
        let mut b = StateBatch::new();
        b.put_dedup(k, &on(0, 7));
        s.commit(b).unwrap();
        assert_eq!(s.get_dedup_many(&[k]).unwrap(), vec![Some(on(0, 7))]);
    }
    let s = open(dir.path());
    s.wait_resident().unwrap();
    assert_eq!(s.get_dedup_many(&[k]).unwrap(), vec![Some(on(0, 7))]);
}

/// The column families open with automatic compactions off (so the dedup index loads
/// on both cores) and have them back once the open returns: without them, nothing
/// would drop expired state from disk (the TTL filters run in compactions). Read off
/// the OPTIONS file RocksDB writes for the options in force.
#[test]
fn compactions_are_on_again_once_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("OPTIONS-"))
        .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap())
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join(newest)).unwrap();
    for name in crate::cf::ALL {
        let section = text
            .split("[CFOptions \"")
            .find(|sec| sec.starts_with(&format!("{name}\"")))
            .unwrap_or_else(|| panic!("no options for {name}"));
        let section = section.split("[TableOptions").next().unwrap();
        assert!(
            section.contains("disable_auto_compactions=false"),
            "{name}: compactions still off"
        );
    }
    drop(s);
}

/// An open fills the index's two halves of shards on two threads: every key comes back
/// from either half, including two keys sharing a fingerprint in each half, and the
/// later of two entries of a key on the same half.
#[test]
fn pages_load_into_both_halves_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    // A key whose fingerprint (its first 8 bytes) falls in `shard`, told apart by `rest`.
    let key_in = |shard: u64, rest: u8| {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&((shard << 32) | 7).to_be_bytes());
        k[15] = rest;
        k
    };
    let mut expected = Vec::new();
    {
        let s = open(dir.path());
        for (i, shard) in [1u64, 6, 9, 14].into_iter().enumerate() {
            let mut b = StateBatch::new();
            for rest in 0..2u8 {
                let e = entry(10 + i as i64);
                b.put_dedup(key_in(shard, rest), &e);
                expected.push((key_in(shard, rest), e));
            }
            s.commit(b).unwrap();
        }
        // Later pages: one key of each half written again.
        for shard in [6u64, 9] {
            let mut b = StateBatch::new();
            b.put_dedup(key_in(shard, 0), &entry(20));
            s.commit(b).unwrap();
            let at = expected
                .iter()
                .position(|(k, _)| *k == key_in(shard, 0))
                .unwrap();
            expected[at].1 = entry(20);
        }
    }
    let s = open(dir.path());
    let keys: Vec<[u8; 16]> = expected.iter().map(|(k, _)| *k).collect();
    let want: Vec<Option<DedupEntry>> = expected.iter().map(|(_, e)| Some(*e)).collect();
    assert_eq!(s.get_dedup_many(&keys).unwrap(), want);
    assert_eq!(s.get_dedup_many(&[key_in(9, 2)]).unwrap(), vec![None]);
}

/// Going back to a build without pages must not judge ids without them: RocksDB
/// refuses to open a database for writing unless every column family it has is
/// named, and an earlier build names no `dedup_pages`. (Read-only, for inspection, it
/// may name fewer: an earlier build's `state` opens the directory and does not see the
/// pages.)
#[test]
fn a_build_without_the_pages_family_cannot_open_a_directory_with_pages_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let mut b = StateBatch::new();
        b.put_dedup(keys::dedup_key("a"), &entry(5));
        s.commit(b).unwrap();
    }
    let earlier: Vec<&str> = cf::ALL
        .iter()
        .copied()
        .filter(|n| *n != CF_DEDUP_PAGES)
        .collect();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let Err(err) = DB::open_cf(&opts, dir.path(), earlier) else {
        panic!("an earlier build's open must fail");
    };
    assert!(
        err.to_string().contains("Column families not opened"),
        "{err}"
    );
}

/// Flips the type byte of the second record in the log at `path` from a full record's
/// (1) into a recycled log's (5): one bit, as a disk or the fault campaign flips it.
fn flip_second_record_type(path: &Path) {
    let mut log = std::fs::read(path).unwrap();
    let second = 7 + usize::from(u16::from_le_bytes([log[4], log[5]]));
    assert_eq!(
        log[second + 6],
        1,
        "{} record 2 is not a full record",
        path.display()
    );
    log[second + 6] ^= 0x04;
    std::fs::write(path, log).unwrap();
}

/// Opens `dir` on another thread: RocksDB's own open loops forever on the damage these
/// tests make, so a hang must fail the test rather than stall it.
fn open_within_a_minute(dir: &Path) -> Result<StateStore, StateError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(StateStore::open(&dir, &StoreOptions::default()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect(
        "opening the damaged store hung (RocksDB's log reader loops on a recycled record type)",
    )
}

/// Asserts that opening `dir` fails, within a minute, as corrupt, naming `file`.
fn refused_as_corrupt(dir: &Path, file: &str) {
    let err = open_within_a_minute(dir)
        .err()
        .expect("a damaged state directory must not open");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(file), "{err}");
}

#[test]
fn a_manifest_record_flipped_into_a_recycled_type_is_reported_not_looped_on() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let manifest = dir.path().join(current.trim_end());
    flip_second_record_type(&manifest);
    refused_as_corrupt(dir.path(), "MANIFEST");
    // The read-only open (`paydedup-processor state`) refuses it the same way.
    let err = StateStore::open_read_only(dir.path()).err().unwrap();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
}

#[test]
fn a_wal_record_flipped_into_a_recycled_type_is_reported_not_looped_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for offset in [1, 2] {
            let mut b = StateBatch::new();
            b.set_next_offset(0, offset);
            s.commit(b).unwrap();
        }
        // Dropped without a flush: both commits are only in the write-ahead log.
    }
    let wal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "log") && std::fs::metadata(p).unwrap().len() > 0
        })
        .expect("a write-ahead log with the commits");
    flip_second_record_type(&wal);
    refused_as_corrupt(dir.path(), ".log");
}

#[test]
fn a_cpu_without_what_rocksdb_was_built_for_is_a_clear_error() {
    assert!(require_cpu(|_| true).is_ok());
    let err = require_cpu(|feature| feature != "pclmulqdq").unwrap_err();
    assert!(matches!(
        err,
        StateError::CpuUnsupported {
            missing: "PCLMULQDQ"
        }
    ));
    assert!(
        err.to_string().contains("this CPU lacks PCLMULQDQ"),
        "{err}"
    );
    let err = require_cpu(|_| false).unwrap_err();
    assert!(matches!(
        err,
        StateError::CpuUnsupported { missing: "SSE4.2" }
    ));
    // The machine running the tests opened stores above, so it has both.
    assert!(check_cpu().is_ok());
}

/// A store whose newest dedup pages' bytes are kept within `page_memory` bytes.
fn open_with_page_memory(dir: &Path, page_memory: usize) -> StateStore {
    let opts = StoreOptions {
        dedup_page_memory_bytes: page_memory,
        ..StoreOptions::default()
    };
    let s = StateStore::open(dir, &opts).unwrap();
    s.wait_resident().unwrap();
    s
}

/// A 16-byte key whose first 8 bytes (the dedup index's fingerprint) are
/// `fingerprint`, told apart from the others sharing them by its last byte.
fn sharing_fingerprint(fingerprint: u64, last: u8) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&fingerprint.to_be_bytes());
    k[15] = last;
    k
}

/// The dedup keys of ids `{prefix}-0` … `{prefix}-{n-1}`.
fn numbered_ids(prefix: &str, n: usize) -> Vec<[u8; 16]> {
    (0..n)
        .map(|i| keys::dedup_key(&format!("{prefix}-{i}")))
        .collect()
}

/// Puts `keys` at time `t` on partition 0, `per_commit` a commit.
fn commit_keys(s: &StateStore, keys: &[[u8; 16]], per_commit: usize, t: i64) {
    for chunk in keys.chunks(per_commit) {
        let mut b = StateBatch::new();
        for k in chunk {
            b.put_dedup(*k, &entry(t));
        }
        s.commit(b).unwrap();
    }
}

/// One commit putting `ids` at time `t` on partition 0.
fn commit_ids(s: &StateStore, ids: &[&str], t: i64) {
    let mut b = StateBatch::new();
    for id in ids {
        b.put_dedup(keys::dedup_key(id), &entry(t));
    }
    s.commit(b).unwrap();
}

/// The index keeps only where an entry is; the bytes of older pages are let go past
/// the budget. A repeat of an id on such a page must still find its entry (read from
/// RocksDB), before and after a restart, or a late retry would land twice.
#[test]
fn a_repeat_of_an_id_whose_page_memory_let_go_is_found_in_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let one_page = 8 + 3 * crate::dedup_page::ENTRY_LEN;
    {
        // Room for one page of three entries: the first commit's bytes go.
        let s = open_with_page_memory(dir.path(), one_page);
        commit_ids(&s, &["a", "b", "c"], 5);
        commit_ids(&s, &["d", "e", "f"], 6);
        let (dedup_bytes, _) = s.resident_bytes().unwrap();
        let ids = ["a", "c", "d", "x"].map(keys::dedup_key);
        assert_eq!(
            s.get_dedup_many(&ids).unwrap(),
            vec![Some(entry(5)), Some(entry(5)), Some(entry(6)), None]
        );
        // With room for both, both pages' bytes are memory's.
        let roomy = tempfile::tempdir().unwrap();
        let r = open_with_page_memory(roomy.path(), 2 * one_page);
        commit_ids(&r, &["a", "b", "c"], 5);
        commit_ids(&r, &["d", "e", "f"], 6);
        assert!(r.resident_bytes().unwrap().0 >= dedup_bytes + one_page);
    }
    // Reopened with no page memory at all: every repeat reads its page (and is
    // counted; other tests' reads may add to the process's count, never take away).
    let s = open_with_page_memory(dir.path(), 0);
    let ids = ["b", "f", "y"].map(keys::dedup_key);
    let reads = StateStore::dedup_page_reads();
    assert_eq!(
        s.get_dedup_many(&ids).unwrap(),
        vec![Some(entry(5)), Some(entry(6)), None]
    );
    assert!(StateStore::dedup_page_reads() >= reads + 2);
    // Repeats on one page in one lookup (the page is read once for them all).
    let ids = ["a", "c", "b", "x"].map(keys::dedup_key);
    assert_eq!(
        s.get_dedup_many(&ids).unwrap(),
        vec![Some(entry(5)), Some(entry(5)), Some(entry(5)), None]
    );
}

/// Two ids whose keys share their first 8 bytes (the index's fingerprint): each is
/// answered with its own entry, and a third sharing them is new, whether the pages'
/// bytes are in memory or read from RocksDB.
#[test]
fn ids_sharing_a_fingerprint_are_told_apart_by_their_whole_keys() {
    let key = |last: u8| sharing_fingerprint(42, last);
    for page_memory in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_page_memory(dir.path(), page_memory);
        for (last, t) in [(1, 10), (2, 20)] {
            let mut b = StateBatch::new();
            b.put_dedup(key(last), &entry(t));
            s.commit(b).unwrap();
        }
        assert_eq!(
            s.get_dedup_many(&[key(1), key(2), key(3)]).unwrap(),
            vec![Some(entry(10)), Some(entry(20)), None],
            "page memory {page_memory}"
        );
        drop(s);
        let s = open_with_page_memory(dir.path(), page_memory);
        assert_eq!(
            s.get_dedup_many(&[key(3), key(2), key(1)]).unwrap(),
            vec![None, Some(entry(20)), Some(entry(10))],
            "page memory {page_memory}, reopened"
        );
    }
}

/// An id written again once its entry expired, while the page of its first entry
/// still lives (a page goes only once its newest entry expires): the lookup must get
/// the later entry, or the id's next repeat is judged by an expired one and lands
/// again.
#[test]
fn an_id_written_again_after_expiring_is_answered_with_its_later_entry() {
    const S: i64 = 1_000_000;
    // None of the pages' bytes kept, only the later page's (one entry), all of them.
    let later_page_only = 8 + crate::dedup_page::ENTRY_LEN;
    for page_memory in [0, later_page_only, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            dedup_retention_micros: Some(10 * S),
            dedup_page_memory_bytes: page_memory,
            ..StoreOptions::default()
        };
        {
            let s = StateStore::open(dir.path(), &opts).unwrap();
            s.wait_resident().unwrap();
            // "a" at 100 s and "b" at 108 s share a page.
            let mut b = StateBatch::new();
            b.put_dedup(keys::dedup_key("a"), &entry(100 * S));
            b.put_dedup(keys::dedup_key("b"), &entry(108 * S));
            s.commit(b).unwrap();
            // At 111 s "a" has expired, its page has not; "a" comes again.
            s.advance_partition_horizon(0, 111 * S);
            commit_ids(&s, &["a"], 111 * S);
            assert_eq!(
                s.get_dedup_many(&[keys::dedup_key("a")]).unwrap(),
                vec![Some(entry(111 * S))],
                "page memory {page_memory}"
            );
        }
        let s = StateStore::open(dir.path(), &opts).unwrap();
        assert_eq!(
            s.get_dedup_many(&[keys::dedup_key("a"), keys::dedup_key("b")])
                .unwrap(),
            vec![Some(entry(111 * S)), Some(entry(108 * S))],
            "page memory {page_memory}, reopened"
        );
    }
}

/// A review found this: two ids sharing a fingerprint in one commit's page. The
/// page's keys were put before the page was known to live, so the second id's
/// locator replaced the first's, and the first read "absent" until a restart: a
/// retry of it would have landed twice.
#[test]
fn ids_sharing_a_fingerprint_in_one_page_are_both_found() {
    let key = |last: u8| sharing_fingerprint(7, last);
    for page_memory in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_page_memory(dir.path(), page_memory);
        let mut b = StateBatch::new();
        b.put_dedup(key(1), &entry(10));
        b.put_dedup(key(2), &entry(20));
        s.commit(b).unwrap();
        assert_eq!(
            s.get_dedup_many(&[key(1), key(2), key(3)]).unwrap(),
            vec![Some(entry(10)), Some(entry(20)), None],
            "page memory {page_memory}"
        );
    }
}

/// A review found this: an earlier build's per-key entry whose key shares its first 8
/// bytes with an id on a page whose bytes memory does not keep was left out by the
/// loader (as if the page held it). Once that page expired (its partition ahead), the
/// earlier entry, still alive on its own partition, read "absent".
#[test]
fn an_earlier_builds_entry_sharing_a_fingerprint_outlives_the_other_ids_page() {
    const S: i64 = 1_000_000;
    let key = |last: u8| sharing_fingerprint(99, last);
    let on = |p: i32, t: i64| DedupEntry {
        event_time_micros: t,
        content_hash: 7,
        partition: p,
        offset: t,
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        dedup_retention_micros: Some(10 * S),
        dedup_page_memory_bytes: 0,
        ..StoreOptions::default()
    };
    {
        let s = StateStore::open(dir.path(), &opts).unwrap();
        // What an earlier build left: a per-key row on partition 0.
        let mut wb = WriteBatch::default();
        wb.put_cf(s.cf(CF_DEDUP).unwrap(), key(1), on(0, 100 * S).encode());
        s.db.write(wb).unwrap();
        // An id sharing its fingerprint, on a page of partition 1.
        let mut b = StateBatch::new();
        b.put_dedup(key(2), &on(1, 100 * S));
        s.commit(b).unwrap();
    }
    let s = StateStore::open(dir.path(), &opts).unwrap();
    s.wait_resident().unwrap();
    // Partition 1 moves on: its page expires and goes; partition 0's entry lives.
    s.advance_partition_horizon(1, 200 * S);
    let mut b = StateBatch::new();
    b.put_dedup(keys::dedup_key("other"), &on(0, 101 * S));
    s.commit(b).unwrap();
    assert_eq!(s.count_paged_dedup_entries().unwrap(), 1);
    assert_eq!(
        s.get_dedup_many(&[key(1)]).unwrap(),
        vec![Some(on(0, 100 * S))]
    );
}

/// A reopen keeps the newest pages' bytes again, after the open: its loader reads them
/// back newest first, within the budget (`dedup_pages::PagesToKeep`), so a restart
/// does not wait for that memory. Lookups are right before and after, a key written
/// again on a newer page ("a", as after its first entry expired) included.
#[test]
fn a_reopen_keeps_the_newest_pages_bytes_once_its_loader_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        // Room for two pages of three entries.
        dedup_page_memory_bytes: 2 * (8 + 3 * crate::dedup_page::ENTRY_LEN),
        ..StoreOptions::default()
    };
    {
        let s = StateStore::open(dir.path(), &opts).unwrap();
        commit_ids(&s, &["a", "b", "c"], 5);
        commit_ids(&s, &["d", "e", "f"], 6);
        commit_ids(&s, &["g", "h", "a"], 7);
        assert_eq!(s.kept_dedup_pages(), vec![1, 2]);
    }
    let s = StateStore::open(dir.path(), &opts).unwrap();
    let ids = ["a", "b", "f", "h", "x"].map(keys::dedup_key);
    let answers = vec![
        Some(entry(7)),
        Some(entry(5)),
        Some(entry(6)),
        Some(entry(7)),
        None,
    ];
    // Whatever the loader has kept by now.
    assert_eq!(s.get_dedup_many(&ids).unwrap(), answers);
    s.wait_resident().unwrap();
    assert_eq!(s.kept_dedup_pages(), vec![1, 2]);
    let reads = StateStore::dedup_page_reads();
    assert_eq!(s.get_dedup_many(&ids).unwrap(), answers);
    // Only "b" is on the page memory does not keep (other tests' reads may add to the
    // process's count).
    assert!(StateStore::dedup_page_reads() > reads);
    // A read-only open keeps them at once.
    drop(s);
    let r = StateStore::open_read_only(dir.path()).unwrap();
    assert_eq!(r.get_dedup_many(&ids).unwrap(), answers);
}

/// A page larger than the whole page budget: the kept pages must stay the newest, as
/// a lookup tries a key's locators newest first and stops at the first kept page that
/// holds it. Here "k" is written again on the large page (as after its first entry
/// expired): had its first page's bytes stayed in memory, the older entry would win.
#[test]
fn a_page_larger_than_the_budget_keeps_the_kept_pages_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let small = 8 + crate::dedup_page::ENTRY_LEN;
    let s = open_with_page_memory(dir.path(), 2 * small);
    commit_ids(&s, &["k"], 1);
    commit_ids(&s, &["k", "b-0", "b-1", "b-2", "b-3"], 2);
    commit_ids(&s, &["c"], 3);
    let ids = ["k", "b-3", "c", "d"].map(keys::dedup_key);
    assert_eq!(
        s.get_dedup_many(&ids).unwrap(),
        vec![Some(entry(2)), Some(entry(2)), Some(entry(3)), None]
    );
}

/// A reopen takes an index warmed for the size the store last wrote down
/// (`index_warmup`), and it holds exactly the stored ids, each answered, in the memory
/// a load without it takes: the memory's touching leaves nothing behind.
#[test]
fn a_reopen_with_a_size_estimate_loads_exactly_the_stored_ids() {
    use super::index_warmup::{MIN_WARMED_IDS, SIZE_ESTIMATE_FILE, WARMED_LOADS};
    let dir = tempfile::tempdir().unwrap();
    let n = MIN_WARMED_IDS + 1_000;
    let ids = numbered_ids("tx", n);
    commit_keys(&open(dir.path()), &ids, 50_000, 10);
    // The first reopen has no estimate of this size yet; it writes one after loading.
    let (keys_unwarmed, bytes_unwarmed) = {
        let s = open(dir.path());
        // The newest pages' bytes are kept by the loader, after the open.
        s.wait_resident().unwrap();
        (s.resident_keys().unwrap().0, s.resident_bytes().unwrap().0)
    };
    assert_eq!(keys_unwarmed, n);
    let estimate = std::fs::read_to_string(dir.path().join(SIZE_ESTIMATE_FILE)).unwrap();
    assert_eq!(estimate.trim(), n.to_string());
    let warmed_before = WARMED_LOADS.with(std::cell::Cell::get);
    let s = open(dir.path());
    assert!(
        WARMED_LOADS.with(std::cell::Cell::get) > warmed_before,
        "not warmed"
    );
    assert_eq!(s.resident_keys().unwrap().0, n, "exactly the stored ids");
    s.wait_resident().unwrap();
    assert_eq!(s.resident_bytes().unwrap().0, bytes_unwarmed);
    let found = s.get_dedup_many(&ids).unwrap();
    assert!(found.iter().all(|e| *e == Some(entry(10))));
    // Ids whose fingerprints are those the warming put in and cleared: absent.
    let touched: Vec<[u8; 16]> = [0u64, 256, (3 << 32) | 4096, (12 << 32) | 512]
        .into_iter()
        .map(|f| sharing_fingerprint(f, 0))
        .collect();
    assert_eq!(
        s.get_dedup_many(&touched).unwrap(),
        vec![None; touched.len()]
    );
}

/// An open that fails while the index is being warmed (here: a changed retention)
/// stops the warming and returns its error; the next open, without the estimate the
/// failed one read, loads as before.
#[test]
fn an_open_refused_while_warming_returns_its_error_and_the_next_loads() {
    use super::index_warmup::MIN_WARMED_IDS;
    let dir = tempfile::tempdir().unwrap();
    let n = MIN_WARMED_IDS + 10;
    let ids = numbered_ids("tx", n);
    let hour = 3_600_000_000;
    commit_keys(&open_loaded_with_retention(dir.path(), hour), &ids, n, 10);
    drop(open_loaded_with_retention(dir.path(), hour));
    let refused = StateStore::open(
        dir.path(),
        &StoreOptions {
            dedup_retention_micros: Some(2 * hour),
            ..StoreOptions::default()
        },
    );
    assert!(matches!(refused, Err(StateError::RetentionChanged { .. })));
    let s = open_loaded_with_retention(dir.path(), hour);
    assert_eq!(s.resident_keys().unwrap().0, n);
    assert!(s
        .get_dedup_many(&ids[..100])
        .unwrap()
        .iter()
        .all(Option::is_some));
}

/// A read starts past the pages deliveries deleted (`store::outbox_scan`), and finds
/// every page still there: a partly delivered one, later commits' pages, and, after
/// its partition is forgotten, a stream's new pages from sequence 0 again.
#[test]
fn reads_past_delivered_pages_miss_no_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let commit = |from: u64, to: u64| {
        let mut b = StateBatch::new();
        for seq in from..to {
            b.put_outbox(Table::Payments, 0, seq, format!("row-{seq}").into_bytes());
        }
        s.commit(b).unwrap();
    };
    let seqs = |limit| -> Vec<u64> {
        s.outbox_rows(Table::Payments, 0, limit)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    };
    // Pages [0, 10), [10, 20), [20, 30); delivered through 14: the first page goes,
    // the second stays partly delivered.
    commit(0, 10);
    commit(10, 20);
    commit(20, 30);
    s.outbox_delete_through(Table::Payments, 0, 14).unwrap();
    assert_eq!(seqs(100), (15..30).collect::<Vec<_>>());
    // Many deliveries of one page each, a read after each.
    for page in 3..200_u64 {
        commit(page * 10, page * 10 + 10);
        s.outbox_delete_through(Table::Payments, 0, page * 10 - 1)
            .unwrap();
        assert_eq!(seqs(100), (page * 10..page * 10 + 10).collect::<Vec<_>>());
    }
    // Handed over and back: the stream starts again at 0, below where reads started.
    s.forget_partitions(&[0]).unwrap();
    assert!(seqs(100).is_empty());
    commit(0, 5);
    assert_eq!(seqs(100), (0..5).collect::<Vec<_>>());
}

/// Once the outbox's memtable holds 1,000 range deletions (one a delivery), RocksDB
/// flushes it (`bound_outbox_range_deletions`): every new iterator over the family
/// works through all of them, so unbounded they made each relay read slower.
#[test]
fn the_outbox_memtable_is_flushed_at_its_range_deletion_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(
        dir.path(),
        &StoreOptions {
            sync: false,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let cf = s.cf(CF_OUTBOX).unwrap();
    let files = |s: &StateStore| -> u64 {
        (0..7)
            .map(|level| {
                s.db.property_int_value_cf(cf, &format!("rocksdb.num-files-at-level{level}"))
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    };
    let at_open = files(&s);
    for seq in 0..1_100_u64 {
        let mut b = StateBatch::new();
        b.put_outbox(Table::Payments, 0, seq, b"row");
        s.commit(b).unwrap();
        s.outbox_delete_through(Table::Payments, 0, seq).unwrap();
    }
    // The flush runs in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while files(&s) == at_open && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(files(&s) > at_open, "no flush: {} files", files(&s));
}
