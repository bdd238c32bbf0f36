"""Register the exported model in MLflow and promote it through the gate."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Model, Output

from components.image import component


@component
def register_model(
    config_json: str,
    run_id: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    onnx_model: Input[Model],
    reference: Input[Dataset],
    decision: Output[Markdown],
    rollout_follows: bool = False,
    # KFP reads the outputs from a NamedTuple built in the signature: the source ships alone.
) -> NamedTuple("GateOutputs", [("promoted", bool), ("version", str), ("model_uri", str)]):  # type: ignore[valid-type]
    """Register in MLflow and promote through the gate; return whether it was promoted.

    Args:
        config_json: The validated run config as JSON.
        run_id: The MLflow run of the training step.
        images: The class folders.
        manifest: The split manifest (candidate and champion are scored on its test split).
        onnx_model: The exported model.
        reference: The monitoring reference profile, stored with the model version.
        decision: The gate's decision (Markdown).
        rollout_follows: A deploy step follows: a promoted candidate gets the challenger alias,
            and the deploy step makes it champion once it serves.

    Returns:
        ``promoted``, the registered ``version`` and its ``model_uri``.
    """
    import shutil
    from pathlib import Path
    from typing import NamedTuple

    from garbage.core.config import Config
    from garbage.training.steps import register_step

    work = Path(decision.path + ".d")
    result = register_step(
        Config.model_validate_json(config_json),
        Path(onnx_model.path),
        Path(images.path),
        Path(manifest.path),
        work,
        run_id,
        reference=Path(reference.path),
        rollout_follows=rollout_follows,
    )
    shutil.copyfile(work / "decision.md", decision.path)
    decision.metadata.update({"promoted": result["promote"], "version": result["version"]})
    # The same functional NamedTuple as the return annotation, from which KFP reads the outputs.
    GateOutputs = NamedTuple(  # noqa: UP014
        "GateOutputs", [("promoted", bool), ("version", str), ("model_uri", str)]
    )
    return GateOutputs(bool(result["promote"]), str(result["version"]), str(result["model_uri"]))
