#!/usr/bin/env bash
# The main job, one command: install what is missing, start a tansu broker and the
# BigQuery emulator on 127.0.0.1, create the topic, tables and views, produce
# simulated payments (every kind of fault), run the processor until it has caught up
# and delivered everything to BigQuery, then run the reconciliation views against the
# simulator's manifest and print the PASS/FAIL table.
#
# Repeatable: every run starts from a fresh .run/ folder. Tunables (environment):
#   COUNT (default 100000), PARTITIONS (4), SEED (42),
#   KEEP=1: after the reconciliation, keep the broker, the emulator and a processor
#   running (with Prometheus, when installed, scraping it) and print their endpoints,
#   until Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
COUNT="${COUNT:-100000}"
PARTITIONS="${PARTITIONS:-4}"
SEED="${SEED:-42}"

KEEP="${KEEP:-0}"

"$ROOT/scripts/setup.sh"
echo "==> building (release; the first build compiles RocksDB and takes a while)" >&2
# The exact build of the test command (scripts/test.sh): the same packages, targets and
# features, so after the tests have run nothing is compiled again (a narrower
# `cargo build -p …` unifies features differently and rebuilt most of the workspace).
(cd "$ROOT" && cargo test --release --locked --workspace --all-targets --all-features --no-run \
  >"$ROOT/.build.log" 2>&1) || { tail -30 "$ROOT/.build.log" >&2; echo "build failed: $ROOT/.build.log" >&2; exit 1; }
BIN="$CARGO_TARGET_DIR/release"

RUN="$ROOT/.run"
rm -rf "$RUN"
mkdir -p "$RUN/tansu"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
# On any failure, say where to look: the logs of every component are in .run/.
on_error() {
  echo >&2
  echo "FAILED (line $1). Logs: $RUN/processor.log (processor), $RUN/tansu.log (broker), $RUN/bqemulator.log (BigQuery emulator)." >&2
  if [[ -s "$RUN/processor.log" ]]; then
    echo "--- last lines of $RUN/processor.log ---" >&2
    tail -n 20 "$RUN/processor.log" >&2
  fi
}
trap 'on_error $LINENO' ERR

source "$ROOT/scripts/local-services.sh"

KAFKA_PORT="$(free_port)"
echo "==> starting tansu on 127.0.0.1:$KAFKA_PORT (SQLite storage in $RUN/tansu)" >&2
start_tansu "$RUN/tansu" "$KAFKA_PORT"

REST_PORT="$(free_port)"
GRPC_PORT="$(free_port)"
echo "==> starting the BigQuery emulator (REST 127.0.0.1:$REST_PORT, gRPC 127.0.0.1:$GRPC_PORT)" >&2
BQEMU_ENABLE_FORMAT_EXTENSIONS=false "$PAYDEDUP_CACHE/bqemulator-venv/bin/python" \
  "$ROOT/scripts/bqemu_launcher.py" start --rest-host 127.0.0.1 --rest-port "$REST_PORT" \
  --grpc-host 127.0.0.1 --grpc-port "$GRPC_PORT" --data-dir "$RUN/bigquery" \
  --project paydedup-local --log-level warning >"$RUN/bqemulator.log" 2>&1 &
PIDS+=($!)
wait_port "$REST_PORT"
wait_port "$GRPC_PORT"
BQ=(--bigquery-rest-url "http://127.0.0.1:$REST_PORT" --bigquery-grpc-url "http://127.0.0.1:$GRPC_PORT" --bigquery-no-auth)

echo "==> simulating $COUNT payments into topic 'payments' ($PARTITIONS partitions)" >&2
"$BIN/paydedup-simulator" --brokers "127.0.0.1:$KAFKA_PORT" --topic payments \
  --create-partitions "$PARTITIONS" --count "$COUNT" --seed "$SEED" \
  --manifest "$RUN/manifest.json"

echo "==> processing until caught up and delivered to BigQuery (emulator)" >&2
START=$(date +%s.%N)
"$BIN/paydedup-processor" run --brokers "127.0.0.1:$KAFKA_PORT" --topic payments \
  --state-dir "$RUN/state" --sink bigquery:paydedup-local.paydedup "${BQ[@]}" \
  --metrics-addr 127.0.0.1:0 --exit-when-caught-up --drain --log-format text 2>"$RUN/processor.log"
END=$(date +%s.%N)
python3 -c "d=$END-$START; print(f'processed and delivered {$COUNT} records in {d:.1f} s ({$COUNT/d:,.0f} records/s, start-up and DDL included)')"

echo "==> reconciling BigQuery against the manifest (views in sql/)" >&2
"$BIN/paydedup-processor" reconcile --output bigquery:paydedup-local.paydedup "${BQ[@]}" \
  --manifest "$RUN/manifest.json"

if [[ "$KEEP" == "1" ]]; then
  METRICS_PORT="$(free_port)"
  "$BIN/paydedup-processor" run --brokers "127.0.0.1:$KAFKA_PORT" --topic payments \
    --state-dir "$RUN/state" --sink bigquery:paydedup-local.paydedup "${BQ[@]}" \
    --metrics-addr "127.0.0.1:$METRICS_PORT" --log-format text 2>>"$RUN/processor.log" &
  PIDS+=($!)
  wait_port "$METRICS_PORT"
  PROM=""
  if command -v prometheus >/dev/null; then
    PROM_PORT="$(free_port)"
    mkdir -p "$RUN/prometheus"
    sed "s/processor:9464/127.0.0.1:$METRICS_PORT/" "$ROOT/deploy/prometheus/prometheus.yml" \
      >"$RUN/prometheus/prometheus.yml"
    cp "$ROOT/deploy/prometheus/alerts.yml" "$RUN/prometheus/"
    prometheus --config.file "$RUN/prometheus/prometheus.yml" \
      --storage.tsdb.path "$RUN/prometheus/data" \
      --web.listen-address "127.0.0.1:$PROM_PORT" >"$RUN/prometheus.log" 2>&1 &
    PIDS+=($!)
    PROM="http://127.0.0.1:$PROM_PORT (alerts: /alerts, try the query paydedup_records_total)"
  fi
  cat >&2 <<MSG

The stack stays up until Ctrl-C (KEEP=1):
  Kafka broker (tansu)  127.0.0.1:$KAFKA_PORT   topic 'payments'
  processor metrics     http://127.0.0.1:$METRICS_PORT/metrics  (/healthz, /readyz)
  Prometheus            ${PROM:-not installed (Debian: apt-get install prometheus)}
  BigQuery (emulator)   REST http://127.0.0.1:$REST_PORT  project paydedup-local, dataset paydedup
  logs                  $RUN/*.log
More payments:  $BIN/paydedup-simulator --brokers 127.0.0.1:$KAFKA_PORT --topic payments --count 10000 --seed 7
Reconcile again: $BIN/paydedup-processor reconcile --output bigquery:paydedup-local.paydedup ${BQ[*]}
MSG
  wait
fi
