"""Fetch the dataset archive and publish its class folders."""

from kfp.dsl import Dataset, Output

from components.image import component


@component
def fetch_data(config_json: str, images: Output[Dataset]) -> None:
    """Download (or copy) the archive, verify its sha256 and publish the image folders.

    Args:
        config_json: The validated run config (``garbage.core.config.Config``) as JSON.
        images: The class folders.
    """
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import fetch_step

    info = fetch_step(Config.model_validate_json(config_json), Path(images.path))
    images.metadata.update(info)
