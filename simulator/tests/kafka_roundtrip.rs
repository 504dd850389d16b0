//! The simulator against a real tansu broker: a real rdkafka consumer reads back exactly
//! what the manifest says, per partition and per kind.
#![cfg(feature = "integration")]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use paydedup_event::{decode, DecodeLimits};
use paydedup_simulator::manifest::{KindCounts, Manifest};
use paydedup_simulator::truth::{Kind, Resend, Truth};
use paydedup_testkit::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

#[test]
fn consumer_reads_back_exactly_what_the_manifest_says() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest.json");
    let out = Command::new(env!("CARGO_BIN_EXE_paydedup-simulator"))
        .args(["--brokers", &broker.bootstrap(), "--topic", "payments"])
        .args(["--create-partitions", &PARTITIONS.to_string()])
        .args(["--count", "20000", "--seed", "7", "--quiet"])
        .args(["--late-rate", "0.01", "--malformed-rate", "0.02"])
        .arg("--manifest")
        .arg(&manifest_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("produced 20000 records"), "{summary}");
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest.totals.records, 20_000);
    assert_eq!(manifest.partitions, PARTITIONS as usize);

    // Read every partition back from offset 0 and classify what arrived.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "roundtrip-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("payments", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();

    let mut truth = Truth::new(
        PARTITIONS as usize,
        manifest.allowed_lateness_secs,
        manifest.retention_secs,
    );
    let mut counts = vec![KindCounts::default(); PARTITIONS as usize];
    let mut next_offset = vec![0_i64; PARTITIONS as usize];
    let mut malformed_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut read = 0;
    let limits = DecodeLimits::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while read < 20_000 && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.unwrap();
        let p = msg.partition() as usize;
        assert_eq!(
            msg.offset(),
            next_offset[p],
            "offsets are dense and in order"
        );
        next_offset[p] += 1;
        let key = std::str::from_utf8(msg.key().unwrap()).unwrap();
        let ts = Utc
            .timestamp_millis_opt(msg.timestamp().to_millis().unwrap())
            .unwrap();
        let kind = match decode(msg.payload().unwrap_or_default(), ts, &limits) {
            Err(e) => {
                *malformed_by_code.entry(e.code().to_owned()).or_default() += 1;
                Kind::Malformed { code: "" }
            }
            Ok(event) => {
                assert_eq!(event.transaction_id.as_str(), key, "key = transaction_id");
                // Replays and retries are indistinguishable on the wire: both duplicates.
                truth.observe(p, &event, Resend::Other)
            }
        };
        let c = &mut counts[p];
        c.records += 1;
        match kind {
            Kind::Unique => c.unique += 1,
            Kind::Duplicate | Kind::Replay => c.duplicate += 1,
            Kind::Conflict => c.conflict += 1,
            Kind::Late { key_known } => {
                c.late += 1;
                c.late_key_known += u64::from(key_known);
            }
            Kind::Malformed { .. } => c.malformed += 1,
        }
        read += 1;
    }
    assert_eq!(read, 20_000, "every produced record was read back");

    for (p, got) in counts.iter().enumerate() {
        let expected = &manifest.by_partition[p];
        assert_eq!(got.records, expected.records, "partition {p} records");
        assert_eq!(got.unique, expected.unique, "partition {p} unique");
        assert_eq!(
            got.duplicate,
            expected.duplicate + expected.replay,
            "partition {p} duplicates"
        );
        assert_eq!(got.conflict, expected.conflict, "partition {p} conflicts");
        assert_eq!(got.late, expected.late, "partition {p} late");
        assert_eq!(got.malformed, expected.malformed, "partition {p} malformed");
        assert_eq!(manifest.first_offset[p], Some(0));
    }
    assert_eq!(malformed_by_code, manifest.malformed_by_code);
    // Every kind was exercised.
    let t = &manifest.totals;
    for (name, n) in [
        ("unique", t.unique),
        ("duplicate", t.duplicate),
        ("replay", t.replay),
        ("conflict", t.conflict),
        ("late", t.late),
        ("malformed", t.malformed),
    ] {
        assert!(n > 0, "no {name} records produced");
    }
}
