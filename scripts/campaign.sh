#!/usr/bin/env bash
# The fault campaign, by command: builds the workspace with fail points, then runs
# simulator → tansu → processor → BigQuery emulator under a seeded fault plan and
# checks the tables with the independent verifier.
#
#   scripts/campaign.sh                       # the short campaign the test suite runs, seed 1
#   scripts/campaign.sh --seed 42 --long --events 10000000 --rounds 40 --chunk 20000 \
#       --rate 3700 --event-rate 1000 --volume-mib 6000 --dir /var/tmp/campaign-42
#
# A failing seed replays the same plan. Disk-full episodes need root (the state
# volume is a tmpfs mount); without it they are reported as not available.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --release --locked --workspace --all-features --bins
exec "$CARGO_TARGET_DIR/release/paydedup-campaign" "$@"
