#!/usr/bin/env bash
# `make kind-e2e`: run the train-to-deploy pipeline on the kind cluster (CPU, smoke profile) and
# call the InferenceService it deploys. Needs `make kind-up kind-load` first, and the project's
# virtual environment (the garbage CLI).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kubectl curl
GARBAGE="${GARBAGE:-.venv/bin/garbage}"
PYTHON="${PYTHON:-.venv/bin/python}"
KFP_PORT="${KFP_PORT:-8888}"
MODEL_PORT="${MODEL_PORT:-8889}"
PROFILE="${PROFILE:-smoke}"
RUN_TIMEOUT="${RUN_TIMEOUT:-3600}"
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

log "submitting the pipeline (profile $PROFILE, CPU only)"
port_forward kubeflow svc/ml-pipeline-ui "${KFP_PORT}:80"
GARBAGE_COMPONENTS_IMAGE="$COMPONENTS_IMAGE" "$GARBAGE" pipeline submit \
  --host "http://127.0.0.1:${KFP_PORT}" --profile "$PROFILE" --cpu-only \
  --experiment garbage-e2e --run-name "e2e-$(date +%Y%m%d-%H%M%S)" \
  --wait --timeout "$RUN_TIMEOUT"

log "waiting for the InferenceService"
kc -n garbage-serving wait --for=condition=Ready inferenceservice/garbage-classifier --timeout=600s
kc -n garbage-serving get inferenceservice garbage-classifier -o wide

log "calling the model"
port_forward garbage-serving svc/garbage-classifier-predictor "${MODEL_PORT}:80"
payload="$(mktemp)"
"$PYTHON" - "$payload" <<'PY'
import base64, io, json, sys

from PIL import Image

image = Image.new("RGB", (112, 84), (60, 160, 90))
buffer = io.BytesIO()
image.save(buffer, format="JPEG")
body = {"instances": [{"image_bytes": {"b64": base64.b64encode(buffer.getvalue()).decode()}}]}
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(body, f)
PY
response="$(curl -sf -H 'Content-Type: application/json' --data @"$payload" \
  "http://127.0.0.1:${MODEL_PORT}/v1/models/garbage-classifier:predict")"
rm -f "$payload"
echo "$response"
"$PYTHON" -c '
import json, sys
classes = {"cardboard", "glass", "metal", "paper", "plastic", "trash"}
prediction = json.loads(sys.argv[1])["predictions"][0]
assert prediction["label"] in classes, prediction
assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-3, prediction
print("e2e: the InferenceService answered", prediction["label"], round(prediction["score"], 3))
' "$response"
