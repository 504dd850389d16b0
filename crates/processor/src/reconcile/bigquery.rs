//! The warehouse path: the same contract, judged by the SQL views.
//!
//! Each [`CheckKind`] with a view becomes "no row of the view fails"; the
//! exactly-once counts are printed as well; the manifest is compared with an
//! [`Observed`] filled by queries, through the same [`ground_truth::check`] as the file
//! path. Needs a warehouse (or the emulator): covered by `tests/bigquery.rs`.

use paydedup_manifest::Manifest;
use paydedup_sink::bigquery::Warehouse;

use super::check::{Check, CheckKind};
use super::ground_truth::{self, Observed};

/// All checks over a BigQuery dataset: the views, then the manifest.
pub fn reconcile(wh: &Warehouse, manifest: Option<&Manifest>) -> anyhow::Result<Vec<Check>> {
    let mut checks = views(wh)?;
    checks.push(exactly_once_counts(wh)?);
    if let Some(m) = manifest {
        checks.extend(ground_truth::check(&observed(wh)?, m));
    }
    Ok(checks)
}

/// Per view with a `pass` column: how many of its rows fail (expected none).
fn views(wh: &Warehouse) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for kind in CheckKind::ALL {
        let Some(view) = kind.view() else { continue };
        let r = wh.query(&format!(
            "SELECT COUNT(*) AS total_rows, COUNTIF(NOT pass) AS failing_rows FROM `${{dataset}}.{view}`"
        ))?;
        let failing = r.get_i64(0, "failing_rows").unwrap_or(-1);
        let total = r.get_i64(0, "total_rows").unwrap_or(0);
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
fn exactly_once_counts(wh: &Warehouse) -> anyhow::Result<Check> {
    let r = wh.query("SELECT payment_rows, distinct_ids FROM `${dataset}.v_exactly_once`")?;
    Ok(Check::equal(
        CheckKind::ExactlyOnce,
        "payments rows = distinct ids",
        r.get_i64(0, "distinct_ids").unwrap_or(-1),
        r.get_i64(0, "payment_rows").unwrap_or(-2),
    ))
}

/// The dataset in the manifest's terms.
fn observed(wh: &Warehouse) -> anyhow::Result<Observed> {
    let count =
        |sql: &str| -> anyhow::Result<i64> { Ok(wh.query(sql)?.get_i64(0, "n").unwrap_or(-1)) };
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
fn breakdowns(wh: &Warehouse, o: &mut Observed) -> anyhow::Result<()> {
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
