"""Fine-tune the backbone on the training split, tracked in MLflow."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import component


@component
def train_model(
    config_json: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Fine-tune the backbone (GPU with mixed precision when present); return the MLflow run id.

    Args:
        config_json: The validated run config as JSON.
        images: The class folders.
        manifest: The split manifest.
        model: The best checkpoint (``best.pt``) by validation macro-F1.
        metrics: Best validation macro-F1, best epoch, training images per second.

    Returns:
        The MLflow run the later steps log to.
    """
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import train_step

    summary = train_step(
        Config.model_validate_json(config_json),
        Path(images.path),
        Path(manifest.path),
        Path(model.path),
    )
    model.metadata.update({"framework": "pytorch", "file": "best.pt", **summary})
    for key in ("best_val_macro_f1", "best_epoch", "train_images_per_second"):
        metrics.log_metric(key, summary[key])
    return summary["run_id"]
