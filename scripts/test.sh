#!/usr/bin/env bash
# The full test suite: installs what is missing (libclang, tansu, the BigQuery
# emulator), checks formatting and lints, then runs every test, including those
# against a real tansu broker and the real BigQuery emulator, and the deployment
# artefacts' tests (tests/deploy/). CI runs this script.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
START=$(date +%s)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo fmt --all -- --check
# Release profile and all features everywhere: clippy, the tests and the local run
# share one build (RocksDB's C++ is compiled once), and the crash and retention tests
# run at realistic speed. `integration` turns on the broker and emulator tests.
cargo clippy --release --locked --workspace --all-targets --all-features -- -D warnings
cargo test --release --locked --workspace --all-targets --all-features --no-fail-fast -- --test-threads 2 "$@"
# The deployment artefacts, run for real with the binaries just built: images and the
# compose stack under podman, the Kubernetes manifests (validated, and played under
# podman), the alert rules (promtool, and a real Prometheus scraping a processor), TLS
# and SASL to the broker. They install podman, stunnel4, prometheus on first use.
if [[ $# -eq 0 ]]; then
  "$ROOT/scripts/test-deploy.sh"
fi
echo "all tests passed in $(( $(date +%s) - START )) s"
