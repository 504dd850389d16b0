//! `paydedup-processor state`: what a state directory holds.

use anyhow::Context;
use paydedup_state::{StateStore, StoreOptions};

use crate::config::StateArgs;
use crate::pipeline::rows::ts;

pub fn run(args: &StateArgs) -> anyhow::Result<String> {
    if !args.state_dir.join("CURRENT").is_file() {
        anyhow::bail!(
            "{} is not a paydedup state directory",
            args.state_dir.display()
        );
    }
    let store = if args.compact {
        // `None`: expire with the retention the processor stored in the directory.
        let opts = StoreOptions {
            dedup_retention_micros: None,
            ..StoreOptions::default()
        };
        let s = StateStore::open(&args.state_dir, &opts)
            .with_context(|| format!("opening {} for compaction", args.state_dir.display()))?;
        s.compact()?;
        s
    } else {
        StateStore::open_read_only(&args.state_dir)
            .with_context(|| format!("opening {}", args.state_dir.display()))?
    };
    if args.live_dedup {
        let live = store.live_dedup()?;
        if args.json {
            return Ok(serde_json::to_string_pretty(&live)?);
        }
        let mut out = String::from("partition  watermark                     live  digest\n");
        for (p, l) in &live {
            let wm = l.watermark.map(ts).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{p:<10} {wm:<28} {:>6}  {:016x}\n",
                l.live, l.digest
            ));
        }
        return Ok(out);
    }
    let stats = store.stats()?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&stats)?);
    }
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(out, "state directory   {}", stats.path.display());
    let _ = writeln!(out, "dedup keys        {}", stats.dedup_keys);
    let _ = writeln!(out, "fraud keys        {}", stats.fraud_keys);
    let _ = writeln!(out, "open windows      {}", stats.open_windows);
    let _ = writeln!(out, "bytes (sst+mem)   {}", stats.total_bytes);
    for (cf, b) in &stats.bytes {
        let _ = writeln!(out, "  {cf:<15} {b}");
    }
    let _ = writeln!(out, "partitions (next offset, max event time):");
    for (p, o) in &stats.next_offsets {
        let max = stats
            .max_event_times
            .get(p)
            .map(|m| ts(*m))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "  {p:<4} {o:<12} {max}");
    }
    let _ = writeln!(out, "outbox depth:");
    if stats.outbox_depth.is_empty() {
        let _ = writeln!(out, "  (empty)");
    }
    for (t, n) in &stats.outbox_depth {
        let _ = writeln!(out, "  {t:<18} {n}");
    }
    Ok(out)
}
