"""The train-to-deploy pipeline (KFP v2) of the garbage classifier.

fetch -> validate -> split -> train -> evaluate -> export ONNX -> reference profile -> register
and promote -> deploy (on a cluster, when asked for and promoted).

The cluster it runs on is chosen when the pipeline is built (:func:`build_pipeline`): on a GPU
cluster the train step asks for one NVIDIA GPU on a GPU node; on a CPU-only cluster (kind, CI)
it asks for what a small node has. ``kfp.local`` ignores resources, so the same definition runs
on one machine too.
"""

from dataclasses import dataclass
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl.graph_component import GraphComponent

from components.deploy_model import deploy_model
from components.evaluate_model import evaluate_model
from components.export_model import export_model
from components.fetch_data import fetch_data
from components.reference_profile import reference_profile
from components.register_model import register_model
from components.split_data import split_data
from components.train_model import train_model
from components.validate_data import validate_data
from garbage.core.config import Config
from garbage.core.names import MODEL_NAME
from garbage.deploy import ARTIFACTS_DESTINATION, DEFAULT_NAMESPACE

PIPELINE_NAME = "garbage-classifier-train"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"


@dataclass(frozen=True)
class TrainResources:
    """What the train step asks the cluster for."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    shm_size: str
    gpu: bool

    def apply(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """Set the requests and limits, and for a GPU the accelerator, node and toleration."""
        task.set_cpu_request(self.cpu_request).set_cpu_limit(self.cpu_limit)
        task.set_memory_request(self.memory_request).set_memory_limit(self.memory_limit)
        if self.gpu:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
            kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value="true")
            kubernetes.add_toleration(
                task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"
            )
        # Data loader workers share tensors through /dev/shm, which is 64 MB in a container.
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=self.shm_size,
        )
        return task


#: The train step on a GPU cluster: one NVIDIA GPU, a GPU node.
GPU_CLUSTER = TrainResources(
    cpu_request="4",
    cpu_limit="8",
    memory_request="16G",
    memory_limit="32G",
    shm_size="8Gi",
    gpu=True,
)
#: The train step on a cluster without GPUs (kind, CI): what a small node can give.
CPU_CLUSTER = TrainResources(
    cpu_request="2",
    cpu_limit="2",
    memory_request="6G",
    memory_limit="6G",
    shm_size="1Gi",
    gpu=False,
)


#: The Secret (namespace kubeflow) with the pipeline's MLflow login: the one user that may write
#: runs, models and artifacts (manifests/base/mlflow/auth; scripts/kind/secrets.sh creates it).
MLFLOW_SECRET = "garbage-pipeline-mlflow"
MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _with_mlflow_login(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give a step that talks to MLflow the pipeline's login (kfp.local ignores it)."""
    kubernetes.use_secret_as_env(
        task, secret_name=MLFLOW_SECRET, secret_key_to_env={key: key for key in MLFLOW_LOGIN}
    )
    return task


#: The Secret (namespace kubeflow) with MinIO's read-only key for the dataset versions (bucket
#: garbage-datasets, user garbage-datasets-reader) and the endpoint: the steps that read
#: ``data.datasets_root`` (scripts/kind/secrets.sh creates it).
DATASETS_SECRET = "garbage-pipeline-datasets"
DATASETS_LOGIN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")


def _with_datasets_reader(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give a step that reads a dataset version the read-only datasets key (kfp.local: ignored)."""
    kubernetes.use_secret_as_env(
        task, secret_name=DATASETS_SECRET, secret_key_to_env={key: key for key in DATASETS_LOGIN}
    )
    return task


def _small(task: dsl.PipelineTask, memory: str = "2G") -> dsl.PipelineTask:
    task.set_cpu_request("500m").set_cpu_limit("2")
    task.set_memory_request(memory).set_memory_limit(memory)
    return task


def build_pipeline(train_resources: TrainResources = GPU_CLUSTER) -> GraphComponent:
    """The pipeline, with the train step sized for the cluster it will run on.

    Args:
        train_resources: :data:`GPU_CLUSTER` or :data:`CPU_CLUSTER`.

    Returns:
        The KFP pipeline (a graph component): compile it, or call it under ``kfp.local``.
    """

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train, evaluate, export, register and deploy the TrashNet garbage classifier.",
    )
    def garbage_pipeline(
        config_json: str, deploy_to_kserve: bool = False, canary_percent: int = 0
    ) -> dsl.Markdown:
        """The pipeline.

        Args:
            config_json: The validated run config (``garbage.core.config.Config``) as JSON.
            deploy_to_kserve: Publish a promoted champion as the KServe InferenceService (on a
                cluster; ``garbage pipeline submit`` sets it, local runs leave it off).
            canary_percent: With deploy, send this share of traffic to the new revision (0: all).

        Returns:
            The promotion gate's decision (Markdown).
        """
        fetch = _small(fetch_data(config_json=config_json)).set_retry(2)
        fetch.set_display_name("fetch data")
        _with_datasets_reader(fetch)
        images = fetch.outputs["images"]
        validate = _small(validate_data(config_json=config_json, images=images))
        validate.set_display_name("validate data")
        split = _small(split_data(config_json=config_json, table=validate.outputs["table"]))
        split.set_display_name("split data")
        _with_datasets_reader(split)
        data = {"images": images, "manifest": split.outputs["manifest"]}
        train = train_resources.apply(train_model(config_json=config_json, **data))
        train.set_display_name("train").set_retry(1)
        _with_mlflow_login(train)
        tracked = {"config_json": config_json, "run_id": train.outputs["Output"], **data}
        evaluate = _small(evaluate_model(model=train.outputs["model"], **tracked), memory="4G")
        evaluate.set_display_name("evaluate")
        export = _small(export_model(model=train.outputs["model"], **tracked), memory="4G")
        export.set_display_name("export ONNX").after(evaluate)
        for step in (evaluate, export):
            _with_mlflow_login(step)
        onnx_model = export.outputs["onnx_model"]
        reference = _small(reference_profile(onnx_model=onnx_model, **data), memory="4G")
        reference.set_display_name("reference profile")
        register = _small(
            register_model(
                onnx_model=onnx_model,
                reference=reference.outputs["reference"],
                rollout_follows=deploy_to_kserve,
                **tracked,
            ),
            memory="4G",
        )
        register.set_display_name("register and promote").set_caching_options(False)
        _with_mlflow_login(register)
        # Nested on purpose: one KFP condition group per test (SIM117 would merge the two).
        with dsl.If(deploy_to_kserve == True, "deploy requested"):  # noqa: E712, SIM117
            with dsl.If(register.outputs["promoted"] == True, "promoted"):  # noqa: E712
                deploy = _small(
                    deploy_model(
                        config_json=config_json,
                        version=register.outputs["version"],
                        promoted=register.outputs["promoted"],
                        name=MODEL_NAME,
                        namespace=DEFAULT_NAMESPACE,
                        artifacts_destination=ARTIFACTS_DESTINATION,
                        canary_percent=canary_percent,
                    ),
                    memory="1G",
                )
                deploy.set_display_name("deploy to KServe").set_caching_options(False)
                _with_mlflow_login(deploy)
        return register.outputs["decision"]

    return garbage_pipeline


def compile_pipeline(
    package_path: Path, config: Config, train_resources: TrainResources = GPU_CLUSTER
) -> Path:
    """Write the pipeline's IR YAML, with ``config`` as the default of ``config_json``.

    Args:
        package_path: Where the YAML goes (folders are created).
        config: The validated config the pods should run with (see
            :func:`pipelines.submit.cluster_config`); a run may still pass another.
        train_resources: The cluster the pipeline is built for.

    Returns:
        ``package_path``.
    """
    package_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_pipeline(train_resources),
        str(package_path),
        pipeline_parameters={"config_json": config.model_dump_json()},
    )
    return package_path
