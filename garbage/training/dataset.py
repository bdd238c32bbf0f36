"""Images of a split, decoded once and kept in memory as one ``uint8`` tensor.

Every image goes through the preprocessing serving uses (:func:`garbage.core.preprocessing.
preprocess_bytes` at the model's input size), so evaluation sees exactly what the server would,
and training augments those very pixels (:mod:`garbage.training.augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from garbage.core.preprocessing import preprocess_bytes


def load_images(
    root: Path, paths: Sequence[str], height: int, width: int, desc: str = "images"
) -> torch.Tensor:
    """Decode and resize the listed images into ``uint8 [N, height, width, 3]``.

    Args:
        root: Folder the paths are relative to.
        paths: Relative image paths.
        height: Model input height.
        width: Model input width.
        desc: Label of the progress bar.
    """
    pixels = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=f"decoding {desc}", unit="img", leave=False)):
        pixels[i] = preprocess_bytes((Path(root) / path).read_bytes(), height, width)
    return torch.from_numpy(pixels)
