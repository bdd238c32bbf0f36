"""Build the monitoring reference profile of the model's training data."""

from kfp.dsl import Dataset, Input, Model, Output

from components.image import component


@component
def reference_profile(
    images: Input[Dataset],
    manifest: Input[Dataset],
    onnx_model: Input[Model],
    reference: Output[Dataset],
) -> None:
    """Monitoring features (and the model's predictions) of the training and validation images.

    Args:
        images: The class folders.
        manifest: The split manifest.
        onnx_model: The exported model, whose predictions are profiled too.
        reference: ``reference.parquet``, stored with the model version by the register step.
    """
    from pathlib import Path

    from garbage.training.data.split import read_manifest
    from monitoring.reference import build_reference

    out = Path(reference.path) / "reference.parquet"
    build_reference(
        Path(images.path), read_manifest(Path(manifest.path)), out, model_dir=Path(onnx_model.path)
    )
    reference.metadata.update({"file": out.name})
