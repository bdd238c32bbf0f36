"""The model's own REST routes, registered in front of KServe's generic ones on KServe's app.

Why our routes and not KServe's for ``POST /v1/models/<name>:predict`` and
``POST /v2/models/<name>/infer`` (KServe 0.21, measured on this project's machines):

* KServe's v2 route makes FastAPI validate the JSON body into pydantic models before any model
  code runs: about 44 ms p50 for one 3x224x224 FP32 tensor, a cost a model's ``preprocess``
  cannot avoid because it is paid before ``preprocess`` is called.
* KServe's binary-data extension decoder (``InferRequest.from_bytes``) rebuilds every tensor as
  a Python list element by element and turns ``BYTES`` into UTF-8 text, so a JPEG sent the way
  tritonclient sends it by default answers 500.
* KServe's routes read the whole body before any size check.

Our routes parse with orjson only (:func:`serving.payload.parse_v2_rest`), keep binary tensors as
bytes (one ``np.frombuffer``), read at most ``max_payload_bytes`` of body, and then call the
model through ``kserve.Model.__call__`` exactly as KServe's routes do, so KServe's exception
handlers (``InvalidInput`` -> 400), latency histograms and response encoding
(``InferResponse.to_rest``) still apply. They are added only for this model's name; every other
route (health, readiness, v1 model status, other models, ``/metrics``) and the gRPC server stay
KServe's. Starlette matches routes in registration order, and KServe registers its own when the
server starts, after ours.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import ModelNotReady

from garbage.core.protocol import INFERENCE_HEADER
from serving.errors import InputRejected
from serving.metrics import serving_metrics
from serving.model import GarbageClassifierModel
from serving.payload import parse_v2_rest

DRAIN_FACTOR = 4
"""An over-limit body is read (and dropped) up to this many times the limit, so that the client
gets the 400 instead of a connection reset; beyond that the server stops reading."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes.

    Raises:
        InputRejected: The declared or actual body is over ``limit``.
    """
    declared = request.headers.get("content-length", "")
    too_large = InputRejected(
        f"the request body is over the limit of {limit} bytes; send fewer or smaller images",
        "payload_too_large",
    )
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


def install_routes(app: FastAPI, model: GarbageClassifierModel) -> None:
    """Put the model's v1 predict, v2 infer and v2 metadata routes first on ``app``.

    Routes already there for the same paths (an earlier model of that name) are replaced; ours
    go in front of KServe's generic ``{model_name}`` routes whenever those were registered.
    """
    name = model.name
    paths = {
        f"/v1/models/{name}:predict": ("POST", _v1_predict(model)),
        f"/v2/models/{name}/infer": ("POST", _v2_infer(model)),
        f"/v2/models/{name}": ("GET", _v2_metadata(model)),
    }
    routes = app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", None) not in paths]
    for path, (method, endpoint) in paths.items():
        app.add_api_route(path, endpoint, methods=[method], response_model=None, tags=[model.name])
        routes.insert(0, routes.pop())


def _json(content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=headers,
    )


def _count(model: GarbageClassifierModel, error: InputRejected) -> None:
    serving_metrics().rejected.labels(model.name, error.kind).inc()


def _check_ready(model: GarbageClassifierModel) -> None:
    if not model.ready:
        raise ModelNotReady(model.name)


def _v1_predict(model: GarbageClassifierModel) -> Any:
    async def predict(request: Request) -> Response:
        """KServe v1 predict: ``{"instances": [{"image_bytes": {"b64": ...}}]}``."""
        _check_ready(model)
        try:
            body = await read_body(request, model.settings.max_payload_bytes)
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise InputRejected(f"the body is not valid JSON: {e}", "malformed_json") from e
        except InputRejected as e:
            _count(model, e)
            raise
        response, response_headers = await model(document, headers=dict(request.headers))
        return _json(response, response_headers)

    return predict


def _v2_infer(model: GarbageClassifierModel) -> Any:
    async def infer(request: Request) -> Response:
        """Open inference protocol infer, JSON or binary-data extension."""
        _check_ready(model)
        try:
            body = await read_body(request, model.settings.max_payload_bytes)
            infer_request = parse_v2_rest(body, request.headers.get(INFERENCE_HEADER), model.name)
        except InputRejected as e:
            _count(model, e)
            raise
        response, response_headers = await model(infer_request, headers=dict(request.headers))
        content, json_length = response.to_rest()
        if json_length is None:
            return _json(content, response_headers)
        response_headers[INFERENCE_HEADER] = str(json_length)
        return Response(content, media_type="application/octet-stream", headers=response_headers)

    return infer


def _v2_metadata(model: GarbageClassifierModel) -> Any:
    async def metadata() -> Response:
        """v2 model metadata, plus ``parameters``: classes, input size, limits."""
        return _json(
            {
                "name": model.name,
                "platform": "",
                "inputs": model.get_input_types(),
                "outputs": model.get_output_types(),
                "parameters": model.describe(),
            }
        )

    return metadata
