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
#    grace period > exit flush, RBAC, PDB, BigQuery sink, variables the programs read,
#    the reconcile CronJob in scheduled mode, not suspended, with the processor's
#    configuration), each for both choices of BigQuery credentials: GKE workload
#    identity (k8s/ as written: annotated ServiceAccounts, no key) and the key-secret
#    component (GOOGLE_APPLICATION_CREDENTIALS on a read-only, required Secret mount),
#    the component applied by the checker and, where kubectl is installed, compared with
#    `kubectl kustomize`. Then that each of a list of harmful edits fails those checks.
# 2. The processor's pod under `podman kube play`. podman 4.3 plays Pods, Deployments,
#    PersistentVolumeClaims and ConfigMaps, not StatefulSets, Jobs or CronJobs, so the
#    StatefulSet's pod template becomes a Pod (k8s_manifests.py pod: what changes and
#    why) with the simulator Job's container, a broker and the BigQuery emulator beside
#    it. Asserted: /readyz answers 200 (state open, partitions assigned), every record
#    is processed and delivered, the process runs as 10001 with no capabilities,
#    no_new_privs, seccomp and a read-only root, and its state is on the claim; the
#    reconcile CronJob's container, with its manifest's arguments, user and hardening,
#    passes against the live output, and again with the settle margin at 0 (the test
#    cannot wait the hour) checking every delivered record; SIGTERM ends the processor
#    with exit 0 inside the grace period; its container again on the same claim, as a
#    drained bounded run, exits 0, and reconcile over the whole output passes; the
#    CronJob's container as the key-secret component makes it, with a service-account
#    key laid out as the kubelet mounts a Secret (root:10001, 0440), reads the key through
#    GOOGLE_APPLICATION_CREDENTIALS and, its token endpoint refused, exits 2.
#    Not asserted by podman (it ignores them): fsGroup (podman gives a new named volume
#    to the container's user itself), runAsNonRoot, resources' requests.
#
# Images: localhost/paydedup/{processor,simulator,tansu,bqemulator}:dev from
# scripts/build-images.sh, which rebuilds one whose binary or inputs changed (seconds
# when none did).
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
step "images (scripts/build-images.sh)"
scripts/build-images.sh processor simulator tansu bqemulator

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

# The reconcile CronJob's container against the live output, as the CronJob runs it
# every hour: its manifest's arguments (scheduled mode), environment (the ConfigMap,
# the sink pointed at the emulator), user and hardening. k8s_manifests.py run-args
# gives its `podman run` arguments; in the pod, it reaches the emulator on localhost.
in_pod() {  # NAME processor|reconcile|reconcile-key [ARG ...]: that container in the pod, to its end
  local name="$1"; shift
  local args
  mapfile -t args < <("$PY" "$CHECK" run-args "$ROOT" "$@")
  for i in "${!args[@]}"; do [[ "${args[$i]}" == IMAGE ]] && args[$i]="${IMAGES[processor]}"; done
  podman run --rm --pod "$POD" --name "$POD-$name" "${args[@]}" >"$WORK/$name.txt" 2>&1
}
passed() {  # NAME: reconcile's output passed, and says so on its last line
  grep -q '^PASS: all [0-9]* checks passed$' "$WORK/$1.txt" && ! grep -q ' FAIL$' "$WORK/$1.txt"
}
step "reconcile, the CronJob's container as written, against the live output"
in_pod reconcile-cron reconcile && passed reconcile-cron \
  || { cat "$WORK/reconcile-cron.txt" >&2; fail "the CronJob's reconcile failed on the live output"; }
grep -q '^scheduled: ' "$WORK/reconcile-cron.txt" || { cat "$WORK/reconcile-cron.txt" >&2; fail "the CronJob's reconcile did not run in scheduled mode"; }
echo "    $(grep '^scheduled: ' "$WORK/reconcile-cron.txt" | sed 's/.*; //') (--settle-secs 3600: every record is younger)" >&2
step "reconcile, the CronJob's container with --settle-secs=0 (every delivered record settled)"
in_pod reconcile-live reconcile --settle-secs=0 && passed reconcile-live \
  || { cat "$WORK/reconcile-live.txt" >&2; fail "scheduled reconcile failed on the live output"; }
checked="$(sed -n 's/^checked: \([0-9]*\) records.*/\1/p' "$WORK/reconcile-live.txt")"
# Every record between the first and the last accepted one that reached Kafka: all but
# a few at the ends (invalid or late records there are outside the range).
(( ${checked:-0} >= RECORDS * 9 / 10 )) \
  || { cat "$WORK/reconcile-live.txt" >&2; fail "scheduled reconcile checked ${checked:-no} of $RECORDS records"; }
echo "    $(grep '^checked: ' "$WORK/reconcile-live.txt"), $(grep -c ' PASS$' "$WORK/reconcile-live.txt") checks PASS" >&2

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

# The whole output (every row, every window) can be checked only once the stream is
# finished: the processor's container runs once more on the same claim as a bounded
# run that closes the open windows, then the CronJob's container without the scheduled
# flags; both with their manifests' user and hardening.
step "the processor again on the claim, --exit-when-caught-up --drain"
S=$(date +%s)
in_pod drain processor --exit-when-caught-up --drain \
  || { tail -n 30 "$WORK/drain.txt" >&2; fail "the drained run on the claim failed"; }
step "drained in $(( $(date +%s) - S )) s"
step "reconcile over the whole output (the CronJob's container without --settle-secs)"
in_pod reconcile reconcile --settle-secs= --lookback-secs= && passed reconcile \
  || { cat "$WORK/reconcile.txt" >&2; fail "reconcile failed against what the processor delivered"; }
echo "    reconcile: $(grep -c ' PASS$' "$WORK/reconcile.txt") checks PASS, none failed" >&2

# The key-secret component: the CronJob's container with its variable and mount, and a
# service-account key (made here, its token endpoint a closed port on the pod's
# localhost) laid out as the kubelet mounts the Secret with fsGroup 10001. It must read
# that key through GOOGLE_APPLICATION_CREDENTIALS as user 10001, fail to get a token,
# and exit 2 (could not check), not 1 (the output is wrong).
step "reconcile with the key-secret component's credentials"
SECRETS="$WORK/secrets"
mkdir -p "$SECRETS/paydedup-bigquery"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/key.pem" 2>/dev/null
python3 - "$WORK/key.pem" "$SECRETS/paydedup-bigquery/key.json" <<'PYEOF'
import json, sys
key = open(sys.argv[1]).read()
json.dump({"type": "service_account", "project_id": "paydedup-local", "private_key_id": "test",
           "private_key": key, "client_email": "paydedup-reconcile@paydedup-local.iam.gserviceaccount.com",
           "token_uri": "http://127.0.0.1:1/token"}, open(sys.argv[2], "w"))
PYEOF
chown -R 0:10001 "$SECRETS/paydedup-bigquery"
chmod 0550 "$SECRETS/paydedup-bigquery"
chmod 0440 "$SECRETS/paydedup-bigquery/key.json"
set +e
in_pod reconcile-key reconcile-key "$SECRETS"
code=$?
set -e
out="$WORK/reconcile-key.txt"
[[ $code == 2 ]] || { cat "$out" >&2; fail "reconcile with an unusable key exited $code, not 2"; }
# The token endpoint is the key's own: only GOOGLE_APPLICATION_CREDENTIALS leads to it
# (no credentials flag, no gcloud file, and the metadata server is another host).
grep -q 'BigQuery access token: token request to http://127.0.0.1:1/token' "$out" \
  || { cat "$out" >&2; fail "reconcile did not take the key through GOOGLE_APPLICATION_CREDENTIALS"; }
grep -q 'reconciliation could not check the output (exit 2)' "$out" || { cat "$out" >&2; fail "no exit-2 verdict line"; }
! grep -qF -e 'PRIVATE KEY' -e "$(sed -n 2p "$WORK/key.pem")" "$out" || fail "reconcile printed key material"
echo "    exit 2: $(grep -m1 '^error: ' "$out" | cut -c1-140)" >&2
echo "k8s: manifests valid and hardened; the processor's pod ran under podman kube play ($(( $(date +%s) - T0 )) s)"
