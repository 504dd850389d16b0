#!/usr/bin/env bash
# paydedup beside the peer engines, on the same input, one after another in one run:
# the peers' generator (`../shared/peers/gen_events.py`: random ids, 10 % duplicates
# 0–120 s later, a tenth conflicting, 5 s out of order), then for each size the
# processor core without and with the relay (`cargo bench --bench peers`), the Python
# dict floor and tuned Flink 2.3 (the peers' own scripts). Prints one table.
#
#   scripts/bench-peers.sh              # 2 M events
#   scripts/bench-peers.sh 2m 10m       # both sizes (about 25 minutes here)
# Env: PEERS_SRC (default: ../shared/peers next to the clone), PEERS_DIR (venvs and
# data; default ~/.cache/paydedup/peers), REPS (runs per engine, default 1),
# ENGINES (default "paydedup paydedup-relay py flink").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
# Cargo reads .cargo/config.toml from the working directory (RocksDB's build flags).
cd "$ROOT"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
PEERS_DIR="${PEERS_DIR:-$PAYDEDUP_CACHE/peers}"
REPS="${REPS:-1}"
ENGINES="${ENGINES:-paydedup paydedup-relay py flink}"
SIZES=("${@:-2m}")
[[ -f "$PEERS_SRC/gen_events.py" ]] || { echo "no peers' scripts at $PEERS_SRC (set PEERS_SRC)" >&2; exit 2; }
mkdir -p "$PEERS_DIR"
RESULTS="$PEERS_DIR/results-$(date -u +%Y%m%dT%H%M%S).jsonl"

if [[ ! -x "$PEERS_DIR/venv/bin/python" ]]; then
  python3 -m venv "$PEERS_DIR/venv" && "$PEERS_DIR/venv/bin/pip" install -q orjson==3.13.0
fi
if [[ " $ENGINES " == *" flink "* && ! -x "$PEERS_DIR/venv-flink/bin/python" ]]; then
  command -v java >/dev/null || { echo "Flink needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 2; }
  python3 -m venv "$PEERS_DIR/venv-flink" && "$PEERS_DIR/venv-flink/bin/pip" install -q apache-flink==2.3.0
fi
cargo bench -p paydedup-processor --bench peers --no-run --manifest-path "$ROOT/Cargo.toml" >&2

for size in "${SIZES[@]}"; do
  case "$size" in
    2m) n=2000000; distinct=1800000 ;;
    10m) n=10000000; distinct=9000000 ;;
    *) echo "size must be 2m or 10m, got $size" >&2; exit 2 ;;
  esac
  data="$PEERS_DIR/data-$size"
  if [[ ! -f "$data.manifest.json" ]]; then
    python3 "$PEERS_SRC/gen_events.py" --out "$data" --n "$n" --distinct "$distinct" --files 20 --seed 42 >&2
  fi
  for engine in $ENGINES; do
    for i in $(seq 1 "$REPS"); do
      tag="data-$size/$engine#$i"
      echo "=== $tag $(date -u +%H:%M:%S)" >&2
      case "$engine" in
        paydedup) cargo bench -q -p paydedup-processor --bench peers --manifest-path "$ROOT/Cargo.toml" -- \
            "$data" --result-file "$RESULTS" --tag "$tag" >&2 ;;
        paydedup-relay) cargo bench -q -p paydedup-processor --bench peers --manifest-path "$ROOT/Cargo.toml" -- \
            "$data" --relay --result-file "$RESULTS" --tag "$tag" >&2 ;;
        py) "$PEERS_DIR/venv/bin/python" "$PEERS_SRC/py_dedup.py" --input "$data" --tag "$tag" \
            --result-file "$RESULTS" >&2 ;;
        flink) (cd "$PEERS_DIR" && "$PEERS_DIR/venv-flink/bin/python" "$PEERS_SRC/flink_dedup.py" --input "$data" \
            --work "$PEERS_DIR/work-flink" --tuned --tag "$tag" --result-file "$RESULTS") >&2 ;;
        *) echo "unknown engine $engine" >&2; exit 2 ;;
      esac
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| input | engine | events/s | peak RSS (MB) | correct | notes |")
print("|---|---|---|---|---|---|")
for r in rows:
    size, rest = r["tag"].split("/", 1)
    if r["engine"] == "paydedup":
        what = f"paydedup, {r['mode']} (synced commit per 5,000)"
        notes = (f"p50/p99 batch {r['p50_batch_ms']:.0f}/{r['p99_batch_ms']:.0f} ms, "
                 f"keyed state {r.get('keyed_state_bytes_per_live_key', 0):.0f} B per live key "
                 f"(dedup and fraud keys), whole directory {r['state_bytes_per_live_key']:.0f} B per live dedup key "
                 f"(dedup index alone: {r.get('dedup_bytes_per_live_key', 0):.0f} B; "
                 + ", ".join(f"{cf} {b / 1e6:.0f} MB" for cf, b in r.get("bytes_by_column_family", {}).items())
                 + ")")
        rss = r["peak_rss_mb"]
    elif r["engine"] == "flink":
        what = "Flink " + r["versions"]["flink"] + " SQL dedup, RocksDB, tuned"
        notes = "JVM peak RSS"
        rss = r.get("jvm_peak_rss_mb")
    else:
        what = f"Python dict + {r.get('parser', '')}, nothing durable"
        notes = ""
        rss = r.get("peak_rss_mb")
    print(f"| {size} | {what} | {r['events_per_s']:,.0f} | {rss} | {r['correct']} | {notes} |")
print(f"\n(raw results: {sys.argv[1]})", file=sys.stderr)
PY
