#!/usr/bin/env bash
# Create the Secrets the manifests reference, with random values, unless they exist.
# Nothing secret is stored in the repository; re-running keeps the existing values.
#   garbage-mlflow/mlflow-postgres      POSTGRES_PASSWORD
#   garbage-mlflow/minio-credentials    MINIO_ROOT_USER, MINIO_ROOT_PASSWORD
#   garbage-serving/garbage-serving-s3  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ S3 endpoint
#                                       annotations for KServe's storage initializer)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kubectl openssl

random() { openssl rand -hex 24; }

exists() { kc -n "$1" get secret "$2" >/dev/null 2>&1; }

for ns in garbage-mlflow garbage-serving; do
  kc get namespace "$ns" >/dev/null 2>&1 || die "namespace $ns is missing: apply the manifests first"
done

if ! exists garbage-mlflow mlflow-postgres; then
  kc -n garbage-mlflow create secret generic mlflow-postgres \
    --from-literal=POSTGRES_PASSWORD="$(random)"
  log "created garbage-mlflow/mlflow-postgres"
fi

if ! exists garbage-mlflow minio-credentials; then
  kc -n garbage-mlflow create secret generic minio-credentials \
    --from-literal=MINIO_ROOT_USER="garbage-$(openssl rand -hex 4)" \
    --from-literal=MINIO_ROOT_PASSWORD="$(random)"
  log "created garbage-mlflow/minio-credentials"
fi

if ! exists garbage-serving garbage-serving-s3; then
  user="$(kc -n garbage-mlflow get secret minio-credentials -o jsonpath='{.data.MINIO_ROOT_USER}' | base64 -d)"
  password="$(kc -n garbage-mlflow get secret minio-credentials -o jsonpath='{.data.MINIO_ROOT_PASSWORD}' | base64 -d)"
  kc -n garbage-serving create secret generic garbage-serving-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$user" --from-literal=AWS_SECRET_ACCESS_KEY="$password"
  kc -n garbage-serving annotate secret garbage-serving-s3 \
    serving.kserve.io/s3-endpoint=minio.garbage-mlflow.svc.cluster.local:9000 \
    serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1 \
    serving.kserve.io/s3-verifyssl=0
  log "created garbage-serving/garbage-serving-s3"
fi
