"""What each overlay promises, and that the manifests agree with the code that talks to them."""

from __future__ import annotations

from typing import Any

COLLECTOR_URL = "http://garbage-collector.garbage-monitoring.svc.cluster.local/events"


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _gpu_anywhere(node: Any) -> bool:
    if isinstance(node, dict):
        return any("nvidia.com/gpu" in str(k) or _gpu_anywhere(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_gpu_anywhere(v) for v in node)
    return "nvidia.com/gpu" in str(node)


def test_gpu_overlay_serves_on_gpu_nodes_with_autoscaling(rendered):
    docs = rendered["overlays/gpu"]
    isvc = _one(docs, "InferenceService", "garbage-classifier")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor[
        "tolerations"
    ]
    assert predictor["maxReplicas"] > predictor["minReplicas"] >= 1
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
    runtime = _one(docs, "ServingRuntime", "garbage-onnx")
    assert runtime["spec"]["containers"][0]["image"].endswith(":0.1.0-gpu")
    assert runtime["spec"]["containers"][0]["args"][0] == "--model_name={{.Name}}"


def test_kind_overlay_is_cpu_only_standard_mode_and_small(rendered):
    docs = rendered["overlays/kind"]
    assert not _gpu_anywhere(docs)
    isvc = _one(docs, "InferenceService", "garbage-classifier")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["model"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "1Gi",
    }
    runtime = _one(docs, "ServingRuntime", "garbage-onnx")
    assert runtime["spec"]["containers"][0]["image"] == "ghcr.io/garbage-classifier/serving:0.1.0"
    assert runtime["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"
    assert "args" in runtime["spec"]["containers"][0]  # the JSON patch kept the container whole


def test_payload_logger_points_at_the_monitoring_collector(rendered):
    for target in ("overlays/kind", "overlays/gpu"):
        logger = _one(rendered[target], "InferenceService")["spec"]["predictor"]["logger"]
        assert logger == {"mode": "all", "url": COLLECTOR_URL}


def test_names_the_code_relies_on(rendered):
    """Names the code relies on exist in the manifests, with the rights the code needs."""
    from garbage import deploy
    from garbage.core.names import MODEL_NAME
    from pipelines import submit

    docs = rendered["base"]
    isvc = _one(docs, "InferenceService", MODEL_NAME)
    assert isvc["metadata"]["namespace"] == deploy.DEFAULT_NAMESPACE
    model = isvc["spec"]["predictor"]["model"]
    assert (
        model["runtime"] == deploy.RUNTIME and model["modelFormat"]["name"] == deploy.MODEL_FORMAT
    )
    assert isvc["spec"]["predictor"]["serviceAccountName"] == deploy.SERVICE_ACCOUNT
    _one(docs, "ServiceAccount", deploy.SERVICE_ACCOUNT)
    runtime = _one(docs, "ServingRuntime", deploy.RUNTIME)
    assert deploy.MODEL_FORMAT in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]

    # the run's service account may do exactly what garbage/deploy.py does
    _one(docs, "ServiceAccount", submit.DEFAULT_SERVICE_ACCOUNT)
    binding = _one(docs, "RoleBinding", "garbage-pipeline-deployer")
    assert binding["metadata"]["namespace"] == deploy.DEFAULT_NAMESPACE
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": submit.DEFAULT_SERVICE_ACCOUNT, "namespace": "kubeflow"}
    ]
    role = _one(docs, "Role", binding["roleRef"]["name"])
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [deploy.GROUP] and rule["resources"] == [deploy.PLURAL]
    assert {"get", "create", "patch"} <= set(rule["verbs"])

    # the tracking server the pipeline is told to use is the one the manifests run
    mlflow = _one(docs, "Service", "mlflow")
    assert (
        f"http://mlflow.{mlflow['metadata']['namespace']}"
        f".svc.cluster.local:{mlflow['spec']['ports'][0]['port']}"
    ) == submit.CLUSTER_TRACKING_URI
    args = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--artifacts-destination={deploy.ARTIFACTS_DESTINATION}" in args
    assert "--serve-artifacts" in args
