"""The KServe v1 and open inference protocol (v2) wire format of the model, defined once.

Serving reads requests and writes responses with it, the payload logger encodes the requests it
logs with it, and the monitoring collector reads logged requests and responses back with it:

* the names: the model's inputs, outputs and their parameters, and the binary-extension header;
* v1: ``{"instances": [{"image_bytes": {"b64": "<base64 file>"}}, ...]}`` in,
  ``{"predictions": [{"label", "score", "probabilities"}, ...]}`` out;
* v2 ``BYTES`` tensors serialised as raw bytes: each element a 4-byte little-endian length, then
  its bytes;
* v2's binary tensor extension: a JSON header, then each tensor's raw bytes in order,
  ``parameters.binary_data_size`` bytes each, the header's length in
  ``Inference-Header-Content-Length``;
* strict base64 for JSON ``BYTES`` elements and v1 ``b64`` values.

It works on bytes and on JSON that is already parsed (serving parses with orjson, the collector
with the standard library) and imports only the standard library and numpy. Every problem raises
:class:`ProtocolError`, whose message says what is wrong.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

BYTES_INPUT = "image_bytes"
"""The v2 input of encoded image files (``BYTES [N]``), also the image key of a v1 instance."""
PIXELS_INPUT = "image"
"""The v2 input of RGB pixels (``UINT8 [N, H, W, 3]``), named like the ONNX model's input."""
OUTPUT_LABEL = "label"
OUTPUT_SCORE = "score"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_NAMES = (OUTPUT_LABEL, OUTPUT_SCORE, OUTPUT_PROBABILITIES)
INFERENCE_HEADER = "Inference-Header-Content-Length"
"""The HTTP header with the JSON header's length in bytes, when binary tensor data follows."""
BINARY_DATA_SIZE = "binary_data_size"
"""The tensor parameter with the size in bytes of the tensor's part of the binary data."""
CLASSES_PARAMETER = "classes"
"""The parameter of the probabilities output: its column names, as a JSON list in a string."""

_LENGTH_PREFIX = struct.Struct("<I")
_JSON_WHITESPACE = b" \t\n\r"


class ProtocolError(ValueError):
    """A body that does not follow the wire format; ``reason`` is a short tag for metrics.

    The tags are serving's (``serving.errors.REASONS``): ``malformed_json``, ``bad_request``,
    ``invalid_base64`` and ``bad_tensor_data``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_b64(text: str, where: str) -> bytes:
    """Strict base64: the standard alphabet with its padding, nothing else (no whitespace).

    Args:
        text: The base64 text.
        where: What the text is, to start the message (e.g. ``"instance 0"``).

    Raises:
        ProtocolError: ``invalid_base64``.
    """
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:  # binascii.Error, or text that is not ASCII
        raise ProtocolError(f"{where} is not valid base64: {e}", "invalid_base64") from e


def pack_bytes_tensor(elements: Iterable[bytes]) -> bytes:
    """Serialise a ``BYTES`` tensor: each element's 4-byte little-endian length, then its bytes."""
    return b"".join(_LENGTH_PREFIX.pack(len(element)) + element for element in elements)


def unpack_bytes_tensor(raw: bytes) -> list[bytes]:
    """The elements of a serialised ``BYTES`` tensor (the inverse of :func:`pack_bytes_tensor`).

    Raises:
        ProtocolError: ``bad_tensor_data``: a length prefix is cut off, or an element claims
            more bytes than remain.
    """
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise ProtocolError(
                "malformed BYTES tensor: a length prefix is cut off", "bad_tensor_data"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise ProtocolError(
                f"malformed BYTES tensor: element {len(elements)} claims {length} bytes but "
                f"{len(raw) - offset} remain",
                "bad_tensor_data",
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def split_at_header_length(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Cut a v2 body into its JSON header and the binary tensor data that follows it.

    Args:
        body: The body.
        header_length: The :data:`INFERENCE_HEADER` header; None when the whole body is JSON.

    Returns:
        The JSON header's bytes and the binary data (empty without ``header_length``).

    Raises:
        ProtocolError: ``bad_request``: the length is not an integer or not within the body.
    """
    if header_length is None:
        return body, b""
    try:
        end = int(header_length)
    except ValueError as e:
        raise ProtocolError(
            f"{INFERENCE_HEADER} must be an integer, got {header_length!r}", "bad_request"
        ) from e
    if not 0 < end <= len(body):
        raise ProtocolError(
            f"{INFERENCE_HEADER} {end} is outside the body's {len(body)} bytes", "bad_request"
        )
    return body[:end], body[end:]


def split_leading_json(body: bytes) -> tuple[Any, bytes]:
    """Parse the JSON document a body starts with, when the header's length is not known.

    This is how a logged body is read (payload loggers log the body, not its headers): the
    binary data of the binary tensor extension, if any, is the last ``binary_data_size`` bytes
    the document declares over its ``inputs`` and ``outputs``; JSON whitespace between the
    document and those bytes belongs to the header. The JSON must be UTF-8; the binary data
    may be any bytes.

    Returns:
        The parsed document and the bytes after its header (for :func:`tensor_chunks`).

    Raises:
        ProtocolError: ``malformed_json``: the body does not start with a UTF-8 JSON document.
    """
    start = len(body) - len(body.lstrip(_JSON_WHITESPACE))
    try:  # latin-1 has one character per byte: the decoder's index is a byte offset
        _, end = json.JSONDecoder().raw_decode(body.decode("latin-1"), start)
    except json.JSONDecodeError as e:
        raise ProtocolError(
            f"the payload is not JSON: {e.msg} at byte {e.pos}", "malformed_json"
        ) from e
    try:
        document = json.loads(body[:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(
            f"the JSON header is not valid UTF-8 JSON: {e}", "malformed_json"
        ) from e
    rest = body[end:]
    padding = len(rest) - _declared_binary_size(document)
    if padding > 0 and not rest[:padding].strip(_JSON_WHITESPACE):
        rest = rest[padding:]
    return document, rest


def tensor_chunks(
    tensors: Sequence[Mapping[str, Any]], binary: bytes, kind: str = "input"
) -> list[bytes | None]:
    """Each tensor's part of the binary data, in order; None for a tensor that carries ``data``.

    Args:
        tensors: The JSON header's ``inputs`` or ``outputs``.
        binary: The bytes after the JSON header.
        kind: ``"input"`` or ``"output"``, for the messages.

    Raises:
        ProtocolError: ``bad_request``: a tensor has neither ``data`` nor a non-negative integer
            ``parameters.binary_data_size``, the sizes add up to more than ``binary`` holds, or
            bytes of ``binary`` are left over.
    """
    chunks: list[bytes | None] = []
    offset = 0
    for tensor in tensors:
        if "data" in tensor:
            chunks.append(None)
            continue
        name = tensor.get("name")
        size = _binary_data_size(tensor)
        if size is None:
            raise ProtocolError(
                f"{kind} '{name}' has neither 'data' nor an integer parameters.{BINARY_DATA_SIZE}",
                "bad_request",
            )
        if offset + size > len(binary):
            raise ProtocolError(
                f"{kind} '{name}' declares {BINARY_DATA_SIZE} {size} but only "
                f"{len(binary) - offset} bytes remain in the body",
                "bad_request",
            )
        chunks.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary) - offset} bytes follow the JSON that no {kind}'s {BINARY_DATA_SIZE} "
            "accounts for",
            "bad_request",
        )
    return chunks


def _binary_data_size(tensor: Mapping[str, Any]) -> int | None:
    """The tensor's ``parameters.binary_data_size``; None unless a non-negative integer."""
    parameters = tensor.get("parameters")
    size = parameters.get(BINARY_DATA_SIZE) if isinstance(parameters, Mapping) else None
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        return size
    return None


def _declared_binary_size(document: Any) -> int:
    """The binary data a v2 header declares over its ``inputs`` and ``outputs``, in bytes."""
    if not isinstance(document, dict):
        return 0
    total = 0
    for key in ("inputs", "outputs"):
        tensors = document.get(key)
        for tensor in tensors if isinstance(tensors, list) else ():
            if isinstance(tensor, dict) and "data" not in tensor:
                total += _binary_data_size(tensor) or 0
    return total


def v1_instance_b64(instance: object) -> str | None:
    """The base64 text of a v1 instance ``{"image_bytes": {"b64": ...}}`` or ``{"b64": ...}``.

    Returns:
        The text, not yet decoded (see :func:`decode_b64`); None for any other instance.
    """
    if isinstance(instance, dict) and isinstance(instance.get(BYTES_INPUT), dict):
        instance = instance[BYTES_INPUT]
    if isinstance(instance, dict) and isinstance(instance.get("b64"), str):
        return instance["b64"]
    return None


def v1_request(images: Iterable[bytes]) -> dict[str, Any]:
    """A v1 predict body of encoded image files, as JSON to serialise.

    Returns:
        ``{"instances": [{"image_bytes": {"b64": "<base64>"}}, ...]}``, one instance per image.
    """
    return {
        "instances": [
            {BYTES_INPUT: {"b64": base64.b64encode(data).decode("ascii")}} for data in images
        ]
    }


def v1_response(predictions: Iterable[Mapping[str, object]]) -> dict[str, Any]:
    """A v1 predict answer, as JSON to serialise: ``{"predictions": [...]}``.

    Args:
        predictions: One ``{"label", "score", "probabilities"}`` object per image
            (``garbage.core.classifier.Prediction.to_dict``).
    """
    return {"predictions": list(predictions)}


def v2_pixels_body(pixels: np.ndarray) -> tuple[bytes, int]:
    """A v2 infer body of ``uint8 [N, H, W, 3]`` pixels in the binary tensor extension.

    Returns:
        The body (the JSON header, then the raw pixels) and the header's length, the value of
        :data:`INFERENCE_HEADER`.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    header = {
        "inputs": [
            {
                "name": PIXELS_INPUT,
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "parameters": {BINARY_DATA_SIZE: pixels.nbytes},
            }
        ]
    }
    encoded = json.dumps(header).encode()
    return encoded + pixels.tobytes(), len(encoded)


def classes_parameter(classes: Sequence[str]) -> dict[str, str]:
    """The parameters of the probabilities output: its column names, ``{"classes": "[...]"}``."""
    return {CLASSES_PARAMETER: json.dumps(list(classes))}
