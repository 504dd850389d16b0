//! The warehouse path: the same contract, judged by SQL.
//!
//! Everything (a finished run): each [`CheckKind`] with a view becomes "no row of the
//! view fails"; the exactly-once counts are printed as well; the manifest is compared
//! with an [`Observed`] filled by queries, through the same [`ground_truth::check`] as
//! the file path.
//!
//! Scheduled mode ([`super::settled`]): the views read whole tables, which a live
//! pipeline never finishes and which a table with `require_partition_filter` refuses.
//! So the same rules are queried over the settled ranges, and every query names, for
//! each partitioned table it reads, a range of its partitioning column
//! ([`PARTITIONING`], as `sql/001_tables.sql` declares it). The aggregates come back to
//! the same judges as the file path's.
//!
//! Needs a warehouse (or the emulator): covered by `tests/bigquery.rs` and
//! `tests/reconcile_scheduled.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use paydedup_manifest::Manifest;
use paydedup_sink::bigquery::{QueryResult, Warehouse};

use super::check::{Check, CheckKind};
use super::exactly_once::judge as exactly_once_judge;
use super::ground_truth::{self, Observed};
use super::sequence_density::{SeqStats, Start};
use super::settled::{rfc3339, Bound, Evidence, Scope, Timing};
use super::source_accounting::OffsetStats;
use super::{amounts, Coverage, Mode, ReconcileError, Report};

/// All checks over a BigQuery dataset.
pub fn reconcile(
    wh: &Warehouse,
    manifest: Option<&Manifest>,
    mode: Mode,
    timing: Timing,
) -> Result<Report, ReconcileError> {
    match mode {
        Mode::Everything => everything(wh, manifest, timing),
        Mode::Settled(bound) => settled(wh, &bound),
    }
}

/// The views, then the manifest.
fn everything(
    wh: &Warehouse,
    manifest: Option<&Manifest>,
    timing: Timing,
) -> Result<Report, ReconcileError> {
    same_window(wh, timing.window, "")?;
    let mut checks = views(wh)?;
    checks.push(exactly_once_counts(wh)?);
    if let Some(m) = manifest {
        checks.extend(ground_truth::check(&observed(wh)?, m));
    }
    Ok(Report {
        scope: None,
        checks,
        coverage: None,
    })
}

/// A cell the check needs; its absence means the answer cannot be judged.
fn cell(
    r: &QueryResult,
    row: usize,
    query: &'static str,
    column: &'static str,
) -> Result<i64, ReconcileError> {
    r.get_i64(row, column)
        .ok_or(ReconcileError::Answer { query, column })
}

/// The smallest and largest window size of the `payment_metrics` rows `filter` keeps.
pub fn window_sizes_sql(filter: &str) -> String {
    format!(
        "SELECT MIN(size) AS min_size, MAX(size) AS max_size FROM (SELECT UNIX_MICROS(window_end) - UNIX_MICROS(window_start) AS size FROM `${{dataset}}.payment_metrics`{filter})"
    )
}

/// Refuses to judge windows closed with another size than the configured one.
fn same_window(wh: &Warehouse, window: i64, filter: &str) -> Result<(), ReconcileError> {
    let r = wh.query(&window_sizes_sql(filter))?;
    // No metrics rows: MIN and MAX are NULL, nothing to compare.
    let sizes = [r.get_i64(0, "min_size"), r.get_i64(0, "max_size")];
    amounts::same_window(window, sizes.into_iter().flatten())?;
    Ok(())
}

/// Per view with a `pass` column: how many of its rows fail (expected none).
fn views(wh: &Warehouse) -> Result<Vec<Check>, ReconcileError> {
    let mut checks = Vec::new();
    for kind in CheckKind::ALL {
        let Some(view) = kind.view() else { continue };
        let r = wh.query(&format!(
            "SELECT COUNT(*) AS total_rows, COUNTIF(NOT pass) AS failing_rows FROM `${{dataset}}.{view}`"
        ))?;
        let failing = cell(&r, 0, "view", "failing_rows")?;
        let total = cell(&r, 0, "view", "total_rows")?;
        checks.push(Check::equal(
            kind,
            format!("view {view}, failing rows (of {total})"),
            0,
            failing,
        ));
    }
    Ok(checks)
}

/// The numbers behind `v_exactly_once`, so a failure shows how many rows are extra.
fn exactly_once_counts(wh: &Warehouse) -> Result<Check, ReconcileError> {
    let r = wh.query("SELECT payment_rows, distinct_ids FROM `${dataset}.v_exactly_once`")?;
    Ok(exactly_once_judge(
        cell(&r, 0, "v_exactly_once", "payment_rows")?,
        cell(&r, 0, "v_exactly_once", "distinct_ids")?,
    ))
}

/// The partitioning column of each partitioned table (`sql/001_tables.sql`): every
/// scheduled query reads these tables only through a range of it.
pub const PARTITIONING: [(&str, &str); 3] = [
    ("payments", "event_time"),
    ("dedup_audit", "event_time"),
    ("payment_metrics", "window_start"),
];

/// A TIMESTAMP literal: constant, so BigQuery prunes partitions with it.
fn ts(micros: i64) -> String {
    format!("TIMESTAMP '{}'", rfc3339(micros))
}

/// `column` in `[from, until)`.
fn range(column: &str, from: i64, until: i64) -> String {
    format!("{column} >= {} AND {column} < {}", ts(from), ts(until))
}

/// Accepted rows (`payments`, `dedup_audit`) with a settled Kafka timestamp and an
/// event time from `since`, per partition: the evidence ([`Evidence`]).
pub fn evidence_sql(b: &Bound) -> String {
    let filter = format!(
        "{} AND kafka_timestamp < {}",
        range("event_time", b.since, b.evidence_until()),
        ts(b.settled_before)
    );
    format!(
        "SELECT source_partition, MIN(source_offset) AS first_offset, MAX(source_offset) AS last_offset, MAX(UNIX_MICROS(event_time)) AS max_event_time FROM (\
         SELECT source_partition, source_offset, event_time FROM `${{dataset}}.payments` WHERE {filter} \
         UNION ALL SELECT source_partition, source_offset, event_time FROM `${{dataset}}.dedup_audit` WHERE {filter}\
         ) GROUP BY source_partition"
    )
}

/// `(source_partition = p AND source_offset BETWEEN lo AND hi) OR ...`.
fn offsets_in(scope: &Scope) -> String {
    let ors: Vec<String> = scope
        .partitions
        .iter()
        .map(|(p, s)| {
            format!(
                "(source_partition = {p} AND source_offset BETWEEN {} AND {})",
                s.offsets.start(),
                s.offsets.end()
            )
        })
        .collect();
    format!("({})", ors.join(" OR "))
}

/// Per partition, `column` before its checked windows' end (`column` from `since` is
/// in the partition filter).
fn windows_in(scope: &Scope, column: &str) -> String {
    let ors: Vec<String> = scope
        .partitions
        .iter()
        .filter(|(_, s)| s.windows_until > scope.bound.since)
        .map(|(p, s)| {
            format!(
                "(source_partition = {p} AND {column} < {})",
                ts(s.windows_until)
            )
        })
        .collect();
    format!("({})", ors.join(" OR "))
}

/// The four record tables' rows in the settled offset ranges, as a UNION ALL of
/// `SELECT '<table>' AS table_name, <columns>`.
fn records_sql(scope: &Scope, columns: &str) -> String {
    let ranges = offsets_in(scope);
    // Accepted rows of a range lie within the fetch bounds (see `settled`); late and
    // invalid records are in unpartitioned tables, read by offset alone.
    let accepted = range("event_time", scope.fetch_since(), scope.fetch_until());
    let mut sql = String::new();
    for (i, (table, filter)) in [
        ("payments", format!("{accepted} AND {ranges}")),
        ("dedup_audit", format!("{accepted} AND {ranges}")),
        ("late_events", ranges.clone()),
        ("processing_errors", ranges.clone()),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            sql.push_str(" UNION ALL ");
        }
        let _ = write!(
            sql,
            "SELECT '{table}' AS table_name, {columns} FROM `${{dataset}}.{table}` WHERE {filter}"
        );
    }
    sql
}

/// The checked metrics rows: the settled windows.
fn metrics_filter(scope: &Scope) -> String {
    format!(
        "{} AND {}",
        range("window_start", scope.bound.since, scope.windows_until()),
        windows_in(scope, "window_start")
    )
}

/// Per partition: offsets in the four record tables.
pub fn offsets_sql(scope: &Scope) -> String {
    format!(
        "SELECT source_partition, COUNT(*) AS records, COUNT(DISTINCT source_offset) AS distinct_offsets, MIN(source_offset) AS first_offset, MAX(source_offset) AS last_offset FROM ({}) GROUP BY source_partition",
        records_sql(scope, "source_partition, source_offset")
    )
}

/// Per table and partition: outbox sequences of the checked rows.
pub fn sequences_sql(scope: &Scope) -> String {
    let mut rows = records_sql(scope, "source_partition, outbox_seq");
    if scope.windows_until() > scope.bound.since {
        let _ = write!(
            rows,
            " UNION ALL SELECT 'payment_metrics' AS table_name, source_partition, outbox_seq FROM `${{dataset}}.payment_metrics` WHERE {}",
            metrics_filter(scope)
        );
    }
    format!(
        "SELECT table_name, source_partition, COUNT(*) AS row_count, COUNT(DISTINCT outbox_seq) AS distinct_seqs, MIN(outbox_seq) AS min_seq, MAX(outbox_seq) AS max_seq FROM ({rows}) GROUP BY table_name, source_partition"
    )
}

/// Payment rows and distinct ids among the checked payments.
pub fn exactly_once_sql(scope: &Scope) -> String {
    format!(
        "SELECT COUNT(*) AS payment_rows, COUNT(DISTINCT transaction_id) AS distinct_ids FROM `${{dataset}}.payments` WHERE {} AND {}",
        range("event_time", scope.fetch_since(), scope.fetch_until()),
        offsets_in(scope)
    )
}

/// Per partition, window and currency in the settled windows: payments re-aggregated
/// with the configured window size against `payment_metrics`; how many aggregates were
/// compared and how many differ. Windows with only duplicates (zero payments) have a
/// metrics row and no payment: left out, as in the file path.
pub fn amounts_sql(scope: &Scope) -> String {
    let w = scope.bound.timing.window;
    let since = scope.bound.since;
    let until = scope.windows_until();
    format!(
        "WITH p AS (\
         SELECT source_partition, UNIX_MICROS(event_time) - MOD(UNIX_MICROS(event_time), {w}) AS window_us, currency, COUNT(*) AS payment_count, SUM(amount_minor) AS amount_minor_sum \
         FROM `${{dataset}}.payments` WHERE {} AND {} GROUP BY source_partition, window_us, currency), \
         m AS (\
         SELECT source_partition, UNIX_MICROS(window_start) AS window_us, currency, SUM(payment_count) AS payment_count, SUM(amount_minor_sum) AS amount_minor_sum \
         FROM `${{dataset}}.payment_metrics` WHERE {} GROUP BY source_partition, window_us, currency HAVING SUM(payment_count) > 0) \
         SELECT COUNT(*) AS compared, COUNTIF(NOT COALESCE(p.payment_count = m.payment_count AND p.amount_minor_sum = m.amount_minor_sum, FALSE)) AS differ \
         FROM p FULL OUTER JOIN m ON p.source_partition = m.source_partition AND p.window_us = m.window_us AND p.currency = m.currency",
        range("event_time", since, until),
        windows_in(scope, "event_time"),
        metrics_filter(scope),
    )
}

/// The metrics rows whose window size is compared with the configuration: any window
/// from `since` (a closed window starts before the newest valid event time).
fn settled_windows_filter(b: &Bound) -> String {
    format!(
        " WHERE {}",
        range("window_start", b.since, b.evidence_until())
    )
}

/// The scheduled checks: evidence, then the rules over the settled ranges.
fn settled(wh: &Warehouse, bound: &Bound) -> Result<Report, ReconcileError> {
    let r = wh.query(&evidence_sql(bound))?;
    let mut evidence = BTreeMap::new();
    for row in 0..r.rows.len() {
        let p = cell(&r, row, "evidence", "source_partition")?;
        evidence.insert(
            i32::try_from(p).map_err(|_| ReconcileError::Answer {
                query: "evidence",
                column: "source_partition",
            })?,
            Evidence {
                first_offset: cell(&r, row, "evidence", "first_offset")?,
                last_offset: cell(&r, row, "evidence", "last_offset")?,
                max_event_time: cell(&r, row, "evidence", "max_event_time")?,
            },
        );
    }
    let scope = Scope::new(*bound, &evidence);
    let mut checks = Vec::new();
    let mut windows = 0;
    if !scope.partitions.is_empty() {
        same_window(wh, bound.timing.window, &settled_windows_filter(bound))?;
        let r = wh.query(&exactly_once_sql(&scope))?;
        checks.push(exactly_once_judge(
            cell(&r, 0, "exactly_once", "payment_rows")?,
            cell(&r, 0, "exactly_once", "distinct_ids")?,
        ));
        checks.extend(source_accounting(wh, &scope)?);
        checks.extend(sequence_density(wh, &scope)?);
        let differ = if scope.windows_until() > bound.since {
            let r = wh.query(&amounts_sql(&scope))?;
            windows = cell(&r, 0, "amounts", "compared")?.unsigned_abs();
            cell(&r, 0, "amounts", "differ")?.unsigned_abs()
        } else {
            0
        };
        checks.push(amounts::judge(differ));
    }
    Ok(Report {
        scope: Some(scope.describe()),
        checks,
        coverage: Some(Coverage::of(&scope, windows)),
    })
}

fn source_accounting(wh: &Warehouse, scope: &Scope) -> Result<Vec<Check>, ReconcileError> {
    let r = wh.query(&offsets_sql(scope))?;
    let q = "source_accounting";
    let mut found = BTreeMap::new();
    for row in 0..r.rows.len() {
        let stats = OffsetStats {
            records: cell(&r, row, q, "records")?.unsigned_abs(),
            distinct: cell(&r, row, q, "distinct_offsets")?.unsigned_abs(),
            first: cell(&r, row, q, "first_offset")?,
            last: cell(&r, row, q, "last_offset")?,
        };
        found.insert(cell(&r, row, q, "source_partition")?, stats);
    }
    // Each settled range is judged on its own bounds: its first and last offsets are
    // evidence rows, so a range the tables no longer hold at all is a failure too.
    Ok(scope
        .partitions
        .iter()
        .map(|(p, s)| {
            let got = found.get(&i64::from(*p)).copied().unwrap_or(OffsetStats {
                records: 0,
                distinct: 0,
                first: *s.offsets.start(),
                last: *s.offsets.end(),
            });
            super::source_accounting::judge(*p, &got)
        })
        .collect())
}

fn sequence_density(wh: &Warehouse, scope: &Scope) -> Result<Vec<Check>, ReconcileError> {
    let r = wh.query(&sequences_sql(scope))?;
    let q = "sequence_density";
    let mut per: BTreeMap<String, Vec<(i32, SeqStats)>> = BTreeMap::new();
    for row in 0..r.rows.len() {
        let table = r.get_str(row, "table_name").ok_or(ReconcileError::Answer {
            query: q,
            column: "table_name",
        })?;
        let p = cell(&r, row, q, "source_partition")?;
        let stats = SeqStats {
            rows: cell(&r, row, q, "row_count")?.unsigned_abs(),
            distinct: cell(&r, row, q, "distinct_seqs")?.unsigned_abs(),
            min: cell(&r, row, q, "min_seq")?.unsigned_abs(),
            max: cell(&r, row, q, "max_seq")?.unsigned_abs(),
        };
        per.entry(table)
            .or_default()
            .push((i32::try_from(p).unwrap_or(i32::MAX), stats));
    }
    Ok(paydedup_sink::Table::ALL
        .iter()
        .map(|t| {
            let stats = per.get(t.name()).map(Vec::as_slice).unwrap_or_default();
            super::sequence_density::judge(t.name(), stats, Start::Lowest)
        })
        .collect())
}

/// The dataset in the manifest's terms.
fn observed(wh: &Warehouse) -> Result<Observed, ReconcileError> {
    let count =
        |sql: &str| -> Result<i64, ReconcileError> { cell(&wh.query(sql)?, 0, "manifest", "n") };
    let mut o = Observed {
        payments: count("SELECT COUNT(*) AS n FROM `${dataset}.payments`")?,
        duplicates: count(
            "SELECT COUNT(*) AS n FROM `${dataset}.dedup_audit` WHERE kind = 'duplicate'",
        )?,
        conflicts: count(
            "SELECT COUNT(*) AS n FROM `${dataset}.dedup_audit` WHERE kind = 'conflict'",
        )?,
        late: count("SELECT COUNT(*) AS n FROM `${dataset}.late_events`")?,
        invalid: count("SELECT COUNT(*) AS n FROM `${dataset}.processing_errors`")?,
        ..Observed::default()
    };
    breakdowns(wh, &mut o)?;
    Ok(o)
}

/// Per error code, per partition (from `v_source_accounting`), per currency.
fn breakdowns(wh: &Warehouse, o: &mut Observed) -> Result<(), ReconcileError> {
    let codes = wh.query(
        "SELECT error_code, COUNT(*) AS n FROM `${dataset}.processing_errors` GROUP BY error_code",
    )?;
    for row in 0..codes.rows.len() {
        o.invalid_by_code.insert(
            codes.get_str(row, "error_code").unwrap_or_default(),
            codes.get_i64(row, "n").unwrap_or(0),
        );
    }
    let parts =
        wh.query("SELECT source_partition, input_records FROM `${dataset}.v_source_accounting`")?;
    for row in 0..parts.rows.len() {
        o.records_by_partition.insert(
            parts.get_i64(row, "source_partition").unwrap_or(-1),
            parts.get_i64(row, "input_records").unwrap_or(0),
        );
    }
    let sums = wh.query(
        "SELECT currency, SUM(amount_minor) AS s FROM `${dataset}.payments` GROUP BY currency",
    )?;
    for row in 0..sums.rows.len() {
        o.amount_by_currency.insert(
            sums.get_str(row, "currency").unwrap_or_default(),
            integer(sums.get_str(row, "s")),
        );
    }
    Ok(())
}

/// A SUM as the REST API returns it (a string, possibly `"123.0"`); 0 when absent.
fn integer(s: Option<String>) -> i128 {
    s.map(|v| v.split('.').next().unwrap_or("0").to_owned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::settled::Evidence;

    const TABLES_SQL: &str = include_str!("../../../../sql/001_tables.sql");

    /// Table → partitioning column, as the DDL declares them.
    fn partitioned_in_ddl() -> BTreeMap<String, String> {
        TABLES_SQL
            .split("CREATE TABLE IF NOT EXISTS `${dataset}.")
            .skip(1)
            .filter_map(|body| {
                let table = body.split('`').next()?;
                let column = body.split("PARTITION BY DATE(").nth(1)?.split(')').next()?;
                Some((table.to_owned(), column.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_partitioning_columns_are_the_ddls() {
        let ours: BTreeMap<String, String> = PARTITIONING
            .iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect();
        assert_eq!(ours, partitioned_in_ddl());
    }

    /// A scope with two settled partitions, one of them with closed windows.
    fn scope() -> Scope {
        const S: i64 = 1_000_000;
        let timing = Timing {
            window: 60 * S,
            lateness: 300 * S,
            future_tolerance: 600 * S,
        };
        let b = Bound::new(1_780_003_600 * S, 3600 * S, timing).unwrap();
        let e = |first, last, max| Evidence {
            first_offset: first,
            last_offset: last,
            max_event_time: max,
        };
        Scope::new(
            b,
            &BTreeMap::from([
                (0, e(100, 200, b.since + 1800 * S)),
                (3, e(7, 9, b.since + 60 * S)),
            ]),
        )
    }

    #[test]
    fn every_scheduled_query_reads_partitioned_tables_through_a_range_of_their_column() {
        let s = scope();
        let queries = [
            evidence_sql(&s.bound),
            window_sizes_sql(&settled_windows_filter(&s.bound)),
            exactly_once_sql(&s),
            offsets_sql(&s),
            sequences_sql(&s),
            amounts_sql(&s),
        ];
        for sql in &queries {
            let mut reads = 0;
            for (table, column) in PARTITIONING {
                let from = format!("FROM `${{dataset}}.{table}`");
                for (at, _) in sql.match_indices(&from) {
                    let rest = &sql[at + from.len()..];
                    let filter = format!(" WHERE {column} >= TIMESTAMP '");
                    assert!(
                        rest.starts_with(&filter),
                        "{table} read without {filter}: {sql}"
                    );
                    let until = format!("{column} < TIMESTAMP '");
                    let clause = rest.split("FROM `").next().unwrap_or_default();
                    assert!(clause.contains(&until), "{table} has no upper bound: {sql}");
                    reads += 1;
                }
            }
            assert!(reads > 0, "{sql}");
        }
        // The records in the settled ranges: partition 0's and 3's offsets, by offset
        // alone in the unpartitioned tables.
        let offsets = offsets_sql(&s);
        assert!(offsets.contains("(source_partition = 0 AND source_offset BETWEEN 100 AND 200) OR (source_partition = 3 AND source_offset BETWEEN 7 AND 9)"), "{offsets}");
        assert!(
            offsets.contains("FROM `${dataset}.late_events` WHERE ((source_partition = 0"),
            "{offsets}"
        );
        // Only partition 0 closed a window since the lookback began.
        let amounts = amounts_sql(&s);
        assert!(
            amounts.contains("(source_partition = 0 AND event_time < TIMESTAMP '"),
            "{amounts}"
        );
        assert!(!amounts.contains("source_partition = 3"), "{amounts}");
        assert!(
            amounts.contains("MOD(UNIX_MICROS(event_time), 60000000)"),
            "{amounts}"
        );
    }

    #[test]
    fn sums_parse_as_the_rest_api_returns_them() {
        assert_eq!(integer(Some("123".into())), 123);
        assert_eq!(integer(Some("123.0".into())), 123);
        assert_eq!(
            integer(Some("-170141183460469231731687303715884105728".into())),
            i128::MIN
        );
        assert_eq!(integer(None), 0);
    }
}
