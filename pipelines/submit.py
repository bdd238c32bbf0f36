"""Submit the training pipeline to a Kubeflow Pipelines cluster.

The pipeline is compiled (``pipelines.training.compile_pipeline``) for a GPU cluster, or for one
without GPUs (``cpu_only``: kind, CI), and started with ``kfp.Client`` as a run in an experiment.
On a cluster every step runs in its own pod, so the run's config must point at a shared MLflow
tracking server: :func:`cluster_config` sets the in-cluster one unless the config names another.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from garbage.core.config import Config
from garbage.core.names import MODEL_NAME

#: MLflow tracking server of the manifests' stack (manifests/base/mlflow), as pods see it.
CLUSTER_TRACKING_URI = "http://mlflow.garbage-mlflow.svc.cluster.local:5000"
DEFAULT_EXPERIMENT = MODEL_NAME
#: The service account the run's pods use; manifests/base/rbac lets it deploy and nothing more.
DEFAULT_SERVICE_ACCOUNT = "garbage-pipeline"
#: Pipeline parameter that turns the final KServe deploy step on (off under ``kfp.local``).
DEPLOY_PARAMETER = "deploy_to_kserve"
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING", "ERROR")


class SubmitError(RuntimeError):
    """The pipeline could not be compiled or submitted."""


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


def compile_package(out_path: Path, config: Config, cpu_only: bool = False) -> Path:
    """Compile the pipeline to ``out_path`` for a GPU cluster, or a CPU-only one (``cpu_only``).

    Raises:
        SubmitError: The KFP compiler refused the pipeline.
    """
    from pipelines.training import CPU_CLUSTER, GPU_CLUSTER, compile_pipeline

    try:
        return compile_pipeline(out_path, config, CPU_CLUSTER if cpu_only else GPU_CLUSTER)
    except Exception as e:  # the KFP compiler raises many types for a broken pipeline
        raise SubmitError(f"cannot compile the pipeline: {e}") from e


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
        cpu_only: Build the pipeline for a cluster without GPUs (``training.CPU_CLUSTER``).
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
    if package is not None and cpu_only:
        raise SubmitError(
            "--cpu-only chooses the cluster when the pipeline is compiled; compile the package "
            "with `garbage pipeline compile --cpu-only`, or submit without --package"
        )
    with tempfile.TemporaryDirectory(prefix="garbage-submit-") as tmp:
        if package is None:
            package = compile_package(Path(tmp) / "pipeline.yaml", config, cpu_only=cpu_only)
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
