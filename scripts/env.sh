# Sourced by the scripts: where the cache and the build output live.
export PAYDEDUP_CACHE="${PAYDEDUP_CACHE:-$HOME/.cache/paydedup}"
# The target directory lives outside the clone so RocksDB's C++ (10–18 minutes) is
# compiled once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAYDEDUP_CACHE/target}"
export PAYDEDUP_TANSU="${PAYDEDUP_TANSU:-$PAYDEDUP_CACHE/tansu/bin/tansu}"
