"""Read images out of protocol payloads, checking everything a client can get wrong.

Accepted inputs (see serving/README.md):

* v1 REST: ``{"instances": [{"image_bytes": {"b64": "<base64 JPEG/PNG>"}}, ...]}`` (an instance
  may also be the bare ``{"b64": ...}`` object).
* v2 (REST and gRPC): exactly one input, either ``image_bytes`` (``BYTES``, shape ``[N]`` or
  ``[N, 1]``: encoded files) or ``image`` (``UINT8``, shape ``[N, H, W, 3]``: RGB pixels of any
  size, resized like the shared preprocessing). A ``BYTES`` element that arrives as a JSON string
  is base64 text (JSON cannot carry raw bytes); one that arrives as bytes (gRPC
  ``bytes_contents``/``raw_input_contents``, or REST's binary-data extension) is the raw file.

The wire format itself (names, base64, ``BYTES`` serialisation, the binary extension) is
:mod:`garbage.core.protocol`'s; this module adds serving's checks and KServe's request types.
Every problem raises :class:`serving.errors.InputRejected` with a message saying what is wrong;
values the client sent are quoted at most :data:`QUOTE_LIMIT` characters long.

The REST routes run :func:`parse_v1_body` and :func:`parse_v2_body` in a thread, off the event
loop: they parse, check and base64-decode a whole body into a :class:`Parsed` request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from garbage.core.preprocessing import InvalidImageError, check_dimensions
from garbage.core.protocol import (
    BYTES_INPUT,
    OUTPUT_NAMES,
    PIXELS_INPUT,
    decode_b64,
    split_at_header_length,
    tensor_chunks,
    unpack_bytes_tensor,
    v1_instance_b64,
)
from serving.errors import InputRejected, as_rejection
from serving.settings import ServingSettings

QUOTE_LIMIT = 64
"""Longest client-sent name quoted back in a message."""
MAX_ID_LENGTH = 256
"""Longest v2 request ``id`` accepted (it is echoed in the response and logs)."""

_V1_INSTANCE = f'{{"{BYTES_INPUT}": {{"b64": "<base64 JPEG or PNG>"}}}}'
_INPUT_HINT = (
    f"send exactly one input: '{BYTES_INPUT}' (BYTES, shape [N], encoded JPEG/PNG files) "
    f"or '{PIXELS_INPUT}' (UINT8, shape [N, H, W, 3], RGB pixels)"
)


@dataclass(frozen=True)
class Parsed:
    """A REST request read and checked off the event loop, ready for the model's preprocess.

    Attributes:
        protocol: ``"v1"`` or ``"v2"``.
        inputs: The encoded files, or the ``uint8 [N, H, W, 3]`` pixels.
        request: The v2 request (its id, requested outputs, binary flags); None for v1.
    """

    protocol: str
    inputs: list[bytes] | np.ndarray
    request: InferRequest | None = None


def json_container_budget(settings: ServingSettings) -> int:
    """Most JSON objects and arrays a request body may hold.

    A v1 body needs two objects per image, a v2 body one array per image at most (``BYTES``
    as ``[N, 1]``) plus a dozen for its structure, so ``4 x max_instances + 64`` leaves room for
    ids and parameters while a body of ``{}, {}, ...`` or of nested pixel lists is refused before
    it is parsed (parsing builds a Python object per container: 20 bytes of JSON can cost 1 KB).
    """
    return 4 * settings.max_instances + 64


def quoted(value: object) -> str:
    """``value`` in single quotes for a message (JSON unless a string), cut to 64 characters."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = str(value)
    return f"'{text[:QUOTE_LIMIT]}...'" if len(text) > QUOTE_LIMIT else f"'{text}'"


def parse_v1_body(body: bytes, settings: ServingSettings) -> Parsed:
    """A v1 ``:predict`` body, parsed, checked and base64-decoded.

    Raises:
        InputRejected: Malformed JSON, or anything :func:`v1_images` refuses.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InputRejected(f"the body is not valid JSON: {e}", "malformed_json") from e
    return Parsed("v1", v1_images(document, settings))


def parse_v2_body(
    body: bytes, json_length: str | None, model_name: str, settings: ServingSettings
) -> Parsed:
    """A v2 REST infer body (JSON or binary extension), parsed and checked.

    Raises:
        InputRejected: Anything :func:`parse_v2_rest` or :func:`v2_images` refuses.
    """
    request = parse_v2_rest(body, json_length, model_name)
    return Parsed("v2", v2_images(request, settings), request)


def v1_images(body: Any, settings: ServingSettings) -> list[bytes]:
    """The encoded images of a v1 ``:predict`` body, base64-decoded.

    Raises:
        InputRejected: Wrong structure, too many instances or invalid base64.
    """
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InputRejected(
            f'the body must be a JSON object {{"instances": [{_V1_INSTANCE}, ...]}}', "bad_request"
        )
    instances = body["instances"]
    if not instances:
        raise InputRejected('"instances" is empty: send at least one image', "bad_request")
    _check_count(len(instances), settings)
    images = []
    for index, instance in enumerate(instances):
        text = v1_instance_b64(instance)
        if text is None:
            raise InputRejected(f"instance {index} must be {_V1_INSTANCE}", "bad_request")
        _check_encoded_size(len(text), f"instance {index}", settings)
        with as_rejection():
            images.append(decode_b64(text, f"instance {index}"))
    return images


def v2_images(request: InferRequest, settings: ServingSettings) -> list[bytes] | np.ndarray:
    """The images of a v2 request: encoded files (``list[bytes]``) or ``uint8 [N, H, W, 3]`` pixels.

    Raises:
        InputRejected: Wrong input name, datatype, shape or contents, too many images, or an
            unknown requested output.
    """
    if len(request.inputs) != 1:
        raise InputRejected(f"got {len(request.inputs)} inputs; {_INPUT_HINT}", "bad_request")
    for output in request.request_outputs or ():
        if output.name not in OUTPUT_NAMES:
            raise InputRejected(
                f"unknown output {quoted(output.name)}; this model's outputs are "
                f"{', '.join(OUTPUT_NAMES)}",
                "bad_tensor_name",
            )
    tensor = request.inputs[0]
    if tensor.name == BYTES_INPUT:
        _expect_datatype(tensor, "BYTES")
        return _encoded_images(tensor, settings)
    if tensor.name == PIXELS_INPUT:
        _expect_datatype(tensor, "UINT8")
        return _pixel_tensor(tensor, settings)
    raise InputRejected(f"unknown input {quoted(tensor.name)}; {_INPUT_HINT}", "bad_tensor_name")


def grpc_payload_bytes(request: InferRequest) -> int:
    """Size of a gRPC request's tensor data (raw contents plus typed contents)."""
    total = 0
    for tensor in request.inputs:
        raw = tensor._raw_data  # set by KServe from raw_input_contents (no public accessor)
        if raw is not None:
            total += len(raw)
        elif tensor.data is not None:
            total += sum(len(v) if isinstance(v, bytes | str) else 1 for v in tensor.data)
    return total


def parse_v2_rest(body: bytes, json_length: str | None, model_name: str) -> InferRequest:
    """Decode a v2 REST infer body (JSON, optionally followed by binary tensor data).

    This replaces KServe's pydantic validation and ``InferRequest.from_bytes`` on our model's
    route: orjson parses the JSON once, tensors stay as received (a JSON list, or the binary
    bytes as-is), and the binary-data extension carries raw image files (KServe's own decoder
    tries to turn binary ``BYTES`` into UTF-8 text and fails on JPEGs).

    Args:
        body: The request body.
        json_length: The :data:`~garbage.core.protocol.INFERENCE_HEADER` header, when binary
            data follows.
        model_name: The model's name, stored in the request.

    Raises:
        InputRejected: Malformed JSON, wrong structure or binary sizes that do not add up.
    """
    with as_rejection():
        header, binary = split_at_header_length(body, json_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise InputRejected(f"the body is not valid JSON: {e}", "malformed_json") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputRejected(
            'the body must be a v2 inference request {"inputs": [{"name", "shape", "datatype", '
            '"data"}]}',
            "bad_request",
        )
    inputs = [_rest_input(spec, index) for index, spec in enumerate(doc["inputs"])]
    with as_rejection():
        raws = tensor_chunks(doc["inputs"], binary)
    request_id = doc.get("id")
    parameters = doc.get("parameters")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH
    ):
        raise InputRejected(
            f'"id" must be a string of at most {MAX_ID_LENGTH} characters', "bad_request"
        )
    if parameters is not None and not isinstance(parameters, dict):
        raise InputRejected('"parameters" must be an object', "bad_request")
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=request_id,
        raw_inputs=raws if any(r is not None for r in raws) else None,
        parameters=parameters,
        request_outputs=_requested_outputs(doc.get("outputs")),
    )


def _rest_input(spec: Any, index: int) -> InferInput:
    if not isinstance(spec, dict):
        raise InputRejected(f"input {index} must be an object", "bad_request")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    parameters = spec.get("parameters") or {}
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InputRejected(
            f"input {index} needs a string 'name' and 'datatype' (e.g. \"name\": "
            f'"{BYTES_INPUT}", "datatype": "BYTES")',
            "bad_request",
        )
    if not isinstance(shape, list) or not all(_is_dimension(d) for d in shape):
        raise InputRejected(
            f"input {quoted(name)} needs a 'shape' of non-negative integers (no booleans, "
            f"floats or strings), got {quoted(shape)}",
            "bad_shape",
        )
    if not isinstance(parameters, dict):
        raise InputRejected(f"input {quoted(name)}: 'parameters' must be an object", "bad_request")
    tensor = InferInput(name=name, shape=shape, datatype=datatype, parameters=parameters)
    if "data" in spec:
        if not isinstance(spec["data"], list):
            raise InputRejected(f"input {quoted(name)}: 'data' must be a list", "bad_request")
        tensor.data = spec["data"]
    return tensor


def _is_dimension(value: object) -> bool:
    """A JSON integer >= 0 (``true`` is an int to Python, never a dimension)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _requested_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InputRejected('"outputs" must be a list of {"name": ...} objects', "bad_request")
    for o in outputs:
        if not isinstance(o.get("parameters") or {}, dict):
            raise InputRejected(
                f"output {quoted(o['name'])}: 'parameters' must be an object", "bad_request"
            )
    return [
        RequestedOutput(name=o["name"], parameters=o.get("parameters") or {}) for o in outputs
    ] or None


def _check_count(count: int, settings: ServingSettings) -> None:
    if count > settings.max_instances:
        raise InputRejected(
            f"{count} images in one request, over the limit of {settings.max_instances}; split the "
            "request",
            "too_many_instances",
        )


def _check_encoded_size(length: int, where: str, settings: ServingSettings) -> None:
    """Refuse base64 text that decodes to more than ``max_image_bytes`` before decoding it."""
    if length > 4 * math.ceil(settings.max_image_bytes / 3):
        raise InputRejected(
            f"{where} is {length} characters of base64, more than an image of at most "
            f"{settings.max_image_bytes} bytes needs; send a smaller file",
            "file_too_large",
        )


def _check_file_size(length: int, where: str, settings: ServingSettings) -> None:
    if length > settings.max_image_bytes:
        raise InputRejected(
            f"{where} is {length} bytes, over the limit of {settings.max_image_bytes} bytes per "
            "image; send a smaller file",
            "file_too_large",
        )


def _expect_datatype(tensor: InferInput, datatype: str) -> None:
    if tensor.datatype != datatype:
        raise InputRejected(
            f"input {quoted(tensor.name)} must have datatype {datatype}, got "
            f"{quoted(tensor.datatype)}",
            "bad_dtype",
        )


def _encoded_images(tensor: InferInput, settings: ServingSettings) -> list[bytes]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InputRejected(
            f"input '{BYTES_INPUT}' must have shape [N] or [N, 1] with N >= 1, got {quoted(shape)}",
            "bad_shape",
        )
    count = shape[0]
    _check_count(count, settings)
    raw = tensor._raw_data  # binary extension / gRPC raw_input_contents (no public accessor)
    if raw is not None:
        with as_rejection():
            elements = unpack_bytes_tensor(raw)
    else:
        elements = tensor.data or []
        if elements and isinstance(elements[0], list):  # nested JSON for shape [N, 1]
            elements = [e for row in elements for e in (row if isinstance(row, list) else [row])]
    if len(elements) != count:
        raise InputRejected(
            f"input '{BYTES_INPUT}' has shape {quoted(shape)} but {len(elements)} elements",
            "bad_shape",
        )
    images = []
    for index, element in enumerate(elements):
        where = f"element {index} of '{BYTES_INPUT}'"
        if isinstance(element, str):
            _check_encoded_size(len(element), where, settings)
            with as_rejection():
                images.append(decode_b64(element, f"{where} (JSON BYTES are base64)"))
        elif isinstance(element, bytes):
            _check_file_size(len(element), where, settings)
            images.append(element)
        else:
            raise InputRejected(
                f"element {index} of '{BYTES_INPUT}' must be a base64 string, got "
                f"{type(element).__name__}",
                "bad_tensor_data",
            )
    return images


def _pixel_tensor(tensor: InferInput, settings: ServingSettings) -> np.ndarray:
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise InputRejected(
            f"input '{PIXELS_INPUT}' must have shape [N, H, W, 3] (RGB, N, H, W >= 1), got "
            f"{quoted(shape)}",
            "bad_shape",
        )
    _check_count(shape[0], settings)
    try:
        check_dimensions(
            shape[2],
            shape[1],
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            max_aspect_ratio=settings.max_aspect_ratio,
            what=f"each image of '{PIXELS_INPUT}'",
        )
    except InvalidImageError as e:
        raise InputRejected(str(e), e.reason) from e
    _check_file_size(shape[1] * shape[2] * 3, f"each image of '{PIXELS_INPUT}'", settings)
    expected = math.prod(shape)
    raw = tensor._raw_data
    if raw is not None:
        if len(raw) != expected:
            raise InputRejected(
                f"input '{PIXELS_INPUT}' has {len(raw)} bytes of data but shape "
                f"{quoted(shape)} needs {expected}",
                "bad_shape",
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    data = tensor.data if isinstance(tensor.data, list) else []
    if data and not isinstance(data[0], list) and len(data) != expected:
        raise InputRejected(
            f"input '{PIXELS_INPUT}' has {len(data)} values but shape {quoted(shape)} needs "
            f"{expected}",
            "bad_shape",
        )
    try:
        values = np.asarray(tensor.data)
    except ValueError as e:  # ragged nesting
        raise InputRejected(
            f"input '{PIXELS_INPUT}': data is not a regular array: {e}", "bad_tensor_data"
        ) from e
    if values.size != expected:
        raise InputRejected(
            f"input '{PIXELS_INPUT}' has {values.size} values but shape {quoted(shape)} needs "
            f"{expected}",
            "bad_shape",
        )
    if values.dtype.kind not in "iu":
        raise InputRejected(
            f"input '{PIXELS_INPUT}' (UINT8) must hold integers 0..255, got {values.dtype} values",
            "bad_dtype",
        )
    if values.min() < 0 or values.max() > 255:
        raise InputRejected(
            f"input '{PIXELS_INPUT}' (UINT8) has values outside 0..255", "bad_tensor_data"
        )
    return values.astype(np.uint8, copy=False).reshape(shape)
