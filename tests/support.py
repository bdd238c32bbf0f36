"""Test helpers shared by all test modules (importable as ``support`` via pytest's pythonpath)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
DEV_ARCHIVE_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def jpeg_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (112, 84), seed: int = 0, fmt: str = "JPEG"
) -> bytes:
    """A small noisy image of a dominant colour, encoded; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


COLORS = {
    "cardboard": (160, 120, 70),
    "glass": (60, 160, 90),
    "metal": (150, 150, 160),
    "paper": (235, 235, 225),
    "plastic": (40, 90, 200),
    "trash": (90, 40, 40),
}


def make_image_tree(root: Path, per_class: int = 8, classes: list[str] | None = None) -> Path:
    """Write ``per_class`` distinct synthetic JPEGs into each class folder under ``root``."""
    for c_index, name in enumerate(classes or CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{name}{i}.jpg").write_bytes(
                jpeg_bytes(COLORS.get(name, (128, 128, 128)), seed=c_index * 1000 + i)
            )
    return root


def make_archive(tree_parent: Path, archive: Path) -> Path:
    """Pack the folders under ``tree_parent`` into a .tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(tree_parent.iterdir()):
            tar.add(child, arcname=child.name)
    return archive
