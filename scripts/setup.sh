#!/usr/bin/env bash
# Installs everything paydedup needs that a fresh Debian machine with Rust and Python
# lacks: libclang (RocksDB's bindgen), the tansu broker, the BigQuery emulator.
# Idempotent and quick when everything is already there.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "installing libclang-dev (needed to build RocksDB's bindings)" >&2
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi

"$HERE/install-tansu.sh"
"$HERE/install-bqemulator.sh"
