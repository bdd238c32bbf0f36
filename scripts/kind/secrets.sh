#!/usr/bin/env bash
# Create the Secrets the manifests reference, with random values, unless they exist.
# Nothing secret is stored in the repository; re-running keeps the existing values. A copy in a
# client's namespace that no longer matches its source (e.g. a serving Secret that still holds
# MinIO's root key) is replaced. Needs htpasswd (Debian/Ubuntu: apache2-utils) for bcrypt.
#   garbage-mlflow/mlflow-postgres          POSTGRES_PASSWORD
#   garbage-mlflow/minio-credentials        MINIO_ROOT_USER, MINIO_ROOT_PASSWORD (MinIO's root:
#                                           read by MinIO and the Job minio-buckets only)
#   garbage-mlflow/minio-mlflow             AWS_ACCESS_KEY_ID=mlflow, AWS_SECRET_ACCESS_KEY (the
#                                           MLflow server: read-write on bucket mlflow)
#   garbage-mlflow/minio-kserve-reader      AWS_ACCESS_KEY_ID=kserve-reader, AWS_SECRET_ACCESS_KEY
#                                           (read-only on mlflow/artifacts)
#   garbage-mlflow/minio-collector-images   AWS_ACCESS_KEY_ID=garbage-collector,
#                                           AWS_SECRET_ACCESS_KEY (read-write-delete on bucket
#                                           garbage-images only)
#   garbage-mlflow/minio-retrain            AWS_ACCESS_KEY_ID=garbage-retrain, AWS_SECRET_ACCESS_KEY
#                                           (read on garbage-images, read-write on garbage-datasets)
#   garbage-mlflow/minio-datasets-reader    AWS_ACCESS_KEY_ID=garbage-datasets-reader,
#                                           AWS_SECRET_ACCESS_KEY (read-only on garbage-datasets)
#   garbage-serving/garbage-serving-s3      the kserve-reader's keys (+ S3 endpoint annotations for
#                                           KServe's storage initializer)
#   garbage-mlflow/mlflow-auth              MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY
#   garbage-mlflow/mlflow-users             GARBAGE_PIPELINE_PASSWORD, GARBAGE_MONITORING_PASSWORD
#   kubeflow/garbage-pipeline-mlflow        MLFLOW_TRACKING_USERNAME=garbage-pipeline,
#                                           MLFLOW_TRACKING_PASSWORD (the pipeline's steps: writes)
#   garbage-monitoring/garbage-monitoring-mlflow
#                                           MLFLOW_TRACKING_USERNAME=garbage-monitoring,
#                                           MLFLOW_TRACKING_PASSWORD (collector, drift job: reads)
#   garbage-monitoring/garbage-collector-token     tokens: `name:token` lines the collector's
#                                                  /feedback accepts (one, garbage-feedback)
#   garbage-monitoring/garbage-collector-images    the keys of minio-collector-images (the
#                                                  collector's image store)
#   garbage-monitoring/garbage-retrain-s3          the keys of minio-retrain (the retrain job)
#   kubeflow/garbage-pipeline-datasets             the keys of minio-datasets-reader and
#                                                  AWS_ENDPOINT_URL (the pipeline's fetch and
#                                                  split steps read dataset versions)
#   garbage-monitoring/garbage-drift-pushgateway   username=drift, password (pushes)
#   garbage-monitoring/garbage-pushgateway-scrape  username=prometheus, password (scrapes)
#   garbage-monitoring/garbage-pushgateway-web     web-config.yml: the Pushgateway's basic_auth_users
#                                                  (bcrypt hashes of the two above)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kubectl openssl htpasswd

random() { openssl rand -hex 24; }

exists() { kc -n "$1" get secret "$2" >/dev/null 2>&1; }

# value NAMESPACE SECRET KEY: one key of a Secret, decoded ("" when absent).
value() { kc -n "$1" get secret "$2" -o "jsonpath={.data.$3}" | base64 -d; }

# create NAMESPACE SECRET KEY=VALUE...: create the Secret unless it exists.
create() {
  local namespace="$1" name="$2" literals=()
  shift 2
  exists "$namespace" "$name" && return 0
  for pair in "$@"; do literals+=("--from-literal=$pair"); done
  kc -n "$namespace" create secret generic "$name" "${literals[@]}" >/dev/null
  log "created $namespace/$name"
}

# sync NAMESPACE SECRET KEY=VALUE...: a Secret that holds exactly these values (copies of another
# Secret's): created when missing, replaced when it differs; returns 1 when it was already right.
sync() {
  local namespace="$1" name="$2" literals=() stale=0 pair
  shift 2
  for pair in "$@"; do
    literals+=("--from-literal=$pair")
    if exists "$namespace" "$name" && [ "$(value "$namespace" "$name" "${pair%%=*}")" != "${pair#*=}" ]; then
      stale=1
    fi
  done
  if exists "$namespace" "$name"; then
    [ "$stale" -eq 1 ] || return 1
    kc -n "$namespace" delete secret "$name" >/dev/null
    log "replacing $namespace/$name: it no longer matches its source"
  fi
  kc -n "$namespace" create secret generic "$name" "${literals[@]}" >/dev/null
  log "created $namespace/$name"
}

for ns in garbage-mlflow garbage-serving garbage-monitoring kubeflow; do
  kc get namespace "$ns" >/dev/null 2>&1 ||
    die "namespace $ns is missing: apply manifests/base/namespaces.yaml and manifests/monitoring/namespace.yaml (and install Kubeflow Pipelines) first"
done

# PostgreSQL and MinIO: the root credentials stay in garbage-mlflow.
create garbage-mlflow mlflow-postgres POSTGRES_PASSWORD="$(random)"
create garbage-mlflow minio-credentials \
  MINIO_ROOT_USER="garbage-$(openssl rand -hex 4)" MINIO_ROOT_PASSWORD="$(random)"
create garbage-mlflow minio-mlflow AWS_ACCESS_KEY_ID=mlflow AWS_SECRET_ACCESS_KEY="$(random)"
create garbage-mlflow minio-kserve-reader \
  AWS_ACCESS_KEY_ID=kserve-reader AWS_SECRET_ACCESS_KEY="$(random)"
create garbage-mlflow minio-collector-images \
  AWS_ACCESS_KEY_ID=garbage-collector AWS_SECRET_ACCESS_KEY="$(random)"
create garbage-mlflow minio-retrain AWS_ACCESS_KEY_ID=garbage-retrain AWS_SECRET_ACCESS_KEY="$(random)"
create garbage-mlflow minio-datasets-reader \
  AWS_ACCESS_KEY_ID=garbage-datasets-reader AWS_SECRET_ACCESS_KEY="$(random)"
if sync garbage-serving garbage-serving-s3 \
  AWS_ACCESS_KEY_ID="$(value garbage-mlflow minio-kserve-reader AWS_ACCESS_KEY_ID)" \
  AWS_SECRET_ACCESS_KEY="$(value garbage-mlflow minio-kserve-reader AWS_SECRET_ACCESS_KEY)"; then
  kc -n garbage-serving annotate secret garbage-serving-s3 \
    serving.kserve.io/s3-endpoint=minio.garbage-mlflow.svc.cluster.local:9000 \
    serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1 \
    serving.kserve.io/s3-verifyssl=0 >/dev/null
fi

# MLflow: the admin, and one user per client (mlflow-users in garbage-mlflow creates them).
create garbage-mlflow mlflow-auth \
  MLFLOW_AUTH_ADMIN_PASSWORD="$(random)" MLFLOW_FLASK_SERVER_SECRET_KEY="$(random)"
create garbage-mlflow mlflow-users \
  GARBAGE_PIPELINE_PASSWORD="$(random)" GARBAGE_MONITORING_PASSWORD="$(random)"
sync kubeflow garbage-pipeline-mlflow MLFLOW_TRACKING_USERNAME=garbage-pipeline \
  MLFLOW_TRACKING_PASSWORD="$(value garbage-mlflow mlflow-users GARBAGE_PIPELINE_PASSWORD)" || true
sync garbage-monitoring garbage-monitoring-mlflow MLFLOW_TRACKING_USERNAME=garbage-monitoring \
  MLFLOW_TRACKING_PASSWORD="$(value garbage-mlflow mlflow-users GARBAGE_MONITORING_PASSWORD)" || true

# The collector: the bearer tokens of label feedback, and its image store's MinIO keys.
create garbage-monitoring garbage-collector-token tokens="garbage-feedback:$(random)"
sync garbage-monitoring garbage-collector-images \
  AWS_ACCESS_KEY_ID="$(value garbage-mlflow minio-collector-images AWS_ACCESS_KEY_ID)" \
  AWS_SECRET_ACCESS_KEY="$(value garbage-mlflow minio-collector-images AWS_SECRET_ACCESS_KEY)" || true

# Retraining: the retrain job's MinIO keys, and the pipeline's read-only key for dataset versions.
sync garbage-monitoring garbage-retrain-s3 \
  AWS_ACCESS_KEY_ID="$(value garbage-mlflow minio-retrain AWS_ACCESS_KEY_ID)" \
  AWS_SECRET_ACCESS_KEY="$(value garbage-mlflow minio-retrain AWS_SECRET_ACCESS_KEY)" || true
sync kubeflow garbage-pipeline-datasets \
  AWS_ACCESS_KEY_ID="$(value garbage-mlflow minio-datasets-reader AWS_ACCESS_KEY_ID)" \
  AWS_SECRET_ACCESS_KEY="$(value garbage-mlflow minio-datasets-reader AWS_SECRET_ACCESS_KEY)" \
  AWS_ENDPOINT_URL=http://minio.garbage-mlflow.svc.cluster.local:9000 || true

# The Pushgateway: its web config holds bcrypt hashes of the pushing and the scraping user.
fresh=0
for pair in garbage-drift-pushgateway=drift garbage-pushgateway-scrape=prometheus; do
  if ! exists garbage-monitoring "${pair%%=*}"; then
    create garbage-monitoring "${pair%%=*}" username="${pair#*=}" password="$(random)"
    fresh=1
  fi
done
if [ "$fresh" -eq 1 ] || ! exists garbage-monitoring garbage-pushgateway-web; then
  config="basic_auth_users:"
  for name in garbage-drift-pushgateway garbage-pushgateway-scrape; do
    user="$(value garbage-monitoring "$name" username)"
    hash="$(value garbage-monitoring "$name" password | htpasswd -niBC 10 "$user" | cut -d: -f2-)"
    config+=$'\n'"  $user: $hash"
  done
  kc -n garbage-monitoring delete secret garbage-pushgateway-web --ignore-not-found >/dev/null
  kc -n garbage-monitoring create secret generic garbage-pushgateway-web \
    --from-literal=web-config.yml="$config" >/dev/null
  log "created garbage-monitoring/garbage-pushgateway-web"
fi
