#!/usr/bin/env bash
# `make kind-up`: a local kind cluster with the whole stack:
#   cert-manager -> KServe (helm charts, Standard mode, no Knative) -> Kubeflow Pipelines (standalone)
#   -> Katib (standalone)
#   -> Prometheus Operator + Prometheus + Grafana (kube-prometheus-stack, namespace monitoring)
#   -> the project's manifests (overlays/kind: MLflow + PostgreSQL + MinIO, serving runtime,
#   InferenceService, RBAC, NetworkPolicies) -> Secrets with random values.
# Needs Docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind, kubectl, helm and the
# internet. Idempotent: re-running upgrades in place. Load the project's images with
# `make kind-load` (scripts/kind/load.sh) before the pods that use them can start.
# Every version comes from versions.env (through lib.sh); each is checked on the running cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kind/lib.sh
source scripts/kind/lib.sh
need kind kubectl helm openssl htpasswd

if cluster_exists; then
  log "kind cluster $CLUSTER_NAME exists"
else
  log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
  kind create cluster --name "$CLUSTER_NAME" --config "$KIND_CONFIG" --image "$KIND_NODE_IMAGE" \
    --wait 180s
fi

log "cert-manager $CERT_MANAGER_VERSION"
kc apply --server-side -f \
  "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
for deployment in cert-manager cert-manager-webhook cert-manager-cainjector; do
  wait_for_rollout cert-manager "deployment/$deployment" 300s
done
expect_image_tag cert-manager cert-manager "$CERT_MANAGER_VERSION"

log "KServe $KSERVE_VERSION (charts kserve-crd and kserve-resources, Standard deployment mode)"
helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
  --version "$KSERVE_VERSION" --namespace kserve --create-namespace --kube-context "$KUBE_CONTEXT" --wait
# No ingress: in-cluster callers use the predictor Service, the e2e calls it from another namespace.
helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve-resources \
  --version "$KSERVE_VERSION" --namespace kserve --kube-context "$KUBE_CONTEXT" \
  --set kserve.controller.deploymentMode=Standard \
  --set kserve.controller.gateway.disableIngressCreation=true \
  --wait --timeout 10m
expect_image_tag kserve kserve-controller-manager "$KSERVE_VERSION"

log "Kubeflow Pipelines $KFP_VERSION (standalone)"
kc apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
# Every CRD the cluster-scoped part brought (Argo's, KFP's) before the resources that use them.
kc wait --for condition=established --timeout=120s crd --all
kc apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
for deployment in ml-pipeline ml-pipeline-ui workflow-controller; do
  wait_for_rollout kubeflow "deployment/$deployment" 900s
done
expect_image_tag kubeflow ml-pipeline "$KFP_VERSION"

log "Katib $KATIB_VERSION (standalone: garbage tune --katib)"
# Into the kubeflow namespace, which it labels for its metrics collector; trials run there too.
kc apply -k "github.com/kubeflow/katib.git/manifests/v1beta1/installs/katib-standalone?ref=${KATIB_VERSION}"
kc wait --for condition=established --timeout=120s \
  crd/experiments.kubeflow.org crd/suggestions.kubeflow.org crd/trials.kubeflow.org
for deployment in katib-mysql katib-db-manager katib-controller; do
  wait_for_rollout kubeflow "deployment/$deployment" 600s
done
expect_image_tag kubeflow katib-controller "$KATIB_VERSION"

log "kube-prometheus-stack $PROMETHEUS_STACK_VERSION (Prometheus Operator $PROMETHEUS_OPERATOR_VERSION, Grafana)"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo update prometheus-community >/dev/null
# Select every ServiceMonitor/PodMonitor/PrometheusRule, not only the chart's own; small for kind.
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "$PROMETHEUS_STACK_VERSION" --namespace monitoring --create-namespace \
  --kube-context "$KUBE_CONTEXT" \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false \
  --set grafana.sidecar.dashboards.enabled=true \
  --set grafana.sidecar.dashboards.searchNamespace=ALL \
  --set alertmanager.enabled=false \
  --wait --timeout 10m
expect_image_tag monitoring kube-prometheus-stack-operator "$PROMETHEUS_OPERATOR_VERSION"

log "project manifests (overlays/kind)"
# Namespaces first, so the Secrets can be created before the pods that mount them start.
kc apply -f manifests/base/namespaces.yaml -f manifests/monitoring/namespace.yaml
scripts/kind/secrets.sh
kc apply -k manifests/overlays/kind
log "waiting for the MLflow stack"
wait_for_rollout garbage-mlflow statefulset/mlflow-postgres 600s
wait_for_rollout garbage-mlflow deployment/minio 600s
kc -n garbage-mlflow wait --for=condition=complete job/minio-buckets --timeout=600s
wait_for_rollout garbage-mlflow deployment/mlflow 600s
kc -n garbage-mlflow wait --for=condition=complete job/mlflow-users --timeout=600s
log "ready: KFP UI  kubectl --context $KUBE_CONTEXT port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"
log "       MLflow  kubectl --context $KUBE_CONTEXT port-forward -n garbage-mlflow svc/mlflow 5000:5000"
