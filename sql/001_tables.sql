-- paydedup output tables. BigQuery standard SQL; `${dataset}` is replaced by the
-- dataset name when the files are applied. Idempotent: safe to run again.
-- Money: INT64 minor units are the truth; `amount` is NUMERIC(38,9) in major units
-- (written as NUMERIC(38,9), not NUMERIC: some engines map bare NUMERIC to 3 decimals).
-- Every row carries source_partition and outbox_seq (the relay's idempotency key).

CREATE TABLE IF NOT EXISTS `${dataset}.payments` (
  transaction_id STRING NOT NULL,
  event_time TIMESTAMP NOT NULL,
  amount_minor INT64 NOT NULL,
  amount NUMERIC(38, 9) NOT NULL,
  currency STRING NOT NULL,
  merchant_id STRING NOT NULL,
  merchant_category STRING NOT NULL,
  card_fingerprint STRING NOT NULL,
  card_country STRING NOT NULL,
  customer_id STRING NOT NULL,
  ip_country STRING NOT NULL,
  device_id STRING NOT NULL,
  region STRING NOT NULL,
  payment_method STRING NOT NULL,
  schema_version INT64 NOT NULL,
  content_hash STRING NOT NULL,
  fraud_score INT64 NOT NULL,
  fraud_flagged BOOL NOT NULL,
  fraud_reasons ARRAY<STRING>,
  card_count_10m INT64 NOT NULL,
  card_count_1h INT64 NOT NULL,
  kafka_timestamp TIMESTAMP,
  source_partition INT64 NOT NULL,
  source_offset INT64 NOT NULL,
  outbox_seq INT64 NOT NULL
)
PARTITION BY DATE(event_time)
CLUSTER BY merchant_id, card_fingerprint;

CREATE TABLE IF NOT EXISTS `${dataset}.dedup_audit` (
  kind STRING NOT NULL,              -- duplicate | conflict
  transaction_id STRING NOT NULL,
  event_time TIMESTAMP NOT NULL,
  first_event_time TIMESTAMP NOT NULL,
  amount_minor INT64 NOT NULL,
  currency STRING NOT NULL,
  first_content_hash STRING NOT NULL,
  repeat_content_hash STRING NOT NULL,
  first_partition INT64 NOT NULL,
  first_offset INT64 NOT NULL,
  kafka_timestamp TIMESTAMP,
  source_partition INT64 NOT NULL,
  source_offset INT64 NOT NULL,
  outbox_seq INT64 NOT NULL
)
PARTITION BY DATE(event_time);

CREATE TABLE IF NOT EXISTS `${dataset}.late_events` (
  transaction_id STRING NOT NULL,
  event_time TIMESTAMP NOT NULL,
  watermark TIMESTAMP NOT NULL,
  lateness_secs FLOAT64 NOT NULL,
  key_known BOOL NOT NULL,
  amount_minor INT64 NOT NULL,
  currency STRING NOT NULL,
  payload_base64 STRING NOT NULL,
  -- Added after 0.1; nullable so existing tables take it with
  -- ALTER TABLE late_events ADD COLUMN payload_redacted BOOL.
  payload_redacted BOOL,
  kafka_timestamp TIMESTAMP,
  source_partition INT64 NOT NULL,
  source_offset INT64 NOT NULL,
  outbox_seq INT64 NOT NULL
);

CREATE TABLE IF NOT EXISTS `${dataset}.processing_errors` (
  error_code STRING NOT NULL,
  error_field STRING,
  error_message STRING NOT NULL,
  payload_base64 STRING NOT NULL,
  payload_redacted BOOL NOT NULL,
  payload_bytes INT64 NOT NULL,
  kafka_key STRING,
  kafka_timestamp TIMESTAMP,
  source_partition INT64 NOT NULL,
  source_offset INT64 NOT NULL,
  outbox_seq INT64 NOT NULL
);

CREATE TABLE IF NOT EXISTS `${dataset}.payment_metrics` (
  window_start TIMESTAMP NOT NULL,
  window_end TIMESTAMP NOT NULL,
  currency STRING NOT NULL,
  payment_count INT64 NOT NULL,
  amount_minor_sum INT64 NOT NULL,
  amount_sum NUMERIC(38, 9) NOT NULL,
  duplicate_count INT64 NOT NULL,
  conflict_count INT64 NOT NULL,
  flagged_count INT64 NOT NULL,
  source_partition INT64 NOT NULL,
  outbox_seq INT64 NOT NULL
)
PARTITION BY DATE(window_start);
