#!/usr/bin/env bash
# `make kind-down`: delete the kind cluster and everything in it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kind
if cluster_exists; then
  kind delete cluster --name "$CLUSTER_NAME"
else
  log "no kind cluster $CLUSTER_NAME"
fi
