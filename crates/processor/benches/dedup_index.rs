//! Dedup lookups answered from memory (`paydedup_state::dedup_index`) on as many ids
//! as a busy retention holds (9 M by default): random ids, batches of 5,000 sorted as
//! the pipeline sorts them, nine in ten new; and the time to fill the index.
//!
//! It is how the index's table was chosen: nine in ten lookups are of new ids, and a
//! `hashbrown` table answers those from its control bytes alone (one byte a bucket,
//! a sixteenth of the table). A flat table of 16-byte slots
//! (`crates/state/src/probe_table.rs`, which the fraud values use: their lookups are
//! nine in ten hits) reads a whole slot for each, and more until an empty one: 82 ns
//! a lookup against 45–57 (docs/benchmarks.md, twenty-ninth step).
//!
//! cargo bench -p paydedup-processor --bench dedup_index -- --bench [IDS]
//! Under `cargo test` (no `--bench`) it checks that the ids put are found.

mod memory_bench;

use std::time::{Duration, Instant};

use paydedup_state::dedup_index::{locator, DedupIndex};

/// The processor binary's allocator (`src/main.rs`), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 5_000;

/// A dedup key: 16 bytes of a hash, as `keys::dedup_key` makes them.
fn key(i: u64) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()).to_be_bytes()
}

fn main() {
    let (measuring, ids) = memory_bench::args(9_000_000, 20_000);
    let filling = Instant::now();
    let mut index = DedupIndex::default();
    index.reserve(ids as usize);
    for i in 0..ids {
        index.put(&key(i), locator(i / 5_000, (i % 5_000) as usize), |_| true);
    }
    let fill = filling.elapsed();
    let mut next = memory_bench::xorshift();
    // Nine in ten new, the tenth a repeat; sorted, as a batch's keys are.
    let mut batch = || -> Vec<[u8; 16]> {
        let mut b: Vec<[u8; 16]> = (0..BATCH)
            .map(|_| {
                let n = next();
                key(if n.is_multiple_of(10) {
                    n % ids
                } else {
                    ids + n % ids
                })
            })
            .collect();
        b.sort_unstable();
        b
    };
    let found = |b: &[[u8; 16]]| {
        b.iter()
            .filter(|k| index.candidates(k).next().is_some())
            .count()
    };
    if !measuring {
        let held: Vec<[u8; 16]> = (0..100).map(key).collect();
        assert_eq!(found(&held), held.len());
        assert_eq!(found(&[key(ids), key(ids + 1)]), 0);
        return;
    }
    let mut looking = Duration::ZERO;
    let mut hits = 0usize;
    let rounds = 400;
    for _ in 0..rounds {
        let b = batch();
        let t = Instant::now();
        hits += found(&b);
        looking += t.elapsed();
    }
    let per = looking.as_nanos() as f64 / (rounds * BATCH) as f64;
    println!("| ids held | lookups | a lookup |");
    println!("|---|---|---|");
    println!(
        "| {ids} | {} ({hits} found) | {per:.0} ns |",
        rounds * BATCH
    );
    println!(
        "filled with {ids} ids ({} MB of memory) in {:.2} s: {:.0} ns an id",
        index.memory_bytes() / 1_000_000,
        fill.as_secs_f64(),
        fill.as_nanos() as f64 / ids as f64,
    );
}
