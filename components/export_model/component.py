"""Export the trained checkpoint to ONNX."""

from kfp.dsl import Dataset, Input, Model, Output

from components.image import component


@component
def export_model(
    config_json: str,
    run_id: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    onnx_model: Output[Model],
) -> None:
    """ONNX with preprocessing in the graph, parity-checked against PyTorch.

    Args:
        config_json: The validated run config as JSON.
        run_id: The MLflow run of the training step.
        images: The class folders (real test images for the parity check).
        manifest: The split manifest.
        model: The checkpoint folder (``best.pt``).
        onnx_model: ``model.onnx`` and ``metadata.json``.
    """
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import export_step

    metadata = export_step(
        Config.model_validate_json(config_json),
        Path(model.path) / "best.pt",
        Path(images.path),
        Path(manifest.path),
        Path(onnx_model.path),
        run_id,
    )
    onnx_model.metadata.update(
        {
            "framework": "onnx",
            "file": "model.onnx",
            "parity_max_abs_diff": metadata["parity_max_abs_diff"],
        }
    )
