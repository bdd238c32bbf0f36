"""Hostile input against the real server (``python -m serving``): REST v1, REST v2, gRPC, raw HTTP.

One table, :data:`CASES`: each case sends one hostile request and names what must come back (the
status, words of the message that say what is wrong, the counter that must grow by one). After
each case a good request must be served, the process must still run, and its peak RSS since the
case began must stay under :data:`RSS_LIMIT`.

The server runs with short read timeouts, a small instance limit, every image format the suite
sends allowed (so that bombs meet the size rules, not the format rule) and the default pixel,
side and aspect-ratio limits. Its model is the tiny model changed to answer NaN for an all-white
image (``nonfinite_model_dir``): that case must be a 500, every other mistake a 4xx.

``RSS_LIMIT`` is the issue's target, 1 GiB for any single accepted image whatever its shape: the
predictor's memory limit is 2 GiB and a 2-CPU pod decodes up to three images at once (two
decode threads and the model thread), on top of a baseline of about 300 MB. The peak is the
kernel's high-water mark (``VmHWM``), reset before each case through ``/proc/<pid>/clear_refs``
(without it, the process's peak since start: a stricter bound).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from PIL import Image

pytestmark = pytest.mark.integration

NAME = "garbage-classifier"
MAX_INSTANCES = 4
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_PAYLOAD = 4 * 1024 * 1024  # the body limit in force: smaller than 4 images' base64
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
FORMATS = "JPEG,PNG,GIF,WEBP,BMP,TIFF"
RSS_LIMIT = 1024**3
GRPC_LIMIT = 2 * MAX_PAYLOAD  # serving.server.GRPC_LIMIT_HEADROOM x the body limit
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


# -- hostile files -----------------------------------------------------------------------------


def deflate_zeros(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes, built in milliseconds whatever ``total`` is.

    After a full flush deflate forgets its history, so every further 1 MiB block of zeros
    compresses to the same bytes: they are repeated instead of compressed, and the Adler-32 of
    ``n`` zeros is ``(n mod 65521) << 16 | 1``.
    """
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9)
    if total <= 2 * len(block):
        return compressor.compress(bytes(total)) + compressor.flush()
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    middle = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(total - 2 * len(block), len(block))
    last = compressor.compress(block[:rest]) + compressor.flush()
    adler = ((total % 65521) << 16) | 1
    return first + middle * (blocks + 1) + last[:-4] + adler.to_bytes(4, "big")


def png(width: int, height: int, colour: int = 2, depth: int = 8, data: bool = True) -> bytes:
    """A valid black PNG of any size (``data=False``: the header only, its pixels cut off)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = 1 + (width * channels * depth + 7) // 8
    pixels = deflate_zeros(height * row) if data else zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
        + (chunk(b"PLTE", b"\0\0\0\x10\x20\x30") if colour == 3 else b"")
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients and noise, never white (the model under test answers NaN for white)."""
    x = np.linspace(20, 200, width)[None, :]
    y = np.linspace(20, 200, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    noise = np.random.default_rng(seed).integers(-15, 15, rgb.shape)
    return Image.fromarray(np.clip(rgb + noise, 0, 250).astype(np.uint8))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width x height``."""
    data = encode(photo(64, 64), "JPEG")
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    frame = data.index(b"\x2c")
    data[frame + 5 : frame + 9] = struct.pack("<HH", width, height)  # image descriptor
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    data = encode(photo(64, 64), "WEBP")
    start = data.index(b"\x9d\x01\x2a") + 3  # VP8 key frame: width, height (14 bits each)
    return data[:start] + struct.pack("<HH", width, height) + data[start + 4 :]


def bmp_claiming(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (8, 8)), "BMP")
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def tiff(width: int, height: int, pixels: bytes, bits: int = 8, deflate: bool = False) -> bytes:
    """A grey TIFF (8-bit, or 32-bit signed: Pillow's mode I) whose one strip is ``pixels``."""
    entries = [
        (256, 4, width),  # ImageWidth (LONG)
        (257, 4, height),  # ImageLength
        (258, 3, bits),  # BitsPerSample (SHORT)
        (259, 3, 8 if deflate else 1),  # Compression: deflate or none
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 8 + 2 + 12 * 10 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, len(pixels) if deflate else width * height * bits // 8),  # StripByteCounts
        (339, 3, 2 if bits == 32 else 1),  # SampleFormat: signed or unsigned integer
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def exif_rotated_jpeg(broken: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(photo(300, 150), "JPEG", exif=exif)
    return data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00XX", 1) if broken else data


@pytest.fixture(scope="module")
def corpus(sample_images: list[bytes], white_png: bytes) -> dict[str, bytes]:
    """Every file the cases send, built once (about a second)."""
    jpeg = encode(photo(256, 192), "JPEG")
    png_small = encode(photo(96, 64), "PNG")
    gif = encode(photo(96, 64).convert("P"), "GIF")
    webp = encode(photo(96, 64), "WEBP")
    grey16 = Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 19).reshape(48, 64))
    frames = [photo(96, 64, seed) for seed in range(2)]
    return {
        "good": sample_images[0],
        "white": white_png,
        "jpeg": jpeg,
        "png": png_small,
        # decompression bombs and extreme shapes, each with its pixel data where it is valid
        "png_40e6x1": png(40_000_000, 1),
        "png_1x40e6": png(1, 40_000_000),
        "png_palette_20000": png(20_000, 20_000, colour=3, depth=1),
        "png_12000x100": png(12_000, 100),
        "png_header_100000": png(100_000, 100_000, data=False),
        "jpeg_65000x8": jpeg_claiming(65_000, 8),
        "jpeg_10000x10000": jpeg_claiming(10_000, 10_000),
        "gif_65535x65535": gif_claiming(65_535, 65_535),
        "gif_65535x1": gif_claiming(65_535, 1),
        "webp_16383x16383": webp_claiming(16_383, 16_383),
        "webp_16383x2": webp_claiming(16_383, 2),
        "bmp_40e6x1": bmp_claiming(40_000_000, 1),
        "bmp_1x40e6": bmp_claiming(1, 40_000_000),
        "tiff_40e6x1": tiff(40_000_000, 1, b"\0" * 64),
        "tiff_1x40e6": tiff(1, 40_000_000, b"\0" * 64),
        # broken files
        "jpeg_truncated": jpeg[: len(jpeg) // 3],
        "png_truncated": png_small[: len(png_small) // 2],
        "png_bad_crc": png_small[:29] + bytes([png_small[29] ^ 0xFF]) + png_small[30:],
        "gif_truncated": gif[:30],
        "webp_truncated": webp[: len(webp) // 2],
        "tiff_truncated": tiff(64, 64, b"\x80" * 100),
        "bmp_truncated": encode(Image.new("RGB", (8, 8)), "BMP")[:40],
        "not_an_image": b"hello, world: not an image",
        "html": b"<!doctype html><html><body>hi</body></html>",
        "pdf": b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF",
        "zip": b"PK\x03\x04" + bytes(40),
        "random": np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        # valid but unusual files: each must be served
        "mpo": encode(frames[0], "MPO", save_all=True, append_images=frames[1:]),
        "cmyk": encode(photo(96, 64).convert("CMYK"), "JPEG"),
        "grey_jpeg": encode(photo(96, 64).convert("L"), "JPEG"),
        "png_16bit_grey": encode(grey16, "PNG"),
        "png_48bit": png(64, 48, depth=16),
        "png_rgba": encode(photo(96, 64).convert("RGBA"), "PNG"),
        "png_1bit": encode(photo(96, 64).convert("1"), "PNG"),
        "png_palette_transparency": encode(photo(96, 64).convert("P"), "PNG", transparency=0),
        "exif_rotated": exif_rotated_jpeg(),
        "exif_broken": exif_rotated_jpeg(broken=True),
        "gif_animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": webp,
        "bmp": encode(photo(96, 64), "BMP"),
        "tiff": encode(photo(96, 64), "TIFF"),
        "png_1x1": encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        # the largest accepted shapes: 35 megapixels, 10:1 at the longest side, 40 MP JPEG
        "png_7000x5000": png(7_000, 5_000),
        "png_12000x1200": png(12_000, 1_200),
        "jpeg_8000x5000": encode(Image.new("RGB", (8_000, 5_000), (30, 60, 90)), "JPEG"),
        "png_40mp_rgba": png(8_000, 5_000, colour=6),
        "png_40mp_grey16": png(8_000, 5_000, colour=0, depth=16),
        "tiff_40mp_int32": tiff(8_000, 5_000, deflate_zeros(8_000 * 5_000 * 4), 32, True),
        "file_too_large": b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES),
    }


# -- the server and how cases talk to it -----------------------------------------------------


@pytest.fixture(scope="module")
def server(nonfinite_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, run_server):
    flags = [
        *("--max_instances", str(MAX_INSTANCES)),
        *("--max_image_bytes", str(MAX_IMAGE_BYTES)),
        *("--max_payload_bytes", str(MAX_PAYLOAD)),
        *("--header_timeout_s", str(HEADER_TIMEOUT_S)),
        *("--body_timeout_s", str(BODY_TIMEOUT_S)),
        *("--allowed_formats", FORMATS),
        *("--max_batch_size", "4"),
    ]
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with run_server(nonfinite_model_dir, flags, log) as running:
        yield running


@dataclass
class Outcome:
    """What came back: an HTTP status (int) or gRPC code name (str), and the error text."""

    status: int | str
    message: str
    seconds: float = 0.0


@dataclass
class Client:
    """The server's addresses, an HTTP client and a gRPC stub."""

    server: Any
    http: httpx.Client
    stub: GRPCInferenceServiceStub
    corpus: dict[str, bytes] = field(default_factory=dict)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None
    ) -> Outcome:
        if body is None or isinstance(body, bytes | Iterator):
            content = body
        else:
            content = json.dumps(body).encode()
        response = self.http.request(method, path, content=content, headers=headers)
        try:
            message = response.json().get("error") or json.dumps(response.json())
        except (ValueError, AttributeError):
            message = response.text
        return Outcome(response.status_code, message)

    def post(self, path: str, body: Any, headers: dict | None = None) -> Outcome:
        return self.request("POST", path, body, headers)

    def v1(self, *files: str) -> Outcome:
        return self.post(
            V1, {"instances": [{"image_bytes": {"b64": b64(self.corpus[f])}} for f in files]}
        )

    def v2(self, inputs: list[dict], **extra: Any) -> Outcome:
        return self.post(V2, {"inputs": inputs, **extra})

    def v2_binary(self, header: dict, binary: bytes, length: str | None = None) -> Outcome:
        head = json.dumps(header).encode()
        value = str(len(head)) if length is None else length
        return self.post(V2, head + binary, {"inference-header-content-length": value})

    def grpc(self, method: str, message: Any) -> Outcome:
        try:
            getattr(self.stub, method)(message, timeout=30)
        except grpc.RpcError as e:
            return Outcome(e.code().name, e.details() or "")
        return Outcome("OK", "")

    def raw(self, parts: list[bytes], pause: float = 0.0, wait: float = 6.0) -> Outcome:
        """Send ``parts`` over a plain socket ``pause`` seconds apart; read until it closes."""
        start = time.monotonic()
        received = b""
        with socket.create_connection(("127.0.0.1", self.server.http_port), timeout=wait) as s:
            for part in parts:
                try:
                    s.sendall(part)
                except OSError:  # closed by the server: what it said is already here
                    break
                deadline = time.monotonic() + pause
                while (left := deadline - time.monotonic()) > 0:
                    if select.select([s], [], [], left)[0]:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                if received:
                    break
            while time.monotonic() - start < wait:
                try:
                    chunk = s.recv(65536)
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                received += chunk
        seconds = time.monotonic() - start
        if not received.startswith(b"HTTP/1.1 "):
            return Outcome("closed", received.decode("latin-1")[:200], seconds)
        head, _, body = received.partition(b"\r\n\r\n")
        return Outcome(int(head.split()[1]), body.decode("latin-1"), seconds)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_input(*elements: Any, shape: Any = None, **fields: Any) -> dict:
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(elements)]}
    tensor["data"] = list(elements)
    if shape is not None:
        tensor["shape"] = shape
    return {**tensor, **fields}


def pixels_input(shape: Any, data: Any, **fields: Any) -> dict:
    return {"name": "image", "datatype": "UINT8", "shape": shape, "data": data, **fields}


def binary_header(name: str, datatype: str, shape: list[int], size: Any) -> dict:
    return {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }


def packed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def grpc_tensor(
    name: str = "image_bytes",
    datatype: str = "BYTES",
    shape: list[int] | None = None,
    raw: list[bytes] | None = None,
    model: str = NAME,
    **contents: Any,
) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[1] if shape is None else shape
    )
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=raw or [])


def grpc_files(c: Client, *files: str, **kwargs: Any) -> pb.ModelInferRequest:
    return grpc_tensor(shape=[len(files)], raw=[packed(*(c.corpus[f] for f in files))], **kwargs)


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A chunked body (no Content-Length) of ``total`` bytes."""
    yield b'{"instances": [{"b64": "'
    sent = 0
    while sent < total:
        yield b"A" * size
        sent += size
    yield b'"}]}'


# -- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile request and what must come back.

    Attributes:
        id: The test id.
        send: Sends the request, returns what came back.
        status: The HTTP status or gRPC code name expected.
        says: Words the error message must hold (it names what is wrong).
        counts: ``(series, labels)`` of a counter that must grow by exactly one.
        within: Seconds the answer must come within (read timeouts).
    """

    id: str
    send: Callable[[Client], Outcome]
    status: int | str
    says: tuple[str, ...] = ()
    counts: tuple[str, dict[str, str]] | None = None
    within: float | None = None


def rejected(reason: str) -> tuple[str, dict[str, str]]:
    return ("garbage_rejected_requests_total", {"model_name": NAME, "reason": reason})


def refused(reason: str) -> tuple[str, dict[str, str]]:
    return ("garbage_refused_connections_total", {"reason": reason})


NONFINITE = ("garbage_nonfinite_outputs_total", {"model_name": NAME})


def bad(case_id: str, send: Callable[[Client], Outcome], reason: str, *says: str) -> Case:
    """A REST client mistake: 400, its reason counted, the message naming the problem."""
    return Case(case_id, send, 400, says, rejected(reason))


def bad_grpc(case_id: str, send: Callable[[Client], Outcome], reason: str, *says: str) -> Case:
    return Case(case_id, send, "INVALID_ARGUMENT", says, rejected(reason))


def served(case_id: str, send: Callable[[Client], Outcome]) -> Case:
    """A valid if unusual request: 200."""
    return Case(case_id, send, 200)


REQUEST_LINE = b"POST /v1/models/garbage-classifier:predict HTTP/1.1\r\nHost: x\r\n"
GOOD_BODY_START = b'{"instances": [{"b64": "'

V1_STRUCTURE = [
    bad("v1-not-json", lambda c: c.post(V1, b"not json"), "malformed_json", "not valid JSON"),
    bad("v1-empty-body", lambda c: c.post(V1, b""), "malformed_json", "not valid JSON"),
    bad("v1-body-array", lambda c: c.post(V1, [1, 2]), "bad_request", '"instances"'),
    bad("v1-body-string", lambda c: c.post(V1, "instances"), "bad_request", '"instances"'),
    bad("v1-no-instances", lambda c: c.post(V1, {"inputs": []}), "bad_request", '"instances"'),
    bad(
        "v1-instances-string",
        lambda c: c.post(V1, {"instances": "x"}),
        "bad_request",
        '"instances"',
    ),
    bad(
        "v1-instances-null", lambda c: c.post(V1, {"instances": None}), "bad_request", '"instances"'
    ),
    bad(
        "v1-instances-number", lambda c: c.post(V1, {"instances": 3}), "bad_request", '"instances"'
    ),
    bad(
        "v1-instances-object",
        lambda c: c.post(V1, {"instances": {"b64": "aGk="}}),
        "bad_request",
        '"instances"',
    ),
    bad("v1-instances-empty", lambda c: c.post(V1, {"instances": []}), "bad_request", "is empty"),
    bad(
        "v1-instance-string",
        lambda c: c.post(V1, {"instances": ["aGk="]}),
        "bad_request",
        "instance 0 must be",
    ),
    bad(
        "v1-instance-number",
        lambda c: c.post(V1, {"instances": [7]}),
        "bad_request",
        "instance 0 must be",
    ),
    bad(
        "v1-instance-null",
        lambda c: c.post(V1, {"instances": [None]}),
        "bad_request",
        "instance 0 must be",
    ),
    bad(
        "v1-instance-list",
        lambda c: c.post(V1, {"instances": [["aGk="]]}),
        "bad_request",
        "instance 0 must be",
    ),
    bad(
        "v1-image-bytes-string",
        lambda c: c.post(V1, {"instances": [{"image_bytes": "aGk="}]}),
        "bad_request",
        "instance 0 must be",
    ),
    *(
        bad(
            f"v1-b64-{kind}",
            lambda c, value=value: c.post(V1, {"instances": [{"b64": "aGk="}, {"b64": value}]}),
            "bad_request",
            "instance 1 must be",
        )
        for kind, value in (
            ("number", 5),
            ("null", None),
            ("bool", True),
            ("list", ["aGk="]),
            ("object", {"b64": "aGk="}),
        )
    ),
    *(
        bad(
            f"v1-base64-{kind}",
            lambda c, value=value: c.post(V1, {"instances": [{"b64": value}]}),
            "invalid_base64",
            "instance 0 is not valid base64",
        )
        for kind, value in (
            ("garbage", "@@not base64@@"),
            ("whitespace", "aGk= "),
            ("data-uri", "data:image/png;base64,aGk="),
            ("non-ascii", "aGk\u00e9"),
            ("bad-padding", "aGk"),
        )
    ),
    bad(
        "v1-too-many-instances",
        lambda c: c.post(V1, {"instances": [{"b64": b64(c.corpus["png"])}] * (MAX_INSTANCES + 1)}),
        "too_many_instances",
        f"over the limit of {MAX_INSTANCES}",
    ),
    bad(
        "v1-thousands-of-instances",
        lambda c: c.post(V1, b'{"instances": [' + b'{"b64": "aGk="}, ' * 5000 + b"{}]}"),
        "too_complex",
        "more than 80 objects and arrays",
    ),
    bad(
        "v1-flood-of-empty-objects",
        lambda c: c.post(V1, b'{"instances": [' + b"{}, " * 200_000 + b"{}]}"),
        "too_complex",
        "objects and arrays",
    ),
    bad("v1-deep-json", lambda c: c.post(V1, b"[" * 100_000), "too_complex", "objects and arrays"),
    bad(
        "v1-nested-within-budget",
        lambda c: c.post(V1, b'{"instances": [' + b"[" * 60 + b"]" * 60 + b"]}"),
        "bad_request",
        "instance 0 must be",
    ),
    bad(
        "v1-body-over-limit",
        lambda c: c.post(V1, GOOD_BODY_START + b"A" * MAX_PAYLOAD + b'"}]}'),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    bad(
        "v1-body-far-over-limit",
        lambda c: c.post(V1, GOOD_BODY_START + b"A" * (5 * MAX_PAYLOAD) + b'"}]}'),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    bad(
        "v1-chunked-over-limit",
        lambda c: c.post(V1, chunks(MAX_PAYLOAD + 1)),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    bad(
        "v1-chunked-far-over-limit",
        lambda c: c.post(V1, chunks(6 * MAX_PAYLOAD)),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    served(
        "v1-chunked-good",
        lambda c: c.post(V1, iter([GOOD_BODY_START, b64(c.corpus["jpeg"]).encode(), b'"}]}'])),
    ),
    bad(
        "v1-file-over-image-limit",
        lambda c: c.v1("file_too_large"),
        "file_too_large",
        f"at most {MAX_IMAGE_BYTES} bytes",
    ),
]


def image_case(case_id: str, file: str, status: int, reason: str | None = None, *says: str) -> Case:
    if status == 200:
        return served(case_id, lambda c: c.v1(file))
    assert reason is not None
    return bad(case_id, lambda c: c.v1(file), reason, *says)


IMAGES = [
    image_case("png-40e6x1", "png_40e6x1", 400, "too_large", "40000000x1", "side over the limit"),
    image_case("png-1x40e6", "png_1x40e6", 400, "too_large", "1x40000000", "side over the limit"),
    image_case(
        "png-palette-20000x20000", "png_palette_20000", 400, "too_large", "400000000 pixels"
    ),
    image_case("png-12000x100", "png_12000x100", 400, "aspect_ratio", "aspect ratio of 120.0:1"),
    image_case("png-header-100000x100000", "png_header_100000", 400, "too_large", "too large"),
    image_case("jpeg-65000x8", "jpeg_65000x8", 400, "too_large", "65000x8", "side over the limit"),
    image_case("jpeg-10000x10000", "jpeg_10000x10000", 400, "too_large", "100000000 pixels"),
    image_case("gif-65535x65535", "gif_65535x65535", 400, "too_large", "too large"),
    image_case("gif-65535x1", "gif_65535x1", 400, "too_large", "65535x1"),
    image_case("webp-16383x16383", "webp_16383x16383", 400, "too_large", "too large"),
    image_case("webp-16383x2", "webp_16383x2", 400, "too_large", "16383x2"),
    image_case("bmp-40e6x1", "bmp_40e6x1", 400, "too_large", "40000000x1"),
    image_case("bmp-1x40e6", "bmp_1x40e6", 400, "too_large", "1x40000000"),
    image_case("tiff-40e6x1", "tiff_40e6x1", 400, "too_large", "40000000x1"),
    image_case("tiff-1x40e6", "tiff_1x40e6", 400, "too_large", "1x40000000"),
    image_case("jpeg-truncated", "jpeg_truncated", 400, "corrupt", "truncated or corrupt"),
    image_case("png-truncated", "png_truncated", 400, "corrupt", "truncated or corrupt"),
    image_case("png-bad-crc", "png_bad_crc", 400, "corrupt", "truncated or corrupt"),
    image_case("gif-truncated", "gif_truncated", 400, "corrupt", "truncated or corrupt"),
    image_case("webp-truncated", "webp_truncated", 400, "corrupt", "truncated or corrupt"),
    image_case("tiff-truncated", "tiff_truncated", 400, "corrupt", "truncated or corrupt"),
    image_case("bmp-truncated", "bmp_truncated", 400, "corrupt", "truncated or corrupt"),
    bad("zero-bytes", lambda c: c.post(V1, {"instances": [{"b64": ""}]}), "empty", "empty"),
    *(
        image_case(f"non-image-{kind}", kind, 400, "not_an_image", "not an image")
        for kind in ("not_an_image", "html", "pdf", "zip", "random")
    ),
    *(
        image_case(f"served-{kind}", kind, 200)
        for kind in (
            "mpo",
            "cmyk",
            "grey_jpeg",
            "png_16bit_grey",
            "png_48bit",
            "png_rgba",
            "png_1bit",
            "png_palette_transparency",
            "exif_rotated",
            "exif_broken",
            "gif_animated",
            "webp",
            "bmp",
            "tiff",
            "png_1x1",
            "png_7000x5000",
            "png_12000x1200",
            "jpeg_8000x5000",
            "png_40mp_rgba",
            "png_40mp_grey16",
            "tiff_40mp_int32",
        )
    ),
    Case("nonfinite-v1", lambda c: c.v1("white"), 500, ("NaN or infinity",), NONFINITE),
    Case(
        "nonfinite-v2",
        lambda c: c.v2([bytes_input(b64(c.corpus["white"]))]),
        500,
        ("NaN or infinity",),
        NONFINITE,
    ),
    Case(
        "nonfinite-grpc",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "white")),
        "INTERNAL",
        (),
        NONFINITE,
    ),
]

IMAGE_B64 = "aGk="
V2_CASES = [
    bad("v2-not-json", lambda c: c.post(V2, b"{inputs"), "malformed_json", "not valid JSON"),
    bad("v2-body-array", lambda c: c.post(V2, [1]), "bad_request", "v2 inference request"),
    bad("v2-no-inputs", lambda c: c.post(V2, {}), "bad_request", "v2 inference request"),
    bad(
        "v2-inputs-string",
        lambda c: c.post(V2, {"inputs": "x"}),
        "bad_request",
        "v2 inference request",
    ),
    bad("v2-inputs-empty", lambda c: c.v2([]), "bad_request", "v2 inference request"),
    bad("v2-input-not-object", lambda c: c.v2([1]), "bad_request", "input 0 must be an object"),
    bad(
        "v2-two-inputs",
        lambda c: c.v2([bytes_input(IMAGE_B64), pixels_input([1, 1, 1, 3], [0, 0, 0])]),
        "bad_request",
        "got 2 inputs",
    ),
    bad(
        "v2-name-missing",
        lambda c: c.v2([{"datatype": "BYTES", "shape": [1], "data": [IMAGE_B64]}]),
        "bad_request",
        "string 'name' and 'datatype'",
    ),
    bad(
        "v2-name-number",
        lambda c: c.v2([bytes_input(IMAGE_B64, name=5)]),
        "bad_request",
        "string 'name'",
    ),
    bad(
        "v2-datatype-number",
        lambda c: c.v2([bytes_input(IMAGE_B64, datatype=7)]),
        "bad_request",
        "'datatype'",
    ),
    bad(
        "v2-unknown-input-name",
        lambda c: c.v2([bytes_input(IMAGE_B64, name="img")]),
        "bad_tensor_name",
        "unknown input 'img'",
    ),
    *(
        bad(
            f"v2-datatype-{datatype.lower()}-for-files",
            lambda c, datatype=datatype: c.v2([bytes_input(IMAGE_B64, datatype=datatype)]),
            "bad_dtype",
            "input 'image_bytes' must have datatype BYTES",
        )
        for datatype in ("FP32", "FOO", "INT64")
    ),
    bad(
        "v2-datatype-bytes-for-pixels",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [0, 0, 0], datatype="BYTES")]),
        "bad_dtype",
        "input 'image' must have datatype UINT8",
    ),
    *(
        bad(
            f"v2-shape-{kind}",
            lambda c, shape=shape: c.v2([bytes_input(IMAGE_B64, shape=shape)]),
            "bad_shape",
            "input 'image_bytes' needs a 'shape' of non-negative integers",
        )
        for kind, shape in (
            ("true", [True]),
            ("false", [False]),
            ("bool-in-pair", [1, True]),
            ("float", [1.0]),
            ("negative", [-1]),
            ("string", ["1"]),
            ("nested", [[1]]),
            ("null-list", [None]),
        )
    ),
    bad(
        "v2-shape-not-a-list",
        lambda c: c.v2([bytes_input(IMAGE_B64, shape="1")]),
        "bad_shape",
        "'shape' of non-negative integers",
    ),
    bad(
        "v2-shape-missing",
        lambda c: c.v2([{"name": "image_bytes", "datatype": "BYTES", "data": [IMAGE_B64]}]),
        "bad_shape",
        "'shape'",
    ),
    bad(
        "v2-shape-huge",
        lambda c: c.v2([bytes_input(IMAGE_B64, shape=[2**62])]),
        "too_many_instances",
        f"over the limit of {MAX_INSTANCES}",
    ),
    bad(
        "v2-shape-beyond-64-bits",
        lambda c: c.post(
            V2,
            b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", '
            b'"shape": [18446744073709551617], "data": ["aGk="]}]}',
        ),
        "bad_shape",  # orjson reads integers beyond 64 bits as floats
        "'shape' of non-negative integers",
    ),
    *(
        bad(
            f"v2-files-shape-{kind}",
            lambda c, shape=shape: c.v2([bytes_input(IMAGE_B64, shape=shape)]),
            "bad_shape",
            "must have shape [N] or [N, 1]",
        )
        for kind, shape in (("empty", []), ("zero", [0]), ("3d", [1, 1, 1]), ("n-by-2", [1, 2]))
    ),
    bad(
        "v2-shape-disagrees-with-data",
        lambda c: c.v2([bytes_input(IMAGE_B64, shape=[3])]),
        "bad_shape",
        "has shape '[3]' but 1 elements",
    ),
    bad(
        "v2-data-missing",
        lambda c: c.v2([{"name": "image_bytes", "datatype": "BYTES", "shape": [1]}]),
        "bad_request",
        "neither 'data' nor",
    ),
    bad(
        "v2-data-string",
        lambda c: c.v2([{**bytes_input(), "shape": [1], "data": IMAGE_B64}]),
        "bad_request",
        "'data' must be a list",
    ),
    bad(
        "v2-data-object",
        lambda c: c.v2([{**bytes_input(), "shape": [1], "data": {"b64": IMAGE_B64}}]),
        "bad_request",
        "'data' must be a list",
    ),
    *(
        bad(
            f"v2-bytes-element-{kind}",
            lambda c, value=value: c.v2([bytes_input(value)]),
            "bad_tensor_data",
            "element 0 of 'image_bytes' must be a base64 string",
        )
        for kind, value in (("number", 5), ("null", None), ("bool", False), ("object", {}))
    ),
    bad(
        "v2-bytes-element-invalid-base64",
        lambda c: c.v2([bytes_input("@@")]),
        "invalid_base64",
        "element 0 of 'image_bytes'",
    ),
    bad(
        "v2-input-parameters-list",
        lambda c: c.v2([bytes_input(IMAGE_B64, parameters=[1])]),
        "bad_request",
        "'parameters' must be an object",
    ),
    bad(
        "v2-outputs-not-list",
        lambda c: c.v2([bytes_input(IMAGE_B64)], outputs={"name": "label"}),
        "bad_request",
        '"outputs" must be a list',
    ),
    bad(
        "v2-output-name-number",
        lambda c: c.v2([bytes_input(IMAGE_B64)], outputs=[{"name": 1}]),
        "bad_request",
        '"outputs" must be a list',
    ),
    bad(
        "v2-output-unknown",
        lambda c: c.v2([bytes_input(b64(c.corpus["png"]))], outputs=[{"name": "logits"}]),
        "bad_tensor_name",
        "unknown output 'logits'",
    ),
    bad(
        "v2-output-parameters-string",
        lambda c: c.v2([bytes_input(IMAGE_B64)], outputs=[{"name": "label", "parameters": "x"}]),
        "bad_request",
        "'parameters' must be an object",
    ),
    bad(
        "v2-id-number",
        lambda c: c.v2([bytes_input(IMAGE_B64)], id=5),
        "bad_request",
        '"id" must be',
    ),
    bad(
        "v2-id-huge",
        lambda c: c.v2([bytes_input(IMAGE_B64)], id="i" * 100_000),
        "bad_request",
        "at most 256 characters",
    ),
    bad(
        "v2-parameters-list",
        lambda c: c.v2([bytes_input(IMAGE_B64)], parameters=[]),
        "bad_request",
        '"parameters" must be an object',
    ),
    bad(
        "v2-pixels-shape-3d",
        lambda c: c.v2([pixels_input([1, 2, 2], [0] * 12)]),
        "bad_shape",
        "[N, H, W, 3]",
    ),
    bad(
        "v2-pixels-4-channels",
        lambda c: c.v2([pixels_input([1, 2, 2, 4], [0] * 16)]),
        "bad_shape",
        "[N, H, W, 3]",
    ),
    bad(
        "v2-pixels-zero-height",
        lambda c: c.v2([pixels_input([1, 0, 2, 3], [])]),
        "bad_shape",
        "[N, H, W, 3]",
    ),
    bad(
        "v2-pixels-over-255",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [0, 256, 9])]),
        "bad_tensor_data",
        "outside 0..255",
    ),
    bad(
        "v2-pixels-negative",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [0, -1, 9])]),
        "bad_tensor_data",
        "outside 0..255",
    ),
    bad(
        "v2-pixels-floats",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [0.5, 1, 2])]),
        "bad_dtype",
        "must hold integers",
    ),
    bad(
        "v2-pixels-bools",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [True, False, True])]),
        "bad_dtype",
        "must hold integers",
    ),
    bad(
        "v2-pixels-strings",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], ["0", "1", "2"])]),
        "bad_dtype",
        "must hold integers",
    ),
    bad(
        "v2-pixels-ragged",
        lambda c: c.v2([pixels_input([1, 1, 1, 3], [[0, 1], [2]])]),
        "bad_tensor_data",
        "not a regular array",
    ),
    bad(
        "v2-pixels-too-few-values",
        lambda c: c.v2([pixels_input([1, 2, 2, 3], [0] * 11)]),
        "bad_shape",
        "has 11 values but shape",
    ),
    bad(
        "v2-pixels-nested-lists",
        lambda c: c.v2([pixels_input([1, 16, 16, 3], [[[[1, 2, 3]] * 16] * 16])]),
        "too_complex",
        "flat list",
    ),
    bad(
        "v2-pixels-aspect-ratio",
        lambda c: c.v2_binary(
            binary_header("image", "UINT8", [1, 1, 5000, 3], 15000), b"\0" * 15000
        ),
        "aspect_ratio",
        "each image of 'image' is 5000x1",
    ),
    bad(
        "v2-pixels-huge-shape",
        lambda c: c.v2_binary(binary_header("image", "UINT8", [1, 20000, 20000, 3], 3), b"\0" * 3),
        "too_large",
        "each image of 'image' is 20000x20000",
    ),
    bad(
        "v2-pixels-over-image-bytes",
        lambda c: c.v2_binary(
            binary_header("image", "UINT8", [1, 1000, 1000, 3], 3_000_000), b"\0" * 3_000_000
        ),
        "file_too_large",
        "3000000 bytes, over the limit",
    ),
    bad(
        "v2-pixels-wrong-byte-count",
        lambda c: c.v2_binary(binary_header("image", "UINT8", [1, 2, 2, 3], 5), b"\0" * 5),
        "bad_shape",
        "has 5 bytes of data but shape",
    ),
    bad(
        "v2-binary-header-not-integer",
        lambda c: c.v2_binary(binary_header("image_bytes", "BYTES", [1], 4), packed(b""), "ten"),
        "bad_request",
        "must be an integer",
    ),
    bad(
        "v2-binary-header-beyond-body",
        lambda c: c.v2_binary(binary_header("image_bytes", "BYTES", [1], 4), packed(b""), "99999"),
        "bad_request",
        "outside the body",
    ),
    *(
        bad(
            f"v2-binary-size-{kind}",
            lambda c, size=size: c.v2_binary(binary_header("image_bytes", "BYTES", [1], size), b""),
            "bad_request",
            "neither 'data' nor an integer parameters.binary_data_size",
        )
        for kind, size in (("negative", -1), ("bool", True), ("string", "4"), ("float", 4.0))
    ),
    bad(
        "v2-binary-size-beyond-data",
        lambda c: c.v2_binary(binary_header("image_bytes", "BYTES", [1], 99), b"abc"),
        "bad_request",
        "only 3 bytes remain",
    ),
    bad(
        "v2-binary-bytes-left-over",
        lambda c: c.v2_binary(binary_header("image_bytes", "BYTES", [1], 4), packed(b"") + b"xx"),
        "bad_request",
        "2 bytes follow the JSON",
    ),
    bad(
        "v2-binary-malformed-bytes-tensor",
        lambda c: c.v2_binary(binary_header("image_bytes", "BYTES", [1], 7), b"\xff\xff\0\0abc"),
        "bad_tensor_data",
        "malformed BYTES tensor",
    ),
    bad(
        "v2-binary-png-bomb",
        lambda c: c.v2_binary(
            binary_header("image_bytes", "BYTES", [1], len(packed(c.corpus["png_40e6x1"]))),
            packed(c.corpus["png_40e6x1"]),
        ),
        "too_large",
        "40000000x1",
    ),
    bad(
        "v2-binary-file-over-image-limit",
        lambda c: c.v2_binary(
            binary_header("image_bytes", "BYTES", [1], len(packed(c.corpus["file_too_large"]))),
            packed(c.corpus["file_too_large"]),
        ),
        "file_too_large",
        "element 0 of 'image_bytes'",
    ),
    served(
        "v2-binary-jpeg",
        lambda c: c.v2_binary(
            binary_header("image_bytes", "BYTES", [1], len(packed(c.corpus["jpeg"]))),
            packed(c.corpus["jpeg"]),
        ),
    ),
]

ROUTES = [
    Case(
        "rest-unload",
        lambda c: c.post(f"/v2/repository/models/{NAME}/unload", b""),
        404,
        ("repository API", "disabled"),
    ),
    Case(
        "rest-load",
        lambda c: c.post(f"/v2/repository/models/{NAME}/load", b""),
        404,
        ("repository API", "disabled"),
    ),
    Case(
        "rest-repository-index", lambda c: c.post("/v2/repository/index", b"{}"), 404, ("disabled",)
    ),
    Case(
        "rest-unload-with-get",
        lambda c: c.request("GET", f"/v2/repository/models/{NAME}/unload"),
        404,
        ("disabled",),
    ),
    Case(
        "v1-unknown-model",
        lambda c: c.post("/v1/models/other:predict", b"{}"),
        404,
        ("model 'other' is not served here",),
    ),
    Case(
        "v2-unknown-model",
        lambda c: c.post("/v2/models/other/infer", b"x" * 100_000),
        404,
        ("model 'other' is not served here",),
    ),
    Case(
        "v2-unknown-model-long-name",
        lambda c: c.post(f"/v2/models/{'m' * 4000}/infer", b"{}"),
        404,
        ("is not served here", "mmm..."),
    ),
    Case(
        "v2-unknown-model-metadata", lambda c: c.request("GET", "/v2/models/other"), 404, ("other",)
    ),
    Case(
        "v2-unknown-model-ready",
        lambda c: c.request("GET", "/v2/models/other/ready"),
        404,
        ("other",),
    ),
    Case(
        "v1-unknown-model-status", lambda c: c.request("GET", "/v1/models/other"), 404, ("other",)
    ),
    Case(
        "v2-model-version-infer",
        lambda c: c.post(f"/v2/models/{NAME}/versions/1/infer", b"{}"),
        404,
        ("model versions are not served",),
    ),
    Case(
        "v2-model-version-metadata",
        lambda c: c.request("GET", f"/v2/models/{NAME}/versions/1"),
        404,
        ("model versions are not served",),
    ),
    Case(
        "v1-explain",
        lambda c: c.post(f"/v1/models/{NAME}:explain", b"x" * 100_000),
        404,
        ("no explainer",),
    ),
    Case("unknown-path", lambda c: c.request("GET", "/v3/anything"), 404),
    Case("predict-with-get", lambda c: c.request("GET", V1), 404, ("does not exist",)),
    Case("infer-with-put", lambda c: c.request("PUT", V2, b"{}"), 405),
]

GRPC_CASES = [
    Case(
        "grpc-unload",
        lambda c: c.grpc("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=NAME)),
        "UNIMPLEMENTED",
        ("repository API", "disabled"),
    ),
    Case(
        "grpc-load",
        lambda c: c.grpc("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=NAME)),
        "UNIMPLEMENTED",
        ("repository API", "disabled"),
    ),
    Case(
        "grpc-unknown-model",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "jpeg", model="other")),
        "NOT_FOUND",
        ("'other'",),
    ),
    Case(
        "grpc-unknown-model-metadata",
        lambda c: c.grpc("ModelMetadata", pb.ModelMetadataRequest(name="other")),
        "NOT_FOUND",
        ("other",),
    ),
    bad_grpc(
        "grpc-datatype-lower-case",
        lambda c: c.grpc("ModelInfer", grpc_tensor("image", "uint8", [1, 1, 1, 3], [b"\0" * 3])),
        "bad_dtype",
        "input 'image' has datatype 'uint8'",
    ),
    bad_grpc(
        "grpc-datatype-unknown",
        lambda c: c.grpc("ModelInfer", grpc_tensor(datatype="JPEG", raw=[packed(b"x")])),
        "bad_dtype",
        "input 'image_bytes' has datatype 'JPEG'",
    ),
    bad_grpc(
        "grpc-datatype-wrong",
        lambda c: c.grpc("ModelInfer", grpc_tensor("image", "FP32", [1, 1, 1, 3], [b"\0" * 12])),
        "bad_dtype",
        "must have datatype UINT8",
    ),
    bad_grpc(
        "grpc-unknown-input",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "jpeg", name="img")),
        "bad_tensor_name",
        "unknown input 'img'",
    ),
    bad_grpc(
        "grpc-no-inputs",
        lambda c: c.grpc("ModelInfer", pb.ModelInferRequest(model_name=NAME)),
        "bad_request",
        "got 0 inputs",
    ),
    bad_grpc(
        "grpc-negative-shape",
        lambda c: c.grpc("ModelInfer", grpc_tensor(shape=[-1], raw=[packed(b"x")])),
        "bad_shape",
        "must have shape [N] or [N, 1]",
    ),
    bad_grpc(
        "grpc-huge-shape",
        lambda c: c.grpc("ModelInfer", grpc_tensor(shape=[2**62], raw=[packed(b"x")])),
        "too_many_instances",
        f"over the limit of {MAX_INSTANCES}",
    ),
    bad_grpc(
        "grpc-pixels-negative-shape",
        lambda c: c.grpc("ModelInfer", grpc_tensor("image", "UINT8", [1, -5, -5, 3], [b""])),
        "bad_shape",
        "[N, H, W, 3]",
    ),
    bad_grpc(
        "grpc-pixels-huge-shape",
        lambda c: c.grpc("ModelInfer", grpc_tensor("image", "UINT8", [1, 2**31, 2**31, 3], [b""])),
        "too_large",
        "each image of 'image'",
    ),
    bad_grpc(
        "grpc-pixels-over-255",
        lambda c: c.grpc(
            "ModelInfer", grpc_tensor("image", "UINT8", [1, 1, 1, 3], uint_contents=[0, 300, 1])
        ),
        "bad_tensor_data",
        "outside 0..255",
    ),
    Case(
        "grpc-raw-count-mismatch",
        lambda c: c.grpc("ModelInfer", grpc_tensor(raw=[packed(c.corpus["jpeg"]), packed(b"x")])),
        "INVALID_ARGUMENT",
        ("does not match",),
    ),
    Case(
        "grpc-contents-and-raw",
        lambda c: c.grpc(
            "ModelInfer", grpc_tensor(raw=[packed(b"x")], bytes_contents=[c.corpus["jpeg"]])
        ),
        "INVALID_ARGUMENT",
        ("contents field must not be specified",),
    ),
    bad_grpc(
        "grpc-malformed-bytes-tensor",
        lambda c: c.grpc("ModelInfer", grpc_tensor(raw=[b"\xff\xff\0\0abc"])),
        "bad_tensor_data",
        "malformed BYTES tensor",
    ),
    bad_grpc(
        "grpc-shape-disagrees",
        lambda c: c.grpc("ModelInfer", grpc_tensor(shape=[3], raw=[packed(c.corpus["jpeg"])])),
        "bad_shape",
        "but 1 elements",
    ),
    bad_grpc(
        "grpc-too-many-instances",
        lambda c: c.grpc("ModelInfer", grpc_files(c, *["png"] * (MAX_INSTANCES + 1))),
        "too_many_instances",
        f"over the limit of {MAX_INSTANCES}",
    ),
    bad_grpc(
        "grpc-output-unknown",
        lambda c: c.grpc(
            "ModelInfer",
            pb.ModelInferRequest(
                model_name=NAME,
                inputs=grpc_files(c, "jpeg").inputs,
                raw_input_contents=grpc_files(c, "jpeg").raw_input_contents,
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            ),
        ),
        "bad_tensor_name",
        "unknown output 'logits'",
    ),
    bad_grpc(
        "grpc-png-bomb",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "png_40e6x1")),
        "too_large",
        "40000000x1",
    ),
    bad_grpc(
        "grpc-gif-bomb",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "gif_65535x65535")),
        "too_large",
        "too large",
    ),
    bad_grpc(
        "grpc-truncated-jpeg",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "jpeg_truncated")),
        "corrupt",
        "truncated or corrupt",
    ),
    bad_grpc(
        "grpc-empty-image",
        lambda c: c.grpc("ModelInfer", grpc_tensor(raw=[packed(b"")])),
        "empty",
        "empty",
    ),
    bad_grpc(
        "grpc-not-an-image",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "html")),
        "not_an_image",
        "not an image",
    ),
    bad_grpc(
        "grpc-file-over-image-limit",
        lambda c: c.grpc("ModelInfer", grpc_files(c, "file_too_large")),
        "file_too_large",
        f"over the limit of {MAX_IMAGE_BYTES} bytes",
    ),
    bad_grpc(
        "grpc-payload-over-limit",
        lambda c: c.grpc(
            "ModelInfer", grpc_tensor(shape=[2], raw=[packed(*[bytes(MAX_PAYLOAD // 2 + 1)] * 2)])
        ),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD}",
    ),
    Case(
        "grpc-message-over-grpc-limit",
        lambda c: c.grpc("ModelInfer", grpc_tensor(raw=[bytes(GRPC_LIMIT + 1)])),
        "RESOURCE_EXHAUSTED",
    ),
    Case("grpc-served-mpo", lambda c: c.grpc("ModelInfer", grpc_files(c, "mpo", "cmyk")), "OK"),
]

RAW = [
    Case(
        "slow-headers",
        lambda c: c.raw([REQUEST_LINE, b"X-Slow: 1\r\n"], pause=0.5),
        408,
        ("headers did not arrive within 1 s",),
        refused("head_timeout"),
        within=HEADER_TIMEOUT_S + 1.5,
    ),
    Case(
        "slow-header-drip",
        lambda c: c.raw([bytes([b]) for b in REQUEST_LINE], pause=0.2),
        408,
        ("headers did not arrive",),
        refused("head_timeout"),
        within=HEADER_TIMEOUT_S + 1.5,
    ),
    Case(
        "idle-connection",
        lambda c: c.raw([b""], pause=0.0),
        408,
        ("headers did not arrive",),
        refused("head_timeout"),
        within=HEADER_TIMEOUT_S + 1.5,
    ),
    Case(
        "slow-body",
        lambda c: c.raw(
            [REQUEST_LINE + b"Content-Length: 1000\r\n\r\n", GOOD_BODY_START], pause=0.5
        ),
        408,
        ("body did not arrive within 1.5 s",),
        refused("body_timeout"),
        within=BODY_TIMEOUT_S + 1.5,
    ),
    Case(
        "slow-body-drip",
        lambda c: c.raw(
            [REQUEST_LINE + b"Content-Length: 100000\r\n\r\n", *[b"A" * 10] * 40], pause=0.1
        ),
        408,
        ("body did not arrive",),
        refused("body_timeout"),
        within=BODY_TIMEOUT_S + 1.5,
    ),
    Case(
        "slow-chunked-body",
        lambda c: c.raw(
            [REQUEST_LINE + b"Transfer-Encoding: chunked\r\n\r\n", *[b"1\r\nA\r\n"] * 40],
            pause=0.1,
        ),
        408,
        ("body did not arrive",),
        refused("body_timeout"),
        within=BODY_TIMEOUT_S + 1.5,
    ),
    Case(
        "huge-header",
        lambda c: c.raw([REQUEST_LINE + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"]),
        431,
        ("over 65536 bytes",),
        refused("head_too_large"),
    ),
    Case(
        "many-headers",
        lambda c: c.raw([REQUEST_LINE + b"".join(b"X-%d: y\r\n" % i for i in range(8000))]),
        431,
        ("headers are over",),
        refused("head_too_large"),
    ),
    Case("garbage-request-line", lambda c: c.raw([b"\x16\x03\x01\x00\xa5garbage\r\n\r\n"]), 400),
    Case(
        "bad-content-length",
        lambda c: c.raw([REQUEST_LINE + b"Content-Length: ten\r\n\r\n{}"]),
        400,
    ),
    Case(
        "bad-chunk-size",
        lambda c: c.raw(
            [REQUEST_LINE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"]
        ),
        400,
    ),
    Case(
        "content-length-and-chunked",
        lambda c: c.raw(
            [REQUEST_LINE + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
        ),
        400,
    ),
]

CASES: list[Case] = [*V1_STRUCTURE, *IMAGES, *V2_CASES, *ROUTES, *GRPC_CASES, *RAW]
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}


def test_the_table_has_a_hundred_distinct_cases() -> None:
    assert len(CASES) >= 100
    assert len({case.id for case in CASES}) == len(CASES)


# -- running one case --------------------------------------------------------------------------


def metric(client: Client, series: str, labels: dict[str, str]) -> float:
    text = client.http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def reset_peak_rss(pid: int) -> None:
    """Start the kernel's peak-RSS count over (Linux ``clear_refs`` 5); a no-op where refused."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    """The process's peak resident set since the last reset, in bytes (its RSS off Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss


@pytest.fixture(scope="module")
def client(server, corpus) -> Iterator[Client]:
    with (
        httpx.Client(base_url=server.base, timeout=60) as http,
        grpc.insecure_channel(
            server.grpc_url, options=[("grpc.max_send_message_length", 4 * GRPC_LIMIT)]
        ) as channel,
    ):
        yield Client(server, http, GRPCInferenceServiceStub(channel), corpus)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_is_answered_and_the_server_keeps_serving(client: Client, case: Case) -> None:
    pid = client.server.process.pid
    reset_peak_rss(pid)
    before = metric(client, *case.counts) if case.counts else 0.0
    outcome = case.send(client)
    context = f"{case.id}: got {outcome.status} {outcome.message[:300]!r}"
    assert outcome.status == case.status, context
    for words in case.says:
        assert words in outcome.message, context
    if case.status not in (500, "INTERNAL"):
        assert not (isinstance(outcome.status, int) and outcome.status >= 500), context
        assert outcome.status not in SERVER_ERRORS, context
    if case.counts:
        assert metric(client, *case.counts) == before + 1, f"{case.id}: {case.counts} not counted"
    if case.within is not None:
        assert outcome.seconds <= case.within, f"{case.id}: answered after {outcome.seconds:.1f} s"
    good = client.v1("good")
    assert good.status == 200, f"after {case.id}: {good}"
    if isinstance(case.status, str):
        assert client.grpc("ModelInfer", grpc_files(client, "good")).status == "OK"
    assert client.server.process.poll() is None, f"the server died on {case.id}"
    peak = peak_rss(pid)
    assert peak < RSS_LIMIT, f"{case.id}: peak RSS {peak / 2**20:.0f} MiB"


def test_health_stays_true_and_the_model_loaded_after_the_suite(client: Client) -> None:
    assert client.request("GET", "/v2/health/live").status == 200
    assert client.request("GET", "/v2/health/ready").status == 200
    assert client.request("GET", f"/v2/models/{NAME}/ready").status == 200
    live = client.stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
    ready = client.stub.ModelReady(pb.ModelReadyRequest(name=NAME), timeout=10)
    assert live.live and ready.ready
