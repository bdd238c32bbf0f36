"""Per-image features for drift monitoring: the same numbers for training images and live traffic.

Every feature is computed from the decoded RGB image with NumPy only (no model, no torch), so the
collector, the reference builder and the drift job agree by construction.

Pixel statistics (brightness, contrast, saturation, sharpness, noise, colour balance) are taken on
the image resized to :data:`FEATURE_SIZE` with the serving resampling, that is, on (nearly) what
the model sees: a 4000x3000 phone photo and a 112x84 training image are compared at the same
scale. JPEG blockiness needs the original 8x8 grid, so it is measured on a centre crop of the
original pixels. Width and height are those of the image as sent.

The embedding is model-independent on purpose: a fixed random projection (seeded, Gaussian, so
Johnson-Lindenstrauss keeps distances roughly intact) of a 64-bin RGB colour histogram (square
root, i.e. Hellinger geometry) concatenated with an 8x8 grey "tiny image". The histogram reacts to
lighting, colour casts and the class mix (cardboard is brown, glass green, paper white); the tiny
image to layout and framing. It costs microseconds, needs no ONNX session in the collector, and
stays comparable across champions, so a reference profile never has to be rebuilt just because
the model changed. The projection matrix is derived from :data:`EMBEDDING_SEED` alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from garbage.core.preprocessing import to_model_input

FEATURE_SIZE = (112, 112)  # (height, width) at which pixel statistics are measured
EMBEDDING_DIM = 16
EMBEDDING_SEED = 20_240_611
HIST_LEVELS = 4  # per channel: 4**3 = 64 colour bins
THUMB_SIDE = 8
BLOCK = 8
BLOCK_CROP = 256  # largest side of the original-resolution crop used for blockiness

SCALAR_FEATURES: tuple[str, ...] = (
    "width",
    "height",
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "noise",
    "blockiness",
    "red_green",
    "yellow_blue",
)
EMBEDDING_COLUMNS: tuple[str, ...] = tuple(f"emb_{i:02d}" for i in range(EMBEDDING_DIM))
FEATURE_COLUMNS: tuple[str, ...] = SCALAR_FEATURES + EMBEDDING_COLUMNS
FEATURE_VERSION = 1

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_NOISE_KERNEL_NORM = float(np.sqrt(np.pi / 2.0) / 6.0)


@lru_cache(maxsize=1)
def projection_matrix() -> np.ndarray:
    """The fixed ``[64 + 64, EMBEDDING_DIM]`` random projection (same on every machine)."""
    rng = np.random.default_rng(EMBEDDING_SEED)
    inputs = HIST_LEVELS**3 + THUMB_SIDE * THUMB_SIDE
    return (rng.standard_normal((inputs, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)).astype(
        np.float32
    )


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) @ _LUMA


def _sharpness(luma: np.ndarray) -> float:
    """log(1 + variance of the 4-neighbour Laplacian): falls with blur, rises with noise."""
    lap = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    return float(np.log1p(lap.var()))


def _noise_sigma(luma: np.ndarray) -> float:
    """Immerkaer's fast estimate of the standard deviation of additive noise, in grey levels."""
    conv = (
        luma[:-2, :-2]
        - 2 * luma[:-2, 1:-1]
        + luma[:-2, 2:]
        - 2 * luma[1:-1, :-2]
        + 4 * luma[1:-1, 1:-1]
        - 2 * luma[1:-1, 2:]
        + luma[2:, :-2]
        - 2 * luma[2:, 1:-1]
        + luma[2:, 2:]
    )
    return float(_NOISE_KERNEL_NORM * np.abs(conv).mean())


def _blockiness(luma: np.ndarray) -> float:
    """Mean step across 8-pixel block borders over the mean step inside blocks (1 = no blocking)."""
    h, w = luma.shape
    if h < 2 * BLOCK or w < 2 * BLOCK:
        return 1.0
    dx = np.abs(np.diff(luma, axis=1))  # dx[:, j] is the step between columns j and j+1
    dy = np.abs(np.diff(luma, axis=0))
    col = np.arange(dx.shape[1])
    row = np.arange(dy.shape[0])
    on_x, on_y = (col % BLOCK) == BLOCK - 1, (row % BLOCK) == BLOCK - 1
    border = dx[:, on_x].sum() + dy[on_y, :].sum()
    n_border = dx[:, on_x].size + dy[on_y, :].size
    inner = dx[:, ~on_x].sum() + dy[~on_y, :].sum()
    n_inner = dx[:, ~on_x].size + dy[~on_y, :].size
    inner_mean = inner / max(n_inner, 1)
    return float((border / max(n_border, 1) + 1e-3) / (inner_mean + 1e-3))


def _block_crop(pixels: np.ndarray) -> np.ndarray:
    """A centre crop of at most BLOCK_CROP pixels a side whose origin stays on the 8x8 JPEG grid."""
    h, w = pixels.shape[:2]
    ch, cw = min(h, BLOCK_CROP), min(w, BLOCK_CROP)
    top = ((h - ch) // 2) // BLOCK * BLOCK
    left = ((w - cw) // 2) // BLOCK * BLOCK
    return pixels[top : top + ch, left : left + cw]


def _embedding_input(small: np.ndarray, luma: np.ndarray) -> np.ndarray:
    q = (small.astype(np.uint16) * HIST_LEVELS) >> 8  # 0..HIST_LEVELS-1 per channel
    bins = (q[..., 0] * HIST_LEVELS + q[..., 1]) * HIST_LEVELS + q[..., 2]
    hist = np.bincount(bins.ravel(), minlength=HIST_LEVELS**3).astype(np.float32)
    hist = np.sqrt(hist / hist.sum())
    h, w = luma.shape
    th, tw = h // THUMB_SIDE, w // THUMB_SIDE
    thumb = (
        luma[: th * THUMB_SIDE, : tw * THUMB_SIDE]
        .reshape(THUMB_SIDE, th, THUMB_SIDE, tw)
        .mean((1, 3))
    )
    thumb = (thumb - thumb.mean()) / 255.0
    return np.concatenate([hist, thumb.ravel().astype(np.float32)])


def pixel_features(
    pixels: np.ndarray, original_size: tuple[int, int] | None = None
) -> dict[str, float]:
    """Compute every feature of one RGB image given as ``uint8 [H, W, 3]``.

    Args:
        pixels: The decoded image at its original resolution (or whatever the client sent).
        original_size: ``(width, height)`` to record; default: the array's own size.

    Returns:
        A mapping with every name in :data:`FEATURE_COLUMNS`.

    Raises:
        ValueError: ``pixels`` is not an ``[H, W, 3]`` array of at least 3x3 pixels.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 3:
        raise ValueError(f"expected RGB pixels [H, W, 3] of at least 3x3, got shape {pixels.shape}")
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    if original_size is not None:
        width, height = original_size
    fh, fw = FEATURE_SIZE
    small = to_model_input(Image.fromarray(pixels), fh, fw)
    smallf = small.astype(np.float32)
    luma = smallf @ _LUMA
    cmax, cmin = smallf.max(axis=2), smallf.min(axis=2)
    saturation = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    r, g, b = smallf[..., 0], smallf[..., 1], smallf[..., 2]
    embedding = _embedding_input(small, luma) @ projection_matrix()
    values = {
        "width": float(width),
        "height": float(height),
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "sharpness": _sharpness(luma),
        "noise": _noise_sigma(luma),
        "blockiness": _blockiness(_luma(_block_crop(pixels))),
        "red_green": float((r - g).mean()),
        "yellow_blue": float(((r + g) / 2.0 - b).mean()),
    }
    values.update({name: float(v) for name, v in zip(EMBEDDING_COLUMNS, embedding, strict=True)})
    return values
