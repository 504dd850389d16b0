//! One deliverer per partition in BigQuery.
//!
//! Two processors configured to own one partition would each open their own write
//! streams and both append, so the partition's rows would land twice. The fence:
//!
//! - `paydedup_owners` holds an **owner epoch** per partition. A processor that starts
//!   owning a partition *claims* it: `epoch + 1`, by an `UPDATE … WHERE epoch = e`
//!   that only one claimer can win (BigQuery serializes DML on a table; a lost race
//!   reads again and claims again — the last claimer owns the partition).
//! - `paydedup_streams` registers every write stream with the epoch it was opened
//!   under. After a claim, every stream registered under an older epoch is
//!   **finalized**: the old owner's next append fails, and when it tries to open a new
//!   stream it finds the epoch moved on and stops ([`SinkError::Fenced`]).
//! - Opening a stream: register it, *then* check the epoch is still ours. If a claim
//!   came in between, we finalize it ourselves and stop; if the claim comes after, it
//!   sees the registration and finalizes it. Either way no stream of an old owner
//!   outlives a claim.
//!
//! Rows already appended stay: they are the partition's rows up to that point, and the
//! new owner reads the table's position after the claim.

use std::collections::HashMap;

use paydedup_state::Table;

use super::write::Writer;
use super::Warehouse;
use crate::SinkError;

pub const OWNERS: &str = "paydedup_owners";
pub const STREAMS: &str = "paydedup_streams";

/// The fence tables (idempotent).
pub fn ddl(wh: &Warehouse) -> Result<(), SinkError> {
    wh.query(&format!(
        "CREATE TABLE IF NOT EXISTS `${{dataset}}.{OWNERS}` \
         (source_partition INT64, epoch INT64, owner STRING)"
    ))?;
    wh.query(&format!(
        "CREATE TABLE IF NOT EXISTS `${{dataset}}.{STREAMS}` \
         (source_partition INT64, table_name STRING, stream STRING, epoch INT64)"
    ))?;
    Ok(())
}

/// The epochs this process holds.
#[derive(Debug, Default)]
pub struct Fence {
    owner: String,
    epochs: HashMap<i32, i64>,
}

fn list(partitions: &[i32]) -> String {
    partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Fence {
    /// Claims `partitions` and finalizes the streams of their previous owners. A
    /// handful of queries whatever the partition count: processors restart often.
    pub fn claim(
        wh: &Warehouse,
        writer: &mut Writer,
        partitions: &[i32],
    ) -> Result<Fence, SinkError> {
        let owner = format!(
            "pid {} at {} ({})",
            std::process::id(),
            std::env::var("HOSTNAME").unwrap_or_else(|_| "?".into()),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
        .replace('\'', "");
        let mut fence = Fence {
            owner,
            epochs: HashMap::new(),
        };
        if partitions.is_empty() {
            return Ok(fence);
        }
        let ps = list(partitions);
        // A first row per partition (a duplicate from a racing first start is
        // harmless: every claim moves all of a partition's rows together).
        wh.query(&format!(
            "INSERT INTO `${{dataset}}.{OWNERS}` (source_partition, epoch, owner) \
             SELECT p, 0, '' FROM UNNEST([{ps}]) AS p \
             WHERE p NOT IN (SELECT source_partition FROM `${{dataset}}.{OWNERS}`)"
        ))?;
        // DML on one table is serialized: after this, each partition's epoch is ours
        // unless another claim came later (then its owner is no longer us).
        wh.query(&format!(
            "UPDATE `${{dataset}}.{OWNERS}` SET epoch = epoch + 1, owner = '{}' \
             WHERE source_partition IN ({ps})",
            fence.owner
        ))?;
        let r = wh.query(&format!(
            "SELECT source_partition, MAX(epoch) AS epoch, MAX(owner) AS owner \
             FROM `${{dataset}}.{OWNERS}` WHERE source_partition IN ({ps}) GROUP BY source_partition"
        ))?;
        for i in 0..r.rows.len() {
            let (Some(p), Some(e)) = (r.get_i64(i, "source_partition"), r.get_i64(i, "epoch"))
            else {
                continue;
            };
            let p = i32::try_from(p).unwrap_or(-1);
            if r.get_str(i, "owner").as_deref() != Some(fence.owner.as_str()) {
                return Err(SinkError::Fenced {
                    partition: p,
                    holder: "another processor claimed it at the same moment".into(),
                });
            }
            fence.epochs.insert(p, e);
        }
        // Every stream of an older claim is finalized, then forgotten.
        let r = wh.query(&format!(
            "SELECT source_partition, stream, epoch FROM `${{dataset}}.{STREAMS}` \
             WHERE source_partition IN ({ps})"
        ))?;
        let mut finalized = 0;
        for i in 0..r.rows.len() {
            let (Some(p), Some(stream), Some(e)) = (
                r.get_i64(i, "source_partition"),
                r.get_str(i, "stream"),
                r.get_i64(i, "epoch"),
            ) else {
                continue;
            };
            let mine = i32::try_from(p).ok().and_then(|p| fence.epochs.get(&p));
            if mine.is_some_and(|m| e < *m) {
                wh.rt.block_on(writer.finalize_stream(&stream))?;
                finalized += 1;
            }
        }
        if finalized > 0 {
            let older = fence
                .epochs
                .iter()
                .map(|(p, e)| format!("(source_partition = {p} AND epoch < {e})"))
                .collect::<Vec<_>>()
                .join(" OR ");
            wh.query(&format!(
                "DELETE FROM `${{dataset}}.{STREAMS}` WHERE {older}"
            ))?;
        }
        tracing::info!(partitions = ?partitions, finalized, "Claimed the partitions in BigQuery; earlier owners' write streams are finalized.");
        Ok(fence)
    }

    /// Registers new streams `(table, partition, stream)`; fails (after finalizing
    /// them) if one of their partitions has another owner now.
    pub fn register(
        &self,
        wh: &Warehouse,
        writer: &mut Writer,
        streams: &[(Table, i32, String)],
    ) -> Result<(), SinkError> {
        if streams.is_empty() {
            return Ok(());
        }
        let mut values = Vec::with_capacity(streams.len());
        for (t, p, stream) in streams {
            let Some(mine) = self.epochs.get(p) else {
                return Err(SinkError::Fenced {
                    partition: *p,
                    holder: "this processor never claimed it".into(),
                });
            };
            values.push(format!(
                "({p}, '{}', '{}', {mine})",
                t.name(),
                stream.replace('\'', "")
            ));
        }
        wh.query(&format!(
            "INSERT INTO `${{dataset}}.{STREAMS}` (source_partition, table_name, stream, epoch) \
             VALUES {}",
            values.join(", ")
        ))?;
        let mut partitions: Vec<i32> = streams.iter().map(|(_, p, _)| *p).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let r = wh.query(&format!(
            "SELECT source_partition, MAX(epoch) AS epoch FROM `${{dataset}}.{OWNERS}` \
             WHERE source_partition IN ({}) GROUP BY source_partition",
            list(&partitions)
        ))?;
        for i in 0..r.rows.len() {
            let (Some(p), Some(now)) = (r.get_i64(i, "source_partition"), r.get_i64(i, "epoch"))
            else {
                continue;
            };
            let p = i32::try_from(p).unwrap_or(-1);
            let mine = self.epochs.get(&p).copied().unwrap_or(0);
            if now != mine {
                for (_, _, stream) in streams {
                    wh.rt.block_on(writer.finalize_stream(stream))?;
                }
                return Err(SinkError::Fenced {
                    partition: p,
                    holder: format!("its owner epoch is {now}, this processor's {mine}"),
                });
            }
        }
        Ok(())
    }
}
