#!/usr/bin/env bash
# The processor and simulator images, built (scripts/build-images.sh: the Dockerfile's
# runtime stages fed with the host's binaries) and run for real under podman:
#   - what the images declare: numeric non-root user 10001, the processor's HEALTHCHECK
#     (and the simulator's explicit none), the state VOLUME, no compiler or cargo;
#   - a pipeline on a podman network: tansu (its image), the simulator image creating
#     the topic and producing COUNT payments, the processor image running until caught
#     up (--exit-when-caught-up --drain, file sink), reconcile against the manifest:
#     exit 0 and every check PASS. Every container runs with a read-only root
#     filesystem and no tmpfs, so nothing is written outside /var/lib/paydedup
#     (Kubernetes readOnlyRootFilesystem);
#   - a long-running processor from the image's defaults (CMD run, its ENV): its
#     process runs as UID 10001, `podman healthcheck run` passes, the same probe fails
#     with no processor behind it, and SIGTERM stops it with exit 0.
# Run: scripts/test-deploy.sh tests/deploy/test_images.sh
set -euo pipefail
ROOT="${PAYDEDUP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$ROOT/scripts/env.sh"
export PAYDEDUP_BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"
COUNT="${COUNT:-2000}"
PROCESSOR=localhost/paydedup/processor:dev
SIMULATOR=localhost/paydedup/simulator:dev
TANSU=localhost/paydedup/tansu:dev

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }
# podman logs an error for every container with a health check when there is no
# systemd to time it (the checks still run when asked), and aardvark-dns one when it
# finds no syslog; the rest of podman's stderr stays.
podman() {
  command podman "$@" 2> >(grep -v -e 'unable to get systemd connection' -e 'failed to connect to syslog' >&2)
}

"$ROOT/scripts/build-images.sh" processor simulator tansu

# Names of this run only, so a concurrent run or another test's containers are never
# touched.
P="paydedup-images-$$"
NET="$P" DATA="$P-data"
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    for c in "$P-kafka" "$P-processor"; do
      podman container exists "$c" 2>/dev/null || continue
      echo "--- logs of $c" >&2
      podman logs --tail 30 "$c" >&2 2>&1 || true
    done
  fi
  podman rm -f -v -t 0 "$P-kafka" "$P-processor" >/dev/null 2>&1 || true
  podman volume rm -f "$DATA" >/dev/null 2>&1 || true
  podman network rm -f "$NET" >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------ declarations
step "image metadata"
for img in "$PROCESSOR" "$SIMULATOR"; do
  user=$(podman image inspect --format '{{.Config.User}}' "$img")
  [[ "$user" == "10001:10001" ]] || fail "$img runs as '$user', not 10001:10001"
  vols=$(podman image inspect --format '{{json .Config.Volumes}}' "$img")
  [[ "$vols" == *'"/var/lib/paydedup"'* ]] || fail "$img declares volumes $vols, not /var/lib/paydedup"
done
hc=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$PROCESSOR")
[[ "$hc" == '["CMD","paydedup-processor","healthcheck"]' ]] || fail "processor HEALTHCHECK is $hc"
hc=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$SIMULATOR")
[[ "$hc" == '["NONE"]' ]] || fail "simulator HEALTHCHECK is $hc, expected an explicit NONE"

step "no build tools in the runtime"
for img in "$PROCESSOR" "$SIMULATOR"; do
  found=$(podman run --rm --entrypoint /bin/sh "$img" -c '
    for t in cc c++ gcc g++ clang ld as make cargo rustc rustup; do command -v "$t"; done
    ls -d /usr/local/cargo /usr/local/rustup /src 2>/dev/null; true')
  [[ -z "$found" ]] || fail "$img contains build tools: $found"
done
# The binaries in the images are the host's (debug info stripped, same build).
want=$("$PAYDEDUP_BIN/paydedup-processor" --version)
got=$(podman run --rm "$PROCESSOR" --version)
[[ "$got" == "$want" ]] || fail "processor image has '$got', the host '$want'"

# ------------------------------------------------------------------ a bounded run
# --read-only-tmpfs=false: no tmpfs on /tmp, /run or /var/tmp either, so a write
# anywhere but the volume fails the run.
RO=(--read-only --read-only-tmpfs=false)
podman network create "$NET" >/dev/null
podman volume create "$DATA" >/dev/null
step "tansu (image $TANSU) on network $NET"
podman run -d --name "$P-kafka" --network "$NET" --network-alias kafka "${RO[@]}" "$TANSU" >/dev/null
# Health checks run on systemd timers, and there is no systemd here: ask.
wait_healthy() {
  local c="$1" secs="$2"
  for ((i = 0; i < secs; i++)); do
    if podman healthcheck run "$c" >/dev/null 2>&1; then return 0; fi
    [[ "$(podman inspect --format '{{.State.Running}}' "$c")" == true ]] || fail "$c exited"
    sleep 1
  done
  fail "$c not healthy after ${secs} s"
}
wait_healthy "$P-kafka" 30

step "simulator image: topic with 4 partitions, $COUNT payments"
podman run --rm --network "$NET" -v "$DATA:/var/lib/paydedup" "${RO[@]}" "$SIMULATOR" \
  --brokers kafka:9092 --create-partitions 4 --count "$COUNT" --quiet \
  --manifest /var/lib/paydedup/manifest.json >&2

step "processor image: until caught up, file sink on the volume"
S=$(date +%s)
podman run --rm --network "$NET" -v "$DATA:/var/lib/paydedup" "${RO[@]}" "$PROCESSOR" \
  run --brokers kafka:9092 --sink file:/var/lib/paydedup/output \
  --exit-when-caught-up --drain 2>"${TMPDIR:-/tmp}/$P-run.log" \
  || { tail -n 30 "${TMPDIR:-/tmp}/$P-run.log" >&2; rm -f "${TMPDIR:-/tmp}/$P-run.log"; fail "processor run failed"; }
rm -f "${TMPDIR:-/tmp}/$P-run.log"
echo "    processed in $(( $(date +%s) - S )) s" >&2

step "reconcile (processor image, volume read-only)"
out=$(podman run --rm -v "$DATA:/var/lib/paydedup:ro" "${RO[@]}" "$PROCESSOR" \
  reconcile --output file:/var/lib/paydedup/output --manifest /var/lib/paydedup/manifest.json) \
  || { echo "$out" >&2; fail "reconcile exited non-zero"; }
echo "$out" >&2
grep -q '^PASS: all [0-9]* checks passed$' <<<"$out" || fail "reconcile did not pass"
! grep -q 'FAIL$' <<<"$out" || fail "reconcile has failing checks"
# What the process wrote belongs to the image's user (and so did the process).
owner=$(podman run --rm -v "$DATA:/data:ro" --entrypoint stat "$PROCESSOR" -c '%u:%g' \
  /data/output/payments.jsonl /data/state /data/manifest.json | sort -u)
[[ "$owner" == "10001:10001" ]] || fail "files written as $owner, not 10001:10001"

# ------------------------------------------------------------------ a long-running one
step "long-running processor from the image's defaults; health check"
# No flags: CMD is `run`, the state directory and metrics address come from the image's
# ENV, the file sink's default `output` lands in the WORKDIR (the volume). Same state
# as the run above, so it resumes from its checkpoint.
podman run -d --name "$P-processor" --network "$NET" -e PAYDEDUP_BROKERS=kafka:9092 \
  -v "$DATA:/var/lib/paydedup" "${RO[@]}" "$PROCESSOR" >/dev/null
wait_healthy "$P-processor" 60
status=$(podman inspect --format '{{.State.Health.Status}}' "$P-processor")
[[ "$status" == healthy ]] || fail "health status '$status' after a passing check"
# PID 1 is the processor (exec-form ENTRYPOINT, no init); its UIDs as the kernel sees them.
cmd=$(podman exec "$P-processor" sh -c 'tr "\0" " " </proc/1/cmdline')
[[ "$cmd" == "paydedup-processor run "* ]] || fail "PID 1 is '$cmd'"
uids=$(podman exec "$P-processor" sh -c 'grep -E "^(Uid|Gid):" /proc/1/status' | awk '{print $1, $2, $3, $4, $5}')
[[ "$uids" == $'Uid: 10001 10001 10001 10001\nGid: 10001 10001 10001 10001' ]] \
  || fail "processor runs with $uids"
# The probe is not vacuous: the same command with nothing listening fails.
if podman run --rm --entrypoint paydedup-processor "$PROCESSOR" healthcheck --timeout 2s >/dev/null 2>&1; then
  fail "the health check passes with no processor running"
fi

step "SIGTERM stops it cleanly"
podman stop -t 60 "$P-processor" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$P-processor")
[[ "$code" == 0 ]] || fail "processor exited $code on SIGTERM"

echo "images: all checks passed" >&2
