#!/usr/bin/env bash
# The deployment artefacts' tests: images, the compose stack, the Kubernetes manifests,
# the alert rules, TLS to the broker. Each is an executable tests/deploy/test_*.sh that
# exits non-zero on failure; they use the binaries the test build left in
# $CARGO_TARGET_DIR/release (run scripts/test.sh, or `cargo test --release --locked
# --workspace --all-targets --all-features --no-run`, first). Run one with
#   scripts/test-deploy.sh tests/deploy/test_images.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
export PAYDEDUP_BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"
export PAYDEDUP_ROOT="$ROOT"
cd "$ROOT"
if [[ $# -gt 0 ]]; then TESTS=("$@"); else TESTS=(tests/deploy/test_*.sh); fi
FAILED=()
for t in "${TESTS[@]}"; do
  [[ -e "$t" ]] || continue
  echo "==> $t" >&2
  S=$(date +%s)
  if "$t"; then
    echo "ok   $t ($(( $(date +%s) - S )) s)" >&2
  else
    echo "FAIL $t ($(( $(date +%s) - S )) s)" >&2
    FAILED+=("$t")
  fi
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "deployment tests failed: ${FAILED[*]}" >&2
  exit 1
fi
