#!/usr/bin/env bash
# Builds paydedup's container images on this machine with podman, with no registry:
#
#   localhost/paydedup-base:bookworm    Debian bookworm (debootstrap minbase), standing in
#                                       for debian:bookworm-slim; made once per machine
#   localhost/paydedup/processor:dev    the Dockerfile's runtime stages, fed with the
#   localhost/paydedup/simulator:dev    host's release binaries ($PAYDEDUP_BIN)
#   localhost/paydedup/tansu:dev        the host's tansu broker, for apache/kafka
#   localhost/paydedup/bqemulator:dev   the BigQuery emulator, from a host-side wheelhouse
#   localhost/paydedup/prometheus:dev   Debian's Prometheus, for prom/prometheus
#
#   scripts/build-images.sh [processor|simulator|tansu|bqemulator|prometheus ...]
#
# With no names it builds all of them. Idempotent: the base's root filesystem is cached
# as a tarball in $PAYDEDUP_CACHE/images and imported only when the image is missing
# (PAYDEDUP_REBUILD_BASE=1 makes it again), the wheels are fetched once per
# requirements.txt, and an image whose inputs (files, base, this script) did not change
# is not rebuilt: a warm run takes seconds. It never runs cargo: build the binaries
# first (scripts/test.sh, or cargo build --release). Installs podman, runc, debootstrap and what else it needs when missing,
# and writes /etc/containers/containers.conf when absent.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/env.sh"
BIN="${PAYDEDUP_BIN:-$CARGO_TARGET_DIR/release}"
IMAGES="$PAYDEDUP_CACHE/images"
BASE_IMAGE="localhost/paydedup-base:bookworm"
ALL=(processor simulator tansu bqemulator prometheus)
if [[ $# -gt 0 ]]; then WANT=("$@"); else WANT=("${ALL[@]}"); fi
for name in "${WANT[@]}"; do
  [[ " ${ALL[*]} " == *" $name "* ]] || { echo "unknown image '$name' (one of: ${ALL[*]})" >&2; exit 2; }
done
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
START=$(date +%s)
mkdir -p "$IMAGES"

log() { echo "==> $*" >&2; }
took() { echo "    $1: $(( $(date +%s) - $2 )) s" >&2; }

# --- host packages ------------------------------------------------------------------
# podman with netavark and aardvark-dns: the compose stack's containers find each other
# by service name through aardvark's DNS. binutils for strip.
need=()
for pkg in podman runc debootstrap netavark aardvark-dns binutils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [[ ${#need[@]} -gt 0 ]]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- containers.conf ----------------------------------------------------------------
# Machines like this one refuse to raise rlimits (podman's default nofile is 1M, so
# every container start fails) and crun cannot start containers here; runc can.
CONF=/etc/containers/containers.conf
if [[ ! -e "$CONF" ]]; then
  log "writing $CONF (runc, rlimits the machine allows)"
  $SUDO mkdir -p /etc/containers
  $SUDO tee "$CONF" >/dev/null <<'EOF'
# Written by paydedup's scripts/build-images.sh.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
elif ! python3 - "$CONF" <<'EOF'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
ok = c.get("engine", {}).get("runtime") == "runc" and any(
    u.startswith("nofile=") for u in c.get("containers", {}).get("default_ulimits", []))
sys.exit(0 if ok else 1)
EOF
then
  # An administrator's file is not rewritten; say what it lacks instead.
  echo "warning: $CONF exists but does not set [engine] runtime = \"runc\" and" \
    "[containers] default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"];" \
    "containers may fail to start here" >&2
fi

# --- base image -------------------------------------------------------------------
# The first http(s) Debian mirror in the machine's apt sources (not -security): the
# one that is reachable from here.
debian_mirror() {
  if [[ -n "${PAYDEDUP_DEBIAN_MIRROR:-}" ]]; then echo "$PAYDEDUP_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -E '^[[:space:]]*(deb[[:space:]]|URIs:)' | grep -oE 'https?://[^[:space:]]+' \
    | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

TARBALL="$IMAGES/debian-bookworm-minbase.tar"
if [[ "${PAYDEDUP_REBUILD_BASE:-}" == 1 ]]; then
  rm -f "$TARBALL"
  podman image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if podman image exists "$BASE_IMAGE"; then
  log "base $BASE_IMAGE: cached"
else
  S=$(date +%s)
  if [[ ! -s "$TARBALL" ]]; then
    MIRROR="$(debian_mirror)"
    log "base: debootstrap --variant=minbase bookworm from $MIRROR (once per machine)"
    ROOTFS="$(mktemp -d "$IMAGES/rootfs.XXXXXX")"
    trap '$SUDO rm -rf "$ROOTFS"' EXIT
    $SUDO debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$IMAGES/debootstrap.log" 2>&1 \
      || { tail -n 20 "$IMAGES/debootstrap.log" >&2; exit 1; }
    # What debian:bookworm-slim leaves out: package caches (apt's 80 MB binary caches
    # too, also later), docs and man pages (also for packages installed later), the
    # host's resolver and name, which podman provides at run time.
    $SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
      "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
      "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
    # rm, then touch: either may be a symlink into the host's /run.
    $SUDO rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
    $SUDO touch "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      | $SUDO tee "$ROOTFS/etc/dpkg/dpkg.cfg.d/slim" >/dev/null
    printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
      | $SUDO tee "$ROOTFS/etc/apt/apt.conf.d/docker-clean" >/dev/null
    $SUDO tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
    $SUDO chown "$(id -u):$(id -g)" "$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
    $SUDO rm -rf "$ROOTFS"
    trap - EXIT
  fi
  log "base: importing $TARBALL as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["bash"]' --message "debootstrap minbase bookworm" \
    "$TARBALL" "$BASE_IMAGE" >/dev/null
  took "base" "$S"
fi

# --- images ---------------------------------------------------------------------------
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it);
# --pull=never because nothing can be pulled here: a missing base must fail, not hang
# in retries.
#
# An image is rebuilt only when what it is made of changed: the hash of its input files,
# the base image and this script is recorded with the image's ID and compared first.
# podman's layer cache would also end in a no-op, but only after hashing the whole
# context (20 s for the emulator's wheels). (Not an image label: buildah 1.28 drops
# --label on a --target that is not the Dockerfile's last stage.)
inputs_hash() {
  { podman image inspect --format '{{.Id}}' "$BASE_IMAGE"; sha256sum "$ROOT/scripts/build-images.sh" "$@"; } \
    | sha256sum | cut -c1-16
}
build() {
  local tag="$1" stamp="$2"; shift 2
  local s; s=$(date +%s)
  local name="${tag//[\/:]/_}" old new
  local out="$IMAGES/build-$name.log" record="$IMAGES/inputs-$name"
  old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  if [[ -n "$old" && -e "$record" && "$(cat "$record")" == "$stamp $old" ]]; then
    log "$tag: up to date"
    return
  fi
  log "building $tag"
  if ! podman build --format docker --pull=never --build-arg "BASE=$BASE_IMAGE" \
      -t "$tag" "$@" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    echo "building $tag failed (log: $out)" >&2
    exit 1
  fi
  # The image this tag replaced (new binaries, say) would stay behind untagged, a few
  # hundred MB per rebuild; it goes unless a container still uses it.
  new=$(podman image inspect --format '{{.Id}}' "$tag")
  if [[ -n "$old" && "$old" != "$new" ]]; then podman image rm "$old" >/dev/null 2>&1 || true; fi
  echo "$stamp $new" >"$record"
  took "$tag" "$s"
}

# A copy of a host binary without debug info (the processor's line tables are ~400 MB
# of its ~450 MB), redone only when the binary changed.
stage_stripped() {
  local src="$1" dst="$2"
  [[ -x "$src" ]] || { echo "missing $src: build the binaries first (scripts/test.sh)" >&2; exit 1; }
  if [[ ! -e "$dst" || "$src" -nt "$dst" ]]; then
    mkdir -p "$(dirname "$dst")"
    strip --strip-debug -o "$dst.tmp" "$src"
    touch -r "$src" "$dst.tmp"
    mv "$dst.tmp" "$dst"
  fi
}

wants() { [[ " ${WANT[*]} " == *" $1 "* ]]; }

if wants processor || wants simulator; then
  # The build context named `build` replaces the Dockerfile's Rust stage (see the
  # Dockerfile's header): the image is the Dockerfile's own runtime stage.
  stage_stripped "$BIN/paydedup-processor" "$IMAGES/binaries/out/paydedup-processor"
  stage_stripped "$BIN/paydedup-simulator" "$IMAGES/binaries/out/paydedup-simulator"
  if ! "$IMAGES/binaries/out/paydedup-processor" healthcheck --help >/dev/null 2>&1; then
    echo "warning: $BIN/paydedup-processor has no 'healthcheck' subcommand yet; the" \
      "processor image's HEALTHCHECK will fail until it is rebuilt" >&2
  fi
  for t in processor simulator; do
    wants "$t" || continue
    build "localhost/paydedup/$t:dev" "$(inputs_hash "$ROOT/Dockerfile" "$IMAGES/binaries/out/paydedup-$t")" \
      --target "$t" --build-context "build=$IMAGES/binaries" -f "$ROOT/Dockerfile" "$ROOT"
  done
fi

if wants tansu; then
  stage_stripped "$PAYDEDUP_TANSU" "$IMAGES/tansu/tansu"
  build localhost/paydedup/tansu:dev "$(inputs_hash "$ROOT/deploy/images/tansu/Dockerfile" "$IMAGES/tansu/tansu")" \
    -f "$ROOT/deploy/images/tansu/Dockerfile" "$IMAGES/tansu"
fi

if wants bqemulator; then
  # The wheels come from PyPI through the host's pip, into a wheelhouse kept per
  # requirements.txt: here PyPI is reached through a TLS-inspecting proxy whose CA
  # only the host trusts, so pip inside an image build fails (checked).
  REQ="$ROOT/deploy/images/bqemulator/requirements.txt"
  WHEELS="$IMAGES/wheels-$(sha256sum "$REQ" | cut -c1-12)"
  if [[ ! -e "$WHEELS/.complete" ]]; then
    s=$(date +%s)
    log "fetching the emulator's wheels into $WHEELS"
    # The emulator's host venv has a pip for Python 3.11, bookworm's (the image's).
    "$ROOT/scripts/install-bqemulator.sh"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PAYDEDUP_CACHE/bqemulator-venv/bin/pip" download --quiet --disable-pip-version-check \
      --only-binary=:all: --dest "$WHEELS" -r "$REQ"
    touch "$WHEELS/.complete"
    took "wheels" "$s"
  fi
  # A context with the repository's layout (the Dockerfile's COPY paths) and the
  # wheels; hard links, so restaging is instant and the layer cache still hits.
  CTX="$IMAGES/bqemulator-context"
  rm -rf "$CTX"
  mkdir -p "$CTX/deploy/images/bqemulator/wheels" "$CTX/scripts"
  cp "$ROOT/deploy/images/bqemulator/requirements.txt" "$ROOT/deploy/images/bqemulator/healthcheck.py" \
    "$CTX/deploy/images/bqemulator/"
  cp "$ROOT/scripts/bqemu_launcher.py" "$CTX/scripts/"
  cp -l "$WHEELS"/*.whl "$CTX/deploy/images/bqemulator/wheels/"
  # The wheels follow from requirements.txt, so it stands for them in the hash.
  build localhost/paydedup/bqemulator:dev "$(inputs_hash "$ROOT/deploy/images/bqemulator/Dockerfile" \
      "$REQ" "$ROOT/deploy/images/bqemulator/healthcheck.py" "$ROOT/scripts/bqemu_launcher.py")" \
    --build-arg PIP_INSTALL_ARGS="--no-index --find-links /build/wheels" \
    -f "$ROOT/deploy/images/bqemulator/Dockerfile" "$CTX"
fi

if wants prometheus; then
  build localhost/paydedup/prometheus:dev "$(inputs_hash "$ROOT/deploy/images/prometheus/Dockerfile")" \
    -f "$ROOT/deploy/images/prometheus/Dockerfile" \
    "$ROOT/deploy/images/prometheus"
fi

log "images ready in $(( $(date +%s) - START )) s:"
for name in "${WANT[@]}"; do
  podman image ls --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' "localhost/paydedup/$name:dev" >&2
done
