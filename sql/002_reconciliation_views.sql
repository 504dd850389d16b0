-- Reconciliation views. Each has a `pass` column; `reconcile` fails on any row with
-- pass = FALSE and names the view.

-- Exactly once: rows in payments = distinct transaction ids.
CREATE OR REPLACE VIEW `${dataset}.v_exactly_once` AS
SELECT
  COUNT(*) AS payment_rows,
  COUNT(DISTINCT transaction_id) AS distinct_ids,
  COUNT(*) = COUNT(DISTINCT transaction_id) AS pass
FROM `${dataset}.payments`;

-- Source accounting: per partition, the input offsets found in the four record tables
-- form one contiguous range with every offset exactly once.
CREATE OR REPLACE VIEW `${dataset}.v_source_accounting` AS
WITH offsets AS (
  SELECT source_partition, source_offset, 'payments' AS t FROM `${dataset}.payments`
  UNION ALL SELECT source_partition, source_offset, 'dedup_audit' FROM `${dataset}.dedup_audit`
  UNION ALL SELECT source_partition, source_offset, 'late_events' FROM `${dataset}.late_events`
  UNION ALL SELECT source_partition, source_offset, 'processing_errors' FROM `${dataset}.processing_errors`
)
SELECT
  source_partition,
  COUNT(*) AS input_records,
  COUNTIF(t = 'payments') AS payments,
  COUNTIF(t = 'dedup_audit') AS dedup_audit,
  COUNTIF(t = 'late_events') AS late_events,
  COUNTIF(t = 'processing_errors') AS processing_errors,
  MIN(source_offset) AS first_offset,
  MAX(source_offset) AS last_offset,
  COUNT(DISTINCT source_offset) AS distinct_offsets,
  COUNT(*) = COUNT(DISTINCT source_offset)
    AND COUNT(*) = MAX(source_offset) - MIN(source_offset) + 1 AS pass
FROM offsets
GROUP BY source_partition;

-- Sequence density: per table and partition, outbox_seq is 0..n-1.
CREATE OR REPLACE VIEW `${dataset}.v_sequence_density` AS
WITH seqs AS (
  SELECT 'payments' AS table_name, source_partition, outbox_seq FROM `${dataset}.payments`
  UNION ALL SELECT 'dedup_audit', source_partition, outbox_seq FROM `${dataset}.dedup_audit`
  UNION ALL SELECT 'late_events', source_partition, outbox_seq FROM `${dataset}.late_events`
  UNION ALL SELECT 'processing_errors', source_partition, outbox_seq FROM `${dataset}.processing_errors`
  UNION ALL SELECT 'payment_metrics', source_partition, outbox_seq FROM `${dataset}.payment_metrics`
)
SELECT
  table_name,
  source_partition,
  COUNT(*) AS row_count,
  COUNT(DISTINCT outbox_seq) AS distinct_seqs,
  MAX(outbox_seq) AS max_seq,
  COUNT(*) = COUNT(DISTINCT outbox_seq) AND MIN(outbox_seq) = 0
    AND MAX(outbox_seq) = COUNT(*) - 1 AS pass
FROM seqs
GROUP BY table_name, source_partition;

-- Amounts: per currency and window, sum of payments = sum of closed metrics. The
-- window size is the one payment_metrics was closed with (window_end - window_start;
-- 1 minute while there is none), so the view holds for any --window-secs; reconcile
-- refuses to judge when that size is not its configured one.
CREATE OR REPLACE VIEW `${dataset}.v_amount_reconciliation` AS
WITH size AS (
  SELECT COALESCE(MAX(UNIX_MICROS(window_end) - UNIX_MICROS(window_start)), 60000000) AS micros
  FROM `${dataset}.payment_metrics`
),
p AS (
  SELECT TIMESTAMP_MICROS(UNIX_MICROS(event_time) - MOD(UNIX_MICROS(event_time), size.micros)) AS window_start,
         currency, COUNT(*) AS payment_count, SUM(amount_minor) AS amount_minor_sum
  FROM `${dataset}.payments` CROSS JOIN size
  GROUP BY window_start, currency
),
m AS (
  SELECT window_start, currency,
         SUM(payment_count) AS payment_count, SUM(amount_minor_sum) AS amount_minor_sum
  FROM `${dataset}.payment_metrics`
  GROUP BY window_start, currency
  HAVING SUM(payment_count) > 0
)
SELECT
  COALESCE(p.window_start, m.window_start) AS window_start,
  COALESCE(p.currency, m.currency) AS currency,
  p.payment_count AS payments_count,
  m.payment_count AS metrics_count,
  p.amount_minor_sum AS payments_amount_minor,
  m.amount_minor_sum AS metrics_amount_minor,
  COALESCE(p.payment_count = m.payment_count AND p.amount_minor_sum = m.amount_minor_sum, FALSE) AS pass
FROM p FULL OUTER JOIN m
  ON p.window_start = m.window_start AND p.currency = m.currency;

-- Dedup, conflict and fraud-flag rates per hour of event time (monitoring, no pass).
CREATE OR REPLACE VIEW `${dataset}.v_hourly_rates` AS
WITH pay AS (
  SELECT TIMESTAMP_TRUNC(event_time, HOUR) AS hour, COUNT(*) AS payments,
         COUNTIF(fraud_flagged) AS flagged
  FROM `${dataset}.payments` GROUP BY hour
),
aud AS (
  SELECT TIMESTAMP_TRUNC(event_time, HOUR) AS hour,
         COUNTIF(kind = 'duplicate') AS duplicates, COUNTIF(kind = 'conflict') AS conflicts
  FROM `${dataset}.dedup_audit` GROUP BY hour
)
SELECT
  COALESCE(pay.hour, aud.hour) AS hour,
  COALESCE(pay.payments, 0) AS payments,
  COALESCE(aud.duplicates, 0) AS duplicates,
  COALESCE(aud.conflicts, 0) AS conflicts,
  SAFE_DIVIDE(COALESCE(aud.duplicates, 0), COALESCE(pay.payments, 0) + COALESCE(aud.duplicates, 0) + COALESCE(aud.conflicts, 0)) AS duplicate_rate,
  SAFE_DIVIDE(COALESCE(aud.conflicts, 0), COALESCE(pay.payments, 0) + COALESCE(aud.duplicates, 0) + COALESCE(aud.conflicts, 0)) AS conflict_rate,
  SAFE_DIVIDE(COALESCE(pay.flagged, 0), COALESCE(pay.payments, 0)) AS fraud_flag_rate
FROM pay FULL OUTER JOIN aud ON pay.hour = aud.hour;
