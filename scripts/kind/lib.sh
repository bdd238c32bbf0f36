#!/usr/bin/env bash
# Shared settings and helpers of the scripts/kind/*.sh scripts (sourced, not run).
# Every version is pinned here; override one by exporting it before running a script.

# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
CLUSTER_NAME="${CLUSTER_NAME:-garbage}"
KIND_CONFIG="${KIND_CONFIG:-kind-config.yaml}"
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.16.0}"
KFP_VERSION="${KFP_VERSION:-2.14.3}"
PROMETHEUS_STACK_VERSION="${PROMETHEUS_STACK_VERSION:-75.15.1}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
COMPONENTS_IMAGE="${COMPONENTS_IMAGE:-ghcr.io/garbage-classifier/components:${IMAGE_TAG}}"
SERVING_IMAGE="${SERVING_IMAGE:-ghcr.io/garbage-classifier/serving:${IMAGE_TAG}}"
MONITORING_IMAGE="${MONITORING_IMAGE:-ghcr.io/garbage-classifier/monitoring:${IMAGE_TAG}}"
MLFLOW_IMAGE="${MLFLOW_IMAGE:-ghcr.io/garbage-classifier/mlflow:3.17.2}"
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
