#!/usr/bin/env bash
# Make podman able to build and run this project's images on a machine without Docker or a
# reachable container registry (the development and CI machines; see docs in manifests/README.md).
#
# Idempotent: installs podman, runc and debootstrap from Debian when missing, writes the podman
# engine settings once, and builds the local Python base image from Debian packages only when it
# is not there yet (podman keeps it between runs).
#
# Usage: scripts/container-engine-setup.sh            (as root)
# Env:   BASE_IMAGE  the local base image name (default localhost/python-base:3.11-bookworm)
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/python-base:3.11-bookworm}"
SUITE="${SUITE:-bookworm}"
CONF=/etc/containers/containers.conf

BUILD_ROOT=""
trap 'if [ -n "$BUILD_ROOT" ]; then rm -rf "$BUILD_ROOT"; fi' EXIT

log() { printf 'container-engine-setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root to $1 (re-run with sudo)"
    exit 1
  fi
}

install_packages() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [ "${#missing[@]}" -eq 0 ]; then
    return
  fi
  need_root "install ${missing[*]}"
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

configure_engine() {
  # crun fails on these machines' cgroup setup; runc with cgroupfs works. Host networking
  # because there is no CNI bridge worth having here and the proxy is reached from the host.
  if [ -f "$CONF" ] && ! grep -q 'garbage-classifier' "$CONF"; then
    log "keeping the existing $CONF (not written by this script)"
    return
  fi
  need_root "write $CONF"
  mkdir -p "$(dirname "$CONF")"
  cat >"$CONF" <<'CONFEOF'
# written by garbage-classifier scripts/container-engine-setup.sh
[containers]
default_ulimits = []
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONFEOF
}

debian_mirror() {
  local sources=/etc/apt/sources.list.d/debian.sources
  if [ -f "$sources" ]; then
    awk '/^URIs:/{print $2; exit}' "$sources"
  elif [ -f /etc/apt/sources.list ]; then
    awk '/^deb /{print $2; exit}' /etc/apt/sources.list
  fi
}

build_base_image() {
  if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE is already there"
    return
  fi
  need_root "debootstrap the base image"
  local mirror
  mirror="$(debian_mirror)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  BUILD_ROOT="$(mktemp -d /tmp/python-base-root.XXXXXX)"
  log "building $BASE_IMAGE from Debian $SUITE ($mirror)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$BUILD_ROOT" "$mirror" >/dev/null
  rm -rf "$BUILD_ROOT"/var/cache/apt/archives/*.deb "$BUILD_ROOT"/var/lib/apt/lists/*
  tar -C "$BUILD_ROOT" -c . | podman import --quiet --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  log "built $BASE_IMAGE"
}

prune_old_build_cache() {
  # Every build of changed code leaves its previous (now untagged) images behind; keep a few days
  # of them as layer cache and drop the rest, so repeated CI runs do not fill the disk.
  podman image prune --force --filter "until=${CACHE_HOURS:-72}h" >/dev/null || true
}

install_packages
configure_engine
build_base_image
prune_old_build_cache
podman image exists "$BASE_IMAGE"
