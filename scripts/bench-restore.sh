#!/usr/bin/env bash
# How long a restore from the warehouse takes: produces RECORDS simulated payments
# (random ids, every kind of fault) to a tansu broker, processes them to the end into
# the file sink, deletes the state directory, and times `paydedup-processor restore`
# into an empty one. Prints one table row.
#
#   scripts/bench-restore.sh 1000000          # RECORDS (default 1000000)
#   PARTITIONS=4 DIR=/var/tmp/bench-restore scripts/bench-restore.sh 10000000
#   RETENTION=172800 scripts/bench-restore.sh 10000000   # every id still alive: 10 M keys
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
RECORDS="${1:-1000000}"
PARTITIONS="${PARTITIONS:-4}"
DIR="${DIR:-$(mktemp -d /var/tmp/paydedup-bench-restore.XXXXXX)}"

"$ROOT/scripts/setup.sh"
if [[ -z "${BIN:-}" ]]; then # BIN=DIR: binaries built (and copied) beforehand
  # From the repository: cargo reads .cargo/config.toml (RocksDB's build flags) there.
  (cd "$ROOT" && cargo build --release --locked --all-features \
    -p paydedup-simulator -p paydedup-processor) >&2
  BIN="$CARGO_TARGET_DIR/release"
fi

rm -rf "$DIR" && mkdir -p "$DIR/tansu"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
(cd "$DIR/tansu" && exec env -i PATH="$PATH" RUST_LOG=warn "$PAYDEDUP_TANSU" broker \
  --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine sqlite://tansu.db >"$DIR/tansu.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 1 300); do
  python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$PORT)))" && break
  sleep 0.1
done

FLAGS=(--brokers "127.0.0.1:$PORT" --topic payments --sink "file:$DIR/out" --log-format text
  --metrics-addr 127.0.0.1:0 --retention-secs "${RETENTION:-3600}")
echo "==> producing $RECORDS records" >&2
"$BIN/paydedup-simulator" --brokers "127.0.0.1:$PORT" --topic payments \
  --create-partitions "$PARTITIONS" --count "$RECORDS" --seed 11 --quiet \
  --manifest "$DIR/manifest.json" >&2
echo "==> processing them into the file sink" >&2
RUST_LOG=warn "$BIN/paydedup-processor" run "${FLAGS[@]}" --state-dir "$DIR/state" \
  --exit-when-caught-up --drain >&2
# The lost state's live dedup index (count and digest per partition), to compare.
"$BIN/paydedup-processor" state --live-dedup --json --state-dir "$DIR/state" >"$DIR/lost-index.json"
mv "$DIR/state" "$DIR/lost-state"
echo "==> restoring from the sink" >&2
/usr/bin/time -f "%e %M" -o "$DIR/time" "$BIN/paydedup-processor" restore "${FLAGS[@]}" \
  --state-dir "$DIR/state" >"$DIR/restore.txt"
read -r secs rss_kib <"$DIR/time"
"$BIN/paydedup-processor" state --live-dedup --json --state-dir "$DIR/state" >"$DIR/restored-index.json"
same="no"
cmp -s "$DIR/lost-index.json" "$DIR/restored-index.json" && same="yes"
keys="$(python3 -c "import json,sys; print(sum(p['live'] for p in json.load(open(sys.argv[1])).values()))" "$DIR/restored-index.json")"
echo "| records | rows read | live dedup entries | index equal to the lost one's | restore (s) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|"
rows="$(sed -n 's/.* from \([0-9]*\) rows.*/\1/p' "$DIR/restore.txt")"
echo "| $RECORDS | $rows | $keys | $same | $secs | $((rss_kib / 1024)) |"
cat "$DIR/restore.txt" >&2
