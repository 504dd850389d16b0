//! The independent verifier: the simulator's manifests (the ground truth of what was
//! produced, from its own model of the dedup rules) against the five tables, read with
//! the verifier's own SQL and HTTP client — not the project's reconciliation views.
//!
//! It proves, per partition, that every input offset landed in exactly one of the four
//! record tables once (none lost, none doubled, none invented); that the tables'
//! counts by kind and error code, and the sums per currency in `payments` and
//! `payment_metrics`, equal the ground truth; that no transaction id is in `payments`
//! twice; and that each (table, partition)'s sequences are dense from 0.

use std::collections::BTreeMap;

use paydedup_manifest::Manifest;

use crate::warehouse::{int, text, Warehouse};

const RECORD_TABLES: [&str; 4] = [
    "payments",
    "dedup_audit",
    "late_events",
    "processing_errors",
];
const ALL_TABLES: [&str; 5] = [
    "payments",
    "dedup_audit",
    "late_events",
    "processing_errors",
    "payment_metrics",
];

/// What the input was: the campaign's manifests added up.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub records_per_partition: Vec<i128>,
    pub unique: i128,
    /// Retries and replays: both are audited as `duplicate`.
    pub duplicate: i128,
    pub conflict: i128,
    pub late: i128,
    pub late_key_known: i128,
    pub malformed_by_code: BTreeMap<String, i128>,
    /// Currency → (unique payments, sum of amount_minor).
    pub by_currency: BTreeMap<String, (i128, i128)>,
    /// Storm id → how many times it is a new payment (it expired and came back).
    pub storm_unique: BTreeMap<String, i128>,
}

impl Truth {
    pub fn add(&mut self, m: &Manifest) {
        if self.records_per_partition.len() < m.partitions {
            self.records_per_partition.resize(m.partitions, 0);
        }
        for (p, counts) in m.by_partition.iter().enumerate() {
            self.records_per_partition[p] += i128::from(counts.records);
        }
        let t = &m.totals;
        self.unique += i128::from(t.unique);
        self.duplicate += i128::from(t.duplicate + t.replay);
        self.conflict += i128::from(t.conflict);
        self.late += i128::from(t.late);
        self.late_key_known += i128::from(t.late_key_known);
        for (code, n) in &m.malformed_by_code {
            *self.malformed_by_code.entry(code.clone()).or_default() += i128::from(*n);
        }
        if let Some(s) = &m.storm {
            *self
                .storm_unique
                .entry(s.transaction_id.clone())
                .or_default() += i128::from(s.unique);
        }
        for (c, v) in &m.by_currency {
            let e = self.by_currency.entry(c.clone()).or_default();
            e.0 += i128::from(v.unique_count);
            e.1 += v.unique_amount_minor;
        }
    }

    pub fn records(&self) -> i128 {
        self.records_per_partition.iter().sum()
    }
}

/// What the verifier found.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub lost: i128,
    pub doubled: i128,
    pub invented: i128,
    /// Every other disagreement, in words.
    pub mismatches: Vec<String>,
}

/// The verifier's line of a report, and every mismatch under it.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verifier: {} lost, {} doubled, {} invented, {} other mismatches",
            self.lost,
            self.doubled,
            self.invented,
            self.mismatches.len()
        )?;
        for m in &self.mismatches {
            writeln!(f, "  mismatch: {m}")?;
        }
        Ok(())
    }
}

impl Verdict {
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.invented == 0 && self.mismatches.is_empty()
    }
}

pub fn verify(wh: &Warehouse, truth: &Truth) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    offsets(wh, truth, &mut v)?;
    kinds(wh, truth, &mut v)?;
    currencies(wh, truth, &mut v)?;
    sequences(wh, &mut v)?;
    Ok(v)
}

/// Every (partition, offset) once across the four record tables.
fn offsets(wh: &Warehouse, truth: &Truth, v: &mut Verdict) -> anyhow::Result<()> {
    let union = RECORD_TABLES
        .iter()
        .map(|t| format!("SELECT source_partition, source_offset FROM `${{dataset}}.{t}`"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows = wh.query(&format!(
        "SELECT source_partition, COUNT(*) AS n, COUNT(DISTINCT source_offset) AS d \
         FROM ({union}) AS landed GROUP BY source_partition"
    ))?;
    let mut seen: BTreeMap<i128, (i128, i128)> = BTreeMap::new();
    for r in &rows {
        seen.insert(int(&r[0])?, (int(&r[1])?, int(&r[2])?));
    }
    // Offsets outside 0..records of their partition, per partition.
    let mut outside: BTreeMap<i128, (i128, i128)> = BTreeMap::new();
    for (p, records) in truth.records_per_partition.iter().enumerate() {
        let rows = wh.query(&format!(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT source_offset) AS d FROM ({union}) AS landed \
             WHERE source_partition = {p} AND (source_offset < 0 OR source_offset >= {records})"
        ))?;
        let (n, d) = match rows.first() {
            Some(r) => (int(&r[0])?, int(&r[1])?),
            None => (0, 0),
        };
        outside.insert(p as i128, (n, d));
    }
    for (p, records) in truth.records_per_partition.iter().enumerate() {
        let p = p as i128;
        let (n, d) = seen.remove(&p).unwrap_or((0, 0));
        let (out_n, out_d) = outside.get(&p).copied().unwrap_or((0, 0));
        let distinct_inside = d - out_d;
        v.lost += records - distinct_inside;
        v.doubled += (n - out_n) - distinct_inside;
        v.invented += out_n;
        if records - distinct_inside != 0 || n != d || out_n != 0 {
            v.mismatches.push(format!(
                "partition {p}: {records} records in, {n} rows over {d} distinct offsets, {out_n} outside 0..{records}"
            ));
        }
    }
    for (p, (n, _)) in seen {
        v.invented += n;
        v.mismatches.push(format!(
            "partition {p}: {n} rows, but nothing was produced to it"
        ));
    }
    Ok(())
}

fn single(wh: &Warehouse, sql: &str) -> anyhow::Result<i128> {
    let rows = wh.query(sql)?;
    rows.first().and_then(|r| r.first()).map_or(Ok(0), int)
}

/// Counts by kind and by error code; no id twice in `payments`.
fn kinds(wh: &Warehouse, truth: &Truth, v: &mut Verdict) -> anyhow::Result<()> {
    let mut check = |what: &str, got: i128, want: i128| {
        if got != want {
            v.mismatches
                .push(format!("{what}: {got} in the tables, {want} produced"));
        }
    };
    check(
        "payments",
        single(wh, "SELECT COUNT(*) FROM `${dataset}.payments`")?,
        truth.unique,
    );
    // Every id once, but a storm's id: once per time it expired and came back.
    let repeats: i128 = truth.storm_unique.values().map(|u| (u - 1).max(0)).sum();
    check(
        "distinct transaction ids in payments",
        single(
            wh,
            "SELECT COUNT(DISTINCT transaction_id) FROM `${dataset}.payments`",
        )?,
        truth.unique - repeats,
    );
    for (id, unique) in &truth.storm_unique {
        check(
            "the duplicate storm's id in payments",
            single(
                wh,
                &format!(
                    "SELECT COUNT(*) FROM `${{dataset}}.payments` WHERE transaction_id = '{id}'"
                ),
            )?,
            *unique,
        );
    }
    check(
        "duplicates",
        single(
            wh,
            "SELECT COUNT(*) FROM `${dataset}.dedup_audit` WHERE kind = 'duplicate'",
        )?,
        truth.duplicate,
    );
    check(
        "conflicts",
        single(
            wh,
            "SELECT COUNT(*) FROM `${dataset}.dedup_audit` WHERE kind = 'conflict'",
        )?,
        truth.conflict,
    );
    check(
        "late events",
        single(wh, "SELECT COUNT(*) FROM `${dataset}.late_events`")?,
        truth.late,
    );
    check(
        "late events with a known key",
        single(
            wh,
            "SELECT COUNT(*) FROM `${dataset}.late_events` WHERE key_known",
        )?,
        truth.late_key_known,
    );
    let mut by_code: BTreeMap<String, i128> = BTreeMap::new();
    for r in wh.query(
        "SELECT error_code, COUNT(*) FROM `${dataset}.processing_errors` GROUP BY error_code",
    )? {
        by_code.insert(text(&r[0]), int(&r[1])?);
    }
    if by_code != truth.malformed_by_code {
        v.mismatches.push(format!(
            "processing_errors by code: {by_code:?} in the table, {:?} produced",
            truth.malformed_by_code
        ));
    }
    Ok(())
}

/// Sums per currency: payments and payment_metrics each equal the ground truth.
fn currencies(wh: &Warehouse, truth: &Truth, v: &mut Verdict) -> anyhow::Result<()> {
    for (table, count, sum) in [
        ("payments", "COUNT(*)", "SUM(amount_minor)"),
        (
            "payment_metrics",
            "SUM(payment_count)",
            "SUM(amount_minor_sum)",
        ),
    ] {
        let mut got: BTreeMap<String, (i128, i128)> = BTreeMap::new();
        for r in wh.query(&format!(
            "SELECT currency, {count}, {sum} FROM `${{dataset}}.{table}` GROUP BY currency"
        ))? {
            let (n, s) = (int(&r[1])?, int(&r[2])?);
            if n != 0 {
                got.insert(text(&r[0]), (n, s));
            }
        }
        if got != truth.by_currency {
            v.mismatches.push(format!(
                "{table} per currency (count, sum): {got:?}, produced {:?}",
                truth.by_currency
            ));
        }
    }
    Ok(())
}

/// Each (table, partition)'s outbox sequences are exactly 0..n.
fn sequences(wh: &Warehouse, v: &mut Verdict) -> anyhow::Result<()> {
    for table in ALL_TABLES {
        for r in wh.query(&format!(
            "SELECT source_partition, COUNT(*), COUNT(DISTINCT outbox_seq), MIN(outbox_seq), MAX(outbox_seq) \
             FROM `${{dataset}}.{table}` GROUP BY source_partition"
        ))? {
            let (p, n, d, lo, hi) = (int(&r[0])?, int(&r[1])?, int(&r[2])?, int(&r[3])?, int(&r[4])?);
            if n != d || lo != 0 || hi != n - 1 {
                v.mismatches.push(format!(
                    "{table} partition {p}: {n} rows, {d} distinct sequences from {lo} to {hi}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_add_up() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "topic": "t", "seed": 1, "partitions": 2,
            "start_time": "2026-01-01T00:00:00Z",
            "allowed_lateness_secs": 300, "retention_secs": 3600,
            "totals": {"records": 5, "unique": 3, "duplicate": 1, "replay": 0, "conflict": 0,
                       "late": 0, "late_key_known": 0, "malformed": 1},
            "by_partition": [
                {"records": 2, "unique": 2, "duplicate": 0, "replay": 0, "conflict": 0, "late": 0, "late_key_known": 0, "malformed": 0},
                {"records": 3, "unique": 1, "duplicate": 1, "replay": 0, "conflict": 0, "late": 0, "late_key_known": 0, "malformed": 1}
            ],
            "malformed_by_code": {"malformed_json": 1},
            "by_currency": {"USD": {"unique_count": 3, "unique_amount_minor": 300}},
            "first_offset": [0, 0],
            "elapsed_secs": 1.0
        }))
        .unwrap();
        let mut t = Truth::default();
        t.add(&m);
        t.add(&m);
        assert_eq!(t.records_per_partition, vec![4, 6]);
        assert_eq!(t.records(), 10);
        assert_eq!(t.unique, 6);
        assert_eq!(t.by_currency["USD"], (6, 600));
        assert_eq!(t.malformed_by_code["malformed_json"], 2);
    }
}
