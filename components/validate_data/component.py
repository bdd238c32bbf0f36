"""Validate the images and publish the table of those that go on to the split."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.image import component


@component
def validate_data(
    config_json: str,
    images: Input[Dataset],
    table: Output[Dataset],
    report: Output[Markdown],
    summary: Output[Metrics],
) -> None:
    """Check every image; publish the kept-image table and a readable report; fail on errors.

    Args:
        config_json: The validated run config as JSON.
        images: The class folders.
        table: The kept-image table (``images.csv``).
        report: The validation report, also when validation fails.
        summary: Images per class, images kept, label conflicts.
    """
    import shutil
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import TABLE_FILENAME, validate_step

    out = Path(table.path)
    try:
        result = validate_step(Config.model_validate_json(config_json), Path(images.path), out)
    finally:
        if (out / "validation.md").exists():
            shutil.copyfile(out / "validation.md", report.path)
    for name, count in result["class_counts"].items():
        summary.log_metric(f"images_{name}", count)
    summary.log_metric("images_kept", result["num_kept"])
    summary.log_metric("label_conflicts", len(result["label_conflicts"]))
    table.metadata.update({"file": TABLE_FILENAME, "rows": result["num_kept"]})
