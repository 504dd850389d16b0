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
python3 -m venv "$VENV"
# duckdb is pinned: the launcher's per-thread cursor patch was verified against 2.0.0.
"$VENV/bin/pip" install --quiet "bqemulator==$VERSION" numpy "duckdb==2.0.0"
"$VENV/bin/python" -c "import bqemulator" >&2
echo "bqemulator installed" >&2
