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


def _retrain(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    cronjob = _one(docs, "CronJob", "garbage-retrain")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return cronjob, pod, container


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def test_retrain_builds_the_pipeline_for_the_overlays_cluster(rendered):
    """kind has no GPU: its retrain compiles the pipeline --cpu-only; the GPU overlay's does not."""
    assert "--cpu-only" in _retrain(rendered["overlays/kind"])[2]["args"]
    assert "--cpu-only" not in _retrain(rendered["overlays/gpu"])[2]["args"]
    assert not _gpu_anywhere(_retrain(rendered["overlays/kind"])[0])


def test_retrain_runs_once_at_a_time_and_is_not_retried(rendered):
    cronjob, pod, _ = _retrain(rendered["monitoring"])
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert job["activeDeadlineSeconds"] >= 4 * 3600  # a whole pipeline run
    # it talks to no Kubernetes API: its own service account, no token, no Role binds it
    _one(rendered["monitoring"], "ServiceAccount", pod["serviceAccountName"])
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] not in {
        s["name"]
        for doc in rendered["overlays/gpu"]
        if doc["kind"] == "RoleBinding"
        for s in doc["subjects"]
    }


def test_retrain_reads_the_collectors_store_read_only_on_its_node(rendered):
    docs = rendered["monitoring"]
    _, pod, container = _retrain(docs)
    collector = _one(docs, "Deployment", "garbage-collector")["spec"]["template"]["spec"]
    (collector_container,) = collector["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    collector_env = {e["name"]: e.get("value") for e in collector_container["env"]}
    assert env["GARBAGE_MONITORING_DB"] == collector_env["GARBAGE_MONITORING_DB"]
    assert _flag(container["args"], "--db") == "$(GARBAGE_MONITORING_DB)"
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    collector_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in collector["volumes"]
        if "persistentVolumeClaim" in v
    }
    (name,) = claims
    assert claims[name]["claimName"] in collector_claims and claims[name]["readOnly"] is True
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == name]
    assert mount["readOnly"] is True
    assert env["GARBAGE_MONITORING_DB"].startswith(f"sqlite:///{mount['mountPath']}/")
    # a ReadWriteOnce volume: only on the collector's node
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "garbage-collector"}


def test_retrain_is_pointed_at_what_the_manifests_run(rendered):
    """The KFP API, the MLflow the pipeline's pods use, the collector's image bucket, the dataset
    bucket the bucket Job creates, and the components image (the garbage CLI with training)."""
    from pipelines import submit

    docs = rendered["overlays/gpu"]
    _, _, container = _retrain(docs)
    args = container["args"]
    assert container["command"] == ["garbage"] and args[0] == "retrain"
    assert container["image"] == "ghcr.io/garbage-classifier/components:0.1.0"
    assert _flag(args, "--host") == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert _flag(args, "--tracking-uri") == submit.CLUSTER_TRACKING_URI
    collector = _one(docs, "Deployment", "garbage-collector")["spec"]["template"]["spec"]
    images = _flag(collector["containers"][0]["args"], "--image-store")
    assert _flag(args, "--image-store").rstrip("/") == images.rstrip("/")
    root = _flag(args, "--set").split("=", 1)
    assert root[0] == "data.datasets_root"
    buckets = _one(docs, "Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]
    bucket = root[1].removeprefix("s3://").strip("/")
    assert f"mc mb --ignore-existing store/{bucket}" in buckets["args"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    minio = _one(docs, "Service", "minio")
    assert env["AWS_ENDPOINT_URL"] == (
        f"http://minio.{minio['metadata']['namespace']}.svc.cluster.local:"
        f"{minio['spec']['ports'][0]['port']}"
    )
    assert env["MLFLOW_TRACKING_URI"] == submit.CLUSTER_TRACKING_URI
