//! How long a restore from the warehouse takes at millions of keys, without a broker
//! (at 10 M records the local tansu broker, not paydedup, would set the pace: its
//! SQLite fetch path serves a few thousand records per second).
//!
//! Random transaction ids (xorshift, 16 hex digits) keyed to 4 partitions, 10 % of them
//! re-sent 1–100,000 payments later (1 in 10 of those with another amount), 2 ms of
//! event time apart with up to 2 s of disorder, retention 48 h (so every id is still
//! alive: the restored index holds them all). The pipeline processes them in batches
//! of 5,000 into a state directory and the rows are delivered to the real file sink;
//! then that state is put aside and `restore` rebuilds a new one from the file sink.
//! Prints one table row: records, rows read, live keys, whether the restored live
//! dedup index equals the lost one's (count and digest per partition), the restore's
//! time and the process's peak RSS during it.
//!
//! cargo bench -p paydedup-processor --bench restore -- [RECORDS]   (default 1000000)
//! (`cargo test` runs it with 20,000 records and fails if the indexes differ)

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use paydedup_event::{
    encode_json, Currency, DecodeLimits, PaymentEvent, PaymentMethod, TransactionId,
};
use paydedup_fraud::FraudConfig;
use paydedup_processor::pipeline::{InputRecord, Pipeline, PipelineConfig};
use paydedup_processor::relay::deliverable_rows;
use paydedup_processor::restore::{rebuild::RebuildConfig, restore};
use paydedup_sink::{FileSink, Sink};
use paydedup_state::{StateStore, StoreOptions, Table};

const PARTITIONS: [i32; 4] = [0, 1, 2, 3];
const RETENTION_MICROS: i64 = 48 * 3600 * 1_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// (partition, key, payload) in log order.
fn records(n: usize) -> Vec<(i32, String, Vec<u8>)> {
    let base = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
    let eur = Currency::from_code("EUR").unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids: Vec<(u64, i64)> = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = rng.next();
        let (id, t, amount) = if i > 1_000 && r.is_multiple_of(10) {
            let (id, t) = ids[i - 1 - (r >> 8) as usize % 100_000.min(i - 1)];
            (
                id,
                t,
                if r.is_multiple_of(100) {
                    1
                } else {
                    100 + (id % 9_000) as i64
                },
            )
        } else {
            let id = rng.next();
            let t = i as i64 * 2 - (r >> 20) as i64 % 2_000;
            (id, t, 100 + (id % 9_000) as i64)
        };
        ids.push((id, t));
        let e = PaymentEvent {
            transaction_id: TransactionId::new_unchecked(format!("tx-{id:016x}")),
            event_time: base + Duration::milliseconds(t),
            amount_minor: amount,
            currency: eur,
            merchant_id: format!("m-{}", id % 20_000).into(),
            merchant_category: 5411,
            card_fingerprint: format!("{:032x}", id % 1_000_003).into(),
            card_country: "DE".into(),
            customer_id: format!("c-{}", id % 500_009).into(),
            ip_address: "20.1.2.3".parse().unwrap(),
            ip_country: "DE".into(),
            device_id: format!("d-{}", id % 500_009).into(),
            region: "eu-west".into(),
            payment_method: PaymentMethod::Card,
            schema_version: 1,
        };
        out.push((
            (id % 4) as i32,
            e.transaction_id.to_string(),
            encode_json(&e),
        ));
    }
    out
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        allowed_lateness_micros: 300_000_000,
        retention_micros: RETENTION_MICROS,
        window_micros: 60_000_000,
        decode: DecodeLimits::default(),
        fraud: FraudConfig::default(),
    }
}

fn open(dir: &std::path::Path) -> StateStore {
    StateStore::open(
        dir,
        &StoreOptions {
            sync: false,
            dedup_retention_micros: Some(RETENTION_MICROS),
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// Moves every outbox row to the sink.
fn deliver(store: &StateStore, sink: &mut FileSink) {
    for t in Table::ALL {
        for p in PARTITIONS {
            let rows = deliverable_rows(store, t, p, usize::MAX).unwrap();
            if let Some(&(last, _)) = rows.last() {
                let first = rows[0].0;
                let bytes: Vec<Vec<u8>> = rows.into_iter().map(|(_, r)| r).collect();
                sink.append(t, p, first, &bytes).unwrap();
                store.outbox_delete_through(t, p, last).unwrap();
            }
        }
    }
}

/// Peak RSS since the last reset, MiB; resets it.
fn peak_rss_mib(reset: bool) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    if reset {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    kib / 1024
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` the same code runs small, as a
    // test (it fails if the restored index differs).
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .filter(|_| bench)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 20_000 });
    let dir = tempfile::Builder::new()
        .prefix("paydedup-bench-restore-")
        .tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let input = records(n);
    let mut log_end: BTreeMap<i32, i64> = BTreeMap::new();
    let (lost_dir, out_dir) = (dir.path().join("lost"), dir.path().join("out"));
    let lost_index = {
        let store = open(&lost_dir);
        let mut sink = FileSink::open_owned(&out_dir, &PARTITIONS).unwrap();
        let mut pipeline = Pipeline::load(pipeline_config(), &store).unwrap();
        let ts = Some(base_ms());
        let started = Instant::now();
        for chunk in input.chunks(5_000) {
            let records: Vec<InputRecord<'_>> = chunk
                .iter()
                .map(|(p, k, v)| {
                    let o = log_end.entry(*p).or_insert(0);
                    *o += 1;
                    InputRecord {
                        partition: *p,
                        offset: *o - 1,
                        key: Some(k.as_bytes()),
                        payload: v,
                        timestamp_ms: ts,
                    }
                })
                .collect();
            let (batch, _) = pipeline.process(&records, &store).unwrap();
            store.commit(batch).unwrap();
            deliver(&store, &mut sink);
        }
        eprintln!(
            "processed {n} records into the file sink in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        store.live_dedup().unwrap()
    };
    drop(input);
    let store = open(&dir.path().join("restored"));
    let mut sink = FileSink::open_owned(&out_dir, &PARTITIONS).unwrap();
    let p = pipeline_config();
    let cfg = RebuildConfig::of(&p, StoreOptions::default().fraud_ttl_micros);
    peak_rss_mib(true);
    let started = Instant::now();
    let report = restore(&store, &mut sink, &PARTITIONS, &log_end, &cfg).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib(false);
    let restored_index = store.live_dedup().unwrap();
    let live: u64 = restored_index.values().map(|l| l.live).sum();
    // Count and digest per partition (the lost state has no committed watermark: this
    // bench commits the pipeline's batches itself, without the processor's checkpoint
    // step that publishes it).
    let entries = |m: &BTreeMap<i32, paydedup_state::LiveDedup>| -> Vec<(i32, u64, u64)> {
        m.iter().map(|(p, l)| (*p, l.live, l.digest)).collect()
    };
    let equal = entries(&restored_index) == entries(&lost_index);
    let same = if equal { "yes" } else { "NO" };
    eprintln!("{report}");
    if !equal {
        eprintln!("lost:     {lost_index:?}\nrestored: {restored_index:?}");
    }
    println!("| records | rows read | live dedup entries | index equal to the lost one's | restore (s) | peak RSS during it (MiB) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {live} | {same} | {secs:.1} | {rss} |",
        report.rows_read
    );
    assert!(
        equal,
        "the restored dedup index differs from the lost one's"
    );
}

fn base_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}
