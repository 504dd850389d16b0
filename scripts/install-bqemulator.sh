#!/usr/bin/env bash
# Installs the BigQuery emulator (PyPI `bqemulator`) into a venv in the paydedup cache,
# once. Re-running is a no-op when it is already there.
set -euo pipefail
CACHE="${PAYDEDUP_CACHE:-$HOME/.cache/paydedup}"
VENV="$CACHE/bqemulator-venv"
VERSION="1.4.0"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import bqemulator, numpy" 2>/dev/null \
   && [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("bqemulator"))')" == "$VERSION" ]]; then
  exit 0
fi
echo "installing bqemulator $VERSION into $VENV" >&2
mkdir -p "$CACHE"
if ! python3 -m venv "$VENV" 2>/dev/null; then
  # Debian's python3 ships venv separately.
  echo "installing python3-venv" >&2
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
  rm -rf "$VENV"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$VENV"
fi
# duckdb is pinned: the launcher's per-thread cursor patch was verified against 2.0.0.
"$VENV/bin/pip" install --quiet "bqemulator==$VERSION" numpy "duckdb==2.0.0"
"$VENV/bin/python" -c "import bqemulator" >&2
echo "bqemulator installed" >&2
