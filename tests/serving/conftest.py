"""Fixtures of the serving tests: JPEGs from the dev archive (else synthetic), bad images."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image
from support import COLORS, DEV_ARCHIVE, REPO_ROOT, free_port, jpeg_bytes


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


def encoded(
    size: tuple[int, int], fmt: str = "PNG", color: tuple[int, int, int] = (90, 120, 30)
) -> bytes:
    """A flat image of ``size`` (width, height) in ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
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
def nonfinite_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, changed to answer NaN probabilities for an all-white image only.

    A real ONNX graph (the tiny model's, plus ``probabilities += white ? NaN : 0``) with its
    digests recorded again, so it loads and passes the warm-up (a grey image) like any model.
    """
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from garbage.core.classifier import combined_digest, model_file_digests

    folder = tmp_path_factory.mktemp("nonfinite-model")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model = onnx.load(folder / "model.onnx")
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_probabilities" if o == "probabilities" else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(254.5, dtype=np.float32), "white_level"),
            numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "column"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", ["image"], ["image_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMin", ["image_float"], ["darkest"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Greater", ["darkest", "white_level"], ["white"]),
            helper.make_node("Where", ["white", "nan", "zero"], ["poison"]),
            helper.make_node("Unsqueeze", ["poison", "column"], ["poison_column"]),
            helper.make_node("Add", ["raw_probabilities", "poison_column"], ["probabilities"]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["files"] = model_file_digests(folder / "model.onnx")
    metadata["digest"] = combined_digest(metadata["files"])
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="session")
def white_png() -> bytes:
    """An all-white PNG: the image :func:`nonfinite_model_dir`'s model answers NaN for."""
    return encoded((48, 48), "PNG", color=(255, 255, 255))


@pytest.fixture(scope="session")
def small_png() -> bytes:
    """A valid 8x8 PNG (for count limits)."""
    return encoded((8, 8))


@dataclass
class Server:
    """A running ``python -m serving`` process and its addresses."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextmanager
def _running_server(model_dir: Path, flags: list[str], log: Path) -> Iterator[Server]:
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model_dir",
        str(model_dir),
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        *flags,
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, http_port, grpc_port, log)
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            try:
                ready = httpx.get(f"{server.base}/v2/models/garbage-classifier/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, f"not ready in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def run_server() -> Callable[[Path, list[str], Path], AbstractContextManager[Server]]:
    """``with run_server(model_dir, flags, log) as server``: the real server on free ports."""
    return _running_server
