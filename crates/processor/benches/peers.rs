//! The processor core on the peer engines' input (`../shared/peers/gen_events.py`):
//! the same NDJSON files Flink, Spark and the Python floor were measured on — random
//! ids, 10 % duplicates 0–120 s later, a tenth of them conflicting, 5 s out of order.
//!
//! The five fields that input lacks (`merchant_category`, `ip_address`, `region`,
//! `payment_method`, `schema_version`) are appended to each line with constant values.
//! Records go to 4 partitions by a hash of their id (as keyed producers would), in file
//! order, in batches of 5,000; lateness and retention 600 s (the peers' 10-minute
//! watermark). Each batch: decode → dedup → fraud → windows → rows → one synced
//! RocksDB commit, with its watermarks published to the TTL filters as the processor
//! does; as in the processor, a batch's commit runs on its own thread while the next
//! batch is processed, and a batch's latency is from its start to its durable commit.
//! Two modes:
//! - `--relay`: as in production, the outbox relay delivers every row to the real file
//!   sink on its own thread; the run ends when the last row is acknowledged;
//! - without: no relay, the rows stay in the outbox (the core alone).
//!
//! Prints one table row: events/s, p50/p99 batch latency, peak RSS, bytes of state on
//! disk per live dedup key at the end, and the counts — unique, duplicate, conflict —
//! which must equal the generator's manifest (the bench fails otherwise).
//!
//! cargo bench -p paydedup-processor --bench peers -- DATA_DIR [--relay] [--result-file F --tag T]
//! (`DATA_DIR.manifest.json` must be next to it, as `gen_events.py` writes it.) Under
//! `cargo test` (no DATA_DIR) it generates nothing and only checks its line patching.
//!
//! Recovery after a crash: `-- DATA_DIR --crash` ends the run (after the last durable
//! commit, before any clean close) with a real `kill -9` of itself and leaves the state
//! directory; `-- --reopen STATE_DIR` then times what a restarted processor does before
//! its first batch (open the store, replaying RocksDB's WAL; load the pipeline's state)
//! and, separately, the resident key sets' background fill.

mod peers_input;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paydedup_event::DecodeLimits;
use paydedup_fraud::FraudConfig;
use paydedup_processor::checkpoint::{stamp_watermarks, Checkpoint};
use paydedup_processor::commit_queue::{CommitQueue, DurableStep};
use paydedup_processor::metrics::Metrics;
use paydedup_processor::pipeline::{
    Ahead, DecodeAhead, Decoded, InputBatch, InputRecord, Pipeline, PipelineConfig,
};
use paydedup_processor::relay::{OutboxRelay, RelayConfig};
use paydedup_sink::FileSink;
use paydedup_state::{StateStore, StoreOptions};
use peers_input::{
    anon_huge_mib, data_dir, named_thread_cpu, opt, peak_rss_mib, process_cpu, rss_now_mib,
    thread_sched, KernelMemoryWork, LineBatch, LineBatches, Manifest,
};

/// Where the committing threads' time went, summed over the run.
#[derive(Debug, Default, Clone, Copy)]
struct CommitTime {
    wall: Duration,
    max_wall: Duration,
    on_cpu: Duration,
    queued: Duration,
}

impl CommitTime {
    /// Times `f` on this thread.
    fn of<R>(f: impl FnOnce() -> R) -> (R, CommitTime) {
        let (cpu0, queued0) = thread_sched();
        let began = Instant::now();
        let r = f();
        let wall = began.elapsed();
        let (cpu1, queued1) = thread_sched();
        let spent = CommitTime {
            wall,
            max_wall: wall,
            on_cpu: cpu1 - cpu0,
            queued: queued1 - queued0,
        };
        (r, spent)
    }

    fn add(&mut self, other: CommitTime) {
        self.wall += other.wall;
        self.max_wall = self.max_wall.max(other.max_wall);
        self.on_cpu += other.on_cpu;
        self.queued += other.queued;
    }
}

/// The processor binary's allocator (`src/main.rs`), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: [i32; 4] = [0, 1, 2, 3];
const BATCH: usize = 5_000;
const SECS: i64 = 1_000_000;

fn partition_of(id: &[u8]) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(id) % PARTITIONS.len() as u64) as i32
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The directory's bytes by kind of file (RocksDB's own names): sorted runs, blob
/// files (outbox pages), write-ahead logs, the rest (manifest, options, info logs).
fn dir_bytes_by_kind(dir: &Path) -> String {
    let mut kinds = [("sst", 0u64), ("blob", 0), ("log", 0), ("other", 0)];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let len = e.metadata().map_or(0, |m| m.len());
        let ext = e
            .path()
            .extension()
            .map(|x| x.to_string_lossy().into_owned());
        let i = kinds
            .iter()
            .position(|(k, _)| ext.as_deref() == Some(*k))
            .unwrap_or(3);
        kinds[i].1 += len;
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, b)| format!("{k} {:.0} MB", *b as f64 / 1e6))
        .collect();
    parts.join(", ")
}

/// The bench's store and pipeline settings (the peers' 10-minute watermark). The
/// environment's `BENCH_RETENTION_SECS` lengthens the dedup retention, e.g. to keep
/// every id of a run alive and time a restart that loads them all (set it for
/// `--reopen` too: a store refuses a changed retention). `BENCH_FRAUD_MEMORY_MIB` sets
/// the fraud state's memory budget (`--fraud-memory-mib`), e.g. below what a run's cards
/// and customers take, to time a processor that has outgrown it.
fn settings() -> (StoreOptions, PipelineConfig) {
    let retention = std::env::var("BENCH_RETENTION_SECS")
        .ok()
        .map(|v| {
            v.parse::<i64>()
                .expect("BENCH_RETENTION_SECS: whole seconds")
        })
        .unwrap_or(600)
        * SECS;
    let defaults = StoreOptions::default();
    let fraud_memory_bytes =
        std::env::var("BENCH_FRAUD_MEMORY_MIB")
            .ok()
            .map_or(defaults.fraud_memory_bytes, |v| {
                v.parse::<usize>()
                    .expect("BENCH_FRAUD_MEMORY_MIB: whole MiB")
                    << 20
            });
    let store = StoreOptions {
        sync: true,
        dedup_retention_micros: Some(retention),
        fraud_memory_bytes,
        ..defaults
    };
    let pipeline = PipelineConfig {
        allowed_lateness_micros: 600 * SECS,
        retention_micros: retention,
        window_micros: 60 * SECS,
        decode: DecodeLimits::default(),
        fraud: FraudConfig::default(),
    };
    (store, pipeline)
}

/// A batch of the input's lines, their partitions and the offsets they were given, in
/// arrival order.
struct InputLines {
    lines: LineBatch,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl InputLines {
    fn at_offsets(lines: LineBatch, partitions: Vec<i32>, next: &mut [i64]) -> InputLines {
        let offsets = partitions
            .iter()
            .map(|p| {
                let o = &mut next[*p as usize];
                *o += 1;
                *o - 1
            })
            .collect();
        InputLines {
            lines,
            partitions,
            offsets,
        }
    }

    fn records(&self) -> Vec<InputRecord<'_>> {
        (0..self.lines.len())
            .map(|i| InputRecord {
                partition: self.partitions[i],
                offset: self.offsets[i],
                key: Some(self.lines.id(i)),
                payload: self.lines.payload(i),
                timestamp_ms: None,
            })
            .collect()
    }
}

/// What a processor restarted on `state_dir` does before its first batch, timed.
fn reopen(state_dir: &Path) {
    let (store_options, config) = settings();
    let t = Instant::now();
    let store = StateStore::open(state_dir, &store_options).unwrap();
    let opened = t.elapsed();
    // Read back into memory by the open, before its first batch.
    let log_pages = store.fraud_log_pages();
    let pipeline = Pipeline::load(config, &store).unwrap();
    let ready = t.elapsed();
    store.wait_resident().unwrap();
    let filled = t.elapsed();
    let (dedup, fraud) = store.resident_keys().unwrap_or_default();
    let positions: i64 = PARTITIONS
        .iter()
        .filter_map(|&p| pipeline.next_offset(p))
        .sum();
    eprintln!("reopen: {:.2} s to open the store (WAL replay, {log_pages} unfolded fraud log pages read), {:.2} s with the pipeline loaded (ready for the first batch; {positions} records consumed before); resident sets filled in the background after {:.2} s ({dedup} dedup and {fraud} fraud keys)",
        opened.as_secs_f64(),
        ready.as_secs_f64(),
        filled.as_secs_f64(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let relay = args.iter().any(|a| a == "--relay");
    let crash = args.iter().any(|a| a == "--crash");
    if let Some(i) = args.iter().position(|a| a == "--reopen") {
        reopen(Path::new(args.get(i + 1).expect("--reopen STATE_DIR")));
        // Only here is this process's peak the restart's own.
        eprintln!("peak RSS of the restart: {} MiB", peak_rss_mib());
        return;
    }
    let Some(data) = data_dir(&args, &["--result-file", "--tag"]) else {
        // Under `cargo test`: check the patching and the batched reading of the input.
        peers_input::check_line_batches();
        return;
    };
    let manifest = Manifest::read(&data);

    let work = tempfile::Builder::new()
        .prefix("paydedup-bench-peers-")
        .tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let state_dir = work.path().join("state");
    let (store_options, config) = settings();
    let store = Arc::new(StateStore::open(&state_dir, &store_options).unwrap());
    let mut pipeline = Pipeline::load(config, &store).unwrap();
    let metrics = Metrics::new();
    let mut checkpoint = relay.then(|| {
        let sink = FileSink::open_owned(&work.path().join("out"), &PARTITIONS).unwrap();
        let relay = OutboxRelay::spawn(
            store.clone(),
            Box::new(sink),
            RelayConfig {
                batch_rows: 5_000,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                give_up_after: Duration::from_secs(300),
                dead_letter_dir: work.path().join("dead-letter"),
                verify_resent_below: Default::default(),
            },
            metrics.clone(),
        )
        .unwrap();
        Checkpoint::new(store.clone(), relay, metrics.clone(), PARTITIONS.to_vec())
    });

    let mut offsets = [0i64; PARTITIONS.len()];
    let mut latencies: Vec<Duration> = Vec::new();
    // Where the loop's time goes: the pipeline, and waiting for the previous commit.
    let (mut in_pipeline, mut in_commit) = (Duration::ZERO, Duration::ZERO);
    // Without the relay: the commits on a thread of their own, as `Checkpoint` runs
    // them (named, so a profile tells the commits' time from the pipeline's).
    // Bench switches for the fortieth step's comparison (docs/benchmarks.md).
    let one_step = std::env::var("PAYDEDUP_BENCH_ONE_STEP_COMMIT").is_ok_and(|v| v == "1");
    let slower_sync = Duration::from_millis(
        std::env::var("PAYDEDUP_BENCH_SLOWER_SYNC_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let mut in_flight: CommitQueue<(Duration, CommitTime, CommitTime)> = CommitQueue::new("commit");
    let (mut commit_time, mut sync_time) = (CommitTime::default(), CommitTime::default());
    let (mut unique, mut duplicate, mut conflict, mut late, mut invalid) = (0u64, 0, 0, 0, 0);
    let mut events = 0u64;
    let kernel_before = KernelMemoryWork::now();
    let cpu_before = process_cpu();
    let started = Instant::now();
    // Decoded ahead, as the processor's loop decodes full batches while the ones before
    // them are processed (`pipeline::decode_ahead`).
    let mut ahead = DecodeAhead::new(pipeline.decoder());
    let mut flush =
        |records: &[InputRecord<'_>], decoded: Decoded, latencies: &mut Vec<Duration>| {
            if records.is_empty() {
                return;
            }
            let t = Instant::now();
            let (mut batch, stats) = pipeline.process_decoded(records, decoded, &store).unwrap();
            let processed = Instant::now();
            in_pipeline += processed - t;
            let previous = match checkpoint.as_mut() {
                Some(c) => c.commit_overlapped(&pipeline, batch, &stats, t).unwrap(),
                None => {
                    // The checkpoint step without the relay: the same watermarks.
                    stamp_watermarks(&pipeline, &PARTITIONS, &mut batch);
                    let store = store.clone();
                    // Written on one thread, made durable on another, as `Checkpoint`
                    // commits (`one_step`: both on one thread, as before the fortieth
                    // step; `slower_sync`: a disk whose fsync takes that much longer).
                    let landed = in_flight
                        .start_split(move || {
                            let (written, wrote) = CommitTime::of(|| {
                                let written = store.write_commit(batch)?;
                                if !one_step {
                                    return Ok(written);
                                }
                                std::thread::sleep(slower_sync);
                                store.make_durable(written).map(|()| Default::default())
                            });
                            let written = written?;
                            Ok(Box::new(move || {
                                let (durable, synced) = CommitTime::of(|| {
                                    if !one_step {
                                        std::thread::sleep(slower_sync);
                                    }
                                    store.make_durable(written)
                                });
                                durable?;
                                Ok((t.elapsed(), wrote, synced))
                            }) as DurableStep<_>)
                        })
                        .unwrap();
                    landed
                        .into_iter()
                        .map(|(latency, wrote, synced)| {
                            commit_time.add(wrote);
                            sync_time.add(synced);
                            latency
                        })
                        .collect()
                }
            };
            in_commit += processed.elapsed();
            latencies.extend(previous);
            unique += stats.unique;
            duplicate += stats.duplicates;
            conflict += stats.conflicts;
            late += stats.late;
            invalid += stats.invalid;
        };
    // The input is read, patched and cut into batches on its own thread, as the
    // processor's records are fetched by librdkafka's threads: the loop below times
    // the core, not the file reads (before, 6.7 s of a 78 s run at 10 M). Each batch's
    // lines are in one buffer, handed back once copied, as a fetch's records are.
    let (batches, input) = std::sync::mpsc::sync_channel::<(LineBatch, Vec<i32>)>(4);
    let (line_batches, reuse) = LineBatches::new(&data, BATCH, 4 << 20).reusing();
    let reader = std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            for lines in line_batches {
                let partitions = (0..lines.len())
                    .map(|i| partition_of(lines.id(i)))
                    .collect();
                if batches.send((lines, partitions)).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    for (lines, partitions) in input {
        events += lines.len() as u64;
        // Copied into one buffer, as the processor copies a polled batch.
        let polled = InputLines::at_offsets(lines, partitions, &mut offsets);
        let next = Arc::new(InputBatch::copy(&polled.records()));
        let _ = reuse.send(polled.lines);
        if let Some(Ahead { input, decoded }) = ahead.push(next).unwrap() {
            flush(&input.records(), decoded, &mut latencies);
        }
    }
    while let Some(Ahead { input, decoded }) = ahead.pop().unwrap() {
        flush(&input.records(), decoded, &mut latencies);
    }
    reader.join().unwrap();
    for (latency, wrote, synced) in in_flight.settle().unwrap() {
        commit_time.add(wrote);
        sync_time.add(synced);
        latencies.push(latency);
    }
    let (pipeline_cpu, pipeline_queued) = thread_sched();
    if let Some(c) = checkpoint.as_mut() {
        latencies.extend(c.settle().unwrap());
    }
    // Over the same span as `committed` (with the relay, the last commits settle above).
    let run_cpu = process_cpu().saturating_sub(cpu_before);
    let committed = started.elapsed();
    if crash {
        // Everything is durable; nothing is closed cleanly (no memtable flush): the
        // state a SIGKILL leaves.
        let kept = work.keep();
        eprintln!(
            "crash: {events} events committed in {:.1} s ({:.0} events/s); kill -9 now; state left in {}",
            committed.as_secs_f64(),
            events as f64 / committed.as_secs_f64(),
            kept.join("state").display()
        );
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        unreachable!("kill -9 of this process returned");
    }
    if let Some(c) = checkpoint {
        let (relay, settled) = c.into_relay();
        settled.unwrap();
        relay.flush(Duration::from_secs(3600)).unwrap();
        if let Some((user, system)) = named_thread_cpu("outbox-relay") {
            let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events.max(1) as f64;
            eprintln!(
                "the relay's thread: {:.1} s on a CPU (user {:.1} s, {:.2} µs an event; system {:.1} s, {:.2} µs an event)",
                (user + system).as_secs_f64(),
                user.as_secs_f64(),
                per_event(user),
                system.as_secs_f64(),
                per_event(system)
            );
        }
        relay.stop();
    }
    let delivered = started.elapsed();
    let rss = peak_rss_mib();
    let mb = |b: u64| b as f64 / 1e6;
    let (dedup_set, fraud_values) = store.resident_bytes().unwrap_or_default();
    let (block_cache, memtables) = store.rocksdb_memory_bytes().unwrap();
    eprintln!(
        "memory at the end: resident {} MiB (peak {rss} MiB); dedup index and pages {:.0} MB ({} pages read from RocksDB), resident fraud values {:.0} MB, block cache {:.0} MB, memtables {:.0} MB",
        rss_now_mib(),
        mb(dedup_set as u64),
        StateStore::dedup_page_reads(),
        mb(fraud_values as u64),
        mb(block_cache),
        mb(memtables)
    );
    let kernel = KernelMemoryWork::now().since(kernel_before);
    eprintln!(
        "kernel during the run (machine-wide): {} direct compactions, {} pages reclaimed directly; this process's memory in transparent huge pages at the end: {} MiB",
        kernel.compaction_stalls,
        kernel.pages_reclaimed_directly,
        anon_huge_mib()
    );
    // Per column family: the background CPU, what flushes and compactions wrote, write
    // stalls by cause (only the non-zero ones); then the WAL and the stalls in all.
    let mut family = String::new();
    // The column of the CPU flushes and compactions took, in the rows of the table
    // whose header was seen last (`None` in the table by priority, which has no sum).
    let mut cpu_column = None;
    for line in store.rocksdb_stats().unwrap_or_default().lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("** Compaction Stats [") {
            family = name.trim_end_matches([']', '*', ' ']).into();
        } else if line.starts_with("Level ") || line.starts_with("Priority ") {
            // A row's size is two fields ("1.23 MB") where the header has one ("Size").
            cpu_column = line
                .split_whitespace()
                .position(|h| h == "CompMergeCPU(sec)")
                .filter(|_| line.starts_with("Level "))
                .map(|i| i + 1);
        } else if let Some(cpu) = line
            .strip_prefix("Sum ")
            .and_then(|_| line.split_whitespace().nth(cpu_column?))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s >= 0.05)
        {
            // Background flushes count here too (not those of a WAL replay at open,
            // which RocksDB records without their CPU time).
            eprintln!("rocksdb: flushes and compactions of {family} on a CPU: {cpu:.1} s");
        } else if let Some(counts) = line.strip_prefix("Write Stall (count): ") {
            let stalls: Vec<&str> = counts
                .split(", ")
                .filter(|kv| !kv.ends_with(": 0") && !kv.starts_with("total-"))
                .collect();
            if !stalls.is_empty() {
                eprintln!("rocksdb: write stalls in {family}: {}", stalls.join(", "));
            }
        } else if let Some(c) = line.strip_prefix("Cumulative compaction: ") {
            // Per family: what flushes and compactions wrote and read (the CPU the
            // background threads spend is mostly this).
            eprintln!("rocksdb: compaction in {family}: {c}");
        } else if let Some(f) = line.strip_prefix("Flush(GB): ") {
            eprintln!("rocksdb: flush in {family}: {f}");
        } else if line.starts_with("Cumulative WAL:") || line.starts_with("Cumulative stall:") {
            eprintln!("rocksdb: {line}");
        }
    }
    // The run's folds (before `compact`, which folds what is left).
    let folds = store.fraud_log_folds();
    eprintln!(
        "fraud log: {} folds in the run, {:.2} s (wall clock), {} pages, {} changes written as {} keys; {} pages unfolded at the end",
        folds.folds,
        folds.seconds,
        folds.pages,
        folds.changes,
        folds.keys,
        store.fraud_log_pages()
    );
    store.compact().unwrap();
    let live: u64 = store.live_dedup().unwrap().values().map(|l| l.live).sum();
    let state_bytes = dir_bytes(&state_dir);
    // Where the bytes are: SST + memtable bytes per column family.
    let stats = store.stats().unwrap();
    let per_cf: Vec<String> = stats
        .bytes
        .iter()
        .map(|(cf, b)| format!("{cf} {:.0} MB", *b as f64 / 1e6))
        .collect();
    eprintln!(
        "time: {:.1} s in the pipeline, {:.1} s waiting for the previous commit, {:.1} s waiting for input",
        in_pipeline.as_secs_f64(),
        in_commit.as_secs_f64(),
        (committed - in_pipeline - in_commit).as_secs_f64()
    );
    eprintln!(
        "the loop's thread: {:.1} s on a CPU, {:.1} s waiting for one",
        pipeline_cpu.as_secs_f64(),
        pipeline_queued.as_secs_f64()
    );
    eprintln!(
        "the process until the last commit: {:.1} s on a CPU ({:.2} cores busy on average), {:.2} µs of CPU an event",
        run_cpu.as_secs_f64(),
        run_cpu.as_secs_f64() / committed.as_secs_f64(),
        run_cpu.as_secs_f64() * 1e6 / events.max(1) as f64
    );
    if !relay {
        for (what, time) in [
            ("commits' writes", commit_time),
            ("commits' durable steps", sync_time),
        ] {
            let CommitTime {
                wall,
                max_wall,
                on_cpu,
                queued,
            } = time;
            eprintln!(
                "{what}: {:.1} s in all (longest {:.0} ms): {:.1} s on a CPU, {:.1} s waiting for one, {:.1} s blocked (fsync, stalls)",
                wall.as_secs_f64(),
                max_wall.as_secs_f64() * 1e3,
                on_cpu.as_secs_f64(),
                queued.as_secs_f64(),
                wall.saturating_sub(on_cpu + queued).as_secs_f64()
            );
        }
    }
    eprintln!(
        "state: {:.0} MB in the directory ({}); {}; {} dedup keys stored ({live} live), {} fraud keys",
        state_bytes as f64 / 1e6,
        dir_bytes_by_kind(&state_dir),
        per_cf.join(", "),
        stats.dedup_keys,
        stats.fraud_keys
    );
    // What a restart pays before its first batch, after a clean stop.
    drop(pipeline);
    drop(store);
    reopen(&state_dir);
    // The keyed state per live key: the dedup index and the fraud history (each held
    // for its retention) with the windows and positions, over the keys both hold. The
    // directory's figure below also counts what is transient: the undelivered outbox
    // (all of it without the relay) and the write-ahead log not yet recycled.
    let keyed_bytes: u64 = ["dedup", "dedup_pages", "fraud", "meta", "window"]
        .iter()
        .filter_map(|cf| stats.bytes.get(*cf))
        .sum();
    let live_keys = live + stats.fraud_keys;
    let keyed_per_key = keyed_bytes as f64 / live_keys.max(1) as f64;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let exact = events == manifest.events
        && unique == manifest.distinct_ids
        && duplicate + conflict == manifest.duplicates
        && conflict == manifest.conflicting_duplicates
        && late == 0
        && invalid == 0;
    println!("| input | mode | events/s (to commit) | events/s (to the sink) | p50 batch | p99 batch | peak RSS | keyed state per live key | directory per live dedup key | unique / duplicate / conflict | = manifest |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {} | {:.0} ms | {:.0} ms | {} MiB | {keyed_per_key:.0} B ({live_keys} keys) | {:.0} B ({live} keys) | {unique} / {duplicate} / {conflict} | {} |",
        data.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        if relay { "relay → file sink" } else { "core, no relay" },
        events as f64 / committed.as_secs_f64(),
        if relay {
            format!("{:.0}", events as f64 / delivered.as_secs_f64())
        } else {
            "–".into()
        },
        at(0.5),
        at(0.99),
        rss,
        state_bytes as f64 / live.max(1) as f64,
        if exact { "yes" } else { "NO" }
    );
    // One JSON line in the peers' result format (scripts/bench-peers.sh tabulates them).
    let opt = |name: &str| opt(&args, name);
    if let Some(path) = opt("--result-file") {
        let wall = if relay { delivered } else { committed };
        let line = serde_json::json!({
            "engine": "paydedup",
            "tag": opt("--tag").cloned().unwrap_or_default(),
            "mode": if relay { "relay to file sink" } else { "core, no relay" },
            "events": events,
            "distinct_ids": manifest.distinct_ids,
            "output_rows": unique,
            "correct": exact,
            "query_wall_s": (wall.as_secs_f64() * 100.0).round() / 100.0,
            "events_per_s": (events as f64 / wall.as_secs_f64()).round(),
            "peak_rss_mb": rss,
            "p50_batch_ms": at(0.5).round(),
            "p99_batch_ms": at(0.99).round(),
            "keyed_state_bytes_per_live_key": keyed_per_key.round(),
            "live_keys": live_keys,
            "state_bytes_per_live_key": (state_bytes as f64 / live.max(1) as f64).round(),
            "dedup_bytes_per_live_key": (["dedup", "dedup_pages"]
                .iter()
                .filter_map(|cf| stats.bytes.get(*cf))
                .sum::<u64>() as f64
                / live.max(1) as f64)
                .round(),
            "bytes_by_column_family": stats.bytes,
            "fraud_keys": stats.fraud_keys,
            "process_cpu_s": (run_cpu.as_secs_f64() * 100.0).round() / 100.0,
            "kernel_compaction_stalls": kernel.compaction_stalls,
            "kernel_pages_reclaimed_directly": kernel.pages_reclaimed_directly,
        });
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
    assert!(
        exact,
        "counts differ from the manifest: events {events}, late {late}, invalid {invalid}"
    );
}
