#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (crates.io) with its SQLite engine into the
# paydedup cache, once. The build takes ~20 minutes on 2 cores, so it is reused across
# clones and CI runs; re-running is a no-op when it is already there.
set -euo pipefail
CACHE="${PAYDEDUP_CACHE:-$HOME/.cache/paydedup}"
VERSION="0.6.0"
BIN="$CACHE/tansu/bin/tansu"
MARKER="$CACHE/tansu/.paydedup-version"
if [[ -x "$BIN" ]] && [[ "$(cat "$MARKER" 2>/dev/null)" == "$VERSION-libsql" ]]; then
  exit 0
fi
echo "installing tansu $VERSION into $CACHE/tansu (about 20 minutes, once)" >&2
mkdir -p "$CACHE"
# NOTE: the default features include no storage engine; `libsql` brings SQLite.
CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install tansu --version "$VERSION" --locked \
  --features libsql --root "$CACHE/tansu"
rm -rf "$CACHE/tansu-build"
echo "$VERSION-libsql" > "$MARKER"
echo "tansu installed at $BIN" >&2
