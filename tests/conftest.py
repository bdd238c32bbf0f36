"""Shared fixtures: the smoke config, small synthetic datasets, the dev archive, a tiny model."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: quiet test logs

import pytest

# Re-exported for test modules that still import the helpers from conftest.
from support import (  # noqa: F401
    CLASSES,
    DEV_ARCHIVE,
    DEV_ARCHIVE_SHA256,
    jpeg_bytes,
    make_archive,
    make_image_tree,
)

from garbage.core.config import Config, load_config


@pytest.fixture
def smoke_config(tmp_path: Path) -> Config:
    """The shipped smoke profile, with its work dir inside the test's temporary folder."""
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path / 'work'}"], environ={})


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A valid six-class image folder, 8 images per class."""
    return make_image_tree(tmp_path / "images" / "dataset")


@pytest.fixture(scope="session")
def dev_archive() -> Path:
    """The TrashNet development archive beside the checkout."""
    if not DEV_ARCHIVE.is_file():
        pytest.skip(
            f"the development archive is not at {DEV_ARCHIVE} (see ../shared/data/README.md)"
        )
    return DEV_ARCHIVE


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported (untrained-head) EfficientNet-Lite0 at 64x64: real graph, real metadata."""
    from garbage.training.export import export_onnx
    from garbage.training.model import build_model
    from garbage.training.train import save_checkpoint

    config = load_config(profile="smoke", environ={})
    base = tmp_path_factory.mktemp("tiny-model")
    model = build_model(config.model.backbone, len(config.data.classes), pretrained=True)
    checkpoint = base / "best.pt"
    save_checkpoint(checkpoint, model, config.data.classes, config, {"epoch": 0})
    export_onnx(checkpoint, base / "export")
    return base / "export"


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's environment, and one test's MLflow URIs, from leaking into tests.

    ``mlflow.set_tracking_uri``/``set_registry_uri`` set process-wide state (and environment
    variables); a test that leaves them set would send the next test's client to its server.
    """
    for var in (
        "GARBAGE_DATA_SOURCE",
        "GARBAGE_DATA_SHA256",
        "GARBAGE_WORK_DIR",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
    if sys.modules.get("mlflow") is not None:  # imported (a test may have hidden it)
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
