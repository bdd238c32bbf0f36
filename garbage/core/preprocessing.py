"""The one definition of image preprocessing, shared by training, export and serving.

Everything before the network happens here, in NumPy and Pillow only, so that the slim serving
image (no torch) runs exactly the code that training ran: decode and check the bytes, convert to
RGB, resize to the model's input size, hand over a ``uint8`` array ``[H, W, 3]``. Normalisation
(the backbone's mean and std) lives inside the model graph (see ``garbage.training.model``), so the
exported ONNX model takes raw ``uint8`` pixels and no client can get it wrong.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.BILINEAR

DEFAULT_ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG")
DEFAULT_MAX_PIXELS = 40_000_000


class InvalidImageError(ValueError):
    """The bytes are not an acceptable image; ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(
    data: bytes,
    *,
    allowed_formats: Sequence[str] = DEFAULT_ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode encoded image bytes into an RGB Pillow image, checking them on the way.

    Args:
        data: The encoded file (JPEG, PNG, ...).
        allowed_formats: Pillow format names that are accepted.
        max_pixels: Largest accepted width x height (decompression-bomb guard), checked
            from the header before any pixel is decoded.

    Returns:
        The fully decoded image in RGB mode, EXIF orientation applied.

    Raises:
        InvalidImageError: Empty, unreadable, truncated, too large or of a format not allowed.
    """
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise InvalidImageError(
            f"the bytes are not an image in a known format (allowed: {', '.join(allowed_formats)})",
            "not_an_image",
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidImageError(f"the image is too large: {e}", "too_large") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImageError(f"the image header is truncated or corrupt: {e}", "corrupt") from e
    if image.format not in allowed_formats:
        raise InvalidImageError(
            f"image format {image.format} is not allowed (allowed: {', '.join(allowed_formats)})",
            "format",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}",
            "too_large",
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImageError(f"the image is truncated or corrupt: {e}", "corrupt") from e


def to_model_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Resize an RGB image to the model's input size and return ``uint8`` pixels ``[H, W, 3]``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def preprocess_bytes(
    data: bytes,
    height: int,
    width: int,
    *,
    allowed_formats: Sequence[str] = DEFAULT_ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode, check and resize encoded image bytes: the serving and batch-prediction path."""
    image = decode_image(data, allowed_formats=allowed_formats, max_pixels=max_pixels)
    return to_model_input(image, height, width)


def resize_array(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring a ``uint8`` ``[h, w, 3]`` array to the model's input size with the same resampling."""
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return to_model_input(
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)), height, width
    )
