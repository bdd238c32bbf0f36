"""Read the images out of logged inference requests and the predictions out of logged responses.

Request payloads (one image per item, in order):

* Open Inference Protocol v1: ``{"instances": [...]}`` where an instance is
  ``{"image_bytes": {"b64": "..."}}`` (TF-Serving convention), ``{"b64": "..."}``, a bare base64
  string, or nested ``[H][W][3]`` pixel values.
* Open Inference Protocol v2: ``{"inputs": [{"name", "shape", "datatype", "data"}]}`` with a
  ``BYTES`` tensor of base64-encoded files (shape ``[N]`` or ``[N, 1]``) or a ``UINT8`` tensor of
  pixels (``[N, H, W, 3]`` or ``[H, W, 3]``), in JSON or with the binary tensor extension (a JSON
  header followed by the raw tensor bytes; ``parameters.binary_data_size`` on the input).
* A bare ``image/*`` body.

Response payloads: v1 ``{"predictions": [...]}`` with per-item objects (``label``/``class``,
``score``, ``probabilities``), labels, class indices or probability lists; v2 ``{"outputs": [...]}``
with a ``BYTES`` label tensor and/or a ``[N, C]`` probability tensor and/or a ``[N]`` score tensor.

The wire format (base64, ``BYTES`` serialisation, the binary extension) is
:mod:`garbage.core.protocol`'s; the readers here accept more shapes than the model server does,
since logged payloads may come from other clients and servers.

Logged payloads are untrusted: JSON is measured before it is parsed (:func:`check_json`: at most
:data:`MAX_JSON_DEPTH` levels and :data:`MAX_JSON_CONTAINERS` objects and arrays, so neither the
parser's recursion nor its memory depends on the sender), shapes and numbers are checked before
arrays are built, and no more than :data:`MAX_ITEMS` items are ever materialised.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from garbage.core.protocol import (
    BYTES_INPUT,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORE,
    PIXELS_INPUT,
    ProtocolError,
    decode_b64,
    split_leading_json,
    tensor_chunks,
    unpack_bytes_tensor,
)

MAX_ITEMS = 1024
#: Deepest nesting of JSON objects and arrays taken (a v2 pixel tensor in a batched CloudEvent
#: needs 9).
MAX_JSON_DEPTH = 32
#: Most JSON objects and arrays in one document: an empty one costs the parser 56-64 bytes for
#: 2-3 bytes of text, so this bounds its memory (about 130 MB) whatever the body holds. Serving's
#: largest body of JSON pixels, 16 MiB, holds fewer than 2 million.
MAX_JSON_CONTAINERS = 2_000_000
#: One JSON string (``"..."`` with its escapes) or one bracket.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_JSON_WHITESPACE = b" \t\n\r"


class PayloadError(ValueError):
    """The payload as a whole cannot be read; the message says what was expected."""


def check_json(body: bytes, what: str = "the JSON") -> None:
    """Measure the JSON document ``body`` starts with, before anything parses it.

    Only the leading document is scanned (what follows, such as the binary tensor data of v2's
    binary extension, is not JSON); a body that does not start with an object or an array has
    nothing to measure.

    Args:
        body: The bytes, starting with the JSON document (leading whitespace allowed).
        what: What the document is, to start the message.

    Raises:
        PayloadError: Nested deeper than :data:`MAX_JSON_DEPTH`, or more than
            :data:`MAX_JSON_CONTAINERS` objects and arrays.
    """
    start = len(body) - len(body.lstrip(_JSON_WHITESPACE))
    if body[start : start + 1] not in (b"{", b"["):
        return
    depth = containers = 0
    for match in _JSON_TOKEN.finditer(body, start):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
            containers += 1
            if depth > MAX_JSON_DEPTH:
                raise PayloadError(
                    f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; "
                    "send flat objects and arrays"
                )
            if containers > MAX_JSON_CONTAINERS:
                raise PayloadError(
                    f"{what} holds more than {MAX_JSON_CONTAINERS} objects and arrays; "
                    "send fewer items per request"
                )
        elif token in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                return


def load_json(body: bytes, what: str = "the JSON") -> Any:
    """Parse a whole body as JSON after :func:`check_json`.

    Raises:
        PayloadError: Too deep or too many containers, not UTF-8, or not JSON.
    """
    check_json(body, what)
    try:
        return json.loads(body)
    except ValueError as e:  # also an integer of more than 4300 digits, or text not UTF-8
        raise PayloadError(f"{what} is not valid JSON: {brief_error(e)}") from e


def _leading_json(body: bytes) -> tuple[Any, bytes]:
    check_json(body, "the payload")
    try:
        return split_leading_json(body)
    except ProtocolError:
        raise
    except ValueError as e:  # an integer of more than 4300 digits
        raise PayloadError(f"the payload is not usable JSON: {brief_error(e)}") from e


def brief_error(error: Exception) -> str:
    """The first line of an error's message, at most 200 characters (it may quote the input)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


@dataclass
class ImageItem:
    """One image of a request: encoded bytes or pixels, or why neither could be read."""

    data: bytes | None = None
    pixels: np.ndarray | None = None
    error: str | None = None  # short reason tag
    message: str = ""


@dataclass
class PredictionItem:
    """One item of a response."""

    label: str | None
    score: float | None = None
    probabilities: dict[str, float] | None = field(default=None)


@dataclass
class RequestPayload:
    """What a request carried."""

    protocol: str
    items: list[ImageItem]


@dataclass
class ResponsePayload:
    """What a response carried."""

    protocol: str
    items: list[PredictionItem]
    model_name: str = ""
    model_version: str = ""


def _image_from_b64(value: object) -> ImageItem:
    if not isinstance(value, str):
        return ImageItem(
            error="bad_instance", message=f"expected a base64 string, got {type(value).__name__}"
        )
    try:
        return ImageItem(data=decode_b64(value.strip(), "the image"))
    except ProtocolError:
        return ImageItem(error="bad_base64", message="the image is not valid base64")


def _pixels(value: object, shape: Sequence[int] | None = None) -> ImageItem:
    try:
        array = np.asarray(value)
        if shape is not None:
            array = array.reshape(shape)
    except (ValueError, TypeError) as e:
        return ImageItem(error="bad_pixels", message=f"pixel data do not form an array: {e}")
    if array.ndim != 3 or array.shape[2] != 3 or not np.issubdtype(array.dtype, np.number):
        return ImageItem(
            error="bad_pixels", message=f"expected [H, W, 3] pixels, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        return ImageItem(error="bad_pixels", message="pixel values must be finite numbers")
    if array.min(initial=0) < 0 or array.max(initial=0) > 255:
        return ImageItem(error="bad_pixels", message="pixel values must lie in 0..255")
    return ImageItem(pixels=array.astype(np.uint8))


def _v1_instance(instance: object) -> ImageItem:
    if isinstance(instance, dict):
        for key in (BYTES_INPUT, PIXELS_INPUT, "bytes"):
            if key in instance:
                inner = instance[key]
                if isinstance(inner, dict) and "b64" in inner:
                    return _image_from_b64(inner["b64"])
                if isinstance(inner, str):
                    return _image_from_b64(inner)
                return _pixels(inner)
        if "b64" in instance:
            return _image_from_b64(instance["b64"])
        return ImageItem(
            error="bad_instance",
            message=f"instance keys {sorted(instance)[:5]} hold no image (use {BYTES_INPUT}.b64)",
        )
    if isinstance(instance, str):
        return _image_from_b64(instance)
    if isinstance(instance, list):
        return _pixels(instance)
    return ImageItem(
        error="bad_instance", message=f"unsupported instance of type {type(instance).__name__}"
    )


def _leaves(values: object) -> Iterator[object]:
    """The scalars of nested lists, depth first (iteratively: depth is the sender's choice)."""
    stack: list[Iterator[object]] = [iter([values])]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


def _flatten(values: object, limit: int, what: str) -> list[object]:
    """The scalars of nested lists; at most ``limit`` of them.

    Raises:
        PayloadError: More than ``limit`` values.
    """
    out: list[object] = []
    for value in _leaves(values):
        if len(out) == limit:
            raise PayloadError(f"{what} holds more than {limit} values")
        out.append(value)
    return out


def _shape(tensor: dict[str, Any], what: str) -> list[int]:
    """A tensor's ``shape``: a list of non-negative integers (empty when absent).

    Raises:
        PayloadError: Anything else, or more dimensions than any image tensor has.
    """
    shape = tensor.get("shape")
    if shape is None:
        return []
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise PayloadError(f"{what}'s shape must be a list of non-negative integers")
    return shape


def _number(value: object, what: str) -> float:
    """A finite JSON number as a float.

    Raises:
        PayloadError: Not a number (booleans are not), or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as e:
        raise PayloadError(f"{what} is out of range") from e
    if not math.isfinite(number):
        raise PayloadError(f"{what} must be a finite number")
    return number


def _numbers(values: list[object], what: str) -> np.ndarray:
    """JSON numbers as a float64 array.

    Raises:
        PayloadError: A value is not a finite number.
    """
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{what} must hold numbers, got {type(value).__name__}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError as e:
        raise PayloadError(f"{what} holds a number out of range") from e
    if not np.isfinite(array).all():
        raise PayloadError(f"{what} must hold finite numbers")
    return array


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise PayloadError(f"{what} must hold finite numbers")
    return array


def _tensors(tensors: list[object], kind: str) -> list[dict[str, Any]]:
    objects = [tensor for tensor in tensors if isinstance(tensor, dict)]
    if len(objects) != len(tensors):
        raise PayloadError(f"each v2 {kind} must be an object with name, shape, datatype and data")
    return objects


def _v2_inputs(inputs: list[object], binary: bytes) -> list[ImageItem]:
    tensors = _tensors(inputs, "input")
    for tensor, chunk in zip(tensors, tensor_chunks(tensors, binary), strict=True):
        datatype = str(tensor.get("datatype", "")).upper()
        what = f"input '{str(tensor.get('name', ''))[:100]}'"
        shape = _shape(tensor, what)
        if datatype == "BYTES":
            if chunk is not None:
                elements = unpack_bytes_tensor(chunk)
                _check_count(len(elements), "images")
                return [ImageItem(data=b) for b in elements]
            values = _flatten(tensor.get("data", []), MAX_ITEMS, f"{what}'s data")
            return [_image_from_b64(v) for v in values]
        if datatype == "UINT8":
            if len(shape) == 3:
                shape = [1, *shape]
            if len(shape) != 4 or shape[3] != 3:
                raise PayloadError(f"a UINT8 image input needs shape [N, H, W, 3], got {shape}")
            _check_count(shape[0], "images")
            size = math.prod(shape)
            if chunk is not None:
                count = len(chunk)
            else:
                values = _flatten(tensor.get("data", []), size, f"{what} of shape {shape}")
                count = len(values)
            if count != size:
                raise PayloadError(f"UINT8 input has {count} values for shape {shape}")
            flat = np.frombuffer(chunk, dtype=np.uint8) if chunk is not None else np.asarray(values)
            batch = flat.reshape(shape)
            return [_pixels(image) for image in batch]
    raise PayloadError(
        "no BYTES or UINT8 input among the v2 inputs; expected encoded images or pixels"
    )


def _check_count(count: int, what: str) -> None:
    if count > MAX_ITEMS:
        raise PayloadError(f"more than {MAX_ITEMS} {what} in one payload")


def parse_request(body: bytes, content_type: str = "") -> RequestPayload:
    """Extract the images of a logged inference request.

    Args:
        body: The request payload as logged.
        content_type: Its content type (``image/*`` means a bare image file).

    Returns:
        The protocol and one :class:`ImageItem` per image, in request order.

    Raises:
        PayloadError: Not a v1/v2 image request, JSON over the limits of :func:`check_json`,
            wrongly typed fields, or more than :data:`MAX_ITEMS` items.
    """
    try:
        return _request(body, content_type)
    except ProtocolError as e:
        raise PayloadError(str(e)) from e


def _request(body: bytes, content_type: str) -> RequestPayload:
    if content_type.lower().startswith("image/"):
        return RequestPayload("raw", [ImageItem(data=body)])
    if not body:
        raise PayloadError("the request payload is empty")
    obj, binary = _leading_json(body)
    if not isinstance(obj, dict):
        raise PayloadError(
            "the request payload must be a JSON object with 'instances' (v1) or 'inputs' (v2)"
        )
    if "instances" in obj:
        instances = obj["instances"]
        if not isinstance(instances, list):
            raise PayloadError("'instances' must be a list")
        _check_count(len(instances), "images")
        protocol, items = "v1", [_v1_instance(i) for i in instances]
    elif "inputs" in obj:
        if not isinstance(obj["inputs"], list) or not obj["inputs"]:
            raise PayloadError("'inputs' must be a non-empty list of tensors")
        protocol, items = "v2", _v2_inputs(obj["inputs"], binary)
    else:
        raise PayloadError("the request payload has neither 'instances' (v1) nor 'inputs' (v2)")
    if len(items) > MAX_ITEMS:
        raise PayloadError(f"more than {MAX_ITEMS} images in one request")
    return RequestPayload(protocol, items)


def _prediction(value: object, classes: Sequence[str]) -> PredictionItem:
    if isinstance(value, dict):
        label = next(
            (
                value[k]
                for k in (OUTPUT_LABEL, "class", "predicted_label", "prediction")
                if k in value
            ),
            None,
        )
        score = next(
            (value[k] for k in (OUTPUT_SCORE, "confidence", "probability") if k in value), None
        )
        probs = next(
            (value[k] for k in (OUTPUT_PROBABILITIES, "probs", "scores") if k in value), None
        )
        probabilities = None
        if isinstance(probs, dict):
            probabilities = {str(k): _number(v, "a probability") for k, v in probs.items()}
        elif isinstance(probs, list) and len(probs) == len(classes):
            probabilities = {
                c: _number(p, "a probability") for c, p in zip(classes, probs, strict=True)
            }
        if label is None and probabilities:
            label = max(probabilities, key=probabilities.__getitem__)
        if isinstance(label, int) and 0 <= label < len(classes):
            label = classes[label]
        if score is None and probabilities and label in probabilities:
            score = probabilities[str(label)]
        return PredictionItem(
            None if label is None else str(label),
            None if score is None else _number(score, "a score"),
            probabilities,
        )
    if isinstance(value, str):
        return PredictionItem(value)
    if isinstance(value, bool):
        return PredictionItem(None)
    if isinstance(value, int):
        return PredictionItem(classes[value] if 0 <= value < len(classes) else str(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and len(value) == len(classes)
    ):
        probabilities = {
            c: _number(p, "a probability") for c, p in zip(classes, value, strict=True)
        }
        label = max(probabilities, key=probabilities.__getitem__)
        return PredictionItem(label, probabilities[label], probabilities)
    return PredictionItem(None)


def _v2_outputs(
    outputs: list[object], binary: bytes, classes: Sequence[str]
) -> list[PredictionItem]:
    labels: list[str] | None = None
    scores: np.ndarray | None = None
    probs: np.ndarray | None = None
    tensors = _tensors(outputs, "output")
    for tensor, chunk in zip(tensors, tensor_chunks(tensors, binary, "output"), strict=True):
        name = str(tensor.get("name", "")).lower()
        datatype = str(tensor.get("datatype", "")).upper()
        what = f"output '{name[:100]}'"
        shape = _shape(tensor, what)
        if datatype == "BYTES":
            if chunk is not None:
                elements = unpack_bytes_tensor(chunk)
                _check_count(len(elements), "predictions")
                labels = [b.decode("utf-8", "replace") for b in elements]
            else:
                values = _flatten(tensor.get("data", []), MAX_ITEMS, f"{what}'s data")
                labels = [str(v) for v in values]
            continue
        limit = MAX_ITEMS * max(len(classes), 1)
        if chunk is not None:
            dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}.get(datatype)
            if dtype is None:
                continue
            if len(chunk) % np.dtype(dtype).itemsize:
                raise PayloadError(f"{what} has {len(chunk)} bytes, not a whole number of values")
            if len(chunk) // np.dtype(dtype).itemsize > limit:
                raise PayloadError(f"{what} holds more than {limit} values")
            data = _finite(np.frombuffer(chunk, dtype=dtype).astype(np.float64), what)
        else:
            data = _numbers(_flatten(tensor.get("data", []), limit, f"{what}'s data"), what)
        if len(shape) == 2 and shape[1] == len(classes) and data.size == shape[0] * shape[1]:
            if probs is None or "prob" in name:
                probs = data.reshape(shape)
        elif data.size and ("score" in name or "confidence" in name):
            scores = data.reshape(-1)
        elif data.size and ("label" in name or "class" in name) and datatype.startswith("INT"):
            labels = [classes[int(i)] if 0 <= int(i) < len(classes) else str(int(i)) for i in data]
    n = (
        len(labels)
        if labels is not None
        else (len(probs) if probs is not None else (len(scores) if scores is not None else 0))
    )
    items = []
    for i in range(n):
        probabilities = (
            {c: float(p) for c, p in zip(classes, probs[i], strict=True)}
            if probs is not None and i < len(probs)
            else None
        )
        label = (
            labels[i]
            if labels is not None and i < len(labels)
            else (max(probabilities, key=probabilities.__getitem__) if probabilities else None)
        )
        score = (
            float(scores[i])
            if scores is not None and i < len(scores)
            else (probabilities.get(label) if probabilities and label in probabilities else None)
        )
        items.append(PredictionItem(label, score, probabilities))
    return items


def parse_response(body: bytes, classes: Sequence[str]) -> ResponsePayload:
    """Extract per-item predictions from a logged inference response.

    Args:
        body: The response payload as logged.
        classes: Class names, to name probability columns and class indices.

    Returns:
        The protocol, the items in order, and the model name/version when the payload has them.

    Raises:
        PayloadError: Not a v1 (``predictions``) or v2 (``outputs``) response, JSON over the
            limits of :func:`check_json`, wrongly typed fields or numbers that are not finite,
            or more than :data:`MAX_ITEMS` items.
    """
    try:
        return _response(body, classes)
    except ProtocolError as e:
        raise PayloadError(str(e)) from e


def _response(body: bytes, classes: Sequence[str]) -> ResponsePayload:
    if not body:
        raise PayloadError("the response payload is empty")
    obj, binary = _leading_json(body)
    if not isinstance(obj, dict):
        raise PayloadError("the response payload must be a JSON object")
    if "predictions" in obj:
        predictions = obj["predictions"]
        if not isinstance(predictions, list):
            raise PayloadError("'predictions' must be a list")
        _check_count(len(predictions), "predictions")
        return ResponsePayload("v1", [_prediction(p, classes) for p in predictions])
    if "outputs" in obj:
        if not isinstance(obj["outputs"], list):
            raise PayloadError("'outputs' must be a list of tensors")
        items = _v2_outputs(obj["outputs"], binary, classes)
        _check_count(len(items), "predictions")
        return ResponsePayload(
            "v2",
            items,
            model_name=_model_field(obj.get("model_name"), "model_name"),
            model_version=_model_field(obj.get("model_version"), "model_version"),
        )
    raise PayloadError("the response payload has neither 'predictions' (v1) nor 'outputs' (v2)")


def _model_field(value: object, name: str) -> str:
    """``model_name`` or ``model_version``: a string or a number (``"3"`` or ``3``)."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"'{name}' must be a string, got {type(value).__name__}")
    return str(value)
