//! [`StateStore`]: one RocksDB database per processor instance.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompactionStyle,
    DBCompressionType, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::Serialize;

use crate::batch::{Horizon, Op};
use crate::cf::{
    self, CF_DEDUP, CF_DEDUP_PAGES, CF_FRAUD, CF_FRAUD_LOG, CF_META, CF_OUTBOX, CF_WINDOW,
};
use crate::dedup_page::{self, CommitPages};
use crate::expiry::{self, ExpiryHorizon, PartitionHorizons};
use crate::fail_point;
use crate::fraud_log_page;
use crate::keys::{self, meta, DedupEntry};
use crate::outbox_page;
use crate::{StateBatch, StateError, Table};
pub use durable::WrittenCommit;
use fraud_log::{FraudLog, FraudWrites};
use outbox_scan::OutboxScanFrom;
use resident::{lock, DedupAnswer, Resident, ResidentLoader};

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync the WAL on every commit. On by default: the relay may only deliver rows of
    /// commits that survive a power loss (see docs/exactly-once.md).
    pub sync: bool,
    /// Dedup keys live until `event_time + retention < watermark`. `None` uses the
    /// retention the processor stored in the directory (for inspection tools).
    pub dedup_retention_micros: Option<i64>,
    /// Fraud keys live until `last_seen + ttl < watermark`.
    pub fraud_ttl_micros: i64,
    /// Shared block cache for the dedup and fraud column families.
    pub block_cache_bytes: usize,
    /// Memory for the fraud state's keys and values held in memory
    /// (`resident_values`). Past it, new keys stay in RocksDB only and every lookup
    /// memory cannot answer goes to RocksDB: slower, never wrong.
    pub fraud_memory_bytes: usize,
    /// The WAL files' total size before RocksDB flushes the column families that hold
    /// the oldest one. A restart after a crash replays every WAL file some column
    /// family still needs, and `meta` (a few bytes per batch) rarely fills a memtable
    /// on its own: unbounded, it pinned 2–3 GB of WAL at 10 M payments and a restart
    /// took 2.6 s to replay it; bounded at 256 MB, 0.65 s, at no measured cost in
    /// throughput (docs/benchmarks.md, recovery).
    pub max_wal_bytes: u64,
    /// Memory for the newest dedup pages' bytes (`resident_pages`), so that a repeat
    /// of a recent id finds its first version's entry without reading RocksDB; a
    /// repeat of an older one reads its page (slower, never wrong).
    pub dedup_page_memory_bytes: usize,
    /// Write each commit's fraud changes as one page of the fraud log, folded into the
    /// per-key family in the background (`store::fraud_log`), instead of per key. On
    /// by default; off writes them per key as earlier builds did (for comparison: the
    /// log is read back either way).
    pub fraud_log: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: true,
            dedup_retention_micros: Some(3_600 * 1_000_000),
            fraud_ttl_micros: 7 * 24 * 3_600 * 1_000_000,
            // Fraud lookups are answered from memory (`resident_values`), so the cache
            // only serves dedup lookups of ids seen before: 64 MB. (At 256 MB, sized for
            // the fraud reads it no longer gets, it filled with dedup blocks of
            // compacted-away files at 10 M payments, 246 MB of peak RSS.)
            block_cache_bytes: 64 << 20,
            // 5.9 M fraud keys (the peers' 10 M payments) took 454 MB.
            fraud_memory_bytes: 768 << 20,
            max_wal_bytes: 256 << 20,
            // 2.6 M entries (52 bytes each): at 20k payments a second, the last two
            // minutes; the bench's 10 M payments at its 600-s retention (0.54 M live
            // ids) keep every page.
            dedup_page_memory_bytes: 128 << 20,
            fraud_log: true,
        }
    }
}

/// See [`StateStore::dedup_page_reads`].
static DEDUP_PAGE_READS: AtomicU64 = AtomicU64::new(0);

/// Sizes and positions, for the `state` subcommand and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StateStats {
    pub path: PathBuf,
    /// Exact number of dedup entries stored: those in pages (`dedup_pages`) and those
    /// in the older per-key family (`dedup`), by a full scan of both. A page goes only
    /// once all its entries have expired, so this counts some expired ones too.
    pub dedup_keys: u64,
    /// Exact number of fraud keys: those in the per-key family and those only in the
    /// fraud log's unfolded pages, as of one snapshot.
    pub fraud_keys: u64,
    pub open_windows: u64,
    /// SST + memtable bytes per column family.
    pub bytes: BTreeMap<String, u64>,
    pub total_bytes: u64,
    pub next_offsets: BTreeMap<i32, i64>,
    pub max_event_times: BTreeMap<i32, i64>,
    /// Rows waiting for delivery, per table.
    pub outbox_depth: BTreeMap<String, u64>,
}

/// A raw key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The fraud log's unfolded changes, the newest of each key: key → value.
type UnfoldedFraud = HashMap<Box<[u8]>, Box<[u8]>>;

/// The horizons of every commit written, durable or not: what a commit's write judges
/// the dedup pages by (`write_dedup_pages`). A write lands only after every write
/// before it, so judging by them is safe there (`store::durable`); the compaction
/// filters and memory sweeps read only the published [`Horizons`].
#[derive(Debug, Default)]
struct WrittenHorizons {
    global: ExpiryHorizon,
    partitions: PartitionHorizons,
}

/// What the TTL compaction filters read (see `expiry`).
#[derive(Debug, Clone, Default)]
struct Horizons {
    /// Minimum committed watermark over all partitions: the dedup fallback.
    global: ExpiryHorizon,
    /// Each partition's committed watermark: the dedup filter's own rule.
    partitions: PartitionHorizons,
    /// The most advanced committed watermark: the fraud filter's.
    fraud: ExpiryHorizon,
}

pub struct StateStore {
    /// Shared with the resident keys' loader thread while it scans.
    db: Arc<DB>,
    path: PathBuf,
    horizons: Horizons,
    /// The dedup retention the compaction filter applies (µs).
    retention: Arc<AtomicI64>,
    write_options: WriteOptions,
    /// Whether a commit is synced (`StoreOptions::sync`): `make_durable` fsyncs the WAL.
    sync: bool,
    /// A commit's write: synced apart, by `make_durable` (`store::durable`).
    unsynced_writes: WriteOptions,
    /// The outbox pages of commits not yet durable, hidden from readers.
    unsynced_outbox: Mutex<durable::UnsyncedOutbox>,
    /// The horizons of the commits written (at least the published ones).
    written_horizons: WrittenHorizons,
    /// The dedup index and the fraud values, in memory. Set at open; a read-only
    /// inspection sets it (the dedup index alone) only when it is first asked for a
    /// dedup entry, so that a `state` run beside a live processor does not hold a
    /// second copy of the index.
    resident: OnceLock<Arc<Mutex<Resident>>>,
    /// Opened read-only (`open_read_only`).
    read_only: bool,
    /// The thread filling `resident` after open (see `store::resident`).
    resident_loader: Option<Mutex<ResidentLoader>>,
    /// The fraud state's TTL (µs), for sweeping the resident fraud keys.
    fraud_ttl_micros: i64,
    /// The resident fraud values' memory budget.
    fraud_memory_bytes: usize,
    /// The newest dedup pages' memory budget.
    dedup_page_memory_bytes: usize,
    /// The dedup pages held, for deleting them once expired (`store::dedup_pages`).
    dedup_pages: Mutex<dedup_pages::DedupPages>,
    /// Whether commits page their fraud changes (`StoreOptions::fraud_log`).
    fraud_log_on: bool,
    /// The fraud log's pages and its running fold (`store::fraud_log`).
    fraud_log: Mutex<FraudLog>,
    /// A read-only store's copy of the fraud log's unfolded changes (newest of each
    /// key), read at its first fraud lookup: it has no resident fraud values to hold
    /// them.
    unfolded_fraud: OnceLock<UnfoldedFraud>,
    /// When commits last wrote the dedup index's size estimate (`index_warmup`).
    size_estimate_written: Mutex<std::time::Instant>,
    /// The memory commits build their fraud log page and outbox pages in, kept from
    /// one commit to the next (see `outbox_page::PageBuffers`).
    commit_buffers: Mutex<CommitBuffers>,
    /// Per outbox stream, where its undeleted pages start (`OutboxScanFrom`).
    outbox_scan_from: Mutex<OutboxScanFrom>,
    /// How many more commits may land before the next one fails: a test double for a
    /// disk that fails one write, which the real one cannot do on demand (set only
    /// through `fail_commit_after`; only builds with fail points have it).
    #[cfg(feature = "fail-points")]
    commits_before_failure: AtomicU64,
}

/// What a commit builds its page values in (RocksDB copies each value into its write
/// batch, so the buffers are free again once the batch is built). Every commit clears
/// or overwrites what it uses before it builds, so nothing of a commit that failed
/// halfway (or panicked, poisoning the lock) reaches the next one.
#[derive(Debug, Default)]
struct CommitBuffers {
    fraud_page: Vec<u8>,
    outbox: outbox_page::PageBuffers,
    /// The last commit's write batch size: the next one is reserved a little more
    /// up front, where it grew by doubling from empty (RocksDB's `std::string`, each
    /// step a copy of everything so far and fresh memory faulted in: ~3 % of the
    /// commit thread at 10 M).
    last_write_bytes: usize,
}

impl CommitBuffers {
    /// The most a buffer keeps between commits: a batch's pages are a few hundred KB,
    /// a restore's single commit of a whole state may be far more.
    const MAX_KEPT_BYTES: usize = 16 << 20;

    fn trim(&mut self) {
        outbox_page::let_go_past(&mut self.fraud_page, Self::MAX_KEPT_BYTES);
        self.outbox.trim(Self::MAX_KEPT_BYTES);
    }

    /// A new write batch, reserved for the last one's size and an eighth (no more than
    /// the buffers keep: one huge commit does not make every later one reserve as much).
    fn write_batch(&self) -> WriteBatch {
        let last = self.last_write_bytes;
        WriteBatch::with_capacity_bytes((last + last / 8).min(Self::MAX_KEPT_BYTES))
    }
}

/// How old (wall clock) a fraud SST file may get before a compaction rewrites it, and
/// with it drops the expired history it holds.
const FRAUD_PERIODIC_COMPACTION_SECS: u64 = 24 * 3_600;

/// One memtable of the dedup and fraud column families (see `cf_options`).
const SMALL_MEMTABLE_BYTES: usize = 4 << 20;

/// How many full dedup memtables one flush merges: 16 MB sorted runs, as before the
/// memtables shrank. At most `+ 2` memtables, 24 MB.
const DEDUP_MEMTABLES_PER_FLUSH: i32 = 4;

/// How many full fraud memtables one flush merges: 64 MB sorted runs. A card or
/// customer updated in several of them is written once. At most `+ 2` memtables,
/// 72 MB; the WAL bound, `max_wal_bytes`, still forces flushes.
const FRAUD_MEMTABLES_PER_FLUSH: i32 = 16;

/// How many sorted runs the fraud column family gathers before universal compaction
/// merges them (RocksDB's default is 4).
const FRAUD_RUNS_BEFORE_COMPACTION: i32 = 16;

fn cf_options(
    name: &str,
    opts: &StoreOptions,
    cache: &Cache,
    horizons: &Horizons,
    retention: &Arc<AtomicI64>,
) -> Options {
    let mut o = Options::default();
    // NOTE: only LZ4 is compiled in (see Cargo.toml), to keep RocksDB's build short.
    o.set_compression_type(DBCompressionType::Lz4);
    match name {
        CF_DEDUP | CF_FRAUD => {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(cache);
            // Most lookups are of new ids: a bloom filter answers "absent" without I/O.
            table.set_bloom_filter(10.0, false);
            // Index and filter blocks stay in the table readers, outside the block
            // cache: about 1.3 bytes a key (10 M keys: ~13 MB). In the cache, the data
            // blocks of a fraud state larger than the cache evicted them, and every
            // lookup then re-read a whole filter from disk (10 % of the time at 10 M
            // events, measured).
            table.set_cache_index_and_filter_blocks(false);
            o.set_block_based_table_factory(&table);
            // Small memtables, several merged per flush. Every key here is random, and
            // inserting into a skiplist that fits the CPU caches is what the commit
            // spends its time on: 16 MB against 64 MB was ~15 % less CPU, and 4 MB
            // against 16 MB 3–24 % less user CPU at 10 M events (four pairs)
            // (docs/benchmarks.md, ninth step). Merging several full memtables into
            // one flush keeps the sorted runs as large as before, so compaction does
            // not grow with the number of memtables.
            o.set_write_buffer_size(SMALL_MEMTABLE_BYTES);
            let per_flush = if name == CF_DEDUP {
                DEDUP_MEMTABLES_PER_FLUSH
            } else {
                FRAUD_MEMTABLES_PER_FLUSH
            };
            o.set_min_write_buffer_number_to_merge(per_flush);
            // Two more than a flush takes: inserts go on while one flush runs. RocksDB
            // delays writes once the unflushed memtables reach this number less one,
            // which a fraud flush reaches (3–4 s of delays in a 10 M run, ~5 %); with
            // six more instead of two the delays were gone but the runs were no
            // faster (docs/benchmarks.md, eleventh step): the delays pace the inserts
            // to what the flushes write.
            o.set_max_write_buffer_number(per_flush + 2);
            // The resident sets keep lookups of absent keys away from RocksDB, so the
            // lookups that come are hits: no bloom filter on the last level, where
            // nearly all keys live (less memory, no filter probe on a hit).
            o.set_optimize_filters_for_hits(true);
            if name == CF_DEDUP {
                // The same "most ids are new" argument for the memtable: a bloom filter
                // over whole keys answers absent lookups without walking the skiplist.
                // (Not for fraud: memory answers its lookups, and every put would pay
                // to fill a filter nothing reads.)
                o.set_memtable_prefix_bloom_ratio(0.1);
                o.set_memtable_whole_key_filtering(true);
                let filter = expiry::dedup_filter(
                    horizons.global.clone(),
                    horizons.partitions.clone(),
                    retention.clone(),
                );
                o.set_compaction_filter("dedup-ttl", filter);
            } else {
                let ttl = Arc::new(AtomicI64::new(opts.fraud_ttl_micros));
                let filter = expiry::ttl_filter(horizons.fraud.clone(), ttl);
                o.set_compaction_filter("fraud-ttl", filter);
                // Universal compaction: a card or customer lives for days and is
                // rewritten a few times in that span, so a leveled tree pushed the same
                // keys down level after level; at 10 M payments (5.9 M keys) compaction
                // was the largest cost that grew with the key count. Universal merges
                // sorted runs of similar size, writing each key fewer times (peers'
                // 10 M input: about 10 % less CPU, a mean of 355 s over eight runs
                // against 394 s over four leveled, and 7 % fewer bytes written;
                // docs/benchmarks.md). The price is up to twice the column family's size
                // on disk while the largest run is being rewritten.
                o.set_compaction_style(DBCompactionStyle::Universal);
                // Merge sorted runs once sixteen are waiting, not four: fraud lookups
                // are answered from memory (the resident values), so more runs cost
                // little on reads, and each key is rewritten fewer times (peers' 10 M
                // input: eight against four, 5 % fewer bytes written, ninth step;
                // sixteen against eight, ~1 s less of the family's background CPU in
                // a 10 M run and 0.7-2.2 % more events/s, a restart no slower, 3 bytes
                // more of keyed state a key, twenty-first step).
                o.set_level_zero_file_num_compaction_trigger(FRAUD_RUNS_BEFORE_COMPACTION);
                // Under universal compaction RocksDB counts sorted runs against its
                // write-slowdown and write-stop limits (20 and 36 by default): keep the
                // margins they had over a trigger of eight (12 and 28 runs: flushes
                // that may land while one long merge runs), not 4 and 20.
                o.set_level_zero_slowdown_writes_trigger(FRAUD_RUNS_BEFORE_COMPACTION + 12);
                o.set_level_zero_stop_writes_trigger(FRAUD_RUNS_BEFORE_COMPACTION + 28);
                // The TTL filter only sees keys a compaction rewrites, and universal
                // compaction leaves its largest run alone for long stretches: rewrite
                // anything older than a day, so expired history leaves the disk at most
                // a day after its TTL (the default would be 30 days).
                o.set_periodic_compaction_seconds(FRAUD_PERIODIC_COMPACTION_SECS);
            }
        }
        CF_DEDUP_PAGES | CF_FRAUD_LOG => {
            // Written once, read back only at open (and the fraud log's once more by
            // its fold), deleted whole: kept in blob files,
            // which compactions do not rewrite (the keys, 8 or 12 bytes a page, are all
            // they move), as for the outbox's pages.
            o.set_write_buffer_size(16 << 20);
            o.set_enable_blob_files(true);
            o.set_min_blob_size(1024);
            o.set_blob_compression_type(DBCompressionType::None);
            o.set_enable_blob_gc(false);
        }
        CF_OUTBOX => {
            // Written once, read once in order, deleted: small memtables flush rarely
            // because rows are usually deleted before a flush.
            o.set_write_buffer_size(64 << 20);
            // A batch's rows of one table and partition are one value, LZ4-compressed
            // by the store already (`outbox_page`), tens of KB: kept in blob files,
            // written once at flush, never rewritten by compactions (which then move
            // only keys) and not compressed a second time.
            o.set_enable_blob_files(true);
            o.set_min_blob_size(4096);
            o.set_blob_compression_type(DBCompressionType::None);
            // No blob garbage collection: it relocates the live pages of the oldest
            // blob files during compactions, i.e. rewrites an undelivered backlog. Pages
            // are deleted in sequence order, so a blob file is dropped as a whole once
            // every page in it is delivered and compaction has dropped their keys.
            o.set_enable_blob_gc(false);
        }
        _ => {}
    }
    o
}

/// Range deletions the outbox's memtable holds before RocksDB flushes it.
///
/// Why: every delivery deletes its pages with a range deletion, and every new
/// iterator over the column family (the relay opens one per read of a stream) works
/// through all the range deletions still in the memtable. The outbox's memtable holds
/// only keys, so by size alone it flushes rarely: at 5,000 records/s, in batches cut by
/// the 10 ms linger, the processor's CPU grew from a fifth of a core to nearly a whole
/// one within 80 s, until a flush (docs/benchmarks.md, thirty-sixth step). A flush
/// drops the delivered pages' entries and leaves the deletions to compactions, where
/// each file's are sorted once.
const OUTBOX_MEMTABLE_RANGE_DELETIONS: &str = "1000";

/// Sets `OUTBOX_MEMTABLE_RANGE_DELETIONS`: a mutable option, which the C API sets
/// only on an open database, and which a memtable reads when it is made. So the
/// memtable the open made is then flushed (a key outside every stream is put and
/// deleted first: an empty memtable is not replaced).
fn bound_outbox_range_deletions(db: &DB) -> Result<(), rocksdb::Error> {
    const SWITCH: &[u8] = b"\xffmemtable-switch";
    let Some(cf) = db.cf_handle(CF_OUTBOX) else {
        return Ok(());
    };
    db.set_options_cf(
        cf,
        &[(
            "memtable_max_range_deletions",
            OUTBOX_MEMTABLE_RANGE_DELETIONS,
        )],
    )?;
    db.put_cf(cf, SWITCH, b"")?;
    db.delete_cf(cf, SWITCH)?;
    db.flush_cf(cf)
}

/// Turns off RocksDB's per-thread perf counters for the calling thread.
///
/// Why: by default RocksDB counts every key comparison (and more) in a thread-local
/// context, reached through a thread-local initialisation check each time. A memtable
/// insert of a random key makes ~20 comparisons; on the peers' input that counting was
/// ~1 % of all CPU, on the commit thread. Nothing in paydedup reads these counters
/// (its metrics come from RocksDB's properties). Setting the level is one thread-local
/// store, so the hot calls simply make it each time.
fn without_perf_counters() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// The handle of column family `name` of the database at `path` (also used by threads
/// that hold the database without the store).
fn column_family<'a>(db: &'a DB, path: &Path, name: &str) -> Result<&'a ColumnFamily, StateError> {
    db.cf_handle(name).ok_or_else(|| StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("column family {name} is missing"),
    })
}

/// RocksDB's C++ is built for SSE4.2 and PCLMULQDQ on x86-64 (`.cargo/config.toml`: its
/// CRC32C in hardware) and does not check at run time: a CPU without them would stop
/// with SIGILL at the first checksum. Checked here instead, as a clear error.
fn check_cpu() -> Result<(), StateError> {
    #[cfg(target_arch = "x86_64")]
    return require_cpu(|feature| match feature {
        "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
        "pclmulqdq" => std::arch::is_x86_feature_detected!("pclmulqdq"),
        _ => false,
    });
    #[cfg(not(target_arch = "x86_64"))]
    Ok(())
}

/// What RocksDB's build needs of an x86-64 CPU: (feature, its name in an error).
const ROCKSDB_CPU_FEATURES: [(&str, &str); 2] = [("sse4.2", "SSE4.2"), ("pclmulqdq", "PCLMULQDQ")];

/// [`check_cpu`] against `has` (a test stands in for the CPU: this one has both).
fn require_cpu(has: impl Fn(&str) -> bool) -> Result<(), StateError> {
    match ROCKSDB_CPU_FEATURES
        .iter()
        .find(|(feature, _)| !has(feature))
    {
        Some(&(_, missing)) => Err(StateError::CpuUnsupported { missing }),
        None => Ok(()),
    }
}

impl StateStore {
    /// Opens (creating if needed) the state directory for read and write. Fails with
    /// [`StateError::Locked`] if another process holds it.
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<StateStore, StateError> {
        check_cpu()?;
        std::fs::create_dir_all(path).map_err(|e| {
            StateError::Rocks(format!("creating state directory {}: {e}", path.display()))
        })?;
        let horizons = Horizons::default();
        // Until the retention is known, the filter keeps everything.
        let retention = Arc::new(AtomicI64::new(i64::MAX));
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_max_total_wal_size(opts.max_wal_bytes);
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = cf_options(name, opts, &cache, &horizons, &retention);
            // Until the dedup index is loaded (see `resume_compactions`).
            o.set_disable_auto_compactions(true);
            ColumnFamilyDescriptor::new(*name, o)
        });
        // The dedup index's memory, made ready on the other core while RocksDB opens
        // (`index_warmup`).
        let warmup = index_warmup::IndexWarmup::start(path);
        // Damage RocksDB would loop on instead of reporting (`log_check`).
        log_check::check_logs(path)?;
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| StateError::from_rocks(e, path))?;
        bound_outbox_range_deletions(&db).map_err(|e| StateError::from_rocks(e, path))?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(opts.sync);
        let mut store = StateStore {
            db: Arc::new(db),
            path: path.to_owned(),
            horizons,
            retention,
            write_options,
            sync: opts.sync,
            unsynced_writes: WriteOptions::default(),
            unsynced_outbox: Mutex::default(),
            written_horizons: WrittenHorizons::default(),
            resident: OnceLock::new(),
            read_only: false,
            resident_loader: None,
            dedup_pages: Mutex::default(),
            fraud_log_on: opts.fraud_log,
            fraud_log: Mutex::default(),
            unfolded_fraud: OnceLock::new(),
            size_estimate_written: Mutex::new(std::time::Instant::now()),
            commit_buffers: Mutex::default(),
            outbox_scan_from: Mutex::default(),
            #[cfg(feature = "fail-points")]
            commits_before_failure: AtomicU64::new(u64::MAX),
            fraud_ttl_micros: opts.fraud_ttl_micros,
            fraud_memory_bytes: opts.fraud_memory_bytes,
            dedup_page_memory_bytes: opts.dedup_page_memory_bytes,
        };
        // Resume the compaction filters' horizons from the last commit.
        if let Some(h) = store.committed_horizon()? {
            store.publish_horizon(Horizon::Global(h));
        }
        for (p, h) in store.scan_meta_i64(meta::HORIZON_PREFIX)? {
            store.publish_horizon(Horizon::Partition(p, h));
        }
        // The retention is stored so that inspection tools expire keys the same way.
        let cf = store.cf(CF_META)?;
        match opts.dedup_retention_micros {
            Some(r) => {
                let stored = store
                    .db
                    .get_cf(cf, meta::RETENTION)
                    .map_err(|e| store.rocks(e))?
                    .and_then(|v| keys::be_i64(&v));
                if let Some(stored) = stored.filter(|s| *s != r) {
                    return Err(StateError::RetentionChanged {
                        path: path.to_owned(),
                        stored_secs: stored / 1_000_000,
                        requested_secs: r / 1_000_000,
                    });
                }
                store
                    .db
                    .put_cf_opt(cf, meta::RETENTION, r.to_be_bytes(), &store.write_options)
                    .map_err(|e| store.rocks(e))?;
                store.retention.store(r, Ordering::Release);
            }
            None => {
                if let Some(r) = store
                    .db
                    .get_cf(cf, meta::RETENTION)
                    .map_err(|e| store.rocks(e))?
                    .and_then(|v| keys::be_i64(&v))
                {
                    store.retention.store(r, Ordering::Release);
                }
            }
        }
        let (resident, loader) = store.start_resident(warmup)?;
        store.resume_compactions()?;
        // Empty until here: nothing else sets it on a store opened for writing.
        let _ = store.resident.set(resident);
        store.resident_loader = Some(Mutex::new(loader));
        Ok(store)
    }

    /// Lets RocksDB compact again, once the open is done. Why it waits: after a crash,
    /// the open flushes what it replayed from the WAL, and the compactions that starts
    /// took about half a core while the dedup index was loaded from its pages, on a
    /// two-core machine where the load uses both (a restart with 9 M ids alive waits
    /// for that load). An open writes a few `meta` keys at most, far from any write
    /// stall, so nothing waits on them; each column family's switch rewrites RocksDB's
    /// OPTIONS file (a few milliseconds, within the restart times measured).
    fn resume_compactions(&self) -> Result<(), StateError> {
        for name in cf::ALL {
            self.db
                .set_options_cf(self.cf(name)?, &[("disable_auto_compactions", "false")])
                .map_err(|e| self.rocks(e))?;
        }
        Ok(())
    }

    /// Opens a directory without taking its lock, for inspection while a processor runs.
    pub fn open_read_only(path: &Path) -> Result<StateStore, StateError> {
        check_cpu()?;
        if !path.join("CURRENT").is_file() {
            return Err(StateError::Rocks(format!(
                "{} is not a paydedup state directory (no CURRENT file)",
                path.display()
            )));
        }
        let opts = StoreOptions::default();
        let horizons = Horizons::default();
        let retention = Arc::new(AtomicI64::new(i64::MAX));
        let cache = Cache::new_lru_cache(8 << 20);
        log_check::check_logs(path)?;
        // Only the families the directory has: an older build's has no `dedup_pages`.
        let present =
            DB::list_cf(&Options::default(), path).map_err(|e| StateError::from_rocks(e, path))?;
        let cfs = cf::ALL
            .iter()
            .filter(|name| present.iter().any(|p| p == *name))
            .map(|name| {
                ColumnFamilyDescriptor::new(
                    *name,
                    cf_options(name, &opts, &cache, &horizons, &retention),
                )
            });
        let db = DB::open_cf_descriptors_read_only(&Options::default(), path, cfs, false)
            .map_err(|e| StateError::from_rocks(e, path))?;
        let store = StateStore {
            db: Arc::new(db),
            path: path.to_owned(),
            horizons,
            retention,
            write_options: WriteOptions::default(),
            sync: false,
            unsynced_writes: WriteOptions::default(),
            unsynced_outbox: Mutex::default(),
            written_horizons: WrittenHorizons::default(),
            resident: OnceLock::new(),
            read_only: true,
            resident_loader: None,
            dedup_pages: Mutex::default(),
            fraud_log_on: opts.fraud_log,
            fraud_log: Mutex::default(),
            unfolded_fraud: OnceLock::new(),
            size_estimate_written: Mutex::new(std::time::Instant::now()),
            commit_buffers: Mutex::default(),
            outbox_scan_from: Mutex::default(),
            #[cfg(feature = "fail-points")]
            commits_before_failure: AtomicU64::new(u64::MAX),
            fraud_ttl_micros: opts.fraud_ttl_micros,
            fraud_memory_bytes: opts.fraud_memory_bytes,
            dedup_page_memory_bytes: opts.dedup_page_memory_bytes,
        };
        Ok(store)
    }

    /// The horizon stored by the last commit, if any.
    pub fn committed_horizon(&self) -> Result<Option<i64>, StateError> {
        let cf = self.cf(CF_META)?;
        Ok(self
            .db
            .get_cf(cf, meta::HORIZON)
            .map_err(|e| self.rocks(e))?
            .and_then(|v| keys::be_i64(&v)))
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StateError> {
        column_family(&self.db, &self.path, name)
    }

    fn rocks(&self, e: rocksdb::Error) -> StateError {
        StateError::from_rocks(e, &self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A commit carrying `h` is written (see [`WrittenHorizons`]).
    fn horizon_written(&self, h: Horizon) {
        match h {
            Horizon::Global(t) => self.written_horizons.global.advance(t),
            Horizon::Partition(p, t) => self.written_horizons.partitions.advance(p, t),
        }
    }

    /// Publishes a horizon a commit made durable.
    fn publish_horizon(&self, h: Horizon) {
        match h {
            Horizon::Global(t) => {
                self.horizon_written(h);
                self.horizons.global.advance(t);
                self.horizons.fraud.advance(t);
            }
            Horizon::Partition(p, t) => self.advance_partition_horizon(p, t),
        }
    }

    /// Publishes a partition's committed watermark to the dedup filter (its entries
    /// expire by it) and the fraud filter (the most advanced one). Only after the
    /// commit that carries it (`StateBatch::set_partition_horizon`): private, since
    /// the compaction filters expire entries by the published horizons, and one
    /// published before its commit is durable could delete live entries. (What is
    /// published counts as written too, `WrittenHorizons`.)
    fn advance_partition_horizon(&self, partition: i32, watermark_micros: i64) {
        self.horizon_written(Horizon::Partition(partition, watermark_micros));
        self.horizons
            .partitions
            .advance(partition, watermark_micros);
        self.horizons.fraud.advance(watermark_micros);
    }

    /// Writes a batch atomically.
    ///
    /// Because a RocksDB `WriteBatch` is atomic, once written all its effects are visible
    /// as if every other write happened either before or after it; with the WAL on, a
    /// crash recovers either all of it or none. The processor puts the effects of Kafka
    /// offsets `[a, b)` — dedup keys, fraud and window state, outbox rows — and
    /// `next_offset = b` into one batch, so the source position can never disagree with
    /// the state. With `sync`, the commit has reached the disk when this returns.
    ///
    /// [`StateStore::write_commit`] then [`StateStore::make_durable`]; a caller that
    /// overlaps one commit's fsync with the next one's write calls the two itself.
    pub fn commit(&self, batch: StateBatch) -> Result<(), StateError> {
        let written = self.write_commit(batch)?;
        self.make_durable(written)
    }

    /// The first step of [`StateStore::commit`]: writes the batch to RocksDB without
    /// waiting for the disk. Until [`StateStore::make_durable`] returns for it, the
    /// commit may not survive a power loss, and nothing outside the process may act on
    /// it: its outbox pages are hidden from readers (see `store::durable`).
    pub fn write_commit(&self, batch: StateBatch) -> Result<WrittenCommit, StateError> {
        if batch.is_empty() {
            return Ok(WrittenCommit::default());
        }
        without_perf_counters();
        self.injected_failure()?;
        let handles: Vec<_> = cf::ALL
            .iter()
            .map(|n| self.cf(n))
            .collect::<Result<_, _>>()?;
        let handle = |name: &str| {
            let i = cf::ALL.iter().position(|n| *n == name).unwrap_or(0);
            handles[i]
        };
        // Borrowed: after the write, the same ops feed the resident sets.
        let StateBatch {
            ops,
            mut outbox,
            horizons,
            ..
        } = batch;
        let fraud_writes = self.plan_fraud_writes(&ops);
        self.prepare_fraud_log(fraud_writes)?;
        let paged = fraud_writes == FraudWrites::Paged;
        let mut dedup = CommitPages::default();
        let mut buffers = lock(&self.commit_buffers);
        let mut wb = buffers.write_batch();
        let CommitBuffers {
            fraud_page,
            outbox: outbox_buffers,
            last_write_bytes,
        } = &mut *buffers;
        fraud_page.clear();
        for op in ops.iter() {
            match op {
                // Written as pages, one per partition.
                Op::Put { cf, key, value } if cf == CF_DEDUP => dedup.push(key, value)?,
                // One page for the commit (`store::fraud_log`).
                Op::Put { cf, key, value } if paged && cf == CF_FRAUD => {
                    fraud_log_page::push(fraud_page, key, value)
                }
                Op::Put { cf, key, value } => wb.put_cf(handle(cf), key, value),
                Op::Delete { cf, key } => wb.delete_cf(handle(cf), key),
            }
        }
        let pages = self.write_dedup_pages(dedup, &mut wb)?;
        // Reserved whether or not the write lands: a write that fails may still be in
        // the log, and its number must not be written again.
        let fraud_page_number = paged.then(|| self.reserve_fraud_page());
        if let Some(n) = fraud_page_number {
            wb.put_cf(
                handle(CF_FRAUD_LOG),
                fraud_log::page_key(n),
                &fraud_page[..],
            );
        }
        // Each stream's rows as pages, compressed here, on the committing thread.
        let mut firsts = Vec::with_capacity(outbox.len());
        for stream in &mut outbox {
            let (table, partition) = (stream.table, stream.partition);
            let runs = stream.runs();
            if let Some((first, _)) = runs.first() {
                firsts.push((table, partition, *first));
            }
            {
                let mut scan_from = lock(&self.outbox_scan_from);
                for (first, _) in &runs {
                    scan_from.writing(table, partition, *first);
                }
            }
            for (first, rows) in runs {
                wb.put_cf(
                    handle(CF_OUTBOX),
                    keys::outbox_key(table, partition, first),
                    outbox_page::encode_into(&rows, outbox_buffers),
                );
            }
        }
        *last_write_bytes = wb.size_in_bytes();
        buffers.trim();
        drop(buffers);
        fail_point::hit(fail_point::COMMIT_BEFORE_WRITE);
        // Hidden before the write, so that no reader sees the pages before they are
        // durable.
        let outbox_ticket = lock(&self.unsynced_outbox).writing(firsts);
        self.db
            .write_opt(wb, &self.unsynced_writes)
            .map_err(|e| self.rocks(e))?;
        // The next commit's write builds on this one's pages, and judges them by its
        // horizons (`store::durable`).
        self.dedup_pages_written(&pages);
        for h in &horizons {
            self.horizon_written(*h);
        }
        Ok(WrittenCommit::new(durable::Written {
            ops,
            horizons,
            pages,
            fraud_page: fraud_page_number,
            outbox_ticket,
        }))
    }

    /// **Test double** (builds with fail points only): the next `n` non-empty commits land, the
    /// one after them fails before it writes anything (as a commit on a disk that
    /// fails one write returns an error), and later ones land again. For tests of
    /// what the processor does with a failed commit in flight: nothing after it may
    /// land, though the store would take it.
    #[cfg(feature = "fail-points")]
    pub fn fail_commit_after(&self, n: u64) {
        self.commits_before_failure.store(n, Ordering::SeqCst);
    }

    /// The error `fail_commit_after` injects, once its commits have landed.
    #[cfg(feature = "fail-points")]
    fn injected_failure(&self) -> Result<(), StateError> {
        // Counts down to 0, which fails this commit and disarms (u64::MAX).
        let was =
            self.commits_before_failure
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                    u64::MAX => None,
                    0 => Some(u64::MAX),
                    n => Some(n - 1),
                });
        match was {
            Ok(0) => Err(StateError::Rocks(
                "injected commit failure (test double, fail_commit_after)".into(),
            )),
            _ => Ok(()),
        }
    }

    #[cfg(not(feature = "fail-points"))]
    #[inline(always)]
    fn injected_failure(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Looks up many dedup keys at once: answered from memory (the index over the
    /// pages, `DedupIndex`), a page read from RocksDB for a repeat of an id whose
    /// page's bytes memory no longer keeps, and one `multi_get` of the per-key family
    /// for the keys memory leaves to it (an earlier build's entries while the loader
    /// scans them; every key of a store without memory). A page deleted since memory
    /// answered had expired whole: its ids read as absent, which the pipeline makes of
    /// an expired entry either way.
    pub fn get_dedup_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<DedupEntry>>, StateError> {
        without_perf_counters();
        if self.read_only && self.resident.get().is_none() {
            // Paged dedup entries can only be answered from memory. Two first lookups
            // at once both load it; one copy is kept.
            let _ = self.resident.set(self.read_only_resident()?);
        }
        let known = self.resident_dedup(keys);
        let mut found: Vec<Option<DedupEntry>> = vec![None; keys.len()];
        let mut asked = Vec::new();
        // Each page read once per lookup: a replay of old payments brings many repeats
        // on one page (a few hundred KB), which would otherwise be read for each.
        let mut read = HashMap::new();
        for (i, answer) in known.into_iter().enumerate() {
            let key = keys[i].as_ref();
            match answer {
                DedupAnswer::Known(e) => found[i] = e,
                DedupAnswer::AskFamily => asked.push(i),
                DedupAnswer::ReadPages(pages) => {
                    let mut entry = None;
                    for (partition, seq, slot) in pages {
                        let page = match read.entry(seq) {
                            Entry::Occupied(o) => o.into_mut(),
                            Entry::Vacant(v) => {
                                DEDUP_PAGE_READS.fetch_add(1, Ordering::Relaxed);
                                v.insert(dedup_pages::read_stored_page(
                                    &self.db, &self.path, partition, seq,
                                )?)
                            }
                        };
                        entry = match page {
                            Some(page) => dedup_page::matching_entry(page, slot, key)?,
                            None => None,
                        };
                        if entry.is_some() {
                            break;
                        }
                    }
                    match entry {
                        Some(e) => found[i] = Some(e),
                        None => asked.push(i),
                    }
                }
            }
        }
        if !asked.is_empty() {
            let cf = self.cf(CF_DEDUP)?;
            let values =
                self.db
                    .batched_multi_get_cf(cf, asked.iter().map(|i| keys[*i].as_ref()), false);
            for (i, v) in asked.into_iter().zip(values) {
                if let Some(v) = v.map_err(|e| self.rocks(e))? {
                    found[i] = Some(DedupEntry::decode(&v)?);
                }
            }
        }
        Ok(found)
    }

    /// How many dedup pages lookups have read from RocksDB in this process (every
    /// store's): repeats of ids on pages older than those memory keeps
    /// (`StoreOptions::dedup_page_memory_bytes`). Per process, so that it only rises
    /// across a store's reopening, as the counter it feeds must.
    pub fn dedup_page_reads() -> u64 {
        DEDUP_PAGE_READS.load(Ordering::Relaxed)
    }

    /// The fraud value a lookup finds for `key`, not judged by the TTL (memory, the
    /// fraud log's unfolded pages, or the per-key family: see
    /// [`StateStore::read_fraud_many`]); a value memory has swept as expired may read
    /// as absent.
    pub fn get_fraud(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut found = None;
        self.read_stored_fraud(&[key], |_, v| found = v.map(<[u8]>::to_vec))?;
        Ok(found)
    }

    /// Many fraud keys at once: answered from memory (`ResidentValues`), one
    /// `multi_get` for the keys it leaves to RocksDB (all of them before).
    ///
    /// A value expired by the TTL under the committed horizon reads as absent, wherever
    /// it was found: the compaction filter drops it at a time of RocksDB's choosing and
    /// memory at a sweep, and neither moment may change what a payment is scored on.
    pub fn get_fraud_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let mut values = vec![None; keys.len()];
        self.read_fraud_many(keys, |i, v| values[i] = v.map(<[u8]>::to_vec))?;
        Ok(values)
    }

    /// [`StateStore::get_fraud_many`]'s answers, each handed to `answer(i, value)` for
    /// `keys[i]` without a copy (once per key, in no particular order): the pipeline
    /// copies a batch's ~10,000 fraud values into one buffer straight from where they
    /// are held. Values from memory are lent under the lock the commit thread takes:
    /// `answer` must be short and must not call the store.
    pub fn read_fraud_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        mut answer: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StateError> {
        let horizon = self.horizons.fraud.get();
        let ttl = self.fraud_ttl_micros;
        let live = |v: &[u8]| !expiry::value_expired(v, ttl, horizon);
        self.read_stored_fraud(keys, |i, v| answer(i, v.filter(|v| live(v))))
    }

    /// The stored value of each of `keys`, expired or not: memory's answer where it
    /// has one (it holds every key the fraud log's unfolded pages changed, see
    /// `store::fraud_log`), a read-only store's copy of those pages, then the per-key
    /// family for the rest.
    fn read_stored_fraud<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        mut answer: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StateError> {
        without_perf_counters();
        let mut asked = self.resident_fraud(keys, &mut answer);
        if self.read_only && !asked.is_empty() {
            let unfolded = self.unfolded_fraud()?;
            asked.retain(|&i| match unfolded.get(keys[i].as_ref()) {
                Some(v) => {
                    answer(i, Some(v));
                    false
                }
                None => true,
            });
        }
        if asked.is_empty() {
            return Ok(());
        }
        let cf = self.cf(CF_FRAUD)?;
        let answers =
            self.db
                .batched_multi_get_cf(cf, asked.iter().map(|&i| keys[i].as_ref()), false);
        for (i, a) in asked.into_iter().zip(answers) {
            let value = a.map_err(|e| self.rocks(e))?;
            answer(i, value.as_deref());
        }
        Ok(())
    }

    /// A read-only store's copy of the fraud log's unfolded changes: the newest of
    /// each key (read once; the store is a view of the directory as it was opened).
    fn unfolded_fraud(&self) -> Result<&UnfoldedFraud, StateError> {
        if let Some(m) = self.unfolded_fraud.get() {
            return Ok(m);
        }
        let mut m = HashMap::new();
        self.each_fraud_page(None, |_, page| {
            for entry in fraud_log_page::entries(page) {
                let (k, v) = entry?;
                m.insert(k.into(), v.into());
            }
            Ok(())
        })?;
        Ok(self.unfolded_fraud.get_or_init(|| m))
    }

    /// Exactly how many fraud keys the store holds: the per-key family's and those of
    /// the log's unfolded pages it does not have, as of one snapshot (a page being
    /// folded may be in both).
    fn count_fraud_keys(&self) -> Result<u64, StateError> {
        let snapshot = self.db.snapshot();
        let mut unfolded: HashSet<Box<[u8]>> = HashSet::new();
        self.each_fraud_page(Some(&snapshot), |_, page| {
            for entry in fraud_log_page::entries(page) {
                unfolded.insert(entry?.0.into());
            }
            Ok(())
        })?;
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        ro.fill_cache(false);
        let mut n = 0u64;
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_FRAUD)?, ro, IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.rocks(e))?;
            unfolded.remove(&k);
            n += 1;
        }
        Ok(n + unfolded.len() as u64)
    }

    /// The horizon fraud values expire by, as committed batches published it (the most
    /// advanced watermark any of them carried, and those published at open); `None`
    /// before the first.
    pub fn fraud_horizon(&self) -> Option<i64> {
        Some(self.horizons.fraud.get()).filter(|h| *h != i64::MIN)
    }

    /// The fraud state's time-to-live (µs): a value expires once its time plus this is
    /// before the most advanced committed watermark. The pipeline judges the values it
    /// reads by the same TTL (`pipeline::prefetch::FraudExpiry`).
    pub fn fraud_ttl_micros(&self) -> i64 {
        self.fraud_ttl_micros
    }

    /// The last record consumed per partition: (offset, fingerprint).
    pub fn last_records(&self) -> Result<BTreeMap<i32, (i64, u64)>, StateError> {
        let mut out = BTreeMap::new();
        self.scan_meta(meta::LAST_RECORD_PREFIX, |k, v| {
            let bad = || StateError::BadValue {
                what: "last record",
                len: v.len(),
            };
            let p = keys::be_i32(k).ok_or_else(bad)?;
            let offset = keys::be_i64(v.get(..8).ok_or_else(bad)?).ok_or_else(bad)?;
            let fp = keys::be_u64(v.get(8..16).ok_or_else(bad)?).ok_or_else(bad)?;
            out.insert(p, (offset, fp));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `each` with (key after `prefix`, value) for every meta key under `prefix`.
    /// Every key of `cf` starting with `prefix`, in order, with its value.
    fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let handle = self.cf(cf)?;
        for item in self
            .db
            .iterator_cf(handle, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            each(&k, &v)?;
        }
        Ok(())
    }

    /// Every `meta` key under `prefix`, with the prefix cut off.
    fn scan_meta(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.scan_prefix(CF_META, prefix, |k, v| each(&k[prefix.len()..], v))
    }

    fn scan_meta_i64(&self, prefix: &[u8]) -> Result<BTreeMap<i32, i64>, StateError> {
        let mut out = BTreeMap::new();
        self.scan_meta(prefix, |k, v| {
            let p = keys::be_i32(k).ok_or(StateError::BadValue {
                what: "meta key",
                len: k.len() + prefix.len(),
            })?;
            let val = keys::be_i64(v).ok_or(StateError::BadValue {
                what: "meta value",
                len: v.len(),
            })?;
            out.insert(p, val);
            Ok(())
        })?;
        Ok(out)
    }

    /// The checkpointed next offset of every partition this store has seen.
    pub fn next_offsets(&self) -> Result<BTreeMap<i32, i64>, StateError> {
        self.scan_meta_i64(meta::NEXT_OFFSET_PREFIX)
    }

    /// The checkpointed max event time of every partition.
    pub fn max_event_times(&self) -> Result<BTreeMap<i32, i64>, StateError> {
        self.scan_meta_i64(meta::MAX_EVENT_TIME_PREFIX)
    }

    /// Next outbox sequence of every (table, partition) that has one.
    pub fn next_seqs(&self) -> Result<BTreeMap<(Table, i32), u64>, StateError> {
        let mut out = BTreeMap::new();
        self.scan_meta(meta::NEXT_SEQ_PREFIX, |rest, v| {
            let bad = || StateError::BadValue {
                what: "sequence key",
                len: rest.len() + meta::NEXT_SEQ_PREFIX.len(),
            };
            let (&id, p) = rest.split_first().ok_or_else(bad)?;
            let table = Table::from_id(id).ok_or_else(bad)?;
            let p = keys::be_i32(p).ok_or_else(bad)?;
            let seq = keys::be_u64(v).ok_or_else(bad)?;
            out.insert((table, p), seq);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn get_sink_meta(
        &self,
        table: Table,
        partition: i32,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf(CF_META)?;
        self.db
            .get_cf(cf, meta::sink(table, partition))
            .map_err(|e| self.rocks(e))
    }

    /// What this directory is the state *of* (written once by the processor; see
    /// `paydedup-processor`'s `identity`), if recorded.
    pub fn identity(&self) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf(CF_META)?;
        self.db
            .get_cf(cf, meta::IDENTITY)
            .map_err(|e| self.rocks(e))
    }

    /// Records the directory's identity (synced like a commit).
    pub fn set_identity(&self, value: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(CF_META)?;
        self.db
            .put_cf_opt(cf, meta::IDENTITY, value, &self.write_options)
            .map_err(|e| self.rocks(e))
    }

    pub fn put_sink_meta(
        &self,
        table: Table,
        partition: i32,
        value: &[u8],
    ) -> Result<(), StateError> {
        let cf = self.cf(CF_META)?;
        self.db
            .put_cf_opt(cf, meta::sink(table, partition), value, &self.write_options)
            .map_err(|e| self.rocks(e))
    }

    /// Up to `limit` undelivered outbox rows of one (table, partition), in sequence
    /// order, from its floor on.
    pub fn outbox_rows(
        &self,
        table: Table,
        partition: i32,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        self.visit_outbox_rows(table, partition, limit, &mut Vec::new(), |seq, row| {
            out.push((seq, row.to_vec()))
        })?;
        Ok(out)
    }

    /// [`StateStore::outbox_rows`] without a copy of each row: calls `each(seq, row)`
    /// for up to `limit` undelivered rows of a stream, from its first, each borrowed
    /// from `scratch` (a decompressed page; the relay keeps one, so that its pages are
    /// decompressed into memory it already has).
    pub fn visit_outbox_rows(
        &self,
        table: Table,
        partition: i32,
        limit: usize,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<(), StateError> {
        let floor = self.outbox_floor(table, partition)?;
        let mut n = 0;
        self.scan_pages(table, partition, |first, page| {
            // A page is read whole (and checked) even when the limit stops within it;
            // the next page is read only while the limit is not reached.
            let more = outbox_page::visit(first, page, floor, scratch, |seq, row| {
                if n >= limit {
                    return false;
                }
                each(seq, row);
                n += 1;
                n < limit
            })?;
            Ok(more && n < limit)
        })
    }

    /// The first undelivered sequence of a stream (0 when nothing was delivered).
    fn outbox_floor(&self, table: Table, partition: i32) -> Result<u64, StateError> {
        let cf = self.cf(CF_META)?;
        Ok(self
            .db
            .get_cf(cf, meta::outbox_floor(table, partition))
            .map_err(|e| self.rocks(e))?
            .and_then(|v| keys::be_u64(&v))
            .unwrap_or(0))
    }

    /// Calls `f(first_seq, value)` for each stored page of one stream in sequence
    /// order, while it returns `true`.
    fn scan_pages(
        &self,
        table: Table,
        partition: i32,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        let cf = self.cf(CF_OUTBOX)?;
        let prefix = keys::outbox_prefix(table, partition);
        let mut ro = ReadOptions::default();
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&[0xff; 8]);
        upper.push(0xff);
        ro.set_iterate_upper_bound(upper);
        // Past the deleted pages (`outbox_scan`).
        let from = match lock(&self.outbox_scan_from).get(table, partition) {
            Some(first_kept) => keys::outbox_key(table, partition, first_kept).to_vec(),
            None => prefix.to_vec(),
        };
        let pages = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
        // Not past the pages of commits that are not durable yet (`store::durable`).
        // Read after the iterator is made, which fixes what it sees: a commit is
        // registered before its write, so every page the iterator can see that is not
        // durable is hidden here (read first, a commit written in between would not be).
        let hidden_from = lock(&self.unsynced_outbox).hidden_from(table, partition);
        for item in pages {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let Some((_, _, first)) = keys::parse_outbox_key(&k) else {
                break;
            };
            if hidden_from.is_some_and(|h| first >= h) || !f(first, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Records rows `..= last_seq` of one (table, partition) as delivered: the pages
    /// they fill are deleted, and the floor moves past them (a page the relay has only
    /// partly delivered stays, its delivered rows hidden). Not synced: if this is lost
    /// in a crash, the rows are sent again and the sink, idempotent on the sequence,
    /// ignores them.
    pub fn outbox_delete_through(
        &self,
        table: Table,
        partition: i32,
        last_seq: u64,
    ) -> Result<(), StateError> {
        let next = last_seq.saturating_add(1);
        // Pages wholly below `next` go; a page starting below it and reaching past it stays.
        let mut keep_from = next;
        // The first page still there: nothing below it is left to delete.
        let mut lowest = None;
        self.scan_pages(table, partition, |first, page| {
            lowest.get_or_insert(first);
            if first >= next {
                return Ok(false);
            }
            if first + outbox_page::row_count(page)? > next {
                keep_from = first;
                return Ok(false);
            }
            Ok(true)
        })?;
        let cf = self.cf(CF_OUTBOX)?;
        let mut wb = WriteBatch::default();
        // The range starts at the lowest page left, not at sequence 0: it deletes the
        // same rows (there are none below that page), but its tombstone no longer
        // covers every earlier one. Nested tombstones [0, a), [0, b), … made every new
        // iterator over the outbox split and sort all of them (more work with every
        // delivery since the memtable's last flush); disjoint ones are split once each.
        // The relay opens one per read, so that was 3 % of all CPU of a relay run at 2 M.
        if let Some(start) = lowest.filter(|&start| start < keep_from) {
            wb.delete_range_cf(
                cf,
                keys::outbox_key(table, partition, start),
                keys::outbox_key(table, partition, keep_from),
            );
        }
        wb.put_cf(
            self.cf(CF_META)?,
            meta::outbox_floor(table, partition),
            next.to_be_bytes(),
        );
        self.db.write(wb).map_err(|e| self.rocks(e))?;
        lock(&self.outbox_scan_from).deleted_below(table, partition, keep_from);
        Ok(())
    }

    /// Number of rows waiting, per (table, partition).
    pub fn outbox_depths(&self) -> Result<BTreeMap<(Table, i32), u64>, StateError> {
        let cf = self.cf(CF_OUTBOX)?;
        let mut floors = BTreeMap::new();
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if let Some((t, p, first)) = keys::parse_outbox_key(&k) {
                let floor = match floors.get(&(t, p)) {
                    Some(f) => *f,
                    None => *floors.entry((t, p)).or_insert(self.outbox_floor(t, p)?),
                };
                let end = first + outbox_page::row_count(&v)?;
                let waiting = end.saturating_sub(first.max(floor));
                if waiting > 0 {
                    *out.entry((t, p)).or_insert(0) += waiting;
                }
            }
        }
        Ok(out)
    }

    /// All open windows: key → value.
    pub fn windows(&self) -> Result<Vec<KeyValue>, StateError> {
        let cf = self.cf(CF_WINDOW)?;
        self.db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.rocks(e))
            })
            .collect()
    }

    fn count_keys(&self, name: &str) -> Result<u64, StateError> {
        let cf = self.cf(name)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item.map_err(|e| self.rocks(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Bytes the column family holds: SST files, blob files (the outbox's pages) and
    /// memtables (RocksDB's own accounting, no scan).
    fn cf_bytes(&self, name: &str) -> Result<u64, StateError> {
        let cf = self.cf(name)?;
        let prop = |p: &str| -> Result<u64, StateError> {
            Ok(self
                .db
                .property_int_value_cf(cf, p)
                .map_err(|e| self.rocks(e))?
                .unwrap_or(0))
        };
        Ok(prop("rocksdb.total-sst-files-size")?
            + prop("rocksdb.total-blob-file-size")?
            + prop("rocksdb.size-all-mem-tables")?)
    }

    /// Bytes the whole store holds (SST files and memtables), cheap enough to read at
    /// every metrics scrape.
    pub fn size_bytes(&self) -> Result<u64, StateError> {
        cf::ALL.iter().map(|name| self.cf_bytes(name)).sum()
    }

    /// Bytes of RocksDB's memory outside the resident sets: (block cache in use,
    /// memtables of every column family).
    pub fn rocksdb_memory_bytes(&self) -> Result<(u64, u64), StateError> {
        let mut memtables = 0;
        for name in cf::ALL {
            memtables += self
                .db
                .property_int_value_cf(self.cf(name)?, "rocksdb.cur-size-all-mem-tables")
                .map_err(|e| self.rocks(e))?
                .unwrap_or(0);
        }
        // The dedup and fraud column families share one cache; the default column
        // family (unused) has a cache of its own, which the DB-wide property reports.
        let cache = self
            .db
            .property_int_value_cf(self.cf(CF_DEDUP)?, "rocksdb.block-cache-usage")
            .map_err(|e| self.rocks(e))?
            .unwrap_or(0);
        Ok((cache, memtables))
    }

    /// RocksDB's own statistics reports, as text: the database's (`rocksdb.dbstats`:
    /// WAL writes and syncs, cumulative stall time) and each column family's
    /// (`rocksdb.cfstats-no-file-histogram`: flushes, compactions and the write stalls
    /// that column family caused, by cause). (`rocksdb.stats` alone reports the
    /// `default` column family's, which paydedup does not use.)
    pub fn rocksdb_stats(&self) -> Result<String, StateError> {
        let mut text = self
            .db
            .property_value("rocksdb.dbstats")
            .map_err(|e| self.rocks(e))?
            .unwrap_or_default();
        for name in cf::ALL {
            let cf = self.cf(name)?;
            let stats = self
                .db
                .property_value_cf(cf, "rocksdb.cfstats-no-file-histogram")
                .map_err(|e| self.rocks(e))?
                .unwrap_or_default();
            text.push_str(&stats);
        }
        Ok(text)
    }

    /// Counts dedup keys that are logically alive under each partition's watermark
    /// is the processor's job; this counts what is physically stored.
    pub fn stats(&self) -> Result<StateStats, StateError> {
        let mut bytes = BTreeMap::new();
        // Every family the store has (an older build's directory, read-only, has no
        // `dedup_pages`).
        for name in cf::ALL.iter().filter(|n| self.db.cf_handle(n).is_some()) {
            bytes.insert((*name).to_owned(), self.cf_bytes(name)?);
        }
        let mut outbox_depth = BTreeMap::new();
        for ((t, _), n) in self.outbox_depths()? {
            *outbox_depth.entry(t.name().to_owned()).or_insert(0) += n;
        }
        Ok(StateStats {
            path: self.path.clone(),
            dedup_keys: self.count_keys(CF_DEDUP)? + self.count_paged_dedup_entries()?,
            fraud_keys: self.count_fraud_keys()?,
            open_windows: self.count_keys(CF_WINDOW)?,
            total_bytes: bytes.values().sum(),
            bytes,
            next_offsets: self.next_offsets()?,
            max_event_times: self.max_event_times()?,
            outbox_depth,
        })
    }

    /// Folds the fraud log, then [`StateStore::compact_families`] (tests and the
    /// `state --compact` command use it, on a store nothing else commits to: the fold
    /// is the commit thread's to wait for and to report).
    pub fn compact(&self) -> Result<(), StateError> {
        self.settle_fraud_log()?;
        self.compact_families()
    }

    /// Flushes memtables and compacts the TTL column families (running the compaction
    /// filter over everything) and the fraud log's family, without folding it: what
    /// the processor's periodic TTL compaction runs beside its commits.
    pub fn compact_families(&self) -> Result<(), StateError> {
        // The log's folded pages are range-deleted: a compaction drops their keys, and
        // with them the blob files holding their bytes.
        for name in [CF_DEDUP, CF_FRAUD, CF_FRAUD_LOG] {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf).map_err(|e| self.rocks(e))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

mod dedup_pages;
mod durable;
mod forget;
mod fraud_log;
mod index_warmup;
mod landed;
mod live_dedup;
mod log_check;
mod outbox_scan;
mod rekey;
mod resident;
pub use forget::Forgotten;
pub use fraud_log::FoldTotals;
pub use landed::LandedAhead;
pub use live_dedup::{entry_digest, LiveDedup};

#[cfg(test)]
mod tests;
