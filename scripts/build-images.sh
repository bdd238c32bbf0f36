#!/usr/bin/env bash
# `make images`: build the project's container images with docker or podman (whichever works).
#
#   IMAGES     which to build, from: components serving monitoring serving-gpu mlflow
#              (default: components serving monitoring)
#   IMAGE_TAG  tag of the project's images (default 0.1.0); serving-gpu gets IMAGE_TAG-gpu
#   REGISTRY   image name prefix (default ghcr.io/garbage-classifier)
#   CONTAINER_ENGINE  docker or podman (default: docker when its daemon answers, else podman)
#   BASE_IMAGE  base image (default: python:3.11-slim; with podman and no registry access, the
#              local image that scripts/container-engine-setup.sh builds, when present)
#   GIT_COMMIT, GIT_DIRTY  the code version baked into the components image for run lineage
#              (default: this checkout's HEAD, and true when a tracked file differs from it;
#              untracked files do not count)
# Behind a TLS-inspecting proxy (these development machines), the host's CA bundle is mounted
# into the build and handed to pip.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES="${IMAGES:-components serving monitoring}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
REGISTRY="${REGISTRY:-ghcr.io/garbage-classifier}"
LOCAL_BASE=localhost/python-base:3.11-bookworm
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf 'build-images: %s\n' "$*" >&2; }

GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse --verify HEAD 2>/dev/null || echo unknown)}"
if [ -z "${GIT_DIRTY:-}" ]; then
  if [ "$GIT_COMMIT" = unknown ] || ! status=$(git status --porcelain --untracked-files=no 2>/dev/null); then
    GIT_DIRTY=unknown
  elif [ -n "$status" ]; then
    GIT_DIRTY=true
  else
    GIT_DIRTY=false
  fi
fi

engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  else
    log "no container engine: start Docker, or run scripts/container-engine-setup.sh (podman)"
    exit 1
  fi
fi

args=()
base="${BASE_IMAGE:-}"
if [ "$engine" = podman ]; then
  args+=(--network host)
  if [ -z "$base" ] && podman image exists "$LOCAL_BASE"; then
    base="$LOCAL_BASE"
  fi
  if [ -f "$CA_BUNDLE" ]; then
    args+=(-v "$CA_BUNDLE:$CA_BUNDLE:ro" --build-arg "PIP_CERT=$CA_BUNDLE")
  fi
fi
if [ -n "$base" ]; then
  args+=(--build-arg "BASE_IMAGE=$base")
fi

for image in $IMAGES; do
  case "$image" in
    components) file=components/Dockerfile; tag="$REGISTRY/components:$IMAGE_TAG"
      extra=(--build-arg "GIT_COMMIT=$GIT_COMMIT" --build-arg "GIT_DIRTY=$GIT_DIRTY") ;;
    serving) file=serving/Dockerfile; tag="$REGISTRY/serving:$IMAGE_TAG"; extra=() ;;
    monitoring) file=monitoring/Dockerfile; tag="$REGISTRY/monitoring:$IMAGE_TAG"; extra=() ;;
    serving-gpu) file=serving/Dockerfile; tag="$REGISTRY/serving:$IMAGE_TAG-gpu"
      extra=(--build-arg VARIANT=gpu) ;;
    mlflow) file=manifests/base/mlflow/image/Dockerfile; tag="$REGISTRY/mlflow:3.17.2"; extra=() ;;
    *) log "unknown image $image (components, serving, monitoring, serving-gpu, mlflow)"; exit 2 ;;
  esac
  log "$engine build $tag ($file)"
  start=$(date +%s)
  "$engine" build "${args[@]}" "${extra[@]}" -f "$file" -t "$tag" .
  log "built $tag in $(( $(date +%s) - start )) s"
done
