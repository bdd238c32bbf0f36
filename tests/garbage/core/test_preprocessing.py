"""The shared preprocessing: decoding checks and resizing."""

import io

import numpy as np
import pytest
from PIL import Image
from support import jpeg_bytes

from garbage.core.preprocessing import (
    InvalidImageError,
    decode_image,
    preprocess_bytes,
    resize_array,
    to_model_input,
)


def test_jpeg_and_png_decode_to_rgb_of_the_model_size() -> None:
    for fmt in ("JPEG", "PNG"):
        pixels = preprocess_bytes(jpeg_bytes((10, 200, 30), fmt=fmt), 64, 48)
        assert pixels.shape == (64, 48, 3)
        assert pixels.dtype == np.uint8


def test_grayscale_and_rgba_become_rgb() -> None:
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (20, 10)).save(buffer, format="PNG")
        assert decode_image(buffer.getvalue()).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not_an_image"),
        (jpeg_bytes((1, 2, 3))[:200], "corrupt"),
    ],
)
def test_bad_bytes_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_format_outside_allowed_set_is_rejected() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    with pytest.raises(InvalidImageError, match="GIF is not allowed") as info:
        decode_image(buffer.getvalue())
    assert info.value.reason == "format"


def test_pixel_limit_is_checked_from_the_header() -> None:
    data = jpeg_bytes((0, 0, 0), size=(200, 100))
    with pytest.raises(InvalidImageError, match="over the limit") as info:
        decode_image(data, max_pixels=100 * 100)
    assert info.value.reason == "too_large"


def test_resize_array_matches_the_bytes_path() -> None:
    data = jpeg_bytes((100, 50, 25), size=(112, 84))
    native = np.asarray(decode_image(data))
    assert np.array_equal(resize_array(native, 32, 40), preprocess_bytes(data, 32, 40))
    assert np.array_equal(to_model_input(decode_image(data), 84, 112), native)
