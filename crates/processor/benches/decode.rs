//! Decoding alone, on the peers' records: the flat-record scanner against serde.
//!
//! ```text
//! cargo bench -p paydedup-processor --bench decode -- DATA_DIR [RECORDS]
//! ```
//!
//! Reads the first RECORDS lines (default 200,000) of the peers' input, completes them
//! as the `peers` bench does, and decodes them all several times in alternation two
//! ways: as they are (the producers' flat shape: the scanner reads them), and with a
//! newline after the closing brace (still valid JSON, but not the flat shape: the
//! scanner refuses it after its one pass and serde reads it, as before the scanner).
//! Prints ns per record for each round and the best round of each.

mod peers_input;

use std::time::Instant;

use chrono::{TimeZone, Utc};
use paydedup_event::{decode, DecodeLimits};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = peers_input::data_dir(&args, &[]) else {
        // Under `cargo test`: a peers' line decodes, and both ways to the same event.
        let line = peers_input::check_patching();
        let reference = Utc::now();
        let limits = DecodeLimits::default();
        let spaced = format!("{line}\n");
        assert_eq!(
            decode(line.as_bytes(), reference, &limits),
            decode(spaced.as_bytes(), reference, &limits)
        );
        return;
    };
    let n: usize = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .nth(1)
        .map_or(200_000, |s| s.parse().expect("RECORDS"));
    let flat: Vec<Vec<u8>> = peers_input::lines(&dir)
        .take(n)
        .map(|(_, line)| line.into_bytes())
        .collect();
    let spaced: Vec<Vec<u8>> = flat
        .iter()
        .map(|r| [r.as_slice(), b"\n"].concat())
        .collect();
    // Far in the future: no record is refused for its time.
    let reference = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
    let limits = DecodeLimits::default();
    let round = |records: &[Vec<u8>]| {
        let start = Instant::now();
        let valid = records
            .iter()
            .filter(|r| decode(r, reference, &limits).is_ok())
            .count();
        assert_eq!(valid, records.len(), "every record decodes");
        start.elapsed().as_nanos() as f64 / records.len() as f64
    };
    let (mut best_flat, mut best_serde) = (f64::MAX, f64::MAX);
    println!("{} records; ns per record (decode + validate)", flat.len());
    println!("| round | flat scanner | serde |");
    println!("|---:|---:|---:|");
    for i in 1..=5 {
        let a = round(&flat);
        let b = round(&spaced);
        best_flat = best_flat.min(a);
        best_serde = best_serde.min(b);
        println!("| {i} | {a:.0} | {b:.0} |");
    }
    println!(
        "| best | {best_flat:.0} | {best_serde:.0} | ({:.2}x)",
        best_serde / best_flat
    );
}
