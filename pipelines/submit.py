"""Submit the training pipeline to a Kubeflow Pipelines cluster.

The pipeline is compiled (``pipelines.training.compile_pipeline``), optionally fitted to a cluster
without GPUs (``cpu_only``: kind, CI), and started with ``kfp.Client`` as a run in an experiment.
On a cluster every step runs in its own pod, so the run's config must point at a shared MLflow
tracking server: :func:`cluster_config` sets the in-cluster one unless the config names another.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import Config

#: MLflow tracking server of the manifests' stack (manifests/base/mlflow), as pods see it.
CLUSTER_TRACKING_URI = "http://mlflow.garbage-mlflow.svc.cluster.local:5000"
DEFAULT_EXPERIMENT = "garbage-classifier"
#: The service account the run's pods use; manifests/base/rbac lets it deploy and nothing more.
DEFAULT_SERVICE_ACCOUNT = "garbage-pipeline"
GPU_RESOURCE_PREFIX = "nvidia.com/"
#: Pipeline parameter that turns the final KServe deploy step on (off under ``kfp.local``).
DEPLOY_PARAMETER = "deploy_to_kserve"
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING", "ERROR")


class SubmitError(RuntimeError):
    """The pipeline could not be compiled, adapted or submitted."""


@dataclass(frozen=True)
class SubmitResult:
    """A submitted run."""

    run_id: str
    run_url: str
    experiment: str
    state: str | None = None


def cluster_config(config: Config, tracking_uri: str | None = None) -> Config:
    """The config as the cluster's pods must see it.

    The tracking server becomes ``tracking_uri``, or the config's own one, or
    :data:`CLUSTER_TRACKING_URI`: the embedded SQLite store cannot be shared between step pods.
    A work dir that is absolute on this machine would not exist in the pods; it becomes ``work``
    (relative to the image's working directory).
    """
    registry = config.registry.model_copy(
        update={
            "tracking_uri": tracking_uri or config.registry.tracking_uri or CLUSTER_TRACKING_URI
        }
    )
    update: dict[str, Any] = {"registry": registry}
    if config.work_dir.is_absolute():
        update["work_dir"] = Path("work")
    return config.model_copy(update=update)


def fit_to_cpu_cluster(
    documents: list[dict[str, Any]], max_cpu: str = "2", max_memory: str = "6G"
) -> list[dict[str, Any]]:
    """A copy of compiled IR documents that schedules on a cluster without GPUs (kind, CI).

    Drops every accelerator request and the GPU node selectors and tolerations, and caps CPU and
    memory requests and limits at ``max_cpu``/``max_memory`` so a small node can run the steps.
    Training then falls back to the CPU (the config's ``train.device: auto``).
    """
    docs = copy.deepcopy(documents)
    for doc in docs:
        executors = (doc.get("deploymentSpec") or {}).get("executors") or {}
        for executor in executors.values():
            resources = (executor.get("container") or {}).get("resources")
            if not resources:
                continue
            resources.pop("accelerator", None)
            for key in list(resources):
                if key in ("resourceCpuRequest", "resourceCpuLimit"):
                    resources[key] = _min_quantity(resources[key], max_cpu)
                elif key in ("resourceMemoryRequest", "resourceMemoryLimit"):
                    resources[key] = _min_quantity(resources[key], max_memory)
                elif key in ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"):
                    resources.pop(key)  # deprecated numeric twins of the resource* fields
        platform = ((doc.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec")
        for executor in ((platform or {}).get("executors") or {}).values():
            executor.pop("nodeSelector", None)
            tolerations = [
                t
                for t in executor.get("tolerations") or []
                if not str(t.get("key", "")).startswith(GPU_RESOURCE_PREFIX)
            ]
            if tolerations:
                executor["tolerations"] = tolerations
            else:
                executor.pop("tolerations", None)
            for mount in executor.get("emptyDirMounts") or []:
                if mount.get("sizeLimit"):
                    mount["sizeLimit"] = _min_quantity(mount["sizeLimit"], "1Gi")
    return docs


def compile_package(
    out_path: Path, cpu_only: bool = False, compile_fn: Callable[[Path], Path] | None = None
) -> Path:
    """Compile the pipeline to ``out_path`` (fitted to a CPU cluster when ``cpu_only``)."""
    if compile_fn is None:
        from pipelines.training import compile_pipeline

        compile_fn = compile_pipeline
    try:
        path = compile_fn(out_path)
    except Exception as e:  # the KFP compiler raises many types for a broken pipeline
        raise SubmitError(f"cannot compile the pipeline: {e}") from e
    if cpu_only:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        path.write_text(yaml.safe_dump_all(fit_to_cpu_cluster(docs), sort_keys=False))
    return path


def submit_pipeline(
    host: str,
    config: Config,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    cpu_only: bool = False,
    package: Path | None = None,
    enable_caching: bool | None = None,
    wait: bool = False,
    timeout_s: float = 3600,
    existing_token: str | None = None,
    deploy: bool = True,
    client: Any = None,
) -> SubmitResult:
    """Start a run of the training pipeline on the Kubeflow Pipelines API at ``host``.

    Args:
        host: The KFP API endpoint, e.g. ``http://localhost:8080`` after
            ``kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80``.
        config: The validated run config (use :func:`cluster_config` first).
        experiment: Experiment to file the run under (created when missing).
        run_name: Run display name; default: pipeline name and time.
        namespace: Kubeflow profile namespace (multi-user installs only).
        service_account: Kubernetes service account of the run's pods.
        cpu_only: Fit the pipeline to a cluster without GPUs (see :func:`fit_to_cpu_cluster`).
        package: An already compiled pipeline YAML; default: compile now.
        enable_caching: Override the steps' caching (None keeps the pipeline's settings).
        wait: Wait for the run to finish and raise when it did not succeed.
        timeout_s: How long to wait.
        existing_token: Bearer token for an authenticated KFP endpoint.
        deploy: Set the pipeline's ``deploy_to_kserve`` parameter (when it has one), so its last
            step publishes the promoted champion as the InferenceService.
        client: A ``kfp.Client``-like object (tests); default: ``kfp.Client(host=...)``.

    Raises:
        SubmitError: Compiling, connecting, submitting or (with ``wait``) the run failed.
    """
    if client is None:
        import kfp

        try:
            extra = {"namespace": namespace} if namespace else {}
            client = kfp.Client(host=host, existing_token=existing_token, **extra)
        except Exception as e:  # connection and auth errors come from several libraries
            raise SubmitError(f"cannot connect to Kubeflow Pipelines at {host}: {e}") from e
    with tempfile.TemporaryDirectory(prefix="garbage-submit-") as tmp:
        if package is None:
            package = compile_package(Path(tmp) / "pipeline.yaml", cpu_only=cpu_only)
        elif cpu_only:
            docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
            package = Path(tmp) / "pipeline.yaml"
            package.write_text(yaml.safe_dump_all(fit_to_cpu_cluster(docs), sort_keys=False))
        arguments: dict[str, Any] = {"config_json": config.model_dump_json()}
        if DEPLOY_PARAMETER in pipeline_parameters(Path(package)):
            arguments[DEPLOY_PARAMETER] = deploy
        try:
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                service_account=service_account,
                enable_caching=enable_caching,
            )
        except Exception as e:  # kfp_server_api.ApiException, urllib3 and auth errors
            raise SubmitError(f"Kubeflow Pipelines at {host} refused the run: {e}") from e
    run_id = str(run.run_id)
    result = SubmitResult(
        run_id=run_id, run_url=f"{host.rstrip('/')}/#/runs/details/{run_id}", experiment=experiment
    )
    if not wait:
        return result
    state = wait_for_run(client, run_id, timeout_s)
    result = SubmitResult(result.run_id, result.run_url, experiment, state)
    if state != "SUCCEEDED":
        raise SubmitError(f"run {run_id} ended {state}; see {result.run_url}")
    return result


def pipeline_parameters(package: Path) -> set[str]:
    """Names of the compiled pipeline's input parameters."""
    docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    root = docs[0].get("root") or {}
    return set((root.get("inputDefinitions") or {}).get("parameters") or {})


def wait_for_run(
    client: Any,
    run_id: str,
    timeout_s: float,
    poll_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll the run until it reaches a final state; return the state.

    Raises:
        SubmitError: Still running after ``timeout_s``.
    """
    deadline = clock() + timeout_s
    while True:
        run = client.get_run(run_id)
        state = str(getattr(run, "state", "") or "").upper()
        if state in FINAL_STATES:
            return state
        if clock() >= deadline:
            raise SubmitError(f"run {run_id} still {state or 'pending'} after {timeout_s:g} s")
        sleep(poll_s)


_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "m": 1e-3,
}


def _quantity(value: str | float) -> float:
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def _min_quantity(value: str, cap: str) -> str:
    """The smaller of two Kubernetes quantities, as written."""
    return str(value) if _quantity(value) <= _quantity(cap) else cap
