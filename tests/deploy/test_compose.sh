#!/usr/bin/env bash
# docker-compose.yml, up for real under podman-compose with tests/deploy/compose.local.yml
# (images built here by scripts/build-images.sh: tansu for Kafka, Debian's Prometheus;
# Grafana has no image here, so its provisioning files are only parsed and checked):
#   - the files: docker-compose (1.29) accepts both compose files, Grafana's
#     provisioning and the dashboard parse, every depends_on names a condition,
#     long-running services restart, the bind mounts exist, the override replaces no
#     list (podman-compose would append it), and promtool accepts the Prometheus config
#     with its rules;
#   - the stack: broker, emulator, topic, processor (to BigQuery), simulator (COUNT
#     payments), Prometheus. The test waits for each itself (podman-compose ignores
#     depends_on conditions; health checks run only when asked: no systemd);
#   - the processor delivers everything (its metrics: every record counted, no lag,
#     outbox empty), Prometheus scrapes it (up{job="paydedup"} == 1 and its record
#     count through Prometheus' API) and loaded every alert rule;
#   - the end of the run as the compose file documents it: stop the processor (exit 0),
#     then the `reconcile` service (drain, reconcile the warehouse against the
#     simulator's manifest) exits 0 with every check PASS.
# Everything is torn down on exit, volumes included.
# Run: scripts/test-deploy.sh tests/deploy/test_compose.sh
set -euo pipefail
ROOT="${PAYDEDUP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$ROOT/scripts/env.sh"
export PAYDEDUP_BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"
export COUNT="${COUNT:-10000}"
cd "$ROOT"

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }
# No systemd here: podman logs an error for each health-checked container, and
# aardvark-dns one for the missing syslog. Everything else podman says stays.
podman() {
  command podman "$@" 2> >(grep -v -e 'unable to get systemd connection' -e 'failed to connect to syslog' >&2)
}

# podman-compose runs the stack; Debian's docker-compose (1.29, no engine needed for
# `config`) validates the files against Docker's own schema, the one check here of the
# file as docker compose users get it.
need=()
command -v podman-compose >/dev/null || need+=(podman-compose)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [[ ${#need[@]} -gt 0 ]]; then
  step "installing ${need[*]}"
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
"$ROOT/scripts/build-images.sh"

# ------------------------------------------------------------------ the files
# The rules file belongs to the alerting work; a stand-in only if it is not there yet,
# so the bind mount has a file to mount (podman-compose would make a directory).
PLACEHOLDER=""
if [[ ! -e deploy/prometheus/alerts.yml ]]; then
  PLACEHOLDER=deploy/prometheus/alerts.yml
  echo "groups: []  # stand-in written by tests/deploy/test_compose.sh" >"$PLACEHOLDER"
fi

step "compose files, Grafana provisioning, dashboard"
docker-compose -f docker-compose.yml config -q || fail "docker-compose rejects docker-compose.yml"
docker-compose -f docker-compose.yml -f tests/deploy/compose.local.yml config -q \
  || fail "docker-compose rejects docker-compose.yml with tests/deploy/compose.local.yml"
python3 - <<'PY'
import json, os, sys, yaml
main = yaml.safe_load(open("docker-compose.yml"))
local = yaml.safe_load(open("tests/deploy/compose.local.yml"))
services = main["services"]
errors = []
for name, svc in services.items():
    deps = svc.get("depends_on", {})
    if not isinstance(deps, dict) or any("condition" not in d for d in deps.values()):
        errors.append(f"{name}: depends_on without conditions")
    for dep in deps:
        if dep not in services:
            errors.append(f"{name}: depends on unknown {dep}")
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(src):
                errors.append(f"{name}: bind mount {src} missing")
        elif src not in main.get("volumes", {}):
            errors.append(f"{name}: volume {src} not declared")
long_running = {"kafka", "bigquery", "processor", "prometheus", "grafana"}
for name in long_running:
    if services[name].get("restart") != "unless-stopped":
        errors.append(f"{name}: long-running without restart: unless-stopped")
for name in ("topic", "simulator"):
    if not str(services[name].get("restart", "")).startswith("on-failure"):
        errors.append(f"{name}: one-shot without restart: on-failure")
# The override may only name services the main file has, and must not use lists
# (podman-compose would append them to the main file's).
def lists(value, path):
    if isinstance(value, list):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from lists(v, f"{path}.{k}")
for name, svc in local["services"].items():
    if name not in services:
        errors.append(f"override: unknown service {name}")
        continue
    errors += [f"override: {p} is a list (appended, not replaced)" for p in lists(svc, name)]
    if "command" in svc and not isinstance(services[name].get("command", ""), str):
        errors.append(f"{name}.command must be a string in the main file")
    if "test" in svc.get("healthcheck", {}) and not isinstance(services[name].get("healthcheck", {}).get("test", ""), str):
        errors.append(f"{name}.healthcheck.test must be a string in the main file")
# Grafana: the datasource is the default (the dashboard's panels name none) and points
# at the prometheus service; the dashboard provider reads where the JSON is mounted.
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
(d,) = ds["datasources"]
if d["type"] != "prometheus" or d["url"] != "http://prometheus:9090" or not d.get("isDefault"):
    errors.append(f"grafana datasource: {d}")
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/paydedup.yml"))
path = prov["providers"][0]["options"]["path"]
mounts = [v for v in services["grafana"]["volumes"] if v.startswith("./docs/grafana-dashboard.json:")]
if not mounts or os.path.dirname(mounts[0].split(":")[1]) != path:
    errors.append(f"grafana: dashboard mounted at {mounts}, provider reads {path}")
dash = json.load(open("docs/grafana-dashboard.json"))
if not dash.get("panels") or not dash.get("uid"):
    errors.append("dashboard JSON has no panels or uid")
if errors:
    sys.exit("FAIL: " + "; ".join(errors))
PY
# promtool from the Prometheus image, on the files as the container mounts them.
podman run --rm --entrypoint promtool -v "$ROOT/deploy/prometheus:/etc/prometheus:ro" \
  localhost/paydedup/prometheus:dev check config /etc/prometheus/prometheus.yml >/dev/null \
  || fail "promtool check config"

# ------------------------------------------------------------------ the stack
P="paydedup-compose-$$"
LOG="$(mktemp "${TMPDIR:-/tmp}/$P.XXXXXX.log")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export PROMETHEUS_PORT PROCESSOR_METRICS_PORT
PROMETHEUS_PORT="$(free_port)"
PROCESSOR_METRICS_PORT="$(free_port)"
# podman-compose prints every podman command it runs: to a log, shown on failure.
compose() {
  command podman-compose -p "$P" -f docker-compose.yml -f tests/deploy/compose.local.yml "$@" \
    >>"$LOG" 2>&1
}
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "--- tail of $LOG" >&2; tail -n 20 "$LOG" >&2
    for c in $(command podman ps -a --filter "label=io.podman.compose.project=$P" --format '{{.Names}}'); do
      echo "--- logs of $c" >&2
      command podman logs --tail 25 "$c" 2>&1 | grep -v 'systemd connection' >&2 || true
    done
  fi
  # podman-compose 1.0.3's `down -v` removes the named volumes but not the anonymous
  # ones the images' VOLUMEs make (the topic service mounts none): rm -v first.
  ids=$(command podman ps -aq --filter "label=io.podman.compose.project=$P")
  [[ -z "$ids" ]] || podman rm -f -v -t 5 $ids >/dev/null 2>&1 || true
  compose down -v -t 5 || true
  podman network rm -f "${P}_default" >/dev/null 2>&1 || true
  [[ -z "$PLACEHOLDER" ]] || rm -f "$PLACEHOLDER"
  rm -f "$LOG"
  exit $rc
}
trap cleanup EXIT

C() { echo "${P}_$1_1"; }
wait_healthy() {
  local c; c="$(C "$1")"
  for ((i = 0; i < $2; i++)); do
    if podman healthcheck run "$c" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  fail "$1 not healthy after $2 s"
}
# A one-shot service: done when it exited 0 (restarts on failure until then).
wait_done() {
  local c state; c="$(C "$1")"
  for ((i = 0; i < $2; i++)); do
    state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$c")
    [[ "$state" == "exited 0" ]] && return 0
    sleep 1
  done
  fail "$1 not done after $2 s (state: $state)"
}

SERVICES=(kafka bigquery topic processor simulator prometheus)
step "podman-compose up ${SERVICES[*]} (project $P, $COUNT payments)"
S=$(date +%s)
compose up -d --no-build "${SERVICES[@]}"
wait_healthy kafka 60
wait_healthy bigquery 90
wait_done topic 120
wait_healthy processor 120
wait_done simulator 300
echo "    stack up and $COUNT payments sent in $(( $(date +%s) - S )) s" >&2
ro=$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "$(C processor)")
[[ "$ro" == "true 10001:10001" ]] || fail "processor container: read-only root, user = $ro"
# What the restart policies absorbed of podman-compose starting everything at once.
for s in "${SERVICES[@]}"; do
  echo -n "$s $(podman inspect --format '{{.RestartCount}}' "$(C "$s")"), "
done | sed 's/, $//; s/^/    restarts: /' >&2; echo >&2

step "processor delivers everything (its /metrics)"
python3 - "$PROCESSOR_METRICS_PORT" "$COUNT" <<'PY'
import re, sys, time, urllib.request
port, count = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 300
while True:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    def values(name):
        return [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    records, lag, outbox = sum(values("paydedup_records_total")), values("paydedup_consumer_lag_records"), values("paydedup_outbox_depth_rows")
    if records == count and lag and not any(lag) and outbox == [0.0]:
        print(f"    {records:.0f} records, lag 0 on {len(lag)} partitions, outbox empty", file=sys.stderr)
        break
    if time.time() > deadline:
        sys.exit(f"FAIL: records {records}/{count}, lag {lag}, outbox {outbox}")
    time.sleep(1)
PY

step "Prometheus scrapes the processor and loaded the rules"
python3 - "$PROMETHEUS_PORT" "$COUNT" deploy/prometheus/alerts.yml <<'PY'
import json, sys, time, urllib.parse, urllib.request, yaml
port, count, rules_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def api(path, **params):
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    reply = json.load(urllib.request.urlopen(url, timeout=5))
    assert reply["status"] == "success", reply
    return reply["data"]
def scalar(query):
    result = api("query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None
deadline = time.time() + 60
while True:
    try:
        up, records = scalar('up{job="paydedup"}'), scalar('sum(paydedup_records_total{job="paydedup"})')
    except OSError:
        up = records = None
    if up == 1 and records == count:
        break
    if time.time() > deadline:
        sys.exit(f"FAIL: up{{job=\"paydedup\"}} = {up}, records through Prometheus = {records} (want 1, {count})")
    time.sleep(2)
want = sum(len(g.get("rules", [])) for g in (yaml.safe_load(open(rules_file)) or {}).get("groups") or [])
groups = api("rules")["groups"]
loaded = sum(len(g["rules"]) for g in groups)
bad = [r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
if loaded != want or bad:
    sys.exit(f"FAIL: {loaded} rules loaded, {want} in {rules_file}; unhealthy: {bad}")
print(f"    up == 1, {records:.0f} records through Prometheus, {loaded} rules loaded", file=sys.stderr)
PY
wait_healthy prometheus 30

step "stop the processor, then the reconcile service (drain, reconcile vs manifest)"
compose stop -t 60 processor
code=$(podman inspect --format '{{.State.ExitCode}}' "$(C processor)")
[[ "$code" == 0 ]] || fail "processor exited $code on stop"
# `up SERVICE`, not `run`: podman-compose 1.0.3's run rebuilds images (see the compose
# file). Its dependencies are up already; podman-compose only starts them again.
compose up -d --no-build reconcile
code=$(podman wait "$(C reconcile)")
out=$(command podman logs "$(C reconcile)" 2>&1)
grep -E '(PASS|FAIL)$|^(PASS|FAIL):' <<<"$out" >&2 || true
[[ "$code" == 0 ]] || { tail -n 30 <<<"$out" >&2; fail "reconcile exited $code"; }
grep -q '^PASS: all [0-9]* checks passed$' <<<"$out" || fail "reconcile printed no PASS line"
! grep -q 'FAIL$' <<<"$out" || fail "reconcile has failing checks"
echo "compose: all checks passed in $(( $(date +%s) - S )) s" >&2
