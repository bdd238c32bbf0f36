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

Our routes read the body within limits as it streams in (:func:`read_body`: the declared length
first, then the bytes counted, chunked or not, and the JSON's objects and arrays counted before
anything is parsed), parse it with orjson and check and base64-decode it in a thread when it is
large (:func:`serving.payload.parse_v1_body`, :func:`~serving.payload.parse_v2_body`), keep
binary tensors as bytes (one ``np.frombuffer``), and then call the model through
``kserve.Model.__call__`` exactly as KServe's routes do, so KServe's exception handlers
(``InvalidInput`` -> 400), latency histograms and response encoding (``InferResponse.to_rest``)
still apply.

In front of KServe's generic routes go refusals that read no body: the model repository API
(404: there is none, see :mod:`serving.kserve_server`), inference on models this server does not
serve, model versions and explanations (404 with what to call instead). Health, readiness, v1
model status, ``/metrics`` and the gRPC server stay KServe's. Starlette matches routes in
registration order, and KServe registers its own when the server starts, after ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import ModelNotReady
from starlette.requests import ClientDisconnect

from garbage.core.classifier import NonFiniteOutputError
from garbage.core.protocol import INFERENCE_HEADER
from serving.errors import InputRejected
from serving.kserve_server import LIFECYCLE_REFUSAL
from serving.metrics import serving_metrics
from serving.model import GarbageClassifierModel
from serving.payload import Parsed, json_container_budget, parse_v1_body, parse_v2_body, quoted

logger = logging.getLogger(__name__)

DRAIN_FACTOR = 4
"""An over-limit body is read (and dropped) up to this many times the limit, so that the client
gets the 400 instead of a connection reset; beyond that the server stops reading."""
INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (a thread hand-off would cost more than
the parse); larger ones in a thread."""
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def read_body(
    request: Request,
    limit: int,
    *,
    json_limit: int | None = None,
    max_containers: int | None = None,
) -> bytes:
    """The request body, refusing more than ``limit`` bytes or an over-complex JSON header.

    Args:
        request: The request.
        limit: Most bytes of body.
        json_limit: How many leading bytes are JSON (None: all of them); only those are scanned
            for objects and arrays.
        max_containers: Most ``{`` and ``[`` in the JSON (an upper bound of its objects and
            arrays; None: not checked).

    Raises:
        InputRejected: ``payload_too_large`` (declared or actual body over ``limit``),
            ``too_complex`` or ``incomplete_body`` (the client went away or was cut off for
            being too slow).
    """
    declared = request.headers.get("content-length", "")
    too_large = InputRejected(
        f"the request body is over the limit of {limit} bytes; send fewer or smaller images",
        "payload_too_large",
    )
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    if declared.isdigit() and int(declared) > limit:
        problem: InputRejected | None = too_large
    else:
        problem = None
    chunks: list[bytes] = []
    size = containers = 0
    json_left = limit if json_limit is None else json_limit
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if problem is None:
                if size > limit:
                    problem, chunks = too_large, []
                elif max_containers is not None and json_left > 0:
                    scanned = chunk[:json_left] if json_left < len(chunk) else chunk
                    json_left -= len(scanned)
                    containers += scanned.count(b"{") + scanned.count(b"[")
                    if containers > max_containers:
                        problem, chunks = _too_complex(max_containers), []
                if problem is None:
                    chunks.append(chunk)
            if problem is not None and size > DRAIN_FACTOR * limit:
                break
    except ClientDisconnect as e:
        raise InputRejected(
            f"the body ended after {size} bytes: the client disconnected or took too long",
            "incomplete_body",
        ) from e
    if problem is not None:
        raise problem
    return b"".join(chunks)


def _too_complex(max_containers: int) -> InputRejected:
    return InputRejected(
        f"the JSON holds more than {max_containers} objects and arrays, more than a request "
        "within the instance limit needs; send tensor 'data' as one flat list, or use the binary "
        "data extension",
        "too_complex",
    )


def install_routes(app: FastAPI, model: GarbageClassifierModel) -> None:
    """Put the model's routes and the refusals first on ``app``, and the error handlers.

    Routes already there for the same paths (an earlier model of that name) are replaced; ours
    go in front of KServe's generic ``{model_name}`` routes whenever those were registered.
    """
    name = model.name
    specific: list[tuple[str, list[str], Callable[..., Any]]] = [
        (f"/v1/models/{name}:predict", ["POST"], _v1_predict(model)),
        (f"/v2/models/{name}/infer", ["POST"], _v2_infer(model)),
        (f"/v2/models/{name}", ["GET"], _v2_metadata(model)),
        ("/v2/repository/{rest:path}", ANY_METHOD, _refuse_lifecycle),
        ("/v2/models/{model_name}/versions/{rest:path}", ANY_METHOD, _refuse_versions(model)),
        ("/v1/models/{model_name}:explain", ["POST"], _refuse_explain(model)),
        ("/v2/models/{model_name}/infer", ["POST"], _refuse_unknown_model(model)),
        ("/v1/models/{model_name}:predict", ["POST"], _refuse_unknown_model(model)),
    ]
    routes = app.router.routes
    routes[:] = [r for r in routes if not _is_ours(r)]
    for index, (path, methods, endpoint) in enumerate(specific):
        setattr(endpoint, _MARK, True)
        app.add_api_route(path, endpoint, methods=methods, response_model=None, tags=[name])
        routes.insert(index, routes.pop())
    # A subclass's handler wins over KServe's for InvalidInput, which logs a traceback per 400.
    app.add_exception_handler(InputRejected, _rejected_handler)
    app.add_exception_handler(NonFiniteOutputError, _nonfinite_handler)
    app.router.on_startup.append(lambda: _drop_repository_routes(app))


_MARK = "_garbage_route"


def _is_ours(route: object) -> bool:
    return getattr(getattr(route, "endpoint", None), _MARK, False) is True


def _drop_repository_routes(app: FastAPI) -> None:
    """Remove KServe's repository routes (registered at start-up, shadowed by ours anyway)."""
    app.router.routes[:] = [
        r
        for r in app.router.routes
        if _is_ours(r) or not getattr(r, "path", "").startswith("/v2/repository/")
    ]


async def _rejected_handler(_: Request, error: Exception) -> Response:
    assert isinstance(error, InputRejected)
    logger.debug("request rejected (%s): %s", error.kind, error)
    return _json({"error": str(error)}, status=400)


async def _nonfinite_handler(_: Request, error: Exception) -> Response:
    logger.error("the model's outputs are not finite: %s", error)
    return _json(
        {
            "error": "the model produced NaN or infinity for this request: a server error "
            "(counted in garbage_nonfinite_outputs_total); the model needs to be replaced"
        },
        status=500,
    )


def _json(content: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _count(model: GarbageClassifierModel, error: InputRejected) -> None:
    serving_metrics().rejected.labels(model.name, error.kind).inc()


def _check_ready(model: GarbageClassifierModel) -> None:
    if not model.ready:
        raise ModelNotReady(model.name)


async def _parse(body: bytes, parse: Callable[[], Parsed]) -> Parsed:
    if len(body) <= INLINE_PARSE_BYTES:
        return parse()
    return await asyncio.get_running_loop().run_in_executor(None, parse)


def _v1_predict(model: GarbageClassifierModel) -> Any:
    async def predict(request: Request) -> Response:
        """KServe v1 predict: ``{"instances": [{"image_bytes": {"b64": ...}}]}``."""
        _check_ready(model)
        settings = model.settings
        try:
            body = await read_body(
                request,
                settings.max_body_bytes,
                max_containers=json_container_budget(settings),
            )
            parsed = await _parse(body, lambda: parse_v1_body(body, settings))
        except InputRejected as e:
            _count(model, e)
            raise
        response, response_headers = await model(parsed, headers=dict(request.headers))
        return _json(response, response_headers)

    return predict


def _v2_infer(model: GarbageClassifierModel) -> Any:
    async def infer(request: Request) -> Response:
        """Open inference protocol infer, JSON or binary-data extension."""
        _check_ready(model)
        settings = model.settings
        json_length = request.headers.get(INFERENCE_HEADER)
        json_limit = None
        if json_length is not None:  # not an integer: parse_v2_body refuses it before any JSON
            json_limit = int(json_length) if json_length.isdigit() else 0
        try:
            body = await read_body(
                request,
                settings.max_body_bytes,
                json_limit=json_limit,
                max_containers=json_container_budget(settings),
            )
            parsed = await _parse(
                body, lambda: parse_v2_body(body, json_length, model.name, settings)
            )
        except InputRejected as e:
            _count(model, e)
            raise
        response, response_headers = await model(parsed, headers=dict(request.headers))
        content, binary_json_length = response.to_rest()
        if binary_json_length is None:
            return _json(content, response_headers)
        response_headers[INFERENCE_HEADER] = str(binary_json_length)
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


async def _refuse_lifecycle(rest: str) -> Response:
    """The model repository API: not on this server."""
    return _json({"error": LIFECYCLE_REFUSAL}, status=404)


def _not_served(model: GarbageClassifierModel, model_name: str) -> Response:
    return _json(
        {
            "error": f"model {quoted(model_name)} is not served here; this server serves "
            f"'{model.name}' (v1: POST /v1/models/{model.name}:predict, v2: POST "
            f"/v2/models/{model.name}/infer)"
        },
        status=404,
    )


def _refuse_unknown_model(model: GarbageClassifierModel) -> Any:
    async def refuse(model_name: str) -> Response:
        """Inference on a model this server does not have, refused before reading the body."""
        return _not_served(model, model_name)

    return refuse


def _refuse_versions(model: GarbageClassifierModel) -> Any:
    async def refuse(model_name: str, rest: str) -> Response:
        """Model versions: this server serves one version of one model."""
        if model_name != model.name:
            return _not_served(model, model_name)
        return _json(
            {
                "error": f"model versions are not served: call /v2/models/{model.name}/infer "
                f"(metadata: GET /v2/models/{model.name})"
            },
            status=404,
        )

    return refuse


def _refuse_explain(model: GarbageClassifierModel) -> Any:
    async def refuse(model_name: str) -> Response:
        """Explanations: this server has no explainer."""
        if model_name != model.name:
            return _not_served(model, model_name)
        return _json(
            {
                "error": f"this server has no explainer; for predictions call POST "
                f"/v1/models/{model.name}:predict"
            },
            status=404,
        )

    return refuse
