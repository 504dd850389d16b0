#!/usr/bin/env bash
# The alert rules and the scrape config: promtool's checks and unit tests
# (deploy/prometheus/alerts.test.yml), then a real Prometheus scraping a real processor
# (tansu broker, file sink) on 127.0.0.1: the target is up, the processor's series are
# queryable, every rule is loaded and evaluates without error, and every metric the
# rules read is exported under the name the rules use.
# Run: scripts/test-deploy.sh tests/deploy/test_alerts.sh
set -euo pipefail
ROOT="${PAYDEDUP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$ROOT/scripts/env.sh"
BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"
PROM_DIR="$ROOT/deploy/prometheus"
COUNT=1000

fail() { echo "FAIL: $*" >&2; exit 1; }

# Debian's package has both promtool and prometheus; a fresh CI machine lacks it.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  SUDO=()
  [[ "$(id -u)" -eq 0 ]] || SUDO=(sudo)
  echo "==> installing Debian's prometheus package (promtool, prometheus)" >&2
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi

echo "==> promtool: rules, their unit tests, the scrape config" >&2
promtool check rules "$PROM_DIR/alerts.yml"
promtool test rules "$PROM_DIR/alerts.test.yml"
promtool check config "$PROM_DIR/prometheus.yml"
# Every alert's runbook link lands on a heading of docs/operations.md (GitHub's anchors).
python3 - "$PROM_DIR/alerts.yml" "$ROOT/docs/operations.md" <<'PY'
import re, sys
rules, doc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.*)$", doc, re.M)}
alerts = re.findall(r"^\s+- alert: (\S+)", rules, re.M)
links = re.findall(r"^\s+runbook: docs/operations\.md#(\S+)$", rules, re.M)
bad = [l for l in links if l not in anchors]
if len(links) != len(alerts) or bad:
    sys.exit(f"FAIL: {len(alerts)} alerts, {len(links)} runbook links; not a heading of docs/operations.md: {bad}")
print(f"{len(links)} runbook links land on headings of docs/operations.md", file=sys.stderr)
PY

[[ -x "$BIN/paydedup-processor" && -x "$BIN/paydedup-simulator" ]] ||
  fail "no paydedup-processor/paydedup-simulator in $BIN (build first)"
[[ -x "$PAYDEDUP_TANSU" ]] || fail "no tansu at $PAYDEDUP_TANSU (scripts/setup.sh installs it)"

T="$(mktemp -d "${TMPDIR:-/tmp}/paydedup-alerts.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  # Reverse order: Prometheus, the processor (it delivers and exits on SIGTERM), tansu.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    for log in "$T"/*.log; do
      [[ -s "$log" ]] && { echo "--- tail of $log" >&2; tail -n 30 "$log" >&2; }
    done
  fi
  rm -rf "$T"
}
trap cleanup EXIT

source "$ROOT/scripts/local-services.sh"

KAFKA_PORT="$(free_port)"
echo "==> tansu on 127.0.0.1:$KAFKA_PORT" >&2
start_tansu "$T/tansu" "$KAFKA_PORT" || fail "tansu did not start"

echo "==> $COUNT records into a 2-partition topic" >&2
"$BIN/paydedup-simulator" --brokers "127.0.0.1:$KAFKA_PORT" --topic payments \
  --create-partitions 2 --count "$COUNT" --seed 7 --manifest "$T/manifest.json" --quiet \
  >"$T/simulator.log" 2>&1 || fail "the simulator failed"

METRICS_PORT="$(free_port)"
echo "==> processor, metrics on 127.0.0.1:$METRICS_PORT" >&2
"$BIN/paydedup-processor" run --brokers "127.0.0.1:$KAFKA_PORT" --topic payments \
  --state-dir "$T/state" --sink "file:$T/output" --sync false \
  --metrics-addr "127.0.0.1:$METRICS_PORT" --log-format text >"$T/processor.log" 2>&1 &
PIDS+=($!)
wait_port "$METRICS_PORT"

PROM_PORT="$(free_port)"
cat >"$T/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PROM_DIR/alerts.yml
scrape_configs:
  - job_name: paydedup
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
echo "==> Prometheus on 127.0.0.1:$PROM_PORT" >&2
prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$T/prometheus.log" 2>&1 &
PIDS+=($!)
wait_port "$PROM_PORT"

# The reconcile alerts read what `reconcile --metrics-file` writes: its names are checked
# too (the result itself does not matter here: the output is still being written).
"$BIN/paydedup-processor" reconcile --output "file:$T/output" --metrics-file "$T/reconcile.prom" \
  >"$T/reconcile.log" 2>&1 || true
[[ -s "$T/reconcile.prom" ]] || fail "reconcile --metrics-file wrote nothing"

echo "==> asserting the scrape, the series and the rules" >&2
python3 - "$METRICS_PORT" "$PROM_PORT" "$PROM_DIR/alerts.yml" "$COUNT" "$T/reconcile.prom" <<'EOF'
import json, re, sys, time, urllib.parse, urllib.request

metrics_port, prom_port, rules_file, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
reconcile_prom = open(sys.argv[5]).read()
PROM = f"http://127.0.0.1:{prom_port}"
failures = []

def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()

def api(path, **params):
    body = json.loads(get(f"{PROM}{path}?{urllib.parse.urlencode(params)}"))
    assert body["status"] == "success", body
    return body["data"]

def query(q):
    return api("/api/v1/query", query=q)["result"]

def until(what, check, timeout=30):
    """Polls `check` until it returns a true value; records a failure on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.25)
    failures.append(f"{what} (last: {last!r})")
    return None

# The processor: caught up on every record of the topic.
def exposition():
    return get(f"http://127.0.0.1:{metrics_port}/metrics")

def families(text):
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}

def processed(text):
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("paydedup_records_total{"))

until(f"the processor processed {count} records", lambda: processed(exposition()) == count)
# Lag is measured on the processor's own schedule, not with every batch: a scrape right
# after the last record may come before the first measurement.
until("the processor measured its lag",
      lambda: "paydedup_consumer_lag_records" in families(exposition()))
text = exposition()
exported = families(text)

# Renamed and added metrics (issue 12): the rules read these names.
expected = [
    "paydedup_watermark_timestamp_seconds", "paydedup_combined_watermark_timestamp_seconds",
    "paydedup_build_info", "paydedup_outbox_oldest_row_age_seconds", "paydedup_state_size_bytes",
    "process_start_time_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total",
    "process_open_fds", "process_max_fds",
]
for name in expected:
    if name not in exported:
        failures.append(f"/metrics has no {name}")
for old in ["paydedup_watermark_seconds", "paydedup_combined_watermark_seconds"]:
    if old in exported:
        failures.append(f"/metrics still has the old name {old}")
if not re.search(r'^paydedup_build_info\{[^}]*revision="[^"]*"[^}]*\} 1$', text, re.M):
    failures.append("paydedup_build_info{version,revision} is not 1")

# Every metric a rule reads must exist, or the rule is silently never true. Labelled
# counters that only appear once something failed are the exception.
rules_text = open(rules_file).read()
exprs = re.findall(r"^\s+expr: (?:\|\n)?(.*?)^\s+(?:for|labels):", rules_text, re.M | re.S)
read = set(re.findall(r"\b((?:paydedup|process)_[a-z_]+)\b", "\n".join(exprs)))
only_on_failure = {"paydedup_relay_failures_total", "paydedup_sink_errors_total"}
exported_by_reconcile = families(reconcile_prom)
for name in sorted(read - only_on_failure - exported - exported_by_reconcile):
    failures.append(f"a rule reads {name}, which neither the processor nor reconcile exports")

# Prometheus: the target is up and the processor's series are queryable.
def target_up():
    targets = api("/api/v1/targets")["activeTargets"]
    return [t for t in targets if t["labels"]["job"] == "paydedup" and t["health"] == "up"]

until("the paydedup target is up", target_up)
until(f"sum(paydedup_records_total) is {count} through Prometheus",
      lambda: [r for r in query('sum(paydedup_records_total{job="paydedup"})') if float(r["value"][1]) == count])
until("process_start_time_seconds is queryable",
      lambda: query('process_start_time_seconds{job="paydedup"}'))

# The rules: each alert of alerts.yml is loaded, and has been evaluated against the
# real series without an error (a many-to-many match only fails at evaluation).
names = set(re.findall(r"^\s+- alert: (\S+)", rules_text, re.M))
def rules_evaluated():
    rules = [r for g in api("/api/v1/rules", type="alert")["groups"] for r in g["rules"]]
    loaded = {r["name"] for r in rules}
    if loaded != names:
        return None
    return all(not r.get("lastEvaluation", "").startswith("0001") for r in rules) and rules

rules = until(f"the {len(names)} alerts of alerts.yml are loaded and evaluated", rules_evaluated)
for r in rules or []:
    if r["health"] != "ok":
        failures.append(f"rule {r['name']} evaluates with an error: {r.get('lastError')}")

# With the target scraped, the liveness alerts stand down (an evaluation before the
# first scrape may have seen no target and set PaydedupProcessorAbsent pending).
liveness = {"PaydedupProcessorDown", "PaydedupProcessorAbsent"}
until("PaydedupProcessorDown and PaydedupProcessorAbsent inactive with the processor up",
      lambda: all(r["state"] == "inactive"
                  for g in api("/api/v1/rules", type="alert")["groups"] for r in g["rules"]
                  if r["name"] in liveness))

if failures:
    print("\n".join(f"FAIL: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
print(f"ok: target up, {count} records through Prometheus, {len(names)} alerts loaded and evaluated, "
      f"{len(read)} metric names the rules read all exported", file=sys.stderr)
EOF
