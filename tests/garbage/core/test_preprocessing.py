"""The shared preprocessing: decoding checks and resizing."""

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from support import jpeg_bytes

from garbage.core.preprocessing import (
    InvalidImageError,
    check_dimensions,
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
    for fmt, size in (("PNG", (112, 84)), ("JPEG", (60, 50))):  # JPEG: too small to draft
        data = jpeg_bytes((100, 50, 25), size=size, fmt=fmt)
        native = np.asarray(decode_image(data))
        assert np.array_equal(resize_array(native, 32, 40), preprocess_bytes(data, 32, 40))
        assert np.array_equal(to_model_input(decode_image(data), size[1], size[0]), native)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose header claims ``width x height`` (its pixel data is a few zero bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _photo(width: int, height: int) -> np.ndarray:
    """Smooth gradients with a little noise: what a photo's pixels look like to a resize."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    noise = np.random.default_rng(0).integers(-8, 8, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("width", "height", "reason", "message"),
    [
        (40_000_000, 1, "too_large", "a side over the limit of 12000"),
        (1, 40_000_000, "too_large", "a side over the limit of 12000"),
        (20_000, 20_000, "too_large", "(400000000 pixels)"),  # Pillow's own check comes first
        (11_000, 1_000, "aspect_ratio", "aspect ratio of 11.0:1, over the limit of 10:1"),
        (0, 100, "corrupt", "the PNG header is truncated or corrupt"),
    ],
)
def test_side_pixel_and_aspect_limits_are_read_from_the_header(
    width: int, height: int, reason: str, message: str
) -> None:
    """The header claims the size, the data is 64 zero bytes: nothing is decoded to refuse it."""
    with pytest.raises(InvalidImageError, match=re.escape(message)) as info:
        decode_image(_png_header(width, height))
    assert info.value.reason == reason


def test_limits_are_keyword_arguments_with_defaults() -> None:
    wide = jpeg_bytes((9, 9, 9), size=(300, 20))  # 15:1
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        decode_image(wide)
    assert decode_image(wide, max_aspect_ratio=20).size == (300, 20)
    with pytest.raises(InvalidImageError, match="over the limit of 200 pixels"):
        decode_image(wide, max_aspect_ratio=20, max_side=200)
    with pytest.raises(InvalidImageError, match=r"4 pixels, over the limit of 3"):
        check_dimensions(2, 2, max_pixels=3)
    with pytest.raises(InvalidImageError, match="at least one pixel") as info:
        check_dimensions(0, 5)
    assert info.value.reason == "corrupt"


def test_large_jpegs_decode_at_reduced_size_and_stay_close_to_a_full_decode() -> None:
    pixels = _photo(1600, 1200)
    data = _encode(Image.fromarray(pixels), "JPEG", quality=92)
    # 1/8 DCT scale: 200x150 still covers 64x64 whatever the orientation
    assert decode_image(data, target_size=(64, 48)).size == (200, 150)
    assert decode_image(data).size == (1600, 1200)
    reduced = preprocess_bytes(data, 48, 64).astype(np.int16)
    full = to_model_input(decode_image(data), 48, 64).astype(np.int16)
    assert np.abs(reduced - full).mean() < 1.0
    assert np.abs(reduced - full).max() <= 8


def test_jpeg_2000_decodes_at_a_reduced_resolution_level() -> None:
    data = _encode(Image.fromarray(_photo(512, 384)), "JPEG2000")
    image = decode_image(data, allowed_formats=("JPEG2000",), target_size=(64, 64))
    assert image.size == (128, 96)  # 2 levels down: the smallest with both sides >= 64


def test_mpo_is_a_jpeg_and_its_first_frame_is_read() -> None:
    first, second = Image.new("RGB", (64, 48), (220, 20, 20)), Image.new("RGB", (64, 48), "green")
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = decode_image(data, target_size=(16, 16))
    red, green, _ = image.getpixel((10, 10))
    assert red > 180 and green < 60
    with pytest.raises(InvalidImageError, match="JPEG is not allowed") as info:
        decode_image(data, allowed_formats=("PNG", "MPO"))  # MPO is allowed through JPEG only
    assert info.value.reason == "format"


def test_cmyk_16_bit_and_float_images_become_8_bit_rgb() -> None:
    cmyk = decode_image(_encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((5, 5))[0] > 200
    grey16 = Image.fromarray(np.full((8, 8), 128 * 256, dtype=np.uint16))
    assert grey16.mode == "I;16"
    assert decode_image(_encode(grey16, "PNG")).getpixel((1, 1)) == (128, 128, 128)
    floats = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32))
    assert decode_image(_encode(floats, "TIFF"), allowed_formats=("TIFF",)).getpixel((1, 1)) == (
        127,
        127,
        127,
    )


def test_exif_orientation_is_applied_and_a_broken_exif_is_ignored() -> None:
    image = Image.fromarray(_photo(400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(image, "JPEG", exif=exif)
    assert decode_image(data).size == (200, 400)
    assert decode_image(data, target_size=(40, 40)).size == (50, 100)  # drafted, then rotated
    broken = data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00XX", 1)
    assert decode_image(broken).size in ((200, 400), (400, 200))


def test_only_the_allowed_parsers_read_the_bytes() -> None:
    tiff = _encode(Image.new("RGB", (8, 8)), "TIFF")
    with pytest.raises(InvalidImageError, match="TIFF is not allowed") as info:
        decode_image(tiff)
    assert info.value.reason == "format"
    with pytest.raises(InvalidImageError, match="not an image") as info:
        decode_image(_encode(Image.new("RGB", (8, 8)), "PCX"))  # no signature known, no parser
    assert info.value.reason == "not_an_image"
    png = jpeg_bytes((1, 2, 3), fmt="PNG")
    assert decode_image(png, allowed_formats=("JPG", "png")).mode == "RGB"  # unknown names skipped


def test_truncated_pixel_data_is_corrupt_not_a_crash() -> None:
    png = _encode(Image.fromarray(_photo(64, 64)), "PNG")
    with pytest.raises(InvalidImageError, match="truncated or corrupt") as info:
        decode_image(png[: len(png) // 2])
    assert info.value.reason == "corrupt"
