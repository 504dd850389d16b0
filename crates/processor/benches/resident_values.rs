//! Fraud lookups answered from memory (`paydedup_state::resident_values`), one key at a
//! time against the batched lookup, on as many keys as the peers' 10 M payments leave
//! (5.9 M cards and customers, ~450 MB): random keys, batches of 10,000, alternating
//! rounds so that drift hits both alike.
//!
//! It also times the fill itself (every key put once, from one buffer holding them all,
//! as a restart would fill memory from pages of values): what a design that must
//! load every fraud value before the first batch would pay. And it times puts of
//! values grown by a few bytes, in random order, which is what makes the arenas be
//! rewritten (`compact_if_due`) on the commit thread.
//!
//! cargo bench -p paydedup-processor --bench resident_values -- --bench [KEYS]
//! Under `cargo test` (no `--bench`) it checks both answer alike on a few keys.

mod memory_bench;

use std::time::{Duration, Instant};

use paydedup_state::resident_values::{Lookup, ResidentValues};

/// The processor binary's allocator (`src/main.rs`), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 10_000;

/// A card-like key and a value of the fraud state's typical size.
fn key(i: u64) -> Vec<u8> {
    let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    let mut k = vec![b'c'];
    k.extend_from_slice(&h.to_be_bytes());
    k
}

fn value(i: u64) -> Vec<u8> {
    let mut v = (i as i64).to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n(i as u8, 40 + (i % 24) as usize));
    v
}

fn main() {
    let (measuring, keys) = memory_bench::args(5_900_000, 20_000);
    // Every key and value laid out first, so the fill's time is the puts' alone.
    let mut flat: Vec<u8> = Vec::new();
    let mut at: Vec<(usize, usize, usize)> = Vec::with_capacity(keys as usize);
    for i in 0..keys {
        let start = flat.len();
        flat.extend_from_slice(&key(i));
        let key_end = flat.len();
        flat.extend_from_slice(&value(i));
        at.push((start, key_end, flat.len()));
    }
    let filling = Instant::now();
    let mut r = ResidentValues::default();
    for &(start, key_end, end) in &at {
        r.put(&flat[start..key_end], &flat[key_end..end]);
    }
    let fill = filling.elapsed();
    let filled_bytes = r.memory_bytes();
    // The same keys filled by two threads, each into a set of its own with every other
    // key: whether a fill splits over both cores (fresh memory's page faults share one
    // address space), before a design counts on it.
    let halves = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let half = |first: usize| {
            let (flat, at) = (&flat, &at);
            move || {
                let mut r = ResidentValues::default();
                for &(start, key_end, end) in at.iter().skip(first).step_by(2) {
                    r.put(&flat[start..key_end], &flat[key_end..end]);
                }
                r
            }
        };
        let other = s.spawn(half(1));
        let mine = half(0)();
        (mine, other.join().unwrap())
    });
    let fill_two = halves.elapsed();
    assert_eq!(a.len() + b.len(), r.len());
    drop((a, b, flat, at));
    // Nine in ten looked up are held, as on the peers' input.
    let mut next = memory_bench::xorshift();
    let mut batch = || -> Vec<Vec<u8>> {
        (0..BATCH)
            .map(|_| {
                let n = next();
                key(if n.is_multiple_of(10) {
                    keys + n % keys
                } else {
                    n % keys
                })
            })
            .collect()
    };
    if !measuring {
        let b = batch();
        let one: Vec<Lookup<'_>> = b.iter().map(|k| r.get(k)).collect();
        assert_eq!(r.get_many(&b), one);
        return;
    }
    let (mut single, mut batched) = (Duration::ZERO, Duration::ZERO);
    let mut held = 0usize;
    let rounds = 200;
    for round in 0..rounds {
        let b = batch();
        let time = |f: &mut dyn FnMut() -> usize| {
            let t = Instant::now();
            let n = f();
            (t.elapsed(), n)
        };
        let mut one_by_one = || {
            b.iter()
                .filter(|k| matches!(r.get(k), Lookup::Held(_)))
                .count()
        };
        let mut all_at_once = || {
            r.get_many(&b)
                .iter()
                .filter(|l| matches!(l, Lookup::Held(_)))
                .count()
        };
        let ((a, n1), (c, n2)) = if round % 2 == 0 {
            let x = time(&mut one_by_one);
            (x, time(&mut all_at_once))
        } else {
            let y = time(&mut all_at_once);
            (time(&mut one_by_one), y)
        };
        assert_eq!(n1, n2);
        held += n1;
        single += a;
        batched += c;
    }
    // Values put again a few bytes longer (a card's grows with most payments: a new
    // currency, a recent time), in random order, as the commits put them: each leaves
    // its old entry behind as garbage, and a shard whose garbage passes an eighth of
    // its arena is rewritten, so the puts' time includes those rewrites.
    let mut grown = vec![0u8; keys as usize];
    let mut rewriting = Duration::ZERO;
    let rewrites = (keys as usize / BATCH).max(1) * BATCH;
    for _ in 0..rewrites / BATCH {
        let puts: Vec<(Vec<u8>, Vec<u8>)> = (0..BATCH)
            .map(|_| {
                let i = next() % keys;
                let g = &mut grown[i as usize];
                // Six growths, then back to the first length (a shrink moves it too).
                *g = (*g + 1) % 7;
                let mut v = value(i);
                v.extend(std::iter::repeat_n(b'g', 5 * usize::from(*g)));
                (key(i), v)
            })
            .collect();
        let t = Instant::now();
        for (k, v) in &puts {
            r.put(k, v);
        }
        rewriting += t.elapsed();
    }
    let per = |d: Duration| d.as_nanos() as f64 / (rounds * BATCH) as f64;
    println!("| keys held | lookups | one at a time | batched (get_many) | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| {keys} | {} ({held} held) | {:.0} ns | {:.0} ns | {:.2} × |",
        rounds * BATCH,
        per(single),
        per(batched),
        per(single) / per(batched)
    );
    println!(
        "filled with {keys} keys ({} MB of memory) in {:.2} s on one thread: {:.0} ns a key; \
         {:.2} s on two threads, each filling a set of its own with half the keys",
        filled_bytes / 1_000_000,
        fill.as_secs_f64(),
        fill.as_nanos() as f64 / keys as f64,
        fill_two.as_secs_f64()
    );
    println!(
        "{rewrites} values put again a few bytes longer, random keys: {:.0} ns a put \
         (the arena rewrites they cause included); {} MB of memory after them",
        rewriting.as_nanos() as f64 / rewrites as f64,
        r.memory_bytes() / 1_000_000
    );
}
