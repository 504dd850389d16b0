//! A restore continues exactly where the lost state would have: the same rows, each
//! once, whatever the relay had delivered of each table when the state was lost.
//! Real RocksDB; the sink is the in-memory test double (the real sinks' `scan_rows`
//! are covered by their own tests and by `tests/restore.rs` against tansu and the file
//! sink).

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use paydedup_event::encode_json;
use paydedup_sink::{MemorySink, Sink};
use paydedup_state::{StateStore, StoreOptions, Table};
use serde_json::Value;

use super::rebuild::RebuildConfig;
use super::restore;
use crate::checkpoint::stamp_watermarks;
use crate::pipeline::fixtures::{config, payment};
use crate::pipeline::{InputRecord, Pipeline};
use crate::relay::deliverable_rows;

const PARTITIONS: [i32; 2] = [0, 1];

/// 400 records over 2 partitions: payments ~2 s apart with some disorder, duplicates,
/// conflicts, late events and invalid records.
fn stream() -> Vec<(i32, String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..400i64 {
        let p = (i % 2) as i32;
        let t = i * 2 - (i % 5) * 7;
        let (id, bytes) = match i {
            i if i % 17 == 16 => ("bad".to_owned(), b"{not json".to_vec()),
            i if i % 13 == 12 => {
                let id = format!("late-{i}");
                (id.clone(), encode_json(&payment(&id, t - 3_000, 100)))
            }
            i if i % 7 == 6 => {
                // The payment two records back on this partition, again.
                let j = i - 2;
                let id = format!("tx-{j}");
                (
                    id.clone(),
                    encode_json(&payment(&id, j * 2 - (j % 5) * 7, 100 + j)),
                )
            }
            i if i % 11 == 10 => {
                let j = i - 4;
                let id = format!("tx-{j}");
                (
                    id.clone(),
                    encode_json(&payment(&id, j * 2 - (j % 5) * 7, 1)),
                )
            }
            i => {
                let id = format!("tx-{i}");
                (id.clone(), encode_json(&payment(&id, t, 100 + i)))
            }
        };
        out.push((p, id, bytes));
    }
    out
}

/// Records per partition: the log's end offsets.
fn log_end(input: &[(i32, String, Vec<u8>)]) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for (p, _, _) in input {
        *out.entry(*p).or_insert(0) += 1;
    }
    out
}

fn ts_ms() -> Option<i64> {
    Some(
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .unwrap()
            .timestamp_millis(),
    )
}

/// Processes the stream's records from each partition's `from` offset up to `until`
/// (stream index), in batches of 25, committing each.
fn process(store: &StateStore, input: &[(i32, String, Vec<u8>)], until: usize, drain: bool) {
    let mut pipeline = Pipeline::load(config(), store).unwrap();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut records = Vec::new();
    for (p, k, v) in &input[..until] {
        let o = offsets.entry(*p).or_insert(0);
        let offset = *o;
        *o += 1;
        if pipeline.next_offset(*p).is_some_and(|n| offset < n) {
            continue;
        }
        records.push(InputRecord {
            partition: *p,
            offset,
            key: Some(k.as_bytes()),
            payload: v,
            timestamp_ms: ts_ms(),
        });
    }
    for chunk in records.chunks(25) {
        let (batch, _) = pipeline.process(chunk, store).unwrap();
        store.commit(batch).unwrap();
    }
    if drain {
        let (batch, _) = pipeline.drain(&PARTITIONS);
        store.commit(batch).unwrap();
    }
}

/// Delivers each (table, partition)'s outbox rows to the sink, at most `share(table)`
/// of them (a relay that got further on some tables than on others).
fn deliver(store: &StateStore, sink: &mut MemorySink, share: impl Fn(Table) -> f64) {
    for t in Table::ALL {
        for p in PARTITIONS {
            let rows = deliverable_rows(store, t, p, usize::MAX).unwrap();
            let n = (rows.len() as f64 * share(t)) as usize;
            for (seq, row) in rows.into_iter().take(n) {
                sink.append(t, p, seq, &[row]).unwrap();
                store.outbox_delete_through(t, p, seq).unwrap();
            }
        }
    }
}

/// The sink's rows per table, without sequences and fraud scores (fraud history is
/// rebuilt in event-time order, so scores may differ; see `restore`), sorted.
fn contents(sink: &MemorySink) -> BTreeMap<Table, Vec<String>> {
    let mut out: BTreeMap<Table, Vec<String>> = BTreeMap::new();
    for ((t, p), rows) in &sink.rows {
        for (i, row) in rows.iter().enumerate() {
            let mut v: Value = serde_json::from_slice(row).unwrap();
            let o = v.as_object_mut().unwrap();
            assert_eq!(
                o["outbox_seq"],
                Value::from(i),
                "{t} {p}: sequences dense from 0"
            );
            for k in [
                "outbox_seq",
                "fraud_score",
                "fraud_flagged",
                "fraud_reasons",
                "card_count_10m",
                "card_count_1h",
                "flagged_count",
            ] {
                o.remove(k);
            }
            out.entry(*t).or_default().push(v.to_string());
        }
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

/// Rows in one and not the other, per table (the first few).
fn difference(got: &BTreeMap<Table, Vec<String>>, want: &BTreeMap<Table, Vec<String>>) -> String {
    let mut out = String::new();
    for t in Table::ALL {
        let g = got.get(&t).cloned().unwrap_or_default();
        let w = want.get(&t).cloned().unwrap_or_default();
        let extra: Vec<_> = g.iter().filter(|r| !w.contains(r)).take(3).collect();
        let missing: Vec<_> = w.iter().filter(|r| !g.contains(r)).take(3).collect();
        if g.len() != w.len() || !extra.is_empty() || !missing.is_empty() {
            out += &format!(
                "{t}: {} rows, want {}\n  extra: {extra:?}\n  missing: {missing:?}\n",
                g.len(),
                w.len()
            );
        }
    }
    out
}

fn rebuild_config() -> RebuildConfig {
    let c = config();
    RebuildConfig {
        allowed_lateness_micros: c.allowed_lateness_micros,
        retention_micros: c.retention_micros,
        window_micros: c.window_micros,
        fraud_ttl_micros: StoreOptions::default().fraud_ttl_micros,
        fraud: c.fraud,
    }
}

#[test]
fn a_restored_state_continues_with_the_same_rows_each_once() {
    let input = stream();
    // The run that never lost anything.
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    process(&store, &input, input.len(), true);
    let mut reference = MemorySink::default();
    deliver(&store, &mut reference, |_| 1.0);
    let want = contents(&reference);
    assert!(want.len() == 5, "every table has rows: {:?}", want.keys());

    // Unevenly delivered shares, cut at several points of the stream.
    let shares: [fn(Table) -> f64; 3] = [
        |_| 1.0,
        |t| match t {
            Table::Payments => 0.9,
            Table::DedupAudit => 0.4,
            Table::PaymentMetrics => 1.0,
            _ => 0.0,
        },
        |t| match t {
            Table::Payments => 0.2,
            Table::LateEvents => 1.0,
            Table::PaymentMetrics => 0.5,
            _ => 0.7,
        },
    ];
    for until in [37, 200, 399] {
        for (s, share) in shares.iter().enumerate() {
            let lost = tempfile::tempdir().unwrap();
            let store = StateStore::open(lost.path(), &StoreOptions::default()).unwrap();
            process(&store, &input, until, false);
            let mut sink = MemorySink::default();
            deliver(&store, &mut sink, share);
            drop(store);

            let dir = tempfile::tempdir().unwrap();
            let restored = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
            let log_end = log_end(&input);
            let report = restore(
                &restored,
                &mut sink,
                &PARTITIONS,
                &log_end,
                &rebuild_config(),
            )
            .unwrap();
            process(&restored, &input, input.len(), true);
            deliver(&restored, &mut sink, |_| 1.0);
            let got = contents(&sink);
            assert!(
                got == want,
                "cut at {until}, shares #{s}: {report:?}\n{}",
                difference(&got, &want)
            );
        }
    }
}

#[test]
fn restore_refuses_a_state_that_is_not_empty() {
    let input = stream();
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    process(&store, &input, 50, false);
    let mut sink = MemorySink::default();
    deliver(&store, &mut sink, |_| 1.0);
    let e = restore(
        &store,
        &mut sink,
        &PARTITIONS,
        &log_end(&input),
        &rebuild_config(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("already has a position on partition 0"),
        "{e}"
    );
}

/// A takeover: an instance holding partition 0, two hours further on, restores
/// partition 1 from the warehouse. A retry of a payment the warehouse holds for
/// partition 1 must still be a duplicate. The restored entries are alive by partition
/// 1's watermark but expired by the store's global horizon (partition 0's); judged by
/// that one, the restore's own commit swept them from memory and the retry passed as a
/// new payment.
#[test]
fn after_a_takeover_a_retry_of_a_restored_payment_is_still_a_duplicate() {
    let input = stream();
    // The instance that owned both partitions before; its rows are in the warehouse.
    let mut sink = MemorySink::default();
    {
        let lost = tempfile::tempdir().unwrap();
        let store = StateStore::open(lost.path(), &StoreOptions::default()).unwrap();
        process(&store, &input, input.len(), false);
        deliver(&store, &mut sink, |_| 1.0);
    }
    // The instance taking partition 1 over holds partition 0, at 12:00.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut pipeline = Pipeline::load(config(), &store).unwrap();
        let ahead = encode_json(&payment("p0-ahead", 2 * 3_600, 100));
        let record = InputRecord {
            partition: 0,
            offset: 0,
            key: Some(b"p0-ahead"),
            payload: &ahead,
            timestamp_ms: ts_ms(),
        };
        let (mut batch, _) = pipeline.process(&[record], &store).unwrap();
        stamp_watermarks(&pipeline, &[0], &mut batch);
        store.commit(batch).unwrap();
    }
    // Restarted with partition 1 added: its memory loaded, then partition 1 restored.
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    store.wait_resident().unwrap();
    let log_end = log_end(&input);
    let report = restore(&store, &mut sink, &[1], &log_end, &rebuild_config()).unwrap();
    assert!(report.dedup_entries > 0, "{report:?}");
    // tx-399 (partition 1, 770 s, amount 499) again, as its producer retried it.
    let retry = encode_json(&payment("tx-399", 770, 499));
    let record = InputRecord {
        partition: 1,
        offset: log_end[&1],
        key: Some(b"tx-399"),
        payload: &retry,
        timestamp_ms: ts_ms(),
    };
    let mut pipeline = Pipeline::load(config(), &store).unwrap();
    let (_, stats) = pipeline.process(&[record], &store).unwrap();
    assert_eq!((stats.duplicates, stats.unique), (1, 0), "{stats:?}");
}
