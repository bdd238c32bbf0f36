"""Shared fixtures: the smoke config, small synthetic datasets, the development archive, a tiny model."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
DEV_ARCHIVE_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (112, 84), seed: int = 0,
               fmt: str = "JPEG") -> bytes:
    """A small noisy image of a dominant colour, encoded; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


COLORS = {
    "cardboard": (160, 120, 70), "glass": (60, 160, 90), "metal": (150, 150, 160),
    "paper": (235, 235, 225), "plastic": (40, 90, 200), "trash": (90, 40, 40),
}


def make_image_tree(root: Path, per_class: int = 8, classes: list[str] | None = None) -> Path:
    """Write ``per_class`` distinct synthetic JPEGs into each class folder under ``root``."""
    for c_index, name in enumerate(classes or CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{name}{i}.jpg").write_bytes(
                jpeg_bytes(COLORS.get(name, (128, 128, 128)), seed=c_index * 1000 + i))
    return root


def make_archive(tree_parent: Path, archive: Path) -> Path:
    """Pack the folders under ``tree_parent`` into a .tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(tree_parent.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


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
        pytest.skip(f"the development archive is not at {DEV_ARCHIVE} (see ../shared/data/README.md)")
    return DEV_ARCHIVE


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported (untrained-head) EfficientNet-Lite0 at 64x64: real graph, real metadata."""
    from components.export import export_onnx
    from components.model import build_model
    from components.training.train import save_checkpoint

    config = load_config(profile="smoke", environ={})
    base = tmp_path_factory.mktemp("tiny-model")
    model = build_model(config.model.backbone, len(config.data.classes), pretrained=True)
    checkpoint = base / "best.pt"
    save_checkpoint(checkpoint, model, config.data.classes, config, {"epoch": 0})
    export_onnx(checkpoint, base / "export")
    return base / "export"


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's environment from leaking into tests."""
    for var in ("GARBAGE_DATA_SOURCE", "GARBAGE_DATA_SHA256", "GARBAGE_WORK_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("TQDM_DISABLE", "1")
