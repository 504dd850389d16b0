#!/usr/bin/env bash
# The full test suite: installs what is missing (libclang, tansu, the BigQuery
# emulator), then runs every test, including those against a real tansu broker.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
# Release profile and all features: the same build as the local run (no rebuild when
# switching between them), and realistic speed for
# the crash and retention tests. `integration` turns on the broker tests.
cargo test --release --locked --workspace --all-targets --all-features --no-fail-fast -- --test-threads 2 "$@"
