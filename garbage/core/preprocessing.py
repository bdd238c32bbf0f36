"""The one definition of image preprocessing, shared by training, export and serving.

Everything before the network happens here, in NumPy and Pillow only, so that the slim serving
image (no torch) runs exactly the code that training ran: decode and check the bytes, convert to
RGB, resize to the model's input size, hand over a ``uint8`` array ``[H, W, 3]``. Normalisation
(the backbone's mean and std) lives inside the model graph (see ``garbage.training.model``), so the
exported ONNX model takes raw ``uint8`` pixels and no client can get it wrong.

Encoded bytes are untrusted (they come from clients and from logged requests): only the parsers
of the allowed formats see them, and the size rules (pixels, longest side, aspect ratio) are
checked from the header, before any pixel is decoded. When the caller will shrink the image to a
known size (:func:`preprocess_bytes`, the serving and batch-prediction path), JPEG decodes at the
smallest DCT scale that still covers that size (Pillow's ``draft``) and JPEG 2000 at the matching
resolution level (its ``reduce``), so a 48-megapixel photo never exists in memory at full size.
That path can differ from a full decode by a few grey levels on large JPEGs (DCT scaling instead
of the resize's filter); images no larger than twice the model's input decode exactly as before.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.BILINEAR

DEFAULT_ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 12_000
"""Longest accepted side in pixels: a 108-megapixel phone sensor is 12 000 wide."""
DEFAULT_MAX_ASPECT_RATIO = 10.0
"""Longest side over shortest: phone panoramas stay within 8:1."""

FORMAT_ALIASES = {"MPO": "JPEG"}
"""Formats accepted as another: a multi-picture JPEG (phone cameras) is a JPEG; its first
frame is the photo."""

# Signatures of common formats, to name a refused format that its (unused) parser would read.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)


class InvalidImageError(ValueError):
    """The bytes are not an acceptable image; ``reason`` is a short machine-readable tag.

    Tags: ``empty``, ``not_an_image``, ``format``, ``too_large`` (pixels or a side over the
    limit), ``aspect_ratio`` and ``corrupt``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_dimensions(
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    what: str = "the image",
) -> None:
    """Check an image's size against the pixel, side and aspect-ratio limits.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        max_pixels: Largest accepted width x height.
        max_side: Largest accepted width and height.
        max_aspect_ratio: Largest accepted longest side / shortest side.
        what: What is checked, to start the message.

    Raises:
        InvalidImageError: ``corrupt`` (a side below 1), ``too_large`` or ``aspect_ratio``.
    """
    size = f"{what} is {width}x{height}"
    if width < 1 or height < 1:
        raise InvalidImageError(f"{size}: an image needs at least one pixel", "corrupt")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{size} = {width * height} pixels, over the limit of {max_pixels}; scale it down "
            "before sending",
            "too_large",
        )
    if max(width, height) > max_side:
        raise InvalidImageError(
            f"{size}, a side over the limit of {max_side} pixels; scale it down before sending",
            "too_large",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise InvalidImageError(
            f"{size}, an aspect ratio of {ratio:.1f}:1, over the limit of {max_aspect_ratio:g}:1; "
            "send the photo itself, not a strip or a panorama",
            "aspect_ratio",
        )


def decode_image(
    data: bytes,
    *,
    allowed_formats: Sequence[str] = DEFAULT_ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    target_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode encoded image bytes into an RGB Pillow image, checking them on the way.

    Args:
        data: The encoded file (JPEG, PNG, ...).
        allowed_formats: Pillow format names that are accepted (MPO counts as JPEG); only their
            parsers read the bytes.
        max_pixels: Largest accepted width x height (decompression-bomb guard).
        max_side: Largest accepted width and height.
        max_aspect_ratio: Largest accepted longest side / shortest side.
        target_size: ``(width, height)`` the caller will resize to, if any: JPEG and JPEG 2000
            then decode at the smallest scale that still covers it (both sides at least
            ``max(target_size)``, whatever the EXIF orientation); None decodes at full size.

    The size limits are checked from the header, before any pixel is decoded.

    Returns:
        The decoded image in RGB mode (its first frame), EXIF orientation applied.

    Raises:
        InvalidImageError: Empty, unreadable, truncated, too large, of an extreme aspect ratio
            or of a format not allowed.
    """
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)", "empty")
    allowed = [f.upper() for f in allowed_formats]
    shown = ", ".join(allowed)
    Image.init()
    parsers = [f for f in dict.fromkeys(allowed) if f in Image.OPEN]
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=parsers)
    except UnidentifiedImageError as e:
        sniffed = _sniff(data)
        if sniffed is not None and sniffed not in allowed:
            raise InvalidImageError(
                f"image format {sniffed} is not allowed (allowed: {shown})", "format"
            ) from e
        if sniffed is not None:
            raise InvalidImageError(
                f"the {sniffed} header is truncated or corrupt", "corrupt"
            ) from e
        raise InvalidImageError(
            f"the bytes are not an image in a known format (allowed: {shown})", "not_an_image"
        ) from e
    except Image.DecompressionBombError as e:
        raise InvalidImageError(
            f"the image is too large ({e}); the limit is {max_pixels} pixels: scale it down "
            "before sending",
            "too_large",
        ) from e
    except Exception as e:  # Pillow's parsers raise many types on crafted headers
        raise InvalidImageError(f"the image header is truncated or corrupt: {e}", "corrupt") from e
    image_format = FORMAT_ALIASES.get(str(image.format), str(image.format))
    if image_format not in allowed:
        raise InvalidImageError(
            f"image format {image.format} is not allowed (allowed: {shown})", "format"
        )
    width, height = image.size
    check_dimensions(
        width, height, max_pixels=max_pixels, max_side=max_side, max_aspect_ratio=max_aspect_ratio
    )
    try:
        if target_size is not None:
            _decode_smaller(image, max(target_size))
        image.load()
    except Exception as e:  # truncated data, decoder errors of any kind
        raise InvalidImageError(f"the image is truncated or corrupt: {e}", "corrupt") from e
    # In place: no copy when nothing turns. A malformed EXIF block is ignored: the pixels are
    # still the photo.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    try:
        return _as_rgb(image)
    except Exception as e:
        raise InvalidImageError(
            f"the image's pixel mode {image.mode} cannot be converted to RGB: {e}", "corrupt"
        ) from e


def _sniff(data: bytes) -> str | None:
    """The format a file's signature announces, for the common ones; None otherwise."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _decode_smaller(image: Image.Image, side: int) -> None:
    """Make JPEG and JPEG 2000 decode at the smallest scale whose sides are all >= ``side``."""
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", (side, side))
    elif image.format == "JPEG2000":
        level = 0
        while min(image.size) >> (level + 1) >= side:
            level += 1
        image.reduce = level  # type: ignore[method-assign,assignment]  # Pillow's J2K property


def _as_rgb(image: Image.Image) -> Image.Image:
    """RGB, with high-bit-depth grey (16-bit, 32-bit, float) scaled to 8 bits, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _grey_to_8_bits(image).convert("RGB")
    return image.convert("RGB")


def _grey_to_8_bits(image: Image.Image, band: int = 256) -> Image.Image:
    """16-bit (and 32-bit integer) grey to its top 8 bits, float grey of 0..1 to 0..255.

    ``band`` rows at a time, so that a 40-megapixel 32-bit image costs its 8-bit copy (40 MB)
    and not a full-size NumPy copy and its temporaries.
    """
    width, height = image.size
    high = cast(float, image.getextrema()[1])  # one band: (lowest, highest)
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, band):
        values = np.array(image.crop((0, top, width, min(height, top + band))))
        if image.mode == "F":
            values = np.nan_to_num(values) * (255.0 if high <= 1.0 else 1.0)
            values = np.clip(values, 0, 255)
        elif image.mode == "I" and high <= 255:
            values = np.clip(values, 0, 255)
        else:
            values = np.clip(values, 0, 65535) >> 8
        out[top : top + len(values)] = values
    return Image.fromarray(out)


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
    max_side: int = DEFAULT_MAX_SIDE,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Decode, check and resize encoded image bytes: the serving and batch-prediction path.

    JPEG and JPEG 2000 decode at reduced size when the model's input is much smaller (see the
    module docstring); the limits are :func:`decode_image`'s.
    """
    image = decode_image(
        data,
        allowed_formats=allowed_formats,
        max_pixels=max_pixels,
        max_side=max_side,
        max_aspect_ratio=max_aspect_ratio,
        target_size=(width, height),
    )
    return to_model_input(image, height, width)


def resize_array(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring a ``uint8`` ``[h, w, 3]`` array to the model's input size with the same resampling."""
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return to_model_input(
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)), height, width
    )
