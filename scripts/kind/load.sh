#!/usr/bin/env bash
# `make kind-load`: put the project's images into the kind cluster's node (no registry needed).
# Builds them first unless SKIP_BUILD=1 (scripts/build-images.sh, docker or podman).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kind
cluster_exists || die "no kind cluster $CLUSTER_NAME: run make kind-up first"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  IMAGES="components serving monitoring mlflow" scripts/build-images.sh
fi

engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
  if docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
for image in "$COMPONENTS_IMAGE" "$SERVING_IMAGE" "$MONITORING_IMAGE" "$MLFLOW_IMAGE"; do
  log "loading $image into $CLUSTER_NAME"
  if [ "$engine" = docker ]; then
    kind load docker-image --name "$CLUSTER_NAME" "$image"
  else
    archive="$(mktemp --suffix=.tar)"
    podman save -o "$archive" "$image"
    kind load image-archive --name "$CLUSTER_NAME" "$archive"
    rm -f "$archive"
  fi
done
