"""A torch Dataset over manifest rows, with augmentation before the shared preprocessing."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from garbage.core.preprocessing import decode_image, to_model_input

if TYPE_CHECKING:
    from garbage.core.config import AugmentConfig


class Augmenter:
    """Random crop, flips, rotation and colour jitter on a PIL image (training only)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self.jitter = (
            v2.ColorJitter(config.color_jitter, config.color_jitter, config.color_jitter)
            if config.color_jitter > 0
            else None
        )

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return a randomly transformed copy of ``image``."""
        c = self.config
        if c.scale_min < 1:
            top, left, h, w = v2.RandomResizedCrop.get_params(
                image, scale=[c.scale_min, 1.0], ratio=[3 / 4, 4 / 3]
            )
            image = image.crop((left, top, left + w, top + h))
        if c.hflip and random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if c.vflip and random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if c.rotation_degrees > 0:
            angle = random.uniform(-c.rotation_degrees, c.rotation_degrees)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
        if self.jitter is not None:
            image = self.jitter(image)
        return image


class ManifestDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images listed by relative path under ``root``, decoded once and kept in memory.

    Each item is ``(uint8 [H, W, 3] tensor, class index)``; evaluation items go through exactly
    the preprocessing that serving uses.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: Sequence[int],
        height: int,
        width: int,
        augment: Augmenter | None = None,
    ) -> None:
        self.images = [decode_image((Path(root) / p).read_bytes()) for p in paths]
        self.labels = list(labels)
        self.height, self.width = height, width
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        pixels = to_model_input(image, self.height, self.width)
        return torch.from_numpy(pixels.copy()), self.labels[index]
