//! Shared helpers of the processor's integration tests: run the real simulator and the
//! real processor binaries against a real tansu broker, read the file sink's output.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use paydedup_testkit::{binary, free_port, Broker};
use serde_json::Value;

/// Fraud columns depend on the order in which *different* partitions' records reach the
/// processor (card state spans partitions), which no two runs share; every other column
/// is a function of each partition's own record order.
pub const CROSS_PARTITION_COLUMNS: [&str; 6] = [
    "fraud_score",
    "fraud_flagged",
    "fraud_reasons",
    "card_count_10m",
    "card_count_1h",
    "flagged_count",
];

pub const TABLES: [&str; 5] = [
    "payments",
    "dedup_audit",
    "late_events",
    "processing_errors",
    "payment_metrics",
];

/// Produces `count` records with `seed` (plus extra flags) and returns the manifest.
pub fn simulate(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: u64,
    seed: u64,
    extra: &[&str],
    dir: &Path,
) -> Value {
    let manifest = dir.join(format!("manifest-{topic}.json"));
    let out = Command::new(binary("paydedup-simulator").unwrap())
        .args(["--brokers", &broker.bootstrap(), "--topic", topic])
        .args(["--create-partitions", &partitions.to_string()])
        .args([
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
            "--quiet",
        ])
        .args(extra)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap()
}

pub fn processor_command(
    broker: &Broker,
    topic: &str,
    state: &Path,
    output: &Path,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(binary("paydedup-processor").unwrap());
    c.arg("run")
        .args(["--brokers", &broker.bootstrap(), "--topic", topic])
        .arg("--state-dir")
        .arg(state);
    if !extra.contains(&"--sink") {
        c.arg("--sink").arg(format!("file:{}", output.display()));
    }
    if !extra.contains(&"--metrics-addr") {
        c.args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ]);
    }
    c.args(["--log-format", "text"])
        .args(extra)
        .env("RUST_LOG", "warn");
    c
}

/// An uninterrupted run to the end, output in `dir/reference` (state in
/// `dir/state-ref`), checked against the manifest: what a faulted run must equal.
pub fn reference_run(
    broker: &Broker,
    topic: &str,
    dir: &Path,
    tuning: &[&str],
    manifest: &Value,
) -> PathBuf {
    let reference = dir.join("reference");
    process_to_end(broker, topic, &dir.join("state-ref"), &reference, tuning);
    assert_matches_manifest(&reference, manifest);
    reference
}

/// Runs the processor until it has consumed and delivered everything (and drained).
pub fn process_to_end(
    broker: &Broker,
    topic: &str,
    state: &Path,
    output: &Path,
    extra: &[&str],
) -> Output {
    let out = processor_command(broker, topic, state, output, extra)
        .args(["--exit-when-caught-up", "--drain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "processor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn spawn_processor(
    broker: &Broker,
    topic: &str,
    state: &Path,
    output: &Path,
    extra: &[&str],
) -> Child {
    processor_command(broker, topic, state, output, extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Rows of one table of the file sink, in file order.
pub fn rows(output: &Path, table: &str) -> Vec<Value> {
    let path: PathBuf = output.join(format!("{table}.jsonl"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every table's rows, grouped per source partition and sorted by sequence, with the
/// listed columns removed.
pub fn canonical_output(
    output: &Path,
    strip: &[&str],
) -> BTreeMap<String, BTreeMap<i64, Vec<Value>>> {
    let mut all = BTreeMap::new();
    for t in TABLES {
        let mut per: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
        for mut r in rows(output, t) {
            let p = r["source_partition"].as_i64().unwrap();
            if let Some(obj) = r.as_object_mut() {
                for c in strip {
                    obj.remove(*c);
                }
            }
            per.entry(p).or_default().push(r);
        }
        for v in per.values_mut() {
            v.sort_by_key(|r| r["outbox_seq"].as_u64().unwrap());
        }
        all.insert(t.to_owned(), per);
    }
    all
}

/// Asserts the sink output matches the manifest exactly.
pub fn assert_matches_manifest(output: &Path, manifest: &Value) {
    let payments = rows(output, "payments");
    let audit = rows(output, "dedup_audit");
    let late = rows(output, "late_events");
    let errors = rows(output, "processing_errors");
    let metrics = rows(output, "payment_metrics");
    let t = &manifest["totals"];
    let n = |v: &Value| v.as_u64().unwrap();
    assert_eq!(payments.len() as u64, n(&t["unique"]), "unique payments");
    let dups = audit.iter().filter(|r| r["kind"] == "duplicate").count() as u64;
    let conflicts = audit.iter().filter(|r| r["kind"] == "conflict").count() as u64;
    assert_eq!(dups, n(&t["duplicate"]) + n(&t["replay"]), "duplicates");
    assert_eq!(conflicts, n(&t["conflict"]), "conflicts");
    assert_eq!(late.len() as u64, n(&t["late"]), "late events");
    let known = late.iter().filter(|r| r["key_known"] == true).count() as u64;
    assert_eq!(
        known,
        n(&t["late_key_known"]),
        "late events with a known key"
    );
    assert_eq!(errors.len() as u64, n(&t["malformed"]), "invalid records");

    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    for e in &errors {
        *by_code
            .entry(e["error_code"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, u64> =
        serde_json::from_value(manifest["malformed_by_code"].clone()).unwrap();
    assert_eq!(by_code, expected, "invalid records by code");

    // No transaction id twice in payments.
    let mut ids: Vec<&str> = payments
        .iter()
        .map(|r| r["transaction_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(
        ids.len(),
        before,
        "a transaction_id appears twice in payments"
    );

    // Sums per currency: payments = manifest = metrics.
    let mut pay: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for r in &payments {
        let e = pay
            .entry(r["currency"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += 1;
        e.1 += i128::from(r["amount_minor"].as_i64().unwrap());
    }
    let mut met: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for r in &metrics {
        let e = met
            .entry(r["currency"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += r["payment_count"].as_u64().unwrap();
        e.1 += i128::from(r["amount_minor_sum"].as_i64().unwrap());
    }
    let mut truth: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for (c, v) in manifest["by_currency"].as_object().unwrap() {
        let sum: i128 = v["unique_amount_minor"].to_string().parse().unwrap();
        truth.insert(c.clone(), (v["unique_count"].as_u64().unwrap(), sum));
    }
    assert_eq!(pay, truth, "payments per currency vs manifest");
    assert_eq!(met, truth, "payment_metrics per currency vs manifest");

    // Source accounting: per partition, the offsets across the four tables are exactly
    // 0..records, each once.
    let partitions = manifest["partitions"].as_u64().unwrap() as usize;
    for p in 0..partitions {
        let mut offsets: Vec<i64> = [&payments, &audit, &late, &errors]
            .iter()
            .flat_map(|rs| rs.iter())
            .filter(|r| r["source_partition"].as_i64() == Some(p as i64))
            .map(|r| r["source_offset"].as_i64().unwrap())
            .collect();
        offsets.sort_unstable();
        let records = manifest["by_partition"][p]["records"].as_i64().unwrap();
        assert_eq!(
            offsets,
            (0..records).collect::<Vec<_>>(),
            "partition {p} offsets"
        );
    }

    // Sequences are dense per (table, partition).
    for t in TABLES {
        let mut per: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for r in rows(output, t) {
            per.entry(r["source_partition"].as_i64().unwrap())
                .or_default()
                .push(r["outbox_seq"].as_u64().unwrap());
        }
        for (p, seqs) in per {
            assert_eq!(
                seqs,
                (0..seqs.len() as u64).collect::<Vec<_>>(),
                "{t} partition {p} sequences"
            );
        }
    }
}

/// Flags that point the processor (or reconcile) at an emulator dataset.
pub fn bigquery_flags(emu: &paydedup_testkit::Emulator, dataset: &str) -> Vec<String> {
    vec![
        "--bigquery-rest-url".into(),
        emu.rest_url(),
        "--bigquery-grpc-url".into(),
        emu.grpc_url(),
        "--bigquery-no-auth".into(),
        "--sink".into(),
        format!("bigquery:{}.{dataset}", emu.project),
    ]
}

/// Runs `reconcile` against an emulator dataset; returns (passed, table).
pub fn reconcile_bigquery(
    emu: &paydedup_testkit::Emulator,
    dataset: &str,
    manifest: &Path,
) -> (bool, String) {
    let out = Command::new(binary("paydedup-processor").unwrap())
        .args([
            "reconcile",
            "--output",
            &format!("bigquery:{}.{dataset}", emu.project),
        ])
        .args(["--bigquery-rest-url", &emu.rest_url(), "--bigquery-no-auth"])
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a query on the emulator through its REST API and returns the rows' cells.
pub fn emulator_query(emu: &paydedup_testkit::Emulator, sql: &str) -> Vec<Vec<Value>> {
    let body = serde_json::json!({"query": sql, "useLegacySql": false, "maxResults": 100000});
    let url = format!(
        "{}/bigquery/v2/projects/{}/queries",
        emu.rest_url(),
        emu.project
    );
    let text = http_post_json(&url, &body.to_string());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v.get("errors")
            .is_none_or(|e| e.as_array().is_none_or(|a| a.is_empty())),
        "query failed: {v}"
    );
    v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r["f"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c["v"].clone())
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A minimal HTTP/1.1 POST (the tests need no HTTP client crate).
pub fn http_post_json(url: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A plain GET of a local URL's body (metrics scraping).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The value of the unlabelled metric `name` in the processor's `/metrics` at `addr`.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let text = http_get(addr, "/metrics")?;
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Where a (stopped or running) processor stands, from `state --json`: records
/// consumed over all partitions, and rows committed but not yet delivered.
pub fn progress(state: &Path) -> (i64, u64) {
    let out = Command::new(binary("paydedup-processor").unwrap())
        .args(["state", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let consumed = stats["next_offsets"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0);
    let undelivered = stats["outbox_depth"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    (consumed, undelivered)
}
