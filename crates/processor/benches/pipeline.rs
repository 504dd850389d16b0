//! Throughput of the processor core without Kafka: decode → dedup → fraud → windows →
//! rows → one synced RocksDB commit per batch. Prints a table.
//!
//! cargo bench -p paydedup-processor --bench pipeline [-- EVENTS]

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use paydedup_event::{
    encode_json, Currency, DecodeLimits, PaymentEvent, PaymentMethod, TransactionId,
};
use paydedup_fraud::FraudConfig;
use paydedup_processor::pipeline::{InputRecord, Pipeline, PipelineConfig};
use paydedup_state::{StateStore, StoreOptions};

fn events(n: usize) -> Vec<(String, Vec<u8>)> {
    let base = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
    let usd = Currency::from_code("USD").unwrap();
    let mut out = Vec::with_capacity(n);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..n {
        let r = next();
        // 10 % re-send an earlier id (duplicates; 1 in 10 of those with a new amount).
        let (id, amount) = if i > 1000 && r % 10 == 0 {
            let back = (r >> 8) as usize % 1000 + 1;
            (
                i - back,
                if r % 100 == 0 {
                    999
                } else {
                    ((i - back) % 9000 + 100) as i64
                },
            )
        } else {
            (i, (i % 9000 + 100) as i64)
        };
        let e = PaymentEvent {
            transaction_id: TransactionId::new_unchecked(format!("tx-{id:012}")),
            event_time: base + Duration::milliseconds(id as i64 * 10),
            amount_minor: amount,
            currency: usd,
            merchant_id: format!("m-{}", id % 2000).into(),
            merchant_category: 5411,
            card_fingerprint: format!("{:032x}", id % 50_000).into(),
            card_country: "US".into(),
            customer_id: format!("c-{}", id % 25_000).into(),
            ip_address: "20.1.2.3".parse().unwrap(),
            ip_country: "US".into(),
            device_id: format!("d-{}", id % 25_000).into(),
            region: "us-east".into(),
            payment_method: PaymentMethod::Card,
            schema_version: 1,
        };
        out.push((e.transaction_id.to_string(), encode_json(&e)));
    }
    out
}

fn run(input: &[(String, Vec<u8>)], batch: usize, sync: bool) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(
        dir.path(),
        &StoreOptions {
            sync,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let cfg = PipelineConfig {
        allowed_lateness_micros: 300_000_000,
        retention_micros: 3_600_000_000,
        window_micros: 60_000_000,
        decode: DecodeLimits::default(),
        fraud: FraudConfig::default(),
    };
    let mut p = Pipeline::load(cfg, &store).unwrap();
    let ts = Some(
        Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
            .unwrap()
            .timestamp_millis(),
    );
    let mut latencies = Vec::new();
    let started = Instant::now();
    for (b, chunk) in input.chunks(batch).enumerate() {
        let t = Instant::now();
        let records: Vec<InputRecord<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| InputRecord {
                partition: 0,
                offset: (b * batch + i) as i64,
                key: Some(k.as_bytes()),
                payload: v,
                timestamp_ms: ts,
            })
            .collect();
        let (sb, _) = p.process(&records, &store).unwrap();
        store.commit(sb).unwrap();
        latencies.push(t.elapsed().as_secs_f64());
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    store.compact().unwrap();
    let st = store.stats().unwrap();
    let dedup_bytes = st.bytes["dedup"] + st.bytes.get("dedup_pages").copied().unwrap_or(0);
    let per_key = dedup_bytes as f64 / st.dedup_keys.max(1) as f64;
    (input.len() as f64 / secs, p99 * 1000.0, per_key)
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` it runs small.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .filter(|_| bench)
        .find(|a| a.parse::<usize>().is_ok())
        .and_then(|a| a.parse().ok())
        .unwrap_or(if bench { 500_000 } else { 20_000 });
    let input = events(n);
    println!("processor core, {n} events (10 % duplicates), one partition, one thread");
    println!(
        "{:>8} {:>6} {:>14} {:>16} {:>14}",
        "batch", "sync", "events/s", "p99 batch (ms)", "dedup B/key"
    );
    for (batch, sync) in [(1000, true), (5000, true), (5000, false), (20000, true)] {
        let (rate, p99, bytes) = run(&input, batch, sync);
        println!("{batch:>8} {sync:>6} {rate:>14.0} {p99:>16.1} {bytes:>14.1}");
    }
}
