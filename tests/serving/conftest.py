"""Fixtures of the serving tests: JPEGs from the dev archive (else synthetic), bad images."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image
from support import COLORS, DEV_ARCHIVE, jpeg_bytes


def _archive_images(archive: Path, per_class: int) -> list[bytes]:
    seen: dict[str, int] = {}
    images = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            label = member.name.split("/")[-2]
            if seen.get(label, 0) < per_class:
                seen[label] = seen.get(label, 0) + 1
                images.append(tar.extractfile(member).read())
    return images


@pytest.fixture(scope="session")
def sample_images() -> list[bytes]:
    """Encoded images of every class: TrashNet JPEGs when the archive is there, plus one PNG."""
    if DEV_ARCHIVE.is_file():
        images = _archive_images(DEV_ARCHIVE, per_class=1)
    else:
        images = [jpeg_bytes(color, seed=i) for i, color in enumerate(COLORS.values())]
    images.append(jpeg_bytes((40, 90, 200), size=(150, 100), seed=7, fmt="PNG"))
    return images


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def encoded(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """A flat image of ``size`` (width, height) in ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def bad_images() -> dict[str, bytes]:
    """Encoded files every limit must refuse (the tests' servers allow 1 000 000 pixels)."""
    jpeg = encoded((64, 64), "JPEG")
    return {
        "gif": encoded((40, 40), "GIF"),
        "over_pixel_limit": encoded((1100, 1000)),
        "bomb": png_bomb(),
        "truncated": jpeg[: len(jpeg) // 2],
        "not_an_image": b"hello, world",
        "empty": b"",
    }


@pytest.fixture(scope="session")
def small_png() -> bytes:
    """A valid 8x8 PNG (for count limits)."""
    return encoded((8, 8))
