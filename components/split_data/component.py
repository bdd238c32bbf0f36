"""Split the kept images into train, validation and test."""

from kfp.dsl import Dataset, Input, Output

from components.image import component


@component
def split_data(config_json: str, table: Input[Dataset], manifest: Output[Dataset]) -> None:
    """Stratified, seeded train/val/test manifest with content hashes.

    Args:
        config_json: The validated run config as JSON.
        table: The kept-image table from validation.
        manifest: The split manifest (CSV: path, label, sha256, split, ...).
    """
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import TABLE_FILENAME, split_step

    summary = split_step(
        Config.model_validate_json(config_json),
        Path(table.path) / TABLE_FILENAME,
        Path(manifest.path),
    )
    manifest.metadata.update({s: sum(c.values()) for s, c in summary.items()})
