#!/usr/bin/env bash
# Secure Kafka for real: the simulator and the processor reach the broker through TLS
# (Debian's stunnel4 terminating TLS in front of tansu, certificates from a CA made
# here), then through SASL/SCRAM-SHA-512 over TLS (tansu's own `--authentication`, a
# user created with `tansu user create`), and every
# payment lands exactly once (`reconcile` against the simulator's manifest). The
# negative cases prove the security is really in the path: a plaintext client at the
# TLS port, a client that does not trust the CA, an unauthenticated client and a wrong
# password at the SASL broker all fail with a non-zero exit instead of hanging.
#
# Why stunnel: tansu 0.6 parses --cert/--key but never wraps its connections in TLS
# (its acceptor is built and unused), so TLS is terminated in front of it, as a
# managed service's proxy would. (Its SASL/PLAIN accepts any password, so the test
# uses SCRAM, which tansu checks against the stored user.)
set -euo pipefail
ROOT="${PAYDEDUP_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$ROOT/scripts/env.sh"
BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"

need() { command -v "$1" >/dev/null || {
  SUDO=""; [[ "$(id -u)" != "0" ]] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null; }; }
need stunnel4 stunnel4
need openssl openssl
STUNNEL="$(command -v stunnel4 || command -v stunnel)"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done; exit 1; }
source "$ROOT/scripts/local-services.sh"

# A CA, and a server certificate for 127.0.0.1 (an IP SAN: librdkafka checks the
# broker's name against the certificate by default, and the test keeps that on).
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=paydedup test CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out server.pem 2>/dev/null
# A second CA the clients are given in the negative case.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=someone else" \
  -keyout other.key -out other.pem 2>/dev/null

# start_broker NAME TLS_PORT [tansu flags…]: tansu on a plaintext port that only
# stunnel reaches, advertising the TLS port, so every client connection is TLS.
start_broker() {
  local name="$1" tls_port="$2"; shift 2
  local plain_port; plain_port="$(free_port)"
  start_tansu "$WORK/$name-tansu" "$plain_port" "$tls_port" "$@" || fail "tansu did not start"
  cat >"$WORK/$name-stunnel.conf" <<CONF
foreground = yes
pid =
debug = warning
[kafka]
accept = 127.0.0.1:$tls_port
connect = 127.0.0.1:$plain_port
cert = $WORK/server.pem
key = $WORK/server.key
CONF
  "$STUNNEL" "$WORK/$name-stunnel.conf" >"$WORK/$name-stunnel.log" 2>&1 &
  PIDS+=($!)
  wait_port "$tls_port" || fail "stunnel did not start"
}

# produce_and_process NAME PORT COUNT [--kafka K=V …]: the simulator produces COUNT
# payments, the processor drains them into a file sink, reconcile checks them.
produce_and_process() {
  local name="$1" port="$2" count="$3"; shift 3
  "$BIN/paydedup-simulator" --brokers "127.0.0.1:$port" --topic payments \
    --create-partitions 2 --count "$count" --seed 7 --manifest "$WORK/$name-manifest.json" \
    "$@" >"$WORK/$name-simulator.log" 2>&1 || fail "$name: the simulator could not produce"
  timeout 180 "$BIN/paydedup-processor" run --brokers "127.0.0.1:$port" --topic payments \
    --state-dir "$WORK/$name-state" --sink "file:$WORK/$name-out" \
    --metrics-addr 127.0.0.1:0 --exit-when-caught-up --drain --log-format text \
    "$@" 2>"$WORK/$name-processor.log" || fail "$name: the processor did not finish"
  "$BIN/paydedup-processor" reconcile --output "file:$WORK/$name-out" \
    --manifest "$WORK/$name-manifest.json" >"$WORK/$name-reconcile.txt" \
    || { cat "$WORK/$name-reconcile.txt" >&2; fail "$name: reconcile failed"; }
  grep -q PASS "$WORK/$name-reconcile.txt" || fail "$name: reconcile printed no PASS"
  echo "ok: $name: $count payments through the secured listener, reconciled" >&2
}

# must_fail NAME WHAT CMD…: the command exits non-zero within 60 s.
must_fail() {
  local name="$1" what="$2"; shift 2
  local rc=0
  timeout 60 "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  [[ $rc -ne 0 ]] || fail "$what succeeded"
  [[ $rc -ne 124 ]] || fail "$what hung instead of failing"
  echo "ok: $what fails: $(grep -m1 -i 'error' "$WORK/$name.log" | cut -c1-160)" >&2
}

TLS=(--kafka security.protocol=ssl --kafka "ssl.ca.location=$WORK/ca.pem")

TLS_PORT="$(free_port)"
start_broker tls "$TLS_PORT"
produce_and_process tls "$TLS_PORT" 3000 "${TLS[@]}"
must_fail tls-plaintext-client "a plaintext client at the TLS listener" \
  "$BIN/paydedup-processor" run --brokers "127.0.0.1:$TLS_PORT" --topic payments \
  --state-dir "$WORK/plain-state" --sink "file:$WORK/plain-out" --metrics-addr 127.0.0.1:0 \
  --exit-when-caught-up --drain
must_fail tls-untrusted-ca "a client that does not trust the broker's CA" \
  "$BIN/paydedup-simulator" --brokers "127.0.0.1:$TLS_PORT" --topic payments --count 10 \
  --manifest "$WORK/untrusted-manifest.json" \
  --kafka security.protocol=ssl --kafka "ssl.ca.location=$WORK/other.pem"

# SCRAM users live in the broker's storage: create one through a broker without
# authentication on the same SQLite file, stop it, then start the authenticating one.
BOOT_PORT="$(free_port)"
start_tansu "$WORK/sasl-tansu" "$BOOT_PORT" || fail "tansu did not start"
BOOT=${PIDS[-1]}
"$PAYDEDUP_TANSU" user create --broker "tcp://127.0.0.1:$BOOT_PORT" --mechanism scram512 \
  paydedup test-only-secret >"$WORK/sasl-bootstrap.log" 2>&1 || fail "creating the SCRAM user"
kill "$BOOT"; wait "$BOOT" 2>/dev/null || true

SASL_PORT="$(free_port)"
start_broker sasl "$SASL_PORT" --authentication
SCRAM=(--kafka security.protocol=sasl_ssl --kafka "ssl.ca.location=$WORK/ca.pem"
       --kafka sasl.mechanism=SCRAM-SHA-512 --kafka sasl.username=paydedup)
produce_and_process sasl "$SASL_PORT" 3000 "${SCRAM[@]}" --kafka sasl.password=test-only-secret
must_fail sasl-no-credentials "a TLS client without SASL at the authenticating broker" \
  "$BIN/paydedup-simulator" --brokers "127.0.0.1:$SASL_PORT" --topic payments --count 10 \
  --manifest "$WORK/nosasl-manifest.json" "${TLS[@]}"
must_fail sasl-wrong-password "a client with the wrong SCRAM password" \
  "$BIN/paydedup-simulator" --brokers "127.0.0.1:$SASL_PORT" --topic payments --count 10 \
  --manifest "$WORK/badpw-manifest.json" "${SCRAM[@]}" --kafka sasl.password=wrong
# The password given on the command line never reaches the logs.
if grep -q 'test-only-secret' "$WORK"/sasl-processor.log "$WORK"/sasl-simulator.log; then
  fail "the SASL password appears in a log"
fi
echo "secure Kafka: TLS and SASL_SSL/SCRAM-SHA-512 both reconcile; the four insecure clients fail" >&2
