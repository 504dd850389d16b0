//! End to end through a real broker, on the peer engines' input: the processor binary
//! consuming from tansu (SQLite engine, 4 partitions) and delivering to the file sink,
//! against what the broker can serve at all.
//!
//! 1. **Throughput.** The first `--events N` lines of the data directory (default
//!    1,000,000) are produced keyed by transaction id. Then, one after the other on the
//!    same topic:
//!    - the broker's **raw consume rate**: an rdkafka consumer that does nothing with
//!      the records, with the processor's fetch settings, from offset 0 to the end;
//!    - **the processor**: `paydedup-processor run --exit-when-caught-up`, from its
//!      start (an empty state directory) until every record is committed and every row
//!      acknowledged by the file sink; its output is checked (one row per record
//!      besides the window aggregates, one `payments` row per distinct id).
//! 2. **Latency at fixed rates** (`--rates 5000,20000`, `--secs 30` each): records are
//!    produced at that rate (the Kafka timestamp is the producer's send time), first to
//!    a do-nothing consumer (the broker's own part: Kafka timestamp → consumer has the
//!    record), then, on a fresh topic, to a processor started and ready before. Reported:
//!    - Kafka timestamp → **durable outbox commit**: the processor's own histogram
//!      `paydedup_record_commit_latency_seconds` (one observation per record, at its
//!      batch's commit); p50/p99/max are given as the bucket bound they fall in;
//!    - the processor's own time per batch, poll start → durable commit
//!      (`paydedup_batch_duration_seconds`), to tell its share from the broker's;
//!    - Kafka timestamp → **row in the sink's file**: every row of the sink's files, read
//!      as they grow (polled every 5 ms); the file sink writes a batch, fsyncs it, then
//!      acknowledges, so a row is seen just before its acknowledgement;
//!    - the batches the processor committed (each a synced RocksDB write) and its CPU
//!      time from start to the last row in the sink: what a lower latency costs.
//!
//! Recovery after SIGKILL with 10 M keys is the `peers` bench's `--crash`/`--reopen`.
//!
//! cargo bench -p paydedup-processor --bench e2e -- DATA_DIR [--events N] [--rates R1,R2] [--secs S] [--keep]
//!     [--linger-ms MS] [--fetch-wait-ms MS] [--batch-timeout-ms MS] [--batch-linger-ms MS]
//!
//! `--events 0` skips the throughput part. `--linger-ms` sets the producer's linger
//! (default 5 ms), `--fetch-wait-ms` the consumers' `fetch.wait.max.ms` (the do-nothing
//! consumer's and the processor's, through `--kafka`), `--batch-timeout-ms` and
//! `--batch-linger-ms` the processor's.
//!
//! `--keep` leaves the work directory (processor logs, state, sink files, the metrics
//! of each latency run).
//!
//! Needs the tansu broker (`scripts/install-tansu.sh`). Under `cargo test` it only
//! checks its line patching.

mod peers_input;

use std::collections::HashSet;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paydedup_testkit::{binary, free_port, Broker};
use peers_input::{data_dir, lines, opt, process_cpu_of, Manifest};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

/// Client settings a run may change (`--linger-ms`, `--fetch-wait-ms`,
/// `--batch-timeout-ms`, `--batch-linger-ms`); unset, the producer lingers 5 ms and the consumers use the
/// processor's own defaults.
#[derive(Default)]
struct Knobs {
    linger_ms: Option<String>,
    fetch_wait_ms: Option<String>,
    batch_timeout_ms: Option<String>,
    batch_linger_ms: Option<String>,
}

static KNOBS: std::sync::OnceLock<Knobs> = std::sync::OnceLock::new();

fn knobs() -> &'static Knobs {
    KNOBS.get_or_init(Knobs::default)
}

fn producer(broker: &Broker) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", knobs().linger_ms.as_deref().unwrap_or("5"))
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("a producer")
}

/// Sends one record, waiting while the producer's queue is full.
fn send(p: &BaseProducer, topic: &str, id: &str, payload: &str) {
    let mut record = BaseRecord::to(topic).key(id).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("producing: {e}"),
        }
    }
}

fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(300))
        .expect("every record acknowledged");
}

/// A consumer of every partition of `topic` from offset 0, with the processor's fetch
/// settings (`kafka.rs`).
fn raw_consumer(broker: &Broker, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "raw-consume")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.wait.max.ms",
            knobs()
                .fetch_wait_ms
                .as_deref()
                .unwrap_or(paydedup_processor::kafka::FETCH_WAIT_MAX_MS),
        )
        .set("queued.min.messages", "20000")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("a partition");
    }
    consumer.assign(&tpl).expect("assigned");
    consumer
}

/// Reads every partition from offset 0 until `total` records have arrived, doing
/// nothing with them.
fn raw_consume(broker: &Broker, topic: &str, total: u64) -> Duration {
    let started = Instant::now();
    let consumer = raw_consumer(broker, topic);
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < total {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            // Touch the payload, as any consumer would.
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    let took = started.elapsed();
    assert!(bytes > 0);
    took
}

/// `paydedup-processor run` on `topic`, its state and sink under `work`.
fn processor(broker: &Broker, topic: &str, work: &Path, metrics_port: u16, bounded: bool) -> Child {
    let log = std::fs::File::create(work.join("processor.log")).expect("a log file");
    let mut cmd = Command::new(binary("paydedup-processor").expect("the processor binary"));
    cmd.arg("run")
        .args(["--brokers", &broker.bootstrap(), "--topic", topic])
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--sink")
        .arg(format!("file:{}", work.join("out").display()))
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        // The peers' 10-minute watermark, as the `peers` bench.
        .args(["--allowed-lateness-secs", "600", "--retention-secs", "600"])
        .args(["--window-secs", "60"])
        .args(["--group-id", &format!("paydedup-{topic}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log file"))
        .stderr(log);
    if bounded {
        cmd.arg("--exit-when-caught-up");
    }
    if let Some(ms) = &knobs().fetch_wait_ms {
        cmd.args(["--kafka", &format!("fetch.wait.max.ms={ms}")]);
    }
    if let Some(ms) = &knobs().batch_timeout_ms {
        cmd.args(["--batch-timeout-ms", ms]);
    }
    if let Some(ms) = &knobs().batch_linger_ms {
        cmd.args(["--batch-linger-ms", ms]);
    }
    cmd.spawn().expect("the processor started")
}

/// Rows of the tables that hold one row per input record: every table but the window
/// aggregates (`payment_metrics`).
fn per_record(rows: &[(String, u64)]) -> u64 {
    rows.iter()
        .filter(|(table, _)| table != "payment_metrics")
        .map(|r| r.1)
        .sum()
}

/// Rows per table in the sink's files (`<table>.jsonl`).
fn rows_by_table(out: &Path) -> Vec<(String, u64)> {
    let mut tables: Vec<(String, u64)> = std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .map(|e| {
                    let n = std::io::BufReader::new(std::fs::File::open(e.path()).unwrap())
                        .lines()
                        .count() as u64;
                    let name = e.path().file_stem().unwrap().to_string_lossy().into_owned();
                    (name, n)
                })
                .collect()
        })
        .unwrap_or_default();
    tables.sort();
    tables
}

fn get(url: &str) -> Option<String> {
    reqwest::blocking::get(url).ok()?.text().ok()
}

fn wait_ready(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the processor exited before it was ready: {status}");
        }
        if get(&format!("http://127.0.0.1:{port}/readyz")).is_some_and(|b| b.starts_with("ready")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the processor was not ready after 120 s");
}

/// A histogram's cumulative buckets from the metrics text: (upper bound, count).
fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound (ms) the `q` quantile falls under.
fn bucket_quantile(b: &[(f64, u64)], q: f64) -> String {
    let total = b.last().map_or(0, |x| x.1);
    let rank = (total as f64 * q).ceil() as u64;
    match b.iter().find(|(_, c)| *c >= rank.max(1)) {
        Some((le, _)) if le.is_finite() => format!("≤ {:.0} ms", le * 1e3),
        Some(_) => "> the last bucket".into(),
        None => "–".into(),
    }
}

/// Follows the sink's files as they grow; for every row with a Kafka timestamp, the time
/// from it to when the row was first seen.
struct SinkTail {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl SinkTail {
    fn start(out: PathBuf) -> SinkTail {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut positions: std::collections::HashMap<PathBuf, (u64, String)> =
                Default::default();
            let mut latencies_ms = Vec::new();
            let mut last_pass = false;
            loop {
                let stopping = flag.load(Ordering::Relaxed);
                let now_ms = chrono::Utc::now().timestamp_micros() as f64 / 1e3;
                for e in std::fs::read_dir(&out).into_iter().flatten().flatten() {
                    let path = e.path();
                    if path.extension().is_none_or(|x| x != "jsonl") {
                        continue;
                    }
                    let (pos, partial) = positions.entry(path.clone()).or_default();
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        continue;
                    };
                    if f.seek(SeekFrom::Start(*pos)).is_err() {
                        continue;
                    }
                    let mut chunk = String::new();
                    let Ok(n) = f.read_to_string(&mut chunk) else {
                        continue;
                    };
                    *pos += n as u64;
                    partial.push_str(&chunk);
                    let complete = partial.rfind('\n').map_or(0, |i| i + 1);
                    for row in partial[..complete].lines() {
                        if let Some(ts) = kafka_timestamp_ms(row) {
                            latencies_ms.push(now_ms - ts);
                        }
                    }
                    partial.drain(..complete);
                }
                if last_pass {
                    return latencies_ms;
                }
                last_pass = stopping;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        SinkTail { stop, thread }
    }

    fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the tail thread")
    }
}

fn kafka_timestamp_ms(row: &str) -> Option<f64> {
    const FIELD: &str = "\"kafka_timestamp\":\"";
    let rest = &row[row.find(FIELD)? + FIELD.len()..];
    let ts = chrono::DateTime::parse_from_rfc3339(&rest[..rest.find('"')?]).ok()?;
    Some(ts.timestamp_micros() as f64 / 1e3)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

struct Throughput {
    events: u64,
    produce: Duration,
    raw: Duration,
    processor: Duration,
    rows: Vec<(String, u64)>,
    exact: bool,
}

fn throughput(broker: &Broker, data: &Path, events: u64, work: &Path) -> Throughput {
    let topic = "payments";
    broker.create_topic(topic, PARTITIONS).expect("the topic");
    let p = producer(broker);
    let mut distinct = HashSet::new();
    let mut sent = 0u64;
    let started = Instant::now();
    for (id, payload) in lines(data).take(events as usize) {
        send(&p, topic, &id, &payload);
        distinct.insert(xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
        sent += 1;
        if sent.is_multiple_of(1000) {
            p.poll(Duration::ZERO);
        }
    }
    flush(&p);
    let produce = started.elapsed();
    eprintln!("produced {sent} records in {:.1} s", produce.as_secs_f64());

    let raw = raw_consume(broker, topic, sent);
    eprintln!("raw consume: {:.1} s", raw.as_secs_f64());

    let dir = work.join("throughput");
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let status = processor(broker, topic, &dir, free_port().unwrap(), true)
        .wait()
        .expect("the processor ran");
    let took = started.elapsed();
    assert!(
        status.success(),
        "the processor failed: {status}; see {}",
        dir.join("processor.log").display()
    );
    eprintln!("processor: {:.1} s", took.as_secs_f64());
    let rows = rows_by_table(&dir.join("out"));
    let total = per_record(&rows);
    let payments = rows.iter().find(|r| r.0 == "payments").map_or(0, |r| r.1);
    Throughput {
        events: sent,
        produce,
        raw,
        processor: took,
        exact: total == sent && payments == distinct.len() as u64,
        rows,
    }
}

struct Latency {
    rate: u64,
    sent: u64,
    achieved: f64,
    /// Kafka timestamp → a do-nothing consumer has the record: the broker's own part.
    raw_ms: Vec<f64>,
    /// The broker's stalls (`stalls`): start (s), records, worst latency (ms).
    raw_stalls: Vec<(f64, usize, f64)>,
    commit: Vec<(f64, u64)>,
    /// The processor's own time per batch: poll start → durable commit.
    batch: Vec<(f64, u64)>,
    sink_ms: Vec<f64>,
    /// Batches committed (`paydedup_batches_total`): each a synced commit.
    batches: u64,
    /// The processor's CPU (user + system) from its start to the last row in the sink.
    cpu_secs: f64,
}

/// Consumes `total` records of `topic` as they are produced; for each, its Kafka
/// timestamp (ms) and the time from it to the record's arrival (ms).
fn raw_latencies(
    broker: &Broker,
    topic: &str,
    total: u64,
) -> std::thread::JoinHandle<Vec<(f64, f64)>> {
    let consumer = raw_consumer(broker, topic);
    std::thread::spawn(move || {
        let mut latencies_ms = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(600);
        while (latencies_ms.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let now_ms = chrono::Utc::now().timestamp_micros() as f64 / 1e3;
                if let Some(ts) = rdkafka::Message::timestamp(&m).to_millis() {
                    latencies_ms.push((ts as f64, now_ms - ts as f64));
                }
            }
        }
        latencies_ms
    })
}

/// The broker's stalls as the do-nothing consumer saw them: for each run of records
/// that arrived more than 500 ms after their timestamp, each produced less than a
/// second after the previous late one (records on time in between do not end a run,
/// so two stalls under a second apart are one), when it began (seconds into the run),
/// how many records, the worst latency. Tells a periodic stall (one cause, the tail)
/// from a load that grows.
fn stalls(raw: &[(f64, f64)]) -> Vec<(f64, usize, f64)> {
    let Some(start) = raw.iter().map(|r| r.0).reduce(f64::min) else {
        return Vec::new();
    };
    let mut late: Vec<(f64, f64)> = raw.iter().copied().filter(|r| r.1 > 500.0).collect();
    late.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, usize, f64)> = Vec::new();
    let mut last = f64::NEG_INFINITY;
    for (ts, ms) in late {
        match out.last_mut() {
            Some(s) if ts - last < 1_000.0 => {
                s.1 += 1;
                s.2 = s.2.max(ms);
            }
            _ => out.push(((ts - start) / 1e3, 1, ms)),
        }
        last = ts;
    }
    out
}

/// What `cargo test` checks of [`stalls`] (this bench has no test harness): late
/// records under a second apart are one stall, started when its first was produced,
/// whatever came on time between; a second's gap starts another.
fn check_stalls() {
    // (Kafka timestamp, latency), ms; out of order, as a consumer may see them.
    let raw = [
        (1_000.0, 20.0),
        (1_500.0, 700.0),
        (1_200.0, 600.0),
        (1_900.0, 30.0),
        (2_100.0, 900.0),
        (5_000.0, 510.0),
        (6_000.0, 40.0),
    ];
    assert_eq!(
        stalls(&raw),
        vec![(0.2, 3, 900.0), (4.0, 1, 510.0)],
        "stalls"
    );
    assert!(stalls(&[]).is_empty());
    assert!(stalls(&[(1.0, 500.0)]).is_empty(), "500 ms is not late");
}

/// Produces the first `rate × secs` lines to `topic` at `rate`, paced in 1 ms steps
/// (the Kafka timestamp is each record's send time); returns how many and the rate
/// achieved.
///
/// The producer is warmed up first, as a long-lived producer would be: it has the
/// topic's metadata and its idempotent producer id, and has had one record to another
/// topic acknowledged. A cold producer holds its first records for about a second
/// while it gets both, and their Kafka timestamps are already set: that was 2.5 % of a
/// 30-s run at 5,000/s, the whole of the broker's p99.
fn produce_paced(broker: &Broker, data: &Path, topic: &str, rate: u64, secs: u64) -> (u64, f64) {
    let p = producer(broker);
    let warm_up = format!("warm-up-{topic}");
    broker.create_topic(&warm_up, 1).expect("the warm-up topic");
    let metadata = p
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("the topic's metadata");
    let error = metadata.topics().first().and_then(|t| t.error());
    assert!(error.is_none(), "topic {topic}: {error:?}");
    send(&p, &warm_up, "warm-up", "{}");
    flush(&p);
    let total = rate * secs;
    let mut input = lines(data).take(total as usize);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let (id, payload) = input.next().expect("enough input lines");
            send(&p, topic, &id, &payload);
            sent += 1;
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    flush(&p);
    (sent, sent as f64 / started.elapsed().as_secs_f64())
}

/// At `rate`: first the broker alone (a do-nothing consumer reading as records are
/// produced, on a topic of its own), then the processor on a fresh topic.
fn latency(broker: &Broker, data: &Path, rate: u64, secs: u64, work: &Path) -> Latency {
    let raw_topic = format!("raw-{rate}");
    broker
        .create_topic(&raw_topic, PARTITIONS)
        .expect("the topic");
    let raw = raw_latencies(broker, &raw_topic, rate * secs);
    produce_paced(broker, data, &raw_topic, rate, secs);
    let raw = raw.join().expect("the raw consumer");
    let raw_stalls = stalls(&raw);
    let mut raw_ms: Vec<f64> = raw.iter().map(|r| r.1).collect();
    raw_ms.sort_by(f64::total_cmp);

    let topic = format!("payments-{rate}");
    broker.create_topic(&topic, PARTITIONS).expect("the topic");
    let dir = work.join(&topic);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let port = free_port().unwrap();
    let mut child = processor(broker, &topic, &dir, port, false);
    wait_ready(port, &mut child);
    let tail = SinkTail::start(dir.join("out"));
    let (sent, achieved) = produce_paced(broker, data, &topic, rate, secs);
    // Every record is one row: wait until all are in the sink.
    let deadline = Instant::now() + Duration::from_secs(300);
    while per_record(&rows_by_table(&dir.join("out"))) < sent {
        assert!(
            Instant::now() < deadline,
            "rows missing in the sink after 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics")).expect("the metrics");
    std::fs::write(dir.join("metrics.txt"), &metrics).unwrap();
    let cpu_secs = process_cpu_of(child.id()).as_secs_f64();
    let _ = paydedup_testkit::signal(child.id(), "TERM");
    let _ = child.wait();
    let mut sink_ms = tail.finish();
    sink_ms.sort_by(f64::total_cmp);
    Latency {
        rate,
        sent,
        achieved,
        raw_ms,
        raw_stalls,
        commit: buckets(&metrics, "paydedup_record_commit_latency_seconds"),
        batch: buckets(&metrics, "paydedup_batch_duration_seconds"),
        sink_ms,
        batches: counter(&metrics, "paydedup_batches_total"),
        cpu_secs,
    }
}

/// A counter's value from the metrics text; absent, the bench stops (a 0 printed for
/// a renamed metric would read as measured).
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("the processor's metrics have no {name}")) as u64
}

/// Prints the throughput part's table and the output check.
fn report_throughput(t: &Throughput, data: &Path) {
    let rate = |d: Duration| t.events as f64 / d.as_secs_f64();
    println!(
        "| {} events from {} | records/s | seconds |",
        t.events,
        data.display()
    );
    println!("|---|---|---|");
    println!(
        "| produce (idempotent, acks=all) | {:.0} | {:.1} |",
        rate(t.produce),
        t.produce.as_secs_f64()
    );
    println!(
        "| raw consume (rdkafka, nothing done) | {:.0} | {:.1} |",
        rate(t.raw),
        t.raw.as_secs_f64()
    );
    println!(
        "| processor, start to every row acknowledged by the file sink | {:.0} ({:.2} × raw) | {:.1} |",
        rate(t.processor),
        t.raw.as_secs_f64() / t.processor.as_secs_f64(),
        t.processor.as_secs_f64()
    );
    let rows: Vec<String> = t.rows.iter().map(|(n, c)| format!("{n} {c}")).collect();
    println!(
        "\nrows: {}; one per record (besides window aggregates) and one payment per distinct id: {}",
        rows.join(", "),
        if t.exact { "yes" } else { "NO" }
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let valued = [
        "--events",
        "--rates",
        "--secs",
        "--linger-ms",
        "--fetch-wait-ms",
        "--batch-timeout-ms",
        "--batch-linger-ms",
    ];
    let Some(data) = data_dir(&args, &valued) else {
        peers_input::check_patching();
        check_stalls();
        return;
    };
    let manifest = Manifest::read(&data);
    let knob = |name: &str| {
        opt(&args, name).map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} takes milliseconds, not {v:?}"))
                .to_string()
        })
    };
    let knobs_set = KNOBS.set(Knobs {
        linger_ms: knob("--linger-ms"),
        fetch_wait_ms: knob("--fetch-wait-ms"),
        batch_timeout_ms: knob("--batch-timeout-ms"),
        batch_linger_ms: knob("--batch-linger-ms"),
    });
    assert!(
        knobs_set.is_ok(),
        "the knobs were read before they were set"
    );
    let events: u64 = opt(&args, "--events").map_or(1_000_000, |v| v.parse().expect("--events N"));
    let events = events.min(manifest.events);
    let rates: Vec<u64> = opt(&args, "--rates")
        .map_or("5000,20000", |v| v.as_str())
        .split(',')
        .map(|r| r.parse().expect("--rates R1,R2"))
        .collect();
    let secs: u64 = opt(&args, "--secs").map_or(30, |v| v.parse().expect("--secs S"));
    let work = tempfile::Builder::new()
        .prefix("paydedup-bench-e2e-")
        .tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let broker = Broker::start().expect("tansu (scripts/install-tansu.sh)");

    // `--events 0`: the latency runs only.
    let exact = events == 0 || {
        let t = throughput(&broker, &data, events, work.path());
        report_throughput(&t, &data);
        t.exact
    };

    let runs: Vec<Latency> = rates
        .iter()
        .map(|&r| latency(&broker, &data, r, secs, work.path()))
        .collect();
    println!("\n| rate (records/s) | records | achieved | Kafka ts → raw consumer p50 / p99 / max | Kafka ts → outbox commit p50 / p99 / max | Kafka ts → row in the sink's file p50 / p99 / max | batch, poll start → durable commit, p50 / p99 | batches (synced commits) | processor CPU |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in &runs {
        let sink = |q| quantile(&l.sink_ms, q);
        let raw = |q| quantile(&l.raw_ms, q);
        println!(
            "| {} | {} | {:.0} | {:.0} / {:.0} / {:.0} ms | {} / {} / {} | {:.0} / {:.0} / {:.0} ms ({} rows) | {} / {} | {} | {:.1} s |",
            l.rate,
            l.sent,
            l.achieved,
            raw(0.5),
            raw(0.99),
            raw(1.0),
            bucket_quantile(&l.commit, 0.5),
            bucket_quantile(&l.commit, 0.99),
            bucket_quantile(&l.commit, 1.0),
            sink(0.5),
            sink(0.99),
            sink(1.0),
            l.sink_ms.len(),
            bucket_quantile(&l.batch, 0.5),
            bucket_quantile(&l.batch, 0.99),
            l.batches,
            l.cpu_secs,
        );
    }
    for l in &runs {
        let seen: Vec<String> = l
            .raw_stalls
            .iter()
            .map(|(at, n, worst)| format!("{at:.1} s ({n} records, up to {worst:.0} ms)"))
            .collect();
        println!(
            "\nat {}/s the do-nothing consumer got records more than 500 ms late in {} runs{}",
            l.rate,
            seen.len(),
            if seen.is_empty() {
                String::new()
            } else {
                format!(": {}", seen.join(", "))
            }
        );
    }
    if args.iter().any(|a| a == "--keep") {
        eprintln!("kept: {}", work.keep().display());
    }
    assert!(exact, "the processor's output does not match its input");
}
