//! The state a partition had, rebuilt from the rows the sink holds (a pure function).
//!
//! Every record lands in exactly one of the four record tables, and offsets are dense,
//! so per partition the landed offsets run unbroken from the first up to the
//! **position**: the first offset with no row anywhere (its row was still in the lost
//! outbox). The state is rebuilt *as of the position*, from the rows below it only:
//!
//! - max event time: the largest event time of an on-time record (a payment or a
//!   repeat); the watermark follows;
//! - dedup index: per id, its latest `payments` row (an id is new again only once its
//!   entry expired), kept while alive under that watermark;
//! - windows: counts and sums of the payments and repeats below the position. A window
//!   the watermark has closed is emitted now unless `payment_metrics` already holds it;
//!   an open one that `payment_metrics` holds (a later record closed it) is marked
//!   landed, so closing it again sends nothing;
//! - fraud history: the payments within the fraud TTL, folded in event-time order.
//!
//! The sink may hold rows for records *beyond* the position (each table is delivered
//! on its own). They are marked landed: the processor reads them again, applies them to
//! the state in their order — so the state evolves exactly as it did — and sends no
//! row for them.
//!
//! One move of the watermark leaves no record behind: a drain or an idle advance,
//! which closes windows without a record. When the partition's log ends at the position
//! (nothing to replay), every window the sink holds closed was closed by then, so the
//! max event time is raised past them, as the drain or advance had raised it. When
//! records follow, a held window may as well have been closed by one of them (its
//! metrics row delivered ahead of the record's row), so nothing is raised: the replay
//! closes it at the same record. (Known limit: an idle advance or drain *followed* by
//! records whose rows were lost leaves the restored watermark behind the lost one
//! until records move it; see docs/operations.md.)

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paydedup_event::{CardFingerprint, SmolStr};
use paydedup_fraud::{assess, CardState, CustomerState, FraudConfig};
use paydedup_state::{DedupEntry, Table};

use super::facts::Facts;
use super::RestoreError;
use crate::pipeline::watermark;
use crate::pipeline::window::{self, WindowAgg};

/// (partition, window start µs, currency code).
pub type WindowKey = (i32, i64, &'static str);

#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub allowed_lateness_micros: i64,
    pub retention_micros: i64,
    pub window_micros: i64,
    pub fraud_ttl_micros: i64,
    pub fraud: FraudConfig,
}

impl RebuildConfig {
    /// The rebuild's settings are the pipeline's, plus the fraud state's TTL.
    pub fn of(p: &crate::pipeline::PipelineConfig, fraud_ttl_micros: i64) -> RebuildConfig {
        RebuildConfig {
            allowed_lateness_micros: p.allowed_lateness_micros,
            retention_micros: p.retention_micros,
            window_micros: p.window_micros,
            fraud_ttl_micros,
            fraud: p.fraud.clone(),
        }
    }
}

/// One partition's position and progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionRestore {
    /// The first offset with no row in the sink (`None`: the sink holds nothing).
    pub next_offset: Option<i64>,
    pub max_event: Option<i64>,
    /// Offsets beyond the position whose rows the sink holds, and where.
    pub landed_ahead: BTreeMap<i64, Table>,
}

#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    pub partitions: BTreeMap<i32, PartitionRestore>,
    /// Transaction id → its live dedup entry.
    pub dedup: BTreeMap<String, DedupEntry>,
    pub open_windows: BTreeMap<WindowKey, WindowAgg>,
    /// Open windows `payment_metrics` already holds.
    pub landed_windows: BTreeSet<WindowKey>,
    /// Windows closed under the rebuilt watermark whose rows the sink lacks.
    pub to_emit: BTreeMap<WindowKey, WindowAgg>,
    pub cards: BTreeMap<CardFingerprint, CardState>,
    pub customers: BTreeMap<SmolStr, CustomerState>,
}

/// Rebuilds `partitions` from `facts`; `log_end` is each partition's log end offset
/// (Kafka's high watermark), where known.
pub fn rebuild(
    facts: &Facts,
    partitions: &[i32],
    log_end: &BTreeMap<i32, i64>,
    cfg: &RebuildConfig,
) -> Result<Rebuilt, RestoreError> {
    let mut out = Rebuilt::default();
    for &p in partitions {
        let restored = position(facts, p, log_end.get(&p).copied(), cfg)?;
        out.partitions.insert(p, restored);
    }
    let below = |partition: i32, offset: i64| {
        out.partitions
            .get(&partition)
            .and_then(|r| r.next_offset)
            .is_some_and(|n| offset < n)
    };
    let wm = |partition: i32| {
        watermark::watermark(
            out.partitions.get(&partition).and_then(|r| r.max_event),
            cfg.allowed_lateness_micros,
        )
    };

    // Dedup: each id's latest payment below the position, if still alive.
    let mut latest: HashMap<&str, DedupEntry> = HashMap::new();
    for f in facts
        .payments
        .iter()
        .filter(|f| below(f.partition, f.offset))
    {
        let entry = DedupEntry {
            event_time_micros: f.event.event_time_micros(),
            content_hash: f.content_hash,
            partition: f.partition,
            offset: f.offset,
        };
        let e = latest
            .entry(f.event.transaction_id.as_str())
            .or_insert(entry);
        if entry.offset > e.offset {
            *e = entry;
        }
    }
    for (id, e) in latest {
        let alive = wm(e.partition)
            .is_none_or(|w| e.event_time_micros.saturating_add(cfg.retention_micros) >= w);
        if alive {
            out.dedup.insert(id.to_owned(), e);
        }
    }

    // Windows: what the rows below the position put in them.
    let mut aggs: BTreeMap<WindowKey, WindowAgg> = BTreeMap::new();
    let key =
        |p: i32, t: i64, code: &'static str| (p, window::window_start(t, cfg.window_micros), code);
    for f in facts
        .payments
        .iter()
        .filter(|f| below(f.partition, f.offset))
    {
        let k = key(
            f.partition,
            f.event.event_time_micros(),
            f.event.currency.code(),
        );
        aggs.entry(k)
            .or_default()
            .add_payment(f.event.amount_minor, f.flagged);
    }
    for r in facts
        .repeats
        .iter()
        .filter(|r| below(r.partition, r.offset))
    {
        let agg = aggs
            .entry(key(r.partition, r.event_time, r.currency.code()))
            .or_default();
        if r.conflict {
            agg.conflict_count += 1;
        } else {
            agg.duplicate_count += 1;
        }
    }
    let landed: BTreeSet<WindowKey> = facts
        .closed_windows
        .iter()
        .filter(|w| out.partitions.contains_key(&w.partition))
        .map(|w| (w.partition, w.start, w.currency.code()))
        .collect();
    for (k, agg) in aggs {
        let closed = window::is_closed(k.1, cfg.window_micros, wm(k.0));
        match (closed, landed.contains(&k)) {
            (true, true) => {}
            (true, false) => {
                out.to_emit.insert(k, agg);
            }
            (false, held) => {
                if held {
                    out.landed_windows.insert(k);
                }
                out.open_windows.insert(k, agg);
            }
        }
    }
    // Held windows with nothing below the position: a replayed record re-creates them.
    for k in &landed {
        if !window::is_closed(k.1, cfg.window_micros, wm(k.0)) {
            out.landed_windows.insert(*k);
        }
    }

    // Fraud history: the payments below the position within the TTL, in event time.
    let horizon = out
        .partitions
        .keys()
        .filter_map(|p| wm(*p))
        .max()
        .map_or(i64::MIN, |w| w.saturating_sub(cfg.fraud_ttl_micros));
    let mut history: Vec<_> = facts
        .payments
        .iter()
        .filter(|f| below(f.partition, f.offset) && f.event.event_time_micros() >= horizon)
        .collect();
    history.sort_by_key(|f| (f.event.event_time_micros(), f.partition, f.offset));
    for f in history {
        let card = out
            .cards
            .entry(f.event.card_fingerprint.clone())
            .or_default();
        let customer = out
            .customers
            .entry(f.event.customer_id.clone())
            .or_default();
        assess(&f.event, card, customer, &cfg.fraud);
    }
    Ok(out)
}

/// A partition's position, the landed records beyond it, and its max event time.
fn position(
    facts: &Facts,
    p: i32,
    log_end: Option<i64>,
    cfg: &RebuildConfig,
) -> Result<PartitionRestore, RestoreError> {
    let mut landed: BTreeMap<i64, Table> = BTreeMap::new();
    for l in facts.landings.iter().filter(|l| l.partition == p) {
        if let Some(first) = landed.insert(l.offset, l.table) {
            return Err(RestoreError::Doubled {
                partition: p,
                offset: l.offset,
                tables: [first, l.table],
            });
        }
    }
    let Some(&first) = landed.keys().next() else {
        return Ok(PartitionRestore::default());
    };
    let mut next = first;
    for &o in landed.keys() {
        if o != next {
            break;
        }
        next += 1;
    }
    let landed_ahead = landed.split_off(&next);
    let on_time = facts
        .payments
        .iter()
        .filter(|f| f.partition == p && f.offset < next)
        .map(|f| f.event.event_time_micros())
        .chain(
            facts
                .repeats
                .iter()
                .filter(|r| r.partition == p && r.offset < next)
                .map(|r| r.event_time),
        );
    let mut max_event = on_time.max();
    // Nothing left to replay: every window the sink holds closed was passed by the
    // watermark before the position.
    let floor = facts
        .closed_windows
        .iter()
        .filter(|w| w.partition == p)
        .map(|w| {
            w.start
                .saturating_add(cfg.window_micros)
                .saturating_add(cfg.allowed_lateness_micros)
        })
        .max();
    if landed_ahead.is_empty() && log_end.is_some_and(|end| end <= next) {
        if let Some(f) = floor {
            max_event = watermark::advance(max_event, f);
        }
    }
    Ok(PartitionRestore {
        next_offset: Some(next),
        max_event,
        landed_ahead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::facts::{ClosedWindow, Landing, PaymentFact, RepeatFact};
    use chrono::{TimeZone, Utc};
    use paydedup_event::{Currency, PaymentEvent, PaymentMethod, TransactionId};

    const S: i64 = 1_000_000;

    fn cfg() -> RebuildConfig {
        RebuildConfig {
            allowed_lateness_micros: 300 * S,
            retention_micros: 600 * S,
            window_micros: 60 * S,
            fraud_ttl_micros: 7 * 86_400 * S,
            fraud: FraudConfig::default(),
        }
    }

    /// The log of partition 0 ends where the tests' rows end.
    fn end() -> BTreeMap<i32, i64> {
        BTreeMap::from([(0, 3)])
    }

    fn event(id: &str, t: i64) -> PaymentEvent {
        PaymentEvent {
            transaction_id: TransactionId::new_unchecked(id),
            event_time: Utc.timestamp_micros(t).unwrap(),
            amount_minor: 100,
            currency: Currency::from_code("EUR").unwrap(),
            merchant_id: "m".into(),
            merchant_category: 5411,
            card_fingerprint: "card".into(),
            card_country: "DE".into(),
            customer_id: "c".into(),
            ip_address: "0.0.0.0".parse().unwrap(),
            ip_country: "DE".into(),
            device_id: "d".into(),
            region: "eu".into(),
            payment_method: PaymentMethod::Card,
            schema_version: 1,
        }
    }

    fn pay(f: &mut Facts, offset: i64, id: &str, t: i64) {
        f.landings.push(Landing {
            partition: 0,
            offset,
            table: Table::Payments,
        });
        f.payments.push(PaymentFact {
            partition: 0,
            offset,
            event: event(id, t),
            content_hash: 7,
            flagged: false,
        });
    }

    fn land(f: &mut Facts, offset: i64, table: Table) {
        f.landings.push(Landing {
            partition: 0,
            offset,
            table,
        });
    }

    #[test]
    fn the_position_is_the_first_offset_without_a_row_and_later_rows_are_landed_ahead() {
        let mut f = Facts::default();
        pay(&mut f, 0, "a", 1_000 * S);
        land(&mut f, 1, Table::ProcessingErrors);
        // offset 2's row is missing; 3 and 4 landed.
        pay(&mut f, 3, "b", 1_010 * S);
        land(&mut f, 4, Table::LateEvents);
        let r = rebuild(&f, &[0], &end(), &cfg()).unwrap();
        let p = &r.partitions[&0];
        assert_eq!(p.next_offset, Some(2));
        assert_eq!(
            p.landed_ahead,
            BTreeMap::from([(3, Table::Payments), (4, Table::LateEvents)])
        );
        // Only what is below the position is in the state: "b" is replayed.
        assert_eq!(p.max_event, Some(1_000 * S));
        assert_eq!(r.dedup.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.dedup["a"].offset, 0);
        assert_eq!(
            r.open_windows
                .values()
                .map(|a| a.payment_count)
                .sum::<u64>(),
            1
        );
    }

    #[test]
    fn a_record_in_two_tables_is_refused() {
        let mut f = Facts::default();
        pay(&mut f, 0, "a", 1_000 * S);
        land(&mut f, 0, Table::DedupAudit);
        let e = rebuild(&f, &[0], &end(), &cfg()).unwrap_err().to_string();
        assert!(e.contains("offset 0") && e.contains("twice"), "{e}");
    }

    #[test]
    fn expired_ids_are_not_restored_and_the_latest_occurrence_wins() {
        let mut f = Facts::default();
        pay(&mut f, 0, "old", 0);
        pay(&mut f, 1, "again", 10 * S);
        pay(&mut f, 2, "again", 1_500 * S); // new again after expiry
        pay(&mut f, 3, "new", 2_000 * S);
        let r = rebuild(&f, &[0], &end(), &cfg()).unwrap();
        // watermark 2000 − 300 = 1700 s: "old" (0 + 600 < 1700) is gone.
        assert!(!r.dedup.contains_key("old"));
        assert_eq!(r.dedup["again"].offset, 2);
        assert!(r.dedup.contains_key("new"));
    }

    #[test]
    fn windows_closed_but_not_held_are_emitted_and_held_open_ones_marked() {
        let eur = Currency::from_code("EUR").unwrap();
        let mut f = Facts::default();
        pay(&mut f, 0, "a", 0); // window [0, 60 s): closed by the watermark below
        pay(&mut f, 1, "b", 60 * S); // window [60, 120 s): closed, and held
        pay(&mut f, 2, "c", 1_000 * S); // window [960, 1020 s): open
        f.repeats.push(RepeatFact {
            partition: 0,
            offset: 3,
            event_time: 1_001 * S,
            currency: eur,
            conflict: false,
        });
        land(&mut f, 3, Table::DedupAudit);
        f.closed_windows.push(ClosedWindow {
            partition: 0,
            start: 60 * S,
            currency: eur,
        });
        let r = rebuild(&f, &[0], &end(), &cfg()).unwrap();
        assert_eq!(r.to_emit.keys().collect::<Vec<_>>(), [&(0, 0, "EUR")]);
        let open = &r.open_windows[&(0, 960 * S, "EUR")];
        assert_eq!((open.payment_count, open.duplicate_count), (1, 1));
        assert!(r.landed_windows.is_empty());
        assert_eq!(r.partitions[&0].max_event, Some(1_001 * S));
    }

    #[test]
    fn held_windows_raise_the_max_event_time_only_when_nothing_follows_in_the_log() {
        let eur = Currency::from_code("EUR").unwrap();
        let mut f = Facts::default();
        pay(&mut f, 0, "a", 1_000 * S);
        // A drain closed the open window and moved the watermark past it.
        f.closed_windows.push(ClosedWindow {
            partition: 0,
            start: 960 * S,
            currency: eur,
        });
        let at_end = BTreeMap::from([(0, 1)]);
        let r = rebuild(&f, &[0], &at_end, &cfg()).unwrap();
        assert_eq!(r.partitions[&0].max_event, Some((1_020 + 300) * S));
        assert!(r.open_windows.is_empty() && r.to_emit.is_empty());

        // Records follow in the log (one of them may have closed the window): the
        // replay closes it, sending nothing.
        let r = rebuild(&f, &[0], &end(), &cfg()).unwrap();
        assert_eq!(r.partitions[&0].max_event, Some(1_000 * S));
        assert!(r.landed_windows.contains(&(0, 960 * S, "EUR")));
        assert_eq!(r.open_windows[&(0, 960 * S, "EUR")].payment_count, 1);
    }

    #[test]
    fn a_partition_without_rows_starts_from_nothing() {
        let r = rebuild(&Facts::default(), &[3], &BTreeMap::new(), &cfg()).unwrap();
        assert_eq!(r.partitions[&3], PartitionRestore::default());
    }
}
