"""Training augmentation on whole batches of tensors, on the device that trains (CPU or GPU).

One affine warp per batch (``grid_sample``) does the random resized crop, the flips, the rotation
and the resize to the epoch's training resolution at once; colour jitter is a few per-image
multiply-adds. Nothing runs per image in Python and no loader process competes with the model
for the CPU's cores; on a GPU the images never leave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

#: ITU-R BT.601 luma weights, as PIL's ``convert("L")`` uses them.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentSpec:
    """What :func:`augment_batch` may do to an image: the ``train.augment`` config as plain values.

    Attributes:
        hflip: Mirror left-right with probability 1/2.
        vflip: Mirror top-bottom with probability 1/2.
        rotation_degrees: Rotate by an angle drawn from ``[-d, d]``.
        scale_min: Smallest crop area as a fraction of the image (random resized crop).
        color_jitter: Brightness, contrast and saturation factors drawn from ``[1-j, 1+j]``.
    """

    hflip: bool = True
    vflip: bool = True
    rotation_degrees: float = 15.0
    scale_min: float = 0.75
    color_jitter: float = 0.2


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _affine(n: int, spec: AugmentSpec, generator: torch.Generator | None) -> torch.Tensor:
    """``[n, 2, 3]`` matrices mapping output to input coordinates (``affine_grid``'s convention)."""
    area = _uniform(n, spec.scale_min, 1.0, generator)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
    ratio = torch.exp(log_ratio)
    # Crop sides as fractions of the image; a crop never exceeds the image.
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, generator) * (1 - sx)
    cy = _uniform(n, -1.0, 1.0, generator) * (1 - sy)
    angle = _uniform(n, -1.0, 1.0, generator) * math.radians(spec.rotation_degrees)
    fx = torch.ones(n)
    fy = torch.ones(n)
    if spec.hflip:
        fx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if spec.vflip:
        fy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.empty(n, 2, 3)
    theta[:, 0, 0] = sx * cos * fx
    theta[:, 0, 1] = -sx * sin * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 0] = sy * sin * fx
    theta[:, 1, 1] = sy * cos * fy
    theta[:, 1, 2] = cy
    return theta


def _jitter(
    images: torch.Tensor, strength: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Brightness, contrast and saturation on ``[N, 3, H, W]`` floats in ``0..255``."""
    n = images.shape[0]

    def factors() -> torch.Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).to(images.device).view(n, 1, 1, 1)

    luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    images = images * factors()
    gray = (images * luma).sum(1, keepdim=True)
    mean = gray.mean((2, 3), keepdim=True)
    images = (images - mean) * factors() + mean
    gray = (images * luma).sum(1, keepdim=True)
    images = (images - gray) * factors() + gray
    return images.clamp(0, 255)


def augment_batch(
    images: torch.Tensor,
    size: tuple[int, int],
    spec: AugmentSpec | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly transform a batch and resize it to ``size``.

    Args:
        images: ``uint8 [N, H, W, 3]``, on any device.
        size: Output ``(height, width)``.
        spec: What to randomise; ``None`` only resizes (bilinear).
        generator: CPU generator for the random draws (reproducible runs).

    Returns:
        ``float32 [N, height, width, 3]`` in ``0..255``, on the device of ``images``: what
        :class:`garbage.training.model.GarbageClassifier` takes, like ``uint8`` pixels.
    """
    x = images.permute(0, 3, 1, 2).float()
    if spec is None:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x.permute(0, 2, 3, 1)
    n = x.shape[0]
    theta = _affine(n, spec, generator).to(x.device)
    grid = F.affine_grid(theta, [n, 3, *size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if spec.color_jitter > 0:
        x = _jitter(x, spec.color_jitter, generator)
    return x.permute(0, 2, 3, 1)
