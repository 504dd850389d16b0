#!/usr/bin/env bash
# The Kubernetes manifests (k8s/): valid, hardened, and their pods start.
#
# 1. Every manifest against the Kubernetes API schemas of several releases with
#    kubernetes-validate (PyPI), strict (unknown fields fail). Its command line only
#    warns on a kind it has no schema for, so tests/deploy/k8s_manifests.py calls its
#    library instead and fails on an unknown kind, except the ServiceMonitor (a CRD),
#    checked against the monitoring.coreos.com/v1 fields it uses, closed as the API
#    server's strict field validation is, and kustomization.yaml (checked to list
#    every manifest). Then the properties the manifests promise (hardening, probes,
#    grace period > exit flush, RBAC, PDB, BigQuery sink, variables the programs read),
#    and that each of a list of harmful edits fails those checks.
# 2. The processor's pod under `podman kube play`. podman 4.3 plays Pods, Deployments,
#    PersistentVolumeClaims and ConfigMaps, not StatefulSets, Jobs or CronJobs, so the
#    StatefulSet's pod template becomes a Pod (k8s_manifests.py pod: what changes and
#    why) with the simulator Job's container, a broker and the BigQuery emulator beside
#    it. Asserted: /readyz answers 200 (state open, partitions assigned), every record
#    is processed and delivered, the process runs as 10001 with no capabilities,
#    no_new_privs, seccomp and a read-only root, and its state is on the claim; SIGTERM
#    ends it with exit 0 inside the grace period; its container again on the same claim,
#    as a drained bounded run, exits 0; then the reconcile CronJob's container, run with
#    its manifest's user and hardening, passes against what was delivered.
#    Not asserted by podman (it ignores them): fsGroup (podman gives a new named volume
#    to the container's user itself), runAsNonRoot, resources' requests.
#
# Images: localhost/paydedup/{processor,simulator,tansu,bqemulator}:dev from
# scripts/build-images.sh, built here if missing.
set -euo pipefail
ROOT="${PAYDEDUP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
CACHE="${PAYDEDUP_CACHE:-$HOME/.cache/paydedup}"
cd "$ROOT"
T0=$(date +%s)
step() { echo "--- $* (at $(( $(date +%s) - T0 )) s)" >&2; }

# --- 1. schemas and properties -----------------------------------------------------------
# Pinned: its schemas decide what passes; a newer release is a deliberate change here.
KV_VERSION=1.37.0
VENV="$CACHE/kubernetes-validate-venv"
if ! "$VENV/bin/python" -c "import kubernetes_validate as k, sys; sys.exit(k.__version__ != '$KV_VERSION')" 2>/dev/null; then
  step "installing kubernetes-validate $KV_VERSION into $VENV (once)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi
PY="$VENV/bin/python"
CHECK=tests/deploy/k8s_manifests.py
step "validating k8s/"
"$PY" "$CHECK" check "$ROOT"
"$PY" "$CHECK" mutants "$ROOT"

# --- 2. the processor's pod under podman ------------------------------------------------
POD=paydedup-k8s-test
declare -A IMAGES=(
  [processor]=localhost/paydedup/processor:dev
  [simulator]=localhost/paydedup/simulator:dev
  [tansu]=localhost/paydedup/tansu:dev
  [bqemulator]=localhost/paydedup/bqemulator:dev
)
missing=()
for name in "${!IMAGES[@]}"; do podman image exists "${IMAGES[$name]}" || missing+=("$name"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  step "building images: ${missing[*]}"
  scripts/build-images.sh "${missing[@]}"
fi

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
POD_YAML="$WORK/pod.yaml"
"$PY" "$CHECK" pod "$ROOT" "$POD_YAML" "$PORT" \
  "processor=${IMAGES[processor]}" "simulator=${IMAGES[simulator]}" \
  "tansu=${IMAGES[tansu]}" "bqemulator=${IMAGES[bqemulator]}"

down() {
  # `kube down` leaves the claim's volume (podman 4.3 has no --force for it).
  podman kube down "$POD_YAML" >/dev/null 2>&1 || podman pod rm -f "$POD" >/dev/null 2>&1 || true
  podman volume rm -f "$POD-state" >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    for c in processor simulator broker bigquery; do
      echo "----- $POD-$c (last lines)" >&2
      podman logs --tail 40 "$POD-$c" >&2 2>/dev/null || true
    done
  fi
  down
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
down   # what an interrupted run left

fail() { echo "FAIL: $*" >&2; exit 1; }
url() { echo "http://127.0.0.1:$PORT$1"; }
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$(url "$1")" || true; }
metric_sum() {  # the sum of a metric's samples on /metrics (0 when absent)
  curl -s --max-time 3 "$(url /metrics)" \
    | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}

step "podman kube play (pod $POD, metrics on 127.0.0.1:$PORT)"
podman kube play "$POD_YAML" >/dev/null
S=$(date +%s)
until [[ "$(status /readyz)" == 200 ]]; do
  (( $(date +%s) - S < 240 )) || fail "the processor was not ready within 240 s (/readyz: $(status /readyz))"
  sleep 1
done
step "processor ready after $(( $(date +%s) - S )) s (/readyz 200)"
[[ "$(status /healthz)" == 200 ]] || fail "/healthz answered $(status /healthz)"

# The process itself, seen from the host: who it runs as and what it may do.
PID="$(podman inspect --format '{{.State.Pid}}' "$POD-processor")"
[[ "$PID" -gt 0 ]] || fail "the processor container is not running"
uids="$(awk '/^Uid:/ {print $2,$3,$4,$5}' "/proc/$PID/status")"
gids="$(awk '/^Gid:/ {print $2,$3,$4,$5}' "/proc/$PID/status")"
[[ "$uids" == "10001 10001 10001 10001" && "$gids" == "10001 10001 10001 10001" ]] \
  || fail "the processor runs as uid $uids gid $gids, not 10001"
[[ "$(awk '/^CapEff:/ {print $2}' "/proc/$PID/status")" == 0000000000000000 ]] || fail "the processor has capabilities"
[[ "$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$PID/status")" == 1 ]] || fail "no_new_privs is not set"
[[ "$(awk '/^Seccomp:/ {print $2}' "/proc/$PID/status")" == 2 ]] || fail "no seccomp filter"
# mountinfo: mount point is field 5, its options field 6.
root_opts="$(awk '$5 == "/" {print $6}' "/proc/$PID/mountinfo")"
[[ ",$root_opts," == *,ro,* ]] || fail "the root filesystem is mounted $root_opts, not read-only"
if (echo x > "/proc/$PID/root/usr/local/bin/.paydedup-write-test") 2>/dev/null; then
  fail "the processor's root filesystem is writable"
fi
state_opts="$(awk '$5 == "/var/lib/paydedup" {print $6}' "/proc/$PID/mountinfo")"
[[ ",$state_opts," == *,rw,* ]] || fail "/var/lib/paydedup is not a writable mount ($state_opts)"

# Everything the simulator produced is processed and delivered.
step "waiting for the simulator's records to be processed and delivered"
RECORDS="$("$PY" -c "import sys; sys.path.insert(0, 'tests/deploy'); import k8s_manifests; print(k8s_manifests.RECORDS)")"
S=$(date +%s)
while :; do
  seen="$(metric_sum paydedup_records_total)"
  depth="$(metric_sum paydedup_outbox_depth_rows)"
  [[ "$seen" -ge "$RECORDS" && "$depth" -eq 0 ]] && break
  (( $(date +%s) - S < 180 )) || fail "after 180 s: $seen of $RECORDS records processed, $depth rows undelivered"
  sleep 1
done
[[ "$seen" -eq "$RECORDS" ]] || fail "$seen records processed, the simulator produced $RECORDS"
[[ "$(podman inspect --format '{{.State.ExitCode}} {{.State.Status}}' "$POD-simulator")" == "0 exited" ]] \
  || fail "the simulator did not exit 0"
step "$seen records processed and delivered in $(( $(date +%s) - S )) s"

# The state is on the claim, written by the pod's user.
VOL="$(podman volume inspect --format '{{.Mountpoint}}' "$POD-state")"
[[ -s "$VOL/state/CURRENT" ]] || fail "no RocksDB state on the claim's volume ($VOL/state)"
owners="$(find "$VOL/state" -maxdepth 1 -type f -printf '%U:%G\n' | sort -u | tr '\n' ' ')"
[[ "$owners" == "10001:10001 " ]] || fail "state files owned by $owners, not 10001:10001"

# SIGTERM: the batch in hand, the outbox, exit 0, inside the grace period.
GRACE="$("$PY" -c "
import sys; sys.path.insert(0, 'tests/deploy'); import k8s_manifests as k
print(k.sts_of(k.load('$ROOT'))['spec']['template']['spec']['terminationGracePeriodSeconds'])")"
S=$(date +%s)
podman stop --time "$GRACE" "$POD-processor" >/dev/null
took=$(( $(date +%s) - S ))
code="$(podman inspect --format '{{.State.ExitCode}}' "$POD-processor")"
[[ "$code" == 0 ]] || fail "the processor exited $code on SIGTERM"
step "SIGTERM: exit 0 after $took s (grace $GRACE s)"

# Reconcile checks a finished stream: windows still open have no payment_metrics row
# yet (why the CronJob is suspended, k8s/reconcile.yaml). So the processor's container
# runs once more on the same claim as a bounded run that closes them, then the
# CronJob's container runs reconcile; both with their manifests' user and hardening.
in_pod() {  # NAME processor|reconcile [ARG ...]: that container in the pod, to its end
  local name="$1"; shift
  local args
  mapfile -t args < <("$PY" "$CHECK" run-args "$ROOT" "$@")
  for i in "${!args[@]}"; do [[ "${args[$i]}" == IMAGE ]] && args[$i]="${IMAGES[processor]}"; done
  podman run --rm --pod "$POD" --name "$POD-$name" "${args[@]}" >"$WORK/$name.txt" 2>&1
}
step "the processor again on the claim, --exit-when-caught-up --drain"
S=$(date +%s)
in_pod drain processor --exit-when-caught-up --drain \
  || { tail -n 30 "$WORK/drain.txt" >&2; fail "the drained run on the claim failed"; }
step "drained in $(( $(date +%s) - S )) s"
step "reconcile (the CronJob's container) against the emulator"
in_pod reconcile reconcile || { cat "$WORK/reconcile.txt" >&2; fail "reconcile failed against what the processor delivered"; }
echo "    reconcile: $(grep -c ' PASS$' "$WORK/reconcile.txt") checks PASS, none failed" >&2
echo "k8s: manifests valid and hardened; the processor's pod ran under podman kube play ($(( $(date +%s) - T0 )) s)"
