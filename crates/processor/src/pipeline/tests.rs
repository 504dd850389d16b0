//! Pipeline tests on a real RocksDB in a temporary directory (no Kafka).

use base64::Engine;
use chrono::{TimeZone, Utc};
use paydedup_event::{encode_json, Currency};
use paydedup_state::StoreOptions;

use super::fixtures::{config, payment};
use super::*;
use crate::relay::deliverable_rows;

fn cfg() -> PipelineConfig {
    config()
}

fn event(id: &str, minute_offset_secs: i64, amount: i64) -> Vec<u8> {
    encode_json(&payment(id, minute_offset_secs, amount))
}

fn ts_ms() -> Option<i64> {
    Some(
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .unwrap()
            .timestamp_millis(),
    )
}

/// (key, payload) per offset on partition 0.
fn stream() -> Vec<(String, Vec<u8>)> {
    vec![
        ("a".into(), event("a", 0, 100)),
        ("b".into(), event("b", 30, 200)),
        ("a".into(), event("a", 0, 100)),    // duplicate
        ("b".into(), event("b", 30, 999)),   // conflict
        ("x".into(), b"{not json".to_vec()), // invalid
        ("c".into(), event("c", 900, 300)),  // moves the watermark to 10:10
        ("d".into(), event("d", 60, 400)),   // late (10:01 < 10:10)
        ("e".into(), event("e", 700, 500)),  // on time, out of order
    ]
}

/// Outbox rows per (table, partition).
type Outbox = BTreeMap<(Table, i32), Vec<(u64, Vec<u8>)>>;

/// Runs the stream cut into batches [start, end).
fn run(batches: &[(usize, usize)]) -> (Outbox, BatchStats) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let input = stream();
    let mut total = BatchStats::default();
    for &(start, end) in batches {
        let range = start..end;
        // A fresh pipeline per batch also proves it reloads its state from the store.
        let mut p = Pipeline::load(cfg(), &store).unwrap();
        let records: Vec<InputRecord<'_>> = input[range.clone()]
            .iter()
            .enumerate()
            .map(|(i, (k, v))| InputRecord {
                partition: 0,
                offset: (range.start + i) as i64,
                key: Some(k.as_bytes()),
                payload: v,
                timestamp_ms: ts_ms(),
            })
            .collect();
        let (batch, stats) = p.process(&records, &store).unwrap();
        store.commit(batch).unwrap();
        total.records += stats.records;
        total.unique += stats.unique;
        total.duplicates += stats.duplicates;
        total.conflicts += stats.conflicts;
        total.late += stats.late;
        total.invalid += stats.invalid;
        total.windows_closed += stats.windows_closed;
    }
    let mut out = BTreeMap::new();
    for t in Table::ALL {
        let rows = deliverable_rows(&store, t, 0, 1000).unwrap();
        if !rows.is_empty() {
            out.insert((t, 0), rows);
        }
    }
    assert_eq!(store.next_offsets().unwrap()[&0], 8);
    (out, total)
}

#[test]
fn every_record_lands_in_exactly_one_table() {
    let (out, stats) = run(&[(0, 8)]);
    assert_eq!(
        (
            stats.unique,
            stats.duplicates,
            stats.conflicts,
            stats.late,
            stats.invalid
        ),
        (4, 1, 1, 1, 1)
    );
    let count = |t| out.get(&(t, 0)).map_or(0, |r: &Vec<_>| r.len());
    assert_eq!(count(Table::Payments), 4);
    assert_eq!(count(Table::DedupAudit), 2);
    assert_eq!(count(Table::LateEvents), 1);
    assert_eq!(count(Table::ProcessingErrors), 1);
    // The source offsets across the four tables are exactly 0..8, each once.
    let mut offsets: Vec<i64> = [
        Table::Payments,
        Table::DedupAudit,
        Table::LateEvents,
        Table::ProcessingErrors,
    ]
    .iter()
    .flat_map(|t| out.get(&(*t, 0)).cloned().unwrap_or_default())
    .map(|(_, row)| {
        serde_json::from_slice::<serde_json::Value>(&row).unwrap()["source_offset"]
            .as_i64()
            .unwrap()
    })
    .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
    // Windows 10:00 (a, b) closed when the watermark reached 10:10; sums match payments.
    let metrics = &out[&(Table::PaymentMetrics, 0)];
    let first: serde_json::Value = serde_json::from_slice(&metrics[0].1).unwrap();
    assert_eq!(first["window_start"], "2026-11-23T10:00:00.000000Z");
    // a (10:00:00) and b (10:00:30) share the window; the duplicate and the conflict too.
    assert_eq!(first["payment_count"], 2);
    assert_eq!(first["amount_minor_sum"], 300);
    assert_eq!(first["duplicate_count"], 1);
    assert_eq!(first["conflict_count"], 1);
}

/// Batches processed but not committed yet, as the checkpoint holds them: at most
/// [`COMMITS_IN_FLIGHT`] while the next batch is processed, committed oldest first.
#[derive(Default)]
struct Uncommitted(std::collections::VecDeque<StateBatch>);

impl Uncommitted {
    /// Takes the batch just processed; commits the oldest ones until the next batch
    /// may be processed.
    fn push(&mut self, store: &StateStore, batch: StateBatch) {
        self.0.push_back(batch);
        while self.0.len() > COMMITS_IN_FLIGHT {
            store.commit(self.0.pop_front().unwrap()).unwrap();
        }
    }

    fn finish(&mut self, store: &StateStore) {
        while let Some(batch) = self.0.pop_front() {
            store.commit(batch).unwrap();
        }
    }
}

/// Runs the stream cut into batches [start, end) with one pipeline, each batch
/// committed only after the next [`COMMITS_IN_FLIGHT`] have been processed: as the
/// processor does when commits run on their own threads while it processes the next
/// batches, and each is as slow as it can be.
fn run_overlapped(batches: &[(usize, usize)]) -> Outbox {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let input = stream();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let mut in_flight = Uncommitted::default();
    for &(start, end) in batches {
        let records: Vec<InputRecord<'_>> = input[start..end]
            .iter()
            .enumerate()
            .map(|(i, (k, v))| InputRecord {
                partition: 0,
                offset: (start + i) as i64,
                key: Some(k.as_bytes()),
                payload: v,
                timestamp_ms: ts_ms(),
            })
            .collect();
        let (batch, _) = p.process(&records, &store).unwrap();
        in_flight.push(&store, batch);
    }
    in_flight.finish(&store);
    let mut out = BTreeMap::new();
    for t in Table::ALL {
        let rows = deliverable_rows(&store, t, 0, 1000).unwrap();
        if !rows.is_empty() {
            out.insert((t, 0), rows);
        }
    }
    out
}

/// A batch read while its predecessors' commits are still in flight must see their
/// dedup and fraud writes (the duplicate of `a` and the conflict of `b` come one or
/// two batches after them).
#[test]
fn a_batch_processed_before_the_previous_commit_lands_sees_its_writes() {
    let (whole, _) = run(&[(0, 8)]);
    assert_eq!(whole, run_overlapped(&[(0, 2), (2, 4), (4, 8)]));
    assert_eq!(
        whole,
        run_overlapped(&(0..8).map(|i| (i, i + 1)).collect::<Vec<_>>())
    );
}

#[test]
fn batch_boundaries_do_not_change_the_output() {
    let (whole, _) = run(&[(0, 8)]);
    let (split, _) = run(&[(0, 1), (1, 4), (4, 5), (5, 8)]);
    let (singles, _) = run(&(0..8).map(|i| (i, i + 1)).collect::<Vec<_>>());
    assert_eq!(whole, split);
    assert_eq!(whole, singles);
}

/// A stream of payments whose cards and customers come back (a small pool of each, with
/// fingerprints of an odd and of the longest length, a customer id longer than 16
/// bytes, more devices than a customer keeps, two currencies, three countries), every
/// seventh a retry of the one three back; times only move forward, so none is late.
fn payments_with_history(n: usize) -> Vec<(String, PaymentEvent)> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % m
    };
    let cards: Vec<String> = (0..12)
        .map(|i| format!("{:032x}", 0x1f2e_3d4c_5b6a_7988_u128.wrapping_mul(i + 7)))
        .chain(["0123456789abcdef0".into(), "f".repeat(128)])
        .collect();
    let customers: Vec<String> = (0..9)
        .map(|i| format!("c-{i}"))
        .chain(["customer-with-an-id-longer-than-sixteen-bytes".into()])
        .collect();
    let mut out: Vec<(String, PaymentEvent)> = Vec::new();
    let mut secs = 0;
    for i in 0..n {
        if i % 7 == 6 {
            let retry = out[i - 3].clone();
            out.push(retry);
            continue;
        }
        secs += next(40) as i64;
        let id = format!("tx-{i}");
        let event = PaymentEvent {
            card_fingerprint: cards[next(cards.len() as u64) as usize].as_str().into(),
            customer_id: customers[next(customers.len() as u64) as usize]
                .as_str()
                .into(),
            device_id: format!("d-{}", next(20)).into(),
            ip_country: ["US", "DE", "BR"][next(3) as usize].into(),
            currency: Currency::from_code(["USD", "EUR"][next(2) as usize]).unwrap(),
            ..payment(&id, secs, 100 + next(90_000) as i64)
        };
        out.push((id, event));
    }
    out
}

/// Every payment's fraud assessment equals a plain fold of `assess` over the stream, one
/// payment at a time, its card's and customer's state stored and read back between
/// payments: whatever the batches, whether a value is read from the store, from memory
/// or from the batch still in flight, and across a restart.
#[test]
fn fraud_scores_equal_a_fold_of_assess_one_payment_at_a_time() {
    let stream = payments_with_history(900);
    let cfg = cfg();

    // The fold.
    let mut cards: HashMap<String, Vec<u8>> = HashMap::new();
    let mut customers: HashMap<String, Vec<u8>> = HashMap::new();
    let mut expected = BTreeMap::new();
    for (id, e) in &stream {
        if expected.contains_key(id) {
            continue;
        }
        let card_bytes = cards.entry(e.card_fingerprint.to_string()).or_default();
        let customer_bytes = customers.entry(e.customer_id.to_string()).or_default();
        let mut card = paydedup_fraud::CardState::decode(card_bytes);
        let mut customer = paydedup_fraud::CustomerState::decode(customer_bytes);
        let a = paydedup_fraud::assess(e, &mut card, &mut customer, &cfg.fraud);
        *card_bytes = card.encode();
        *customer_bytes = customer.encode();
        let reasons: Vec<&str> = a.reasons.iter().map(|r| r.as_str()).collect();
        expected.insert(
            id.clone(),
            serde_json::json!([
                a.score,
                a.flagged,
                reasons,
                a.card_count_10m,
                a.card_count_1h
            ]),
        );
    }
    assert!(
        expected.values().any(|a| a[0].as_u64() > Some(0)),
        "some payment scores"
    );

    // The pipeline: batches of 1 to 60 records, each committed after the next
    // `COMMITS_IN_FLIGHT` are processed, and a restart half-way (memory then fills in
    // the background).
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<Vec<u8>> = stream.iter().map(|(_, e)| encode_json(e)).collect();
    let mut start = 0;
    for half in [input.len() / 2, input.len()] {
        let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut p = Pipeline::load(cfg.clone(), &store).unwrap();
        let mut in_flight = Uncommitted::default();
        while start < half {
            let end = (start + 1 + (start * 37 + 11) % 60).min(half);
            let records: Vec<InputRecord<'_>> = (start..end)
                .map(|i| InputRecord {
                    partition: 0,
                    offset: i as i64,
                    key: Some(stream[i].0.as_bytes()),
                    payload: &input[i],
                    // Judged against the clock: the stream spans hours.
                    timestamp_ms: None,
                })
                .collect();
            let (batch, _) = p.process(&records, &store).unwrap();
            in_flight.push(&store, batch);
            start = end;
        }
        in_flight.finish(&store);
    }
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let rows = deliverable_rows(&store, Table::Payments, 0, 10_000).unwrap();
    let got: BTreeMap<String, serde_json::Value> = rows
        .iter()
        .map(|(_, row)| {
            let r: serde_json::Value = serde_json::from_slice(row).unwrap();
            let fields = ["fraud_score", "fraud_flagged", "fraud_reasons"];
            let mut a: Vec<serde_json::Value> = fields.iter().map(|f| r[f].clone()).collect();
            a.extend(["card_count_10m", "card_count_1h"].map(|f| r[f].clone()));
            (r["transaction_id"].as_str().unwrap().to_string(), a.into())
        })
        .collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

/// How a test run hands its batches to the store.
#[derive(Clone, Copy, Debug)]
enum Commits {
    /// Each batch committed before the next is processed, by a pipeline loaded afresh
    /// from the store for every batch (nothing in flight is ever read).
    Reloaded,
    /// One pipeline, each batch committed before the next is processed.
    Synced,
    /// One pipeline, each batch committed only after the next `COMMITS_IN_FLIGHT`.
    Overlapped,
}

/// A payment for [`card_counts`]: (partition, id, card, seconds after 10:00).
type CardPayment<'a> = (i32, &'a str, &'a str, i64);

/// Runs `input` one record per batch on a store whose fraud TTL is 30 minutes, owning
/// partitions 0 and 1 but those in `forget`; returns each payment's `card_count_1h`.
/// Before it, `before` (if any) runs owning both, its batches committed, and then the
/// partitions in `forget` are forgotten, as an instance that lost them does at start.
fn card_counts(
    before: &[CardPayment<'_>],
    forget: &[i32],
    input: &[CardPayment<'_>],
    commits: Commits,
) -> BTreeMap<String, i64> {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        fraud_ttl_micros: 30 * super::fixtures::MIN,
        ..StoreOptions::default()
    };
    let store = StateStore::open(dir.path(), &opts).unwrap();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut run = |input: &[CardPayment<'_>], owned: &[i32], commits: Commits| {
        let mut p = Pipeline::load(cfg(), &store).unwrap();
        let mut uncommitted = Uncommitted::default();
        for (partition, id, card, secs) in input {
            let payload = encode_json(&PaymentEvent {
                card_fingerprint: (*card).into(),
                ..payment(id, *secs, 100)
            });
            let offset = offsets.entry(*partition).or_default();
            let record = InputRecord {
                partition: *partition,
                offset: *offset,
                key: Some(id.as_bytes()),
                payload: &payload,
                timestamp_ms: None,
            };
            *offset += 1;
            if let Commits::Reloaded = commits {
                p = Pipeline::load(cfg(), &store).unwrap();
            }
            let (mut batch, _) = p.process(&[record], &store).unwrap();
            // As the checkpoint does: the batch carries the watermarks it reached.
            crate::checkpoint::stamp_watermarks(&p, owned, &mut batch);
            match commits {
                Commits::Reloaded | Commits::Synced => store.commit(batch).unwrap(),
                Commits::Overlapped => uncommitted.push(&store, batch),
            }
        }
        uncommitted.finish(&store);
    };
    if !before.is_empty() {
        run(before, &[0, 1], Commits::Synced);
        store.forget_partitions(forget).unwrap();
    }
    let owned: Vec<i32> = [0, 1].into_iter().filter(|p| !forget.contains(p)).collect();
    run(input, &owned, commits);
    let mut counts = BTreeMap::new();
    for partition in [0, 1] {
        for (_, row) in deliverable_rows(&store, Table::Payments, partition, 100).unwrap() {
            let r: serde_json::Value = serde_json::from_slice(&row).unwrap();
            let id = r["transaction_id"].as_str().unwrap().to_string();
            counts.insert(id, r["card_count_1h"].as_i64().unwrap());
        }
    }
    counts
}

const EVERY_WAY: [Commits; 3] = [Commits::Reloaded, Commits::Synced, Commits::Overlapped];

/// A card's history expires by the TTL under the most advanced watermark of any
/// partition, and that judgement must not depend on when commits land: the history may
/// be read from a batch still in flight, from the store before the commit that moved
/// the horizon is durable, or after. Card `x` pays on partition 0 at 10:00 and 10:01;
/// between the two, partition 1 moves two hours ahead, past `x`'s 30-minute TTL.
#[test]
fn fraud_history_expires_by_the_pipelines_watermark_whenever_commits_land() {
    let x = "ab".repeat(16);
    let (y, z) = ("cd".repeat(16), "ef".repeat(16));
    // The history read from the store (in flight: the two batches between).
    let apart = [
        (0, "tx-1", x.as_str(), 0),
        (1, "tx-2", y.as_str(), 7_200),
        (1, "tx-3", z.as_str(), 7_201),
        (0, "tx-4", x.as_str(), 60),
    ];
    // The history read from the batch that wrote it, while it may be in flight.
    let close = [
        (0, "tx-1", x.as_str(), 0),
        (1, "tx-2", y.as_str(), 7_200),
        (0, "tx-4", x.as_str(), 60),
    ];
    // No partition ahead: the history counts.
    let kept = [(0, "tx-1", x.as_str(), 0), (0, "tx-4", x.as_str(), 60)];
    for commits in EVERY_WAY {
        for input in [&apart[..], &close[..]] {
            let counts = card_counts(&[], &[], input, commits);
            let n = input.len();
            assert_eq!(counts["tx-1"], 1, "{commits:?}, {n} batches");
            assert_eq!(
                counts["tx-4"], 1,
                "{commits:?}, {n} batches: x's history expired"
            );
        }
        let counts = card_counts(&[], &[], &kept, commits);
        assert_eq!(counts["tx-4"], 2, "{commits:?}: x's history counts");
    }
}

/// The same when the store's horizon is ahead of every partition the pipeline owns: a
/// partition that moved two hours ahead was then lost to another instance (forgotten
/// at start), and the store still expires fraud values by its watermark. A card's
/// history written since is expired whether read from the store or from the batch
/// that wrote it, still in flight.
#[test]
fn fraud_history_expires_by_the_stores_horizon_when_it_is_ahead_of_every_owned_partition() {
    let x = "ab".repeat(16);
    let y = "cd".repeat(16);
    let before = [(1, "tx-0", y.as_str(), 7_200)];
    let input = [
        (0, "tx-1", x.as_str(), 0),
        (0, "tx-2", x.as_str(), 60),
        (0, "tx-3", x.as_str(), 120),
    ];
    for commits in EVERY_WAY {
        let counts = card_counts(&before, &[1], &input, commits);
        for id in ["tx-1", "tx-2", "tx-3"] {
            assert_eq!(counts[id], 1, "{commits:?}, {id}: x's history expired");
        }
    }
}

#[test]
fn sequences_are_dense_per_table_and_partition() {
    let (out, _) = run(&[(0, 3), (3, 8)]);
    for rows in out.values() {
        let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (0..rows.len() as u64).collect::<Vec<_>>());
        for (seq, row) in rows {
            let v: serde_json::Value = serde_json::from_slice(row).unwrap();
            assert_eq!(v["outbox_seq"].as_u64(), Some(*seq));
        }
    }
}

#[test]
fn a_card_number_in_bad_input_never_reaches_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&event("p", 0, 100)).unwrap();
    v["card_fingerprint"] = "4111111111111111".into();
    let payload = serde_json::to_vec(&v).unwrap();
    let rec = InputRecord {
        partition: 0,
        offset: 0,
        key: Some(b"p"),
        payload: &payload,
        timestamp_ms: ts_ms(),
    };
    let (batch, stats) = p.process(&[rec], &store).unwrap();
    assert_eq!(stats.invalid_by_code.get("card_number_detected"), Some(&1));
    store.commit(batch).unwrap();
    let rows = deliverable_rows(&store, Table::ProcessingErrors, 0, 10).unwrap();
    let row = String::from_utf8(rows[0].1.clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&row).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload_base64"].as_str().unwrap())
        .unwrap();
    assert!(!String::from_utf8_lossy(&payload).contains("4111111111111111"));
    assert!(!row.contains("4111111111111111"));
    assert_eq!(v["payload_redacted"], true);
}

#[test]
fn drain_closes_every_window_and_later_events_for_them_are_late() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let a = event("a", 0, 100);
    let rec = InputRecord {
        partition: 0,
        offset: 0,
        key: Some(b"a"),
        payload: &a,
        timestamp_ms: ts_ms(),
    };
    let (batch, _) = p.process(&[rec], &store).unwrap();
    store.commit(batch).unwrap();
    assert_eq!(p.open_windows(), 1);
    let (batch, closed) = p.drain(&[0]);
    store.commit(batch).unwrap();
    assert_eq!((closed, p.open_windows()), (1, 0));
    let b = event("b", 10, 100);
    let rec = InputRecord {
        partition: 0,
        offset: 1,
        key: Some(b"b"),
        payload: &b,
        timestamp_ms: ts_ms(),
    };
    let (_, stats) = p.process(&[rec], &store).unwrap();
    assert_eq!(stats.late, 1);
}

/// Issue 9, hole 7 (windows): a partition that went quiet kept its open windows
/// forever. Advanced to the active partitions' watermark, its passed windows close
/// with their own rows, the advance survives a restart, and a later record older than
/// the advanced watermark is late.
#[test]
fn an_idle_partition_follows_the_active_ones_and_its_windows_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let quiet = event("quiet", 0, 100);
    let busy = event("busy", 3_600, 100); // an hour later, on partition 1
    let records = [
        InputRecord {
            partition: 0,
            offset: 0,
            key: Some(b"quiet"),
            payload: &quiet,
            timestamp_ms: ts_ms(),
        },
        InputRecord {
            partition: 1,
            offset: 0,
            key: Some(b"busy"),
            payload: &busy,
            timestamp_ms: ts_ms(),
        },
    ];
    let (batch, _) = p.process(&records, &store).unwrap();
    store.commit(batch).unwrap();
    assert_eq!(p.open_windows(), 2, "each partition's own window is open");

    let to = p.watermark(1).unwrap();
    let (batch, closed) = p.advance_idle(&[0], to);
    assert_eq!(closed, 1, "the quiet partition's window closes");
    assert_eq!(batch.outbox_rows(), 1, "one payment_metrics row");
    store.commit(batch).unwrap();
    assert_eq!(p.watermark(0), Some(to));
    // Nothing moves when the target is not ahead.
    assert_eq!(p.advance_idle(&[0], to).1, 0);

    // A restart resumes with the advanced watermark: an old record is late.
    let mut restarted = Pipeline::load(cfg(), &store).unwrap();
    assert_eq!(restarted.watermark(0), Some(to));
    let old = event("old", 30, 100);
    let rec = InputRecord {
        partition: 0,
        offset: 1,
        key: Some(b"old"),
        payload: &old,
        timestamp_ms: ts_ms(),
    };
    let (_, stats) = restarted.process(&[rec], &store).unwrap();
    assert_eq!(stats.late, 1);
}

/// A state directory from a build before the short fraud keys: its card history sits
/// under `card/…` (as JSON, the oldest value layout). After the rename the processor
/// does at start, the pipeline reads that history: a payment on the card counts the
/// five before it.
#[test]
fn fraud_history_under_an_earlier_builds_keys_is_renamed_and_read() {
    let dir = tempfile::tempdir().unwrap();
    // Written per key, as that build did (it had no fraud log).
    let earlier_build = StoreOptions {
        fraud_log: false,
        ..StoreOptions::default()
    };
    let store = StateStore::open(dir.path(), &earlier_build).unwrap();
    let fingerprint = "ab".repeat(16);
    let t0 = payment("x", 0, 100).event_time_micros();
    let history = paydedup_fraud::CardState {
        last_seen_micros: t0,
        recent: (1..=5).map(|i| t0 - i * 60_000_000).collect(),
        ..Default::default()
    };
    let mut old_value = t0.to_be_bytes().to_vec();
    old_value.extend(serde_json::to_vec(&history).unwrap());
    let mut b = StateBatch::new();
    b.put_fraud(format!("card/{fingerprint}").into_bytes(), old_value);
    store.commit(b).unwrap();
    drop(store);
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();

    assert_eq!(prefetch::rename_legacy_fraud_keys(&store).unwrap(), 1);
    assert_eq!(prefetch::rename_legacy_fraud_keys(&store).unwrap(), 0);
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let payload = encode_json(&payment("x", 30, 100));
    let rec = InputRecord {
        partition: 0,
        offset: 0,
        key: Some(b"x"),
        payload: &payload,
        timestamp_ms: ts_ms(),
    };
    let (batch, stats) = p.process(&[rec], &store).unwrap();
    assert_eq!(stats.unique, 1);
    store.commit(batch).unwrap();
    let rows = deliverable_rows(&store, Table::Payments, 0, 10).unwrap();
    let row: serde_json::Value = serde_json::from_slice(&rows[0].1).unwrap();
    assert_eq!(row["card_fingerprint"], fingerprint);
    assert_eq!(row["card_count_1h"], 6);
}

/// A store holding one committed batch of (key, payload) records at offsets 0.. of
/// partition 0.
fn one_batch(input: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let records: Vec<InputRecord<'_>> = input
        .iter()
        .enumerate()
        .map(|(i, (k, v))| InputRecord {
            partition: 0,
            offset: i as i64,
            key: Some(k.as_bytes()),
            payload: v,
            timestamp_ms: ts_ms(),
        })
        .collect();
    let (batch, _) = p.process(&records, &store).unwrap();
    store.commit(batch).unwrap();
    (dir, store)
}

/// Every outbox row (as text, with its base64 payload decoded) after one batch of
/// (key, payload) records on partition 0.
fn stored_rows(input: &[(&str, Vec<u8>)]) -> Vec<String> {
    let (_dir, store) = one_batch(input);
    let mut out = Vec::new();
    for t in Table::ALL {
        for (_, row) in deliverable_rows(&store, t, 0, 1000).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&row).unwrap();
            if let Some(b) = v["payload_base64"].as_str() {
                let raw = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                out.push(String::from_utf8_lossy(&raw).into_owned());
            }
            out.push(String::from_utf8(row).unwrap());
        }
    }
    out
}

/// Issue 9, hole 5: a card number never reaches a stored row, whatever the outcome of
/// the record that carried it: an error other than `card_number_detected` (malformed
/// JSON, unknown currency, payload too large) or an unknown field of a late event.
#[test]
fn a_card_number_reaches_no_row_whatever_the_outcome() {
    const PAN: &str = "4111111111111111";
    let malformed = format!(r#"{{"transaction_id":"m","card":"{PAN}""#).into_bytes();
    let mut v: serde_json::Value = serde_json::from_slice(&event("u", 0, 100)).unwrap();
    v["currency"] = "XXX".into();
    v["note"] = PAN.into();
    let unknown_currency = serde_json::to_vec(&v).unwrap();
    // c moves the watermark to 10:10; d at 10:01 is late and carries the PAN in an
    // unknown field.
    let mut late: serde_json::Value = serde_json::from_slice(&event("d", 60, 400)).unwrap();
    late["customer_note"] = format!("card {PAN}").into();
    let late = serde_json::to_vec(&late).unwrap();
    let rows = stored_rows(&[
        ("m", malformed),
        (PAN, unknown_currency),
        ("c", event("c", 900, 300)),
        ("d", late),
    ]);
    assert!(rows.len() >= 6, "{rows:?}");
    for row in &rows {
        assert!(!row.contains(PAN), "a card number reached a row: {row}");
    }
    assert!(rows
        .iter()
        .any(|r| r.contains("\"late_events\"") || r.contains("lateness_secs")));
}

/// Issue 9, hole 4: a producer whose clock says 2099 stamps both the Kafka timestamp
/// and the event time. Judged by its own clock the record is valid and would move its
/// partition's watermark for good, turning every later payment late. Judged against
/// the processor's clock it is quarantined, and so is one with no timestamp at all.
#[test]
fn a_producer_clock_in_2099_cannot_move_the_watermark() {
    let far = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&event("z", 0, 100)).unwrap();
    v["event_time"] = far.to_rfc3339().into();
    let future = serde_json::to_vec(&v).unwrap();
    let ok = event("b", 30, 200);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let rec = |offset, key: &'static [u8], payload, timestamp_ms| InputRecord {
        partition: 0,
        offset,
        key: Some(key),
        payload,
        timestamp_ms,
    };
    let records = [
        rec(0, b"z", &future[..], Some(far.timestamp_millis())),
        rec(1, b"z", &future[..], None),
        rec(2, b"b", &ok[..], ts_ms()),
    ];
    let (_, stats) = p.process(&records, &store).unwrap();
    assert_eq!(stats.invalid_by_code.get("event_time_in_future"), Some(&2));
    assert_eq!((stats.unique, stats.late), (1, 0));
    assert!(p.watermark(0) < Some(far.timestamp_micros() - 3_600_000_000));
}

/// Issue 9, hole 3 (its cause): a producer stamping CreateTime in microseconds gives a
/// Kafka timestamp past year 9999, which no warehouse TIMESTAMP can carry; rendered into
/// a row it made the sink reject the whole append. It is caught at decode time instead:
/// the record becomes a `processing_errors` row (without the unrepresentable value).
#[test]
fn a_kafka_timestamp_no_row_can_carry_is_an_error_at_decode_time() {
    let micros = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .unwrap()
        .timestamp_micros();
    let a = event("a", 0, 100);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut p = Pipeline::load(cfg(), &store).unwrap();
    let rec = InputRecord {
        partition: 0,
        offset: 0,
        key: Some(b"a"),
        payload: &a,
        timestamp_ms: Some(micros),
    };
    let (batch, stats) = p.process(&[rec], &store).unwrap();
    store.commit(batch).unwrap();
    assert_eq!(
        stats.invalid_by_code.get("kafka_timestamp_out_of_range"),
        Some(&1)
    );
    let rows = deliverable_rows(&store, Table::ProcessingErrors, 0, 10).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rows[0].1).unwrap();
    assert_eq!(v["kafka_timestamp"], serde_json::Value::Null);
    assert_eq!(v["error_field"], "kafka_timestamp");
}

/// A payload for the property test: random bytes, or a valid event with one byte
/// overwritten, or a valid event with a card number spliced into a field.
fn poison() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (0usize..400, any::<u8>()).prop_map(|(at, b)| {
            let mut e = event("p", 0, 100);
            let i = at % e.len();
            e[i] = b;
            e
        }),
        (0usize..5).prop_map(|field| {
            let name = ["merchant_id", "customer_id", "device_id", "region", "note"][field];
            let mut v: serde_json::Value = serde_json::from_slice(&event("q", 0, 100)).unwrap();
            v[name] = "4111 1111 1111 1111".into();
            serde_json::to_vec(&v).unwrap()
        }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever arrives, every record lands in exactly one of the four record tables
    /// with its own offset, nothing panics, and no card number reaches a row.
    #[test]
    fn any_input_lands_once_and_never_leaks_a_card_number(
        payloads in proptest::collection::vec(poison(), 1..30)
    ) {
        let input: Vec<(&str, Vec<u8>)> = payloads.into_iter().map(|p| ("k", p)).collect();
        let (_dir, store) = one_batch(&input);
        let mut offsets = Vec::new();
        for t in [Table::Payments, Table::DedupAudit, Table::LateEvents, Table::ProcessingErrors] {
            for (_, row) in deliverable_rows(&store, t, 0, 1000).unwrap() {
                let v: serde_json::Value = serde_json::from_slice(&row).unwrap();
                offsets.push(v["source_offset"].as_i64().unwrap());
                let text = String::from_utf8_lossy(&row).into_owned();
                let raw = v["payload_base64"].as_str().map(|b| {
                    base64::engine::general_purpose::STANDARD.decode(b).unwrap()
                });
                for s in [Some(text), raw.map(|r| String::from_utf8_lossy(&r).into_owned())]
                    .into_iter()
                    .flatten()
                {
                    proptest::prop_assert!(!s.contains("4111 1111 1111 1111"), "{}", s);
                }
            }
        }
        offsets.sort_unstable();
        proptest::prop_assert_eq!(offsets, (0..input.len() as i64).collect::<Vec<_>>());
    }
}

/// Each partition's records counted once, in order of first appearance, whether its
/// records come in one run or interleaved with another's.
#[test]
fn records_are_counted_per_partition() {
    let record = |partition| InputRecord {
        partition,
        offset: 0,
        key: None,
        payload: b"",
        timestamp_ms: None,
    };
    let records: Vec<InputRecord<'_>> = [3, 3, 1, 1, 1, 3, 0, 1, 3]
        .into_iter()
        .map(record)
        .collect();
    assert_eq!(
        records_per_partition(&records),
        vec![(3, 4), (1, 4), (0, 1)]
    );
    assert_eq!(records_per_partition(&[]), vec![]);
}
