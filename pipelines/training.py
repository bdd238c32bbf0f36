"""The train-to-register pipeline (KFP v2) of the garbage classifier.

fetch -> validate -> split -> train -> evaluate -> export ONNX -> reference profile -> register
and promote.

Cluster-only settings (GPU, node selector, tolerations, shared memory, retries) are attached here
too; ``kfp.local`` ignores them, so the same definition runs on a laptop and on a cluster.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from pipelines import steps
from pipelines.deploy_step import deploy_model

PIPELINE_NAME = "garbage-classifier-train"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"


def _on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Ask for one NVIDIA GPU, a GPU node, and a memory-backed /dev/shm for data loaders."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_cpu_request("4").set_cpu_limit("8")
    task.set_memory_request("16G").set_memory_limit("32G")
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value="true")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="8Gi"
    )
    return task


def _small(task: dsl.PipelineTask, memory: str = "2G") -> dsl.PipelineTask:
    task.set_cpu_request("500m").set_cpu_limit("2")
    task.set_memory_request(memory).set_memory_limit(memory)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train, evaluate, export and register the TrashNet garbage classifier.",
)
def garbage_pipeline(
    config_json: str, deploy_to_kserve: bool = False, canary_percent: int = 0
) -> dsl.Markdown:
    """The pipeline.

    Args:
        config_json: The validated run config (``components.config.Config``) as JSON.
        deploy_to_kserve: Publish a promoted champion as the KServe InferenceService (on a
            cluster; ``garbage pipeline submit`` sets it, local runs leave it off).
        canary_percent: With deploy, send this share of traffic to the new revision (0: all).

    Returns:
        The promotion gate's decision (Markdown).
    """
    fetch = _small(steps.fetch_data(config_json=config_json)).set_retry(2)
    fetch.set_display_name("fetch data")
    validate = _small(steps.validate_data(config_json=config_json, images=fetch.outputs["images"]))
    validate.set_display_name("validate data")
    split = _small(steps.split_data(config_json=config_json, table=validate.outputs["table"]))
    split.set_display_name("split data")
    data = {"images": fetch.outputs["images"], "manifest": split.outputs["manifest"]}
    train = _on_gpu_node(steps.train_model(config_json=config_json, **data))
    train.set_display_name("train").set_retry(1)
    tracked = {"config_json": config_json, "run_id": train.outputs["Output"], **data}
    evaluate = _small(steps.evaluate_model(model=train.outputs["model"], **tracked), memory="4G")
    evaluate.set_display_name("evaluate")
    export = _small(steps.export_model(model=train.outputs["model"], **tracked), memory="4G")
    export.set_display_name("export ONNX").after(evaluate)
    onnx_model = export.outputs["onnx_model"]
    reference = _small(steps.build_reference(onnx_model=onnx_model, **data), memory="4G")
    reference.set_display_name("reference profile")
    register = _small(
        steps.register_model(
            onnx_model=onnx_model, reference=reference.outputs["reference"], **tracked
        ),
        memory="4G",
    )
    register.set_display_name("register and promote").set_caching_options(False)
    # Nested on purpose: one KFP condition group per test (SIM117 would merge the two `with`s).
    with dsl.If(deploy_to_kserve == True, "deploy requested"):  # noqa: E712, SIM117 (KFP condition)
        with dsl.If(register.outputs["promoted"] == True, "promoted"):  # noqa: E712
            deploy = _small(
                deploy_model(
                    config_json=config_json,
                    model_uri=register.outputs["model_uri"],
                    promoted=register.outputs["promoted"],
                    canary_percent=canary_percent,
                ),
                memory="1G",
            )
            deploy.set_display_name("deploy to KServe").set_caching_options(False)
    return register.outputs["decision"]


def compile_pipeline(package_path: Path) -> Path:
    """Write the pipeline's IR YAML to ``package_path`` and return it."""
    package_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(garbage_pipeline, str(package_path))
    return package_path
