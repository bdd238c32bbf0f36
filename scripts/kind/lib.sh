#!/usr/bin/env bash
# Shared settings and helpers of the scripts/kind/*.sh scripts (sourced, not run).
# Every version comes from versions.env at the repository root; export a variable before running
# a script to override it (e.g. `KSERVE_VERSION=vX.Y.Z make kind-up`).

VERSIONS_FILE="${VERSIONS_FILE:-versions.env}"
[ -r "$VERSIONS_FILE" ] || {
  printf 'error: %s not found: run the kind scripts from the repository root\n' "$VERSIONS_FILE" >&2
  exit 1
}
while IFS='=' read -r key value; do
  case "$key" in '' | '#'*) continue ;; esac
  # A variable set in the environment wins over the file.
  [ -n "${!key+set}" ] || export "$key=$value"
done <"$VERSIONS_FILE"

# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
CLUSTER_NAME="${CLUSTER_NAME:-garbage}"
KIND_CONFIG="${KIND_CONFIG:-kind-config.yaml}"
COMPONENTS_IMAGE="${COMPONENTS_IMAGE:-ghcr.io/garbage-classifier/components:${IMAGE_TAG}}"
SERVING_IMAGE="${SERVING_IMAGE:-ghcr.io/garbage-classifier/serving:${IMAGE_TAG}}"
MONITORING_IMAGE="${MONITORING_IMAGE:-ghcr.io/garbage-classifier/monitoring:${IMAGE_TAG}}"
MLFLOW_IMAGE="${MLFLOW_IMAGE:-ghcr.io/garbage-classifier/mlflow:${MLFLOW_IMAGE_TAG}}"
KUBE_CONTEXT="kind-${CLUSTER_NAME}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

die() {
  log "error: $*"
  exit 1
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (needed by $(basename "$0"))"
  done
}

kc() { kubectl --context "$KUBE_CONTEXT" "$@"; }

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; }

# wait_for_rollout NAMESPACE KIND/NAME [TIMEOUT]
wait_for_rollout() {
  kc -n "$1" rollout status "$2" --timeout="${3:-600s}"
}

# expect_image_tag NAMESPACE DEPLOYMENT TAG: one of the deployment's containers runs image tag TAG
# (what was installed is what versions.env says).
expect_image_tag() {
  local images
  images="$(kc -n "$1" get deployment "$2" -o jsonpath='{range .spec.template.spec.containers[*]}{.image}{"\n"}{end}')"
  grep -qE ":$3(@sha256:[0-9a-f]+)?\$" <<<"$images" ||
    die "$1/deployment/$2 runs $(tr '\n' ' ' <<<"$images")- not tag $3 (versions.env)"
  log "$1/$2 runs $3"
}
