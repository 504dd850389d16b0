//! The peer engines' input (`../shared/peers/gen_events.py`), as paydedup's benches read
//! it: NDJSON files in a data directory with the generator's manifest beside it, each
//! line completed with the five fields that input lacks (`merchant_category`,
//! `ip_address`, `region`, `payment_method`, `schema_version`, constant values).
//!
//! Shared by the `peers` and `e2e` benches; each uses part of it.
#![allow(dead_code)]

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use paydedup_event::{encode_json, Currency, PaymentEvent, PaymentMethod, TransactionId};

/// `,"merchant_category":…` up to the five fields the peers' lines lack, taken from
/// the event encoder itself so they are exactly what the decoder expects.
pub fn missing_fields() -> String {
    let e = PaymentEvent {
        transaction_id: TransactionId::new_unchecked("tx-0"),
        event_time: Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap(),
        amount_minor: 1,
        currency: Currency::from_code("EUR").unwrap(),
        merchant_id: "m".into(),
        merchant_category: 5411,
        card_fingerprint: "0".repeat(32).into(),
        card_country: "DE".into(),
        customer_id: "c".into(),
        ip_address: "20.1.2.3".parse().unwrap(),
        ip_country: "DE".into(),
        device_id: "d".into(),
        region: "eu-west".into(),
        payment_method: PaymentMethod::Card,
        schema_version: 1,
    };
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&encode_json(&e)).unwrap();
    let mut out = String::new();
    for k in [
        "merchant_category",
        "ip_address",
        "region",
        "payment_method",
        "schema_version",
    ] {
        out.push_str(&format!(",{}:{}", serde_json::Value::from(k), v[k]));
    }
    out
}

/// Appends `line` to `out` with the missing fields (`extra`) added, and returns where
/// in `out` its transaction id is; `None`, with `out` as it was, for a line not of the
/// peers' format.
pub fn patch(line: &[u8], extra: &[u8], out: &mut Vec<u8>) -> Option<Range<usize>> {
    let body = line.trim_ascii_end().strip_suffix(b"}")?;
    let id_len = memchr::memchr(b'"', body.strip_prefix(ID_PREFIX)?)?;
    let id = out.len() + ID_PREFIX.len();
    out.extend_from_slice(body);
    out.extend_from_slice(extra);
    out.push(b'}');
    Some(id..id + id_len)
}

/// What the generator wrote, to check a run's counts against.
#[derive(serde::Deserialize)]
pub struct Manifest {
    pub events: u64,
    pub distinct_ids: u64,
    pub duplicates: u64,
    pub conflicting_duplicates: u64,
}

impl Manifest {
    /// `DATA_DIR.manifest.json`, next to the data directory.
    pub fn read(data: &Path) -> Manifest {
        serde_json::from_slice(
            &std::fs::read(data.with_extension("manifest.json"))
                .or_else(|_| std::fs::read(format!("{}.manifest.json", data.display())))
                .expect("the generator's manifest next to the data directory"),
        )
        .expect("the generator's manifest")
    }
}

/// Every completed line of the data directory's files, in file order, with its id:
/// `(transaction_id, payload)` (the lines of [`LineBatches`], a string each).
pub fn lines(data: &Path) -> impl Iterator<Item = (String, String)> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("a line of UTF-8");
    LineBatches::new(data, 1_000, 1 << 20).flat_map(move |batch| {
        (0..batch.len())
            .map(|i| (text(batch.id(i)), text(batch.payload(i))))
            .collect::<Vec<_>>()
    })
}

/// A batch of completed lines in one buffer, as a Kafka fetch hands its records over:
/// each line's transaction id and payload are ranges of `bytes`.
#[derive(Default)]
pub struct LineBatch {
    bytes: Vec<u8>,
    /// `(id, payload)` of each line, in file order.
    lines: Vec<(Range<usize>, Range<usize>)>,
}

impl LineBatch {
    /// Completes `line` (see [`patch`]) at the end of the batch.
    fn push(&mut self, line: &[u8], extra: &[u8]) {
        let start = self.bytes.len();
        let id = patch(line, extra, &mut self.bytes).expect("a line of the peers' format");
        self.lines.push((id, start..self.bytes.len()));
    }

    pub fn id(&self, i: usize) -> &[u8] {
        &self.bytes[self.lines[i].0.clone()]
    }

    pub fn payload(&self, i: usize) -> &[u8] {
        &self.bytes[self.lines[i].1.clone()]
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// How a line of the peers' format begins; the id is the string it opens.
const ID_PREFIX: &[u8] = br#"{"transaction_id":""#;

/// The data directory's completed lines, `batch` at a time, in file order, read in
/// large blocks and patched into one buffer per batch, with no allocation per line
/// (which, at three strings a line, cost the `peers` bench's input thread more than
/// the reading). A batch handed back through `reuse` is filled
/// again, so a run's buffers are allocated once.
pub struct LineBatches {
    files: std::vec::IntoIter<PathBuf>,
    file: Option<std::fs::File>,
    /// Read but not yet cut into lines: `block[at..filled]`.
    block: Vec<u8>,
    at: usize,
    filled: usize,
    extra: Vec<u8>,
    batch: usize,
    reuse: Option<std::sync::mpsc::Receiver<LineBatch>>,
}

impl LineBatches {
    /// Reads `data` in blocks of `block` bytes (a line longer than that grows it).
    pub fn new(data: &Path, batch: usize, block: usize) -> LineBatches {
        assert!(batch > 0, "a batch holds at least one line");
        LineBatches {
            files: data_files(data).into_iter(),
            file: None,
            block: vec![0; block.max(1)],
            at: 0,
            filled: 0,
            extra: missing_fields().into_bytes(),
            batch,
            reuse: None,
        }
    }

    /// Batches sent to the returned sender are emptied and filled again.
    pub fn reusing(mut self) -> (LineBatches, std::sync::mpsc::Sender<LineBatch>) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.reuse = Some(rx);
        (self, tx)
    }

    /// The next line, without its newline; `None` after the last file's last line.
    fn next_line(&mut self) -> Option<Range<usize>> {
        loop {
            if let Some(n) = memchr::memchr(b'\n', &self.block[self.at..self.filled]) {
                let line = self.at..self.at + n;
                self.at += n + 1;
                return Some(line);
            }
            // No whole line left: keep the part read, read on after it.
            self.block.copy_within(self.at..self.filled, 0);
            self.filled -= self.at;
            self.at = 0;
            if self.filled == self.block.len() {
                self.block.resize(self.block.len() * 2, 0);
            }
            let read = match self.file.as_mut() {
                Some(f) => loop {
                    match f.read(&mut self.block[self.filled..]) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        read => break read.expect("reading the data directory"),
                    }
                },
                None => 0,
            };
            self.filled += read;
            if read > 0 {
                continue;
            }
            // The end of a file (or none open yet): its last line may lack a newline.
            self.file = None;
            if self.filled > 0 {
                let line = 0..self.filled;
                self.at = self.filled;
                return Some(line);
            }
            let next = self.files.next()?;
            self.file = Some(std::fs::File::open(&next).expect("a data file"));
        }
    }
}

impl Iterator for LineBatches {
    type Item = LineBatch;

    fn next(&mut self) -> Option<LineBatch> {
        let mut out = self
            .reuse
            .as_ref()
            .and_then(|r| r.try_recv().ok())
            .unwrap_or_default();
        out.bytes.clear();
        out.lines.clear();
        while out.len() < self.batch {
            let Some(line) = self.next_line() else { break };
            out.push(&self.block[line], &self.extra);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The data directory's `.json` files, in name order.
fn data_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .expect("the data directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The data directory: the first argument that is not a flag or the value of one of
/// `valued` flags. None under `cargo test` (no `--bench` among the arguments).
pub fn data_dir(args: &[String], valued: &[&str]) -> Option<PathBuf> {
    if !args.iter().any(|a| a == "--bench") {
        return None;
    }
    args.iter()
        .enumerate()
        .find(|&(i, a)| {
            let is_value = i > 0 && valued.contains(&args[i - 1].as_str());
            !a.starts_with("--") && !is_value
        })
        .map(|(_, a)| PathBuf::from(a))
}

/// The value after `name` in `args`.
pub fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
}

/// This process's peak resident set, MiB.
pub fn peak_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

/// This process's resident set now, MiB.
pub fn rss_now_mib() -> u64 {
    status_mib("VmRSS:")
}

/// This process's anonymous memory in transparent huge pages now, MiB (mimalloc asks
/// for them on its arenas; the kernel gives them when it has 2 MiB free in one piece).
pub fn anon_huge_mib() -> u64 {
    proc_field("/proc/self/smaps_rollup", "AnonHugePages:") / 1024
}

/// A `/proc/self/status` field given in kB, in MiB (0 if unreadable).
fn status_mib(field: &str) -> u64 {
    proc_field("/proc/self/status", field) / 1024
}

/// The number after `field` in a `/proc` file of "name value [unit]" lines (0 if the
/// file is unreadable or has no such line). `field` ends with its separator (a colon,
/// or the space of `/proc/vmstat`), so that it cannot match a longer name.
fn proc_field(path: &str, field: &str) -> u64 {
    field_in(&std::fs::read_to_string(path).unwrap_or_default(), field)
}

/// [`proc_field`] of a `/proc` file's text already read.
fn field_in(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// What the kernel did to find memory for allocations, from `/proc/vmstat`
/// (machine-wide, any process): direct compactions (`compact_stall`: allocations of
/// more than a page, here mostly huge pages, that waited while the kernel moved pages)
/// and pages taken by direct reclaim (`pgsteal_direct`: by whichever thread was
/// allocating). Both appear once files fill memory (a build, another engine's run, a
/// big file written), and the first run after that pays them: docs/benchmarks.md,
/// thirty-second step.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMemoryWork {
    pub compaction_stalls: u64,
    pub pages_reclaimed_directly: u64,
}

impl KernelMemoryWork {
    pub fn now() -> KernelMemoryWork {
        let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
        KernelMemoryWork {
            compaction_stalls: field_in(&vmstat, "compact_stall "),
            pages_reclaimed_directly: field_in(&vmstat, "pgsteal_direct "),
        }
    }

    /// The work done since `before`.
    pub fn since(self, before: KernelMemoryWork) -> KernelMemoryWork {
        KernelMemoryWork {
            compaction_stalls: self
                .compaction_stalls
                .saturating_sub(before.compaction_stalls),
            pages_reclaimed_directly: self
                .pages_reclaimed_directly
                .saturating_sub(before.pages_reclaimed_directly),
        }
    }
}

/// One line of the peers' format, as the generator writes it.
const SAMPLE_LINE: &str = r#"{"transaction_id":"tx-00ab","event_time":"2024-03-01T00:00:01.234Z","amount_minor":5,"currency":"EUR","merchant_id":"m-1","card_fingerprint":"00000000000000000000000000000000","customer_id":"c-1","ip_country":"DE","card_country":"DE","device_id":"d-1"}"#;

/// Checks the line patching on one line of the peers' format (what the benches do
/// under `cargo test`); returns the completed line.
pub fn check_patching() -> String {
    let line = SAMPLE_LINE;
    let mut buf = b"before".to_vec();
    let id = patch(line.as_bytes(), missing_fields().as_bytes(), &mut buf).unwrap();
    assert_eq!(&buf[id], b"tx-00ab");
    let completed = buf.split_off(b"before".len());
    let decoded = paydedup_event::decode(
        &completed,
        Utc::now(),
        &paydedup_event::DecodeLimits::default(),
    );
    assert!(decoded.is_ok(), "{decoded:?}");
    // Not the peers' format: nothing appended.
    assert_eq!(patch(b"{\"id\":\"x\"}", b"", &mut buf), None);
    assert_eq!(buf, b"before");
    String::from_utf8(completed).unwrap()
}

/// Checks that [`LineBatches`] (and [`lines`] on top of it) gives each line written,
/// completed, in order, cut into batches, for an empty file, files that end with and
/// without a newline and lines that cross its blocks (and outgrow them): what the
/// `peers` bench does under `cargo test`.
pub fn check_line_batches() {
    let line = check_patching();
    let raw = |id: usize| SAMPLE_LINE.replace("tx-00ab", &format!("tx-{id}"));
    assert!(line.len() > 200);
    let dir = tempfile::tempdir().unwrap();
    let mut id = 0;
    std::fs::write(dir.path().join("0-empty.json"), "").unwrap();
    for (name, n, trailing_newline) in [
        ("a.json", 7, true),
        ("b.json", 1, false),
        ("c.json", 5, false),
    ] {
        let mut text = String::new();
        for i in 0..n {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&raw(id));
            id += 1;
        }
        if trailing_newline {
            text.push('\n');
        }
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::write(dir.path().join("manifest.txt"), "not a data file").unwrap();
    // Each line written, completed on its own.
    let extra = missing_fields();
    let want: Vec<(String, String)> = (0..id)
        .map(|id| {
            let mut out = Vec::new();
            let at = patch(raw(id).as_bytes(), extra.as_bytes(), &mut out).unwrap();
            let id = String::from_utf8(out[at].to_vec()).unwrap();
            (id, String::from_utf8(out).unwrap())
        })
        .collect();
    assert_eq!(want.len(), 13);
    assert_eq!(lines(dir.path()).collect::<Vec<_>>(), want);
    for block in [64, 300, 1 << 20] {
        let (batches, reuse) = LineBatches::new(dir.path(), 4, block).reusing();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        for batch in batches {
            sizes.push(batch.len());
            for i in 0..batch.len() {
                got.push((
                    String::from_utf8(batch.id(i).to_vec()).unwrap(),
                    String::from_utf8(batch.payload(i).to_vec()).unwrap(),
                ));
            }
            reuse.send(batch).unwrap();
        }
        assert_eq!(got, want, "block of {block} bytes");
        assert_eq!(sizes, [4, 4, 4, 1], "block of {block} bytes");
    }
}

/// This process's time on a CPU so far, every thread's (those that have exited too),
/// user and system: `utime` + `stime` of `/proc/self/stat`, in the kernel's `USER_HZ`
/// ticks (100 a second on Linux, whatever the kernel's own tick). Zero if unreadable.
///
/// Why a bench wants it: on two cores that are both busy, the events/s of a run move
/// with the machine's hour by more than most changes do, while the CPU an event costs
/// is what a change changes.
pub fn process_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// [`process_cpu`] of another process (a processor a bench started).
pub fn process_cpu_of(pid: u32) -> Duration {
    cpu_of(&format!("/proc/{pid}/stat"))
}

fn cpu_of(stat: &str) -> Duration {
    let (user, system) = user_and_system(&std::fs::read_to_string(stat).unwrap_or_default());
    user + system
}

/// `utime` and `stime` of a `stat` file's text (a process's or a thread's); zero where
/// unreadable.
fn user_and_system(text: &str) -> (Duration, Duration) {
    // The command name (field 2) may hold spaces: count fields after its `)`.
    let after_name = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow the name: utime and stime are fields 14 and 15.
    let ticks = |f: Option<&str>| f.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let utime = ticks(fields.nth(11));
    let stime = ticks(fields.next());
    (
        Duration::from_millis(utime * 10),
        Duration::from_millis(stime * 10),
    )
}

/// The user and system time of this process's live thread named `name` (the first
/// found): `utime` and `stime` of `/proc/self/task/*/stat`, in `USER_HZ` ticks (see
/// [`process_cpu`]); `None` if no such thread runs. Apart, because a thread that writes
/// files spends its system time copying into the page cache, which on this virtual
/// machine costs what the host's handing back of memory costs, not what the thread does.
#[allow(dead_code)] // not every bench reads it
pub fn named_thread_cpu(name: &str) -> Option<(Duration, Duration)> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let text = std::fs::read_to_string(task.path().join("stat")).ok()?;
            return Some(user_and_system(&text));
        }
    }
    None
}

/// The calling thread's time on a CPU and waiting in the run queue for one, from the
/// kernel's scheduler statistics (`/proc/thread-self/schedstat`, nanoseconds). A
/// thread's wall time minus both is the time it was blocked (I/O, fsync, locks).
#[allow(dead_code)] // not every bench reads it
pub fn thread_sched() -> (Duration, Duration) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    let on_cpu = fields.next().unwrap_or(0);
    let waiting = fields.next().unwrap_or(0);
    (Duration::from_nanos(on_cpu), Duration::from_nanos(waiting))
}
