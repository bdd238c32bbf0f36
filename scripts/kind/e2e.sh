#!/usr/bin/env bash
# `make kind-e2e`: the whole path on the kind cluster. Needs `make kind-up kind-load` first, and
# the project's virtual environment (the garbage CLI).
#   1. the train-to-deploy pipeline, submitted to Kubeflow Pipelines (CPU, smoke profile);
#   2. the InferenceService it deploys, called from a pod in another namespace through the
#      predictor Service (REST v1 on port 80, v2 gRPC on 8081), so the NetworkPolicies apply;
#   3. Prometheus (kube-prometheus-stack) scrapes the prediction counter through the predictor's
#      PodMonitor, and evaluates the alert rules: GarbageNoTraffic inactive after the traffic.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kubectl curl
GARBAGE="${GARBAGE:-.venv/bin/garbage}"
PYTHON="${PYTHON:-.venv/bin/python}"
KFP_PORT="${KFP_PORT:-8888}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-8890}"
PROFILE="${PROFILE:-smoke}"
RUN_TIMEOUT="${RUN_TIMEOUT:-3600}"
CLIENT_NAMESPACE=garbage-e2e-client
[ -x "$GARBAGE" ] || die "no $GARBAGE: run make install first"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# port_forward NAMESPACE TARGET LOCAL:REMOTE  (in the background, until this script exits)
port_forward() {
  kc -n "$1" port-forward "$2" "$3" >/dev/null 2>&1 &
  pids+=("$!")
  local local_port="${3%%:*}"
  for _ in $(seq 1 30); do
    if curl -s -o /dev/null "http://127.0.0.1:${local_port}/"; then return 0; fi
    sleep 1
  done
  die "port-forward to $1/$2 did not open"
}

# client_job NAME: scripts/kind/e2e-client.yaml's Job, named NAME; waits for it, prints its log.
client_job() {
  local name="$1" manifest
  manifest="$(<scripts/kind/e2e-client.yaml)"
  manifest="${manifest//@JOB_NAME@/$name}"
  manifest="${manifest//@SERVING_IMAGE@/$SERVING_IMAGE}"
  kc -n "$CLIENT_NAMESPACE" delete job "$name" --ignore-not-found --wait=true >/dev/null
  kc apply -f - <<<"$manifest"
  local deadline=$((SECONDS + 660)) succeeded="" failed=""
  while [ -z "$succeeded$failed" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 5
    succeeded="$(kc -n "$CLIENT_NAMESPACE" get job "$name" -o jsonpath='{.status.succeeded}')"
    failed="$(kc -n "$CLIENT_NAMESPACE" get job "$name" -o jsonpath='{.status.failed}')"
  done
  kc -n "$CLIENT_NAMESPACE" logs "job/$name" --all-containers || true
  if [ -z "$succeeded" ]; then
    kc -n "$CLIENT_NAMESPACE" get pods -l app.kubernetes.io/name=garbage-e2e-client -o wide || true
    die "the in-cluster client $name did not succeed (its log is above)"
  fi
}

log "submitting the pipeline (profile $PROFILE, CPU only)"
port_forward kubeflow svc/ml-pipeline-ui "${KFP_PORT}:80"
GARBAGE_COMPONENTS_IMAGE="$COMPONENTS_IMAGE" "$GARBAGE" pipeline submit \
  --host "http://127.0.0.1:${KFP_PORT}" --profile "$PROFILE" --cpu-only \
  --experiment garbage-e2e --run-name "e2e-$(date +%Y%m%d-%H%M%S)" \
  --wait --timeout "$RUN_TIMEOUT"

log "waiting for the InferenceService"
kc -n garbage-serving wait --for=condition=Ready inferenceservice/garbage-classifier --timeout=600s
kc -n garbage-serving get inferenceservice garbage-classifier -o wide
kc -n garbage-serving get service garbage-classifier-predictor -o wide

log "calling the model from namespace $CLIENT_NAMESPACE through the predictor Service"
# The namespace first (its labels come with the Job's manifest), so the ConfigMap can go in.
kc create namespace "$CLIENT_NAMESPACE" --dry-run=client -o yaml | kc apply -f -
kc -n "$CLIENT_NAMESPACE" create configmap garbage-e2e-client \
  --from-file=e2e_client.py=scripts/kind/e2e_client.py --dry-run=client -o yaml | kc apply -f -
client_job e2e-client-1

log "Prometheus: the prediction counter, scraped through the predictor's PodMonitor"
port_forward monitoring svc/kube-prometheus-stack-prometheus "${PROMETHEUS_PORT}:9090"
prometheus="http://127.0.0.1:${PROMETHEUS_PORT}"
"$PYTHON" scripts/kind/e2e_prometheus.py scraped --url "$prometheus" --timeout 600
# rate() needs the counter to grow between two scrapes: a second round after the first sample.
client_job e2e-client-2
log "Prometheus: the alert rules evaluated, GarbageNoTraffic inactive"
"$PYTHON" scripts/kind/e2e_prometheus.py rules --url "$prometheus" --timeout 600
log "e2e passed: pipeline, in-cluster REST and gRPC, metrics scraped, alert rules evaluated"
