"""The collector: an HTTP service receiving KServe payload-logger CloudEvents and label feedback.

Endpoints:
    ``POST /events``: CloudEvents (binary, structured or batched). A request event has its images
        decoded with the project's preprocessing and its features stored; a response event its
        predictions. Answers 202 with what was stored, 4xx with a reason for unusable events.
        Open by default (KServe's agent cannot send a credential: the cluster's NetworkPolicy
        decides who reaches it); with events credentials configured, a bearer token is required.
    ``POST /feedback``: true labels for logged predictions, with ``Authorization: Bearer
        <token>``: ``{"inference_id": "...", "label": "glass", "item": 0}`` (optionally with
        ``"selection"``: how ``garbage review`` picked the image) or a list of such objects.
        Every label is kept in the store's label history with the token's name and its selection;
        the latest one counts for accuracy, and the first selection an image got stays its own.
    ``GET /images/{sha256}``: a logged image's bytes, for a labeller, with the same bearer
        token as ``/feedback``; 404 for an image never stored or deleted by retention.
    ``GET /accuracy?window=24h``: live accuracy and per-class recall as JSON (``random``: over
        the review's random picks alone, the unbiased estimate).
    ``GET /metrics``: Prometheus text format (collector counters plus live accuracy).
    ``GET /healthz`` (process up) and ``GET /readyz`` (store reachable).

Every client mistake gets a 4xx whose ``detail`` says what is wrong and what to do. Bodies are
limited while they stream in (the declared ``Content-Length`` first, then the bytes counted as
they arrive: 413 and the connection closed as soon as the limit is passed), JSON is measured
before it is parsed, and every value is checked against the store's columns before any SQL runs.
A server-side failure is logged with its details and answered with a short message and a
reference id that finds the log line: no SQL, parameters, URLs or tracebacks reach a client.

Images: with an image store (:mod:`monitoring.images`), every readable image of a request is
kept once, by the SHA-256 of the bytes the request carried (pixels sent as a tensor are stored as
a lossless PNG), and its row gets ``image_sha256`` and ``image_dhash``. The image is recorded in
the store's ``images`` table first and its bytes written next, so every stored image is known to
retention. Should the write fail, the event is still logged (features, prediction, dhash) with
``image_sha256`` left empty, the failure is logged and counted
(``garbage_monitoring_image_store_errors_total{operation="put"}``), and the request is
answered as usual: the image store is never a reason to lose an event. Unreadable images are not
stored. Retention (age, total size) runs in the background every ``prune_interval`` seconds
while the application runs (its lifespan), sharing a lock with the image writes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from garbage.core.names import Selection
from garbage.core.preprocessing import InvalidImageError, decode_image, to_model_input
from monitoring.accuracy import live_accuracy, parse_window
from monitoring.events import CloudEventError, InferenceEvent, parse_cloudevents
from monitoring.features import FEATURE_SIZE, pixel_features
from monitoring.images import (
    OCTET_STREAM,
    ImageNotFoundError,
    ImageStore,
    ImageStoreError,
    InvalidDigestError,
    PruneResult,
    Retention,
    check_sha256,
    dhash,
    encode_png,
    media_type,
    prune_images,
)
from monitoring.metrics import CollectorMetrics, LiveAccuracyCollector
from monitoring.payloads import (
    MAX_ITEMS,
    ImageItem,
    PayloadError,
    load_json,
    parse_request,
    parse_response,
)
from monitoring.store import (
    FIELD_LENGTHS,
    EventMeta,
    InferenceStore,
    InvalidRecordError,
    StoreError,
    check_text,
)

log = logging.getLogger(__name__)

EVENTS_PATH = "/events"
FEEDBACK_PATH = "/feedback"
IMAGES_PATH = "/images"
#: Seconds between two retention runs of the image store.
DEFAULT_PRUNE_INTERVAL = 3600.0
#: Largest event body: serving's largest request (16 MiB) in a structured event, base64-encoded.
MAX_BODY_BYTES = 24 * 1024 * 1024
MAX_FEEDBACK_BYTES = 1024 * 1024
MAX_FEEDBACK_ENTRIES = 1000
#: Event bodies parsed and decoded at once; more wait their turn. One accepted image may take
#: about 400 MB to decode (40 megapixels), two at once would near the pod's 1 GiB: one.
MAX_CONCURRENT_EVENTS = 1
DEFAULT_WINDOWS = ("1h", "24h")

#: Feedback credentials, one ``name:token`` (or a bare token) per line or comma.
TOKEN_ENV = "GARBAGE_COLLECTOR_TOKEN"
#: Optional credentials for ``/events``, in the same form; when set, required there.
EVENTS_TOKEN_ENV = "GARBAGE_COLLECTOR_EVENTS_TOKEN"
#: The name a bare token (without ``name:``) is recorded under in the label history.
DEFAULT_TOKEN_NAME = "default"
#: The labeller recorded when feedback is accepted without a credential (local development).
ANONYMOUS = "anonymous"
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_DIGITS = re.compile(r"[0-9]+")
_REALM = 'Bearer realm="garbage-collector"'

#: What a client calls the fields the store checks, for messages.
_ATTRIBUTES = {
    "inference_id": "ce-id",
    "source": "ce-source",
    "inference_service": "ce-inferenceservicename",
    "namespace": "ce-namespace",
    "component": "ce-component",
    "endpoint": "ce-endpoint",
    "model_id": "the model id (ce-modelid, or the response's model_name:model_version)",
    "prediction": "a predicted label",
    "feature_error": "a feature error",
}


class SafeJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped.

    A lone surrogate that a client sent, quoted back in a message, cannot make the answer
    unencodable.
    """

    def render(self, content: Any) -> bytes:
        """``content`` as ASCII JSON."""
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class TokenError(ValueError):
    """The collector's credentials are missing or unusable; the message says how to fix them."""


@dataclass(frozen=True)
class Credential:
    """One accepted bearer token: the name it is recorded under and the token's SHA-256."""

    name: str
    digest: bytes

    def __repr__(self) -> str:
        return f"Credential(name={self.name!r})"


def parse_credentials(text: str, source: str) -> tuple[Credential, ...]:
    """Read ``name:token`` entries (or bare tokens), one per line or comma; ``#`` starts a comment.

    Args:
        text: The entries (a Secret's file or an environment variable).
        source: Where they come from, for messages (never the tokens themselves).

    Raises:
        TokenError: An entry's name or token is malformed, or a token is shorter than
            :data:`MIN_TOKEN_LENGTH` characters.
    """
    credentials = []
    for number, line in enumerate(re.split(r"[\n,]", text), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = DEFAULT_TOKEN_NAME, entry
        name, token = name.strip(), token.strip()
        if not _TOKEN_NAME.fullmatch(name) or len(name) > FIELD_LENGTHS["labeller"]:
            raise TokenError(
                f"entry {number} of {source}: the name before ':' must be letters, digits and "
                f"._@- (at most {FIELD_LENGTHS['labeller']}); write name:token"
            )
        if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
            raise TokenError(
                f"entry {number} of {source} ({name}): a token must be at least "
                f"{MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 -._~+/ (generate one with "
                "`openssl rand -hex 32`)"
            )
        credentials.append(Credential(name, hashlib.sha256(token.encode()).digest()))
    return tuple(credentials)


def load_credentials(
    env: str, token_file: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[Credential, ...]:
    """Credentials from the environment variable ``env`` and from ``token_file``, together.

    Raises:
        TokenError: The file cannot be read, or an entry is malformed.
    """
    environ = os.environ if environ is None else environ
    credentials = parse_credentials(environ.get(env, ""), f"${env}")
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError(
                f"cannot read the token file {token_file}: {e.__class__.__name__}"
            ) from e
        credentials += parse_credentials(text, str(token_file))
    return credentials


@dataclass(frozen=True)
class CollectorAuth:
    """Who may write: bearer credentials for ``/feedback`` and, optionally, for ``/events``.

    Attributes:
        feedback: Tokens accepted on ``/feedback``; required unless
            ``allow_unauthenticated_feedback``.
        events: Tokens accepted on ``/events``; none means ``/events`` is open (KServe's agent
            sends no credential; a NetworkPolicy restricts who reaches it).
        allow_unauthenticated_feedback: Accept feedback without a token, recorded as
            :data:`ANONYMOUS` (local development only).
    """

    feedback: tuple[Credential, ...] = ()
    events: tuple[Credential, ...] = ()
    allow_unauthenticated_feedback: bool = False

    def __post_init__(self) -> None:
        """Refuse a configuration that lets anyone relabel predictions by accident.

        Raises:
            TokenError: No feedback credential and no explicit permission to go without.
        """
        if not self.feedback and not self.allow_unauthenticated_feedback:
            raise TokenError(
                f"no feedback token: set {TOKEN_ENV}=name:token or pass --token-file (a "
                "mounted Secret with name:token lines); for local development only, "
                "--allow-unauthenticated-feedback"
            )


def _authenticate(credentials: Sequence[Credential], header: str | None) -> str:
    """The name of the credential that ``Authorization: Bearer <token>`` presents.

    Every credential is compared, in constant time, whatever matches.

    Raises:
        HTTPException: 401 without a bearer token, 403 for a token that is not accepted.
    """
    scheme, _, value = (header or "").strip().partition(" ")
    token = value.strip()
    if not header:
        raise HTTPException(
            401,
            "this endpoint needs a credential: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": _REALM},
        )
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        raise HTTPException(
            401,
            "the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request"'},
        )
    presented = hashlib.sha256(token.encode("ascii")).digest()
    name = None
    for credential in credentials:
        if hmac.compare_digest(presented, credential.digest) and name is None:
            name = credential.name
    if name is None:
        raise HTTPException(403, "the bearer token is not accepted here; ask for a valid one")
    return name


class Feedback(BaseModel):
    """One true label for one logged image."""

    model_config = ConfigDict(extra="forbid")

    inference_id: str = Field(
        min_length=1,
        max_length=FIELD_LENGTHS["inference_id"],
        strict=True,
        description="The inference's ce-id.",
    )
    label: str = Field(
        min_length=1, max_length=FIELD_LENGTHS["true_label"], strict=True, description="The class."
    )
    item: int = Field(
        0, ge=0, lt=MAX_ITEMS, strict=True, description="The image's position in the request."
    )
    selection: Selection | None = Field(
        None,
        description="How `garbage review` picked the image: 'random' picks estimate live accuracy "
        "without bias and make the site's test slice; 'uncertain' ones are trained on. Omit it "
        "for a label given without a review.",
    )


@dataclass(frozen=True)
class ItemReading:
    """What the collector takes from one request image.

    Attributes:
        features: The feature columns, or ``{"feature_error": reason}``.
        image: The bytes to keep in the image store (the request's own encoded bytes, or a PNG
            of pixels sent as a tensor); None when the image is unreadable or none is kept.
        sha256: The SHA-256 of ``image``.
        dhash: The difference hash of the decoded image (:func:`monitoring.images.dhash`).
    """

    features: Mapping[str, float | str]
    image: bytes | None = None
    sha256: str | None = None
    dhash: str | None = None


def extract_item(item: ImageItem) -> Mapping[str, float | str]:
    """Features of one request image, or ``{"feature_error": reason}`` when it cannot be read.

    Encoded images go through :func:`garbage.core.preprocessing.decode_image` with its default
    limits, the ones serving applies, so an image serving accepts is read here too and one it
    refuses is logged as unreadable.
    """
    return read_item(item).features


def read_item(item: ImageItem, *, keep_image: bool = False) -> ItemReading:
    """Features, difference hash and (with ``keep_image``) the bytes to store of one image.

    Decoding is :func:`extract_item`'s; the bytes kept are exactly those the request carried,
    never re-encoded, except pixels sent as a tensor, which are kept as a lossless PNG. An
    unreadable image yields its ``feature_error`` and nothing to keep.
    """
    if item.error:
        return ItemReading({"feature_error": item.error})
    encoded: bytes | None
    if item.pixels is not None:
        pixels = item.pixels
        if pixels.size == 0:
            return ItemReading({"feature_error": "empty"})
        image = Image.fromarray(pixels)
        encoded = encode_png(pixels) if keep_image else None
    else:
        try:
            image = decode_image(item.data or b"")
        except InvalidImageError as e:
            return ItemReading({"feature_error": e.reason})
        pixels = np.asarray(image, dtype=np.uint8)
        encoded = item.data if keep_image else None
    if pixels.size == 0:
        return ItemReading({"feature_error": "empty"})
    features = _features(pixels)
    if "feature_error" in features:
        return ItemReading(features)
    sha256 = hashlib.sha256(encoded).hexdigest() if encoded is not None else None
    return ItemReading(features, encoded, sha256, dhash(image))


def _features(pixels: np.ndarray) -> Mapping[str, float | str]:
    """The feature columns of decoded pixels (``[H, W, 3]`` uint8)."""
    height, width = pixels.shape[:2]
    if min(height, width) < 3:
        # Serving resizes any image to the model's input; features need 3x3 pixels, so a tiny
        # image is measured at the feature size, where the pixel statistics are taken anyway
        # (only blockiness then reads the upscaled pixels: about 1, as for any small image).
        pixels = to_model_input(Image.fromarray(pixels), *FEATURE_SIZE)
    try:
        return pixel_features(pixels, original_size=(width, height))
    except ValueError:
        return {"feature_error": "bad_pixels"}


def _meta(event: InferenceEvent, model_id: str = "") -> EventMeta:
    return EventMeta(
        inference_id=event.inference_id,
        time=event.time,
        source=event.source,
        inference_service=event.inference_service,
        namespace=event.namespace,
        component=event.component,
        endpoint=event.endpoint,
        model_id=event.model_id or model_id,
    )


def _short(text: str, limit: int = 64) -> str:
    """``text`` cut for a message (ids are the sender's and may be long)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)


def _reference() -> str:
    return uuid.uuid4().hex[:12]


class _EventRejected(ValueError):
    """One event of a request cannot be stored; the message says which and why."""


@dataclass
class _Prepared:
    """An event parsed and checked, ready to store."""

    event: InferenceEvent
    write: Callable[[], int]
    summary: dict[str, Any]
    images: int = 0
    unreadable: int = 0


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes.

    ``Content-Length`` is checked before a byte is read; a chunked body is counted as it streams
    in. A 413 carries ``Connection: close``, so the server stops reading the rest.

    Raises:
        HTTPException: 400 for a malformed length or a body cut short, 413 over the limit.
    """

    def too_large(size: str) -> HTTPException:
        return HTTPException(
            413,
            f"the {what} is {size} bytes; at most {limit}: send smaller requests",
            headers={"Connection": "close"},
        )

    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DIGITS.fullmatch(declared.strip()):
            raise HTTPException(400, "Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise too_large(declared.strip())
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(f"more than {limit}")
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise HTTPException(400, f"the {what} ended before it was complete") from e
    return b"".join(chunks)


def _validation_problems(error: ValidationError, index: int | None) -> list[str]:
    where = "" if index is None else f"entry {index}: "
    return [
        f"{where}{'.'.join(str(p) for p in e['loc']) or 'the entry'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]


def create_app(
    store: InferenceStore,
    classes: Sequence[str],
    *,
    auth: CollectorAuth,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_concurrent_events: int = MAX_CONCURRENT_EVENTS,
    metrics: CollectorMetrics | None = None,
    images: ImageStore | None = None,
    retention: Retention | None = None,
    prune_interval: float = DEFAULT_PRUNE_INTERVAL,
) -> FastAPI:
    """Build the collector application around a store.

    Args:
        store: Where logged inferences go.
        classes: The served model's classes, from its metadata (``OnnxClassifier.classes``):
            feedback labels are checked against them, live recall is reported for each.
        auth: Who may write feedback (and events); see :class:`CollectorAuth`.
        windows: Windows for the live-accuracy gauges, e.g. ``("1h", "24h")``.
        max_body_bytes: Larger event bodies are refused with 413.
        max_concurrent_events: Event bodies parsed and decoded at once.
        metrics: Metric holder (a fresh registry by default).
        images: Where the logged images are kept; None keeps none (and ``GET /images`` finds
            none).
        retention: The image store's limits, applied every ``prune_interval`` seconds while the
            application runs (its lifespan); None or no limit: images are kept for ever.
        prune_interval: Seconds between two retention runs (the first runs at start).
    """
    classes = list(classes)
    metrics = metrics or CollectorMetrics()
    metrics.registry.register(LiveAccuracyCollector(store, classes, windows))
    #: Held while an event's images are recorded and written, and around each retention batch.
    image_lock = threading.Lock()

    def prune_now() -> PruneResult | None:
        """One retention run; a failure is logged and counted, and the next run tries again."""
        if images is None or retention is None or not retention.active:
            return None
        try:
            result = prune_images(
                store,
                images,
                retention,
                lock=image_lock,
                on_delete=lambda reason, n: metrics.images_pruned.labels(reason=reason).inc(n),
            )
        except (StoreError, ImageStoreError) as e:
            metrics.image_errors.labels(operation="prune").inc()
            log.error("image retention failed (it runs again in %.0f s): %s", prune_interval, e)
            return None
        metrics.image_store_images.set(result.images)
        metrics.image_store_bytes.set(result.total_bytes)
        if result.deleted["age"] or result.deleted["size"]:
            log.info("image retention: %s", result.as_dict())
        return result

    async def prune_periodically() -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(prune_now, abandon_on_cancel=True)
            except Exception:  # a bug in one run must not stop the next ones, nor the server
                metrics.image_errors.labels(operation="prune").inc()
                log.exception("image retention failed unexpectedly; it runs again later")
            await anyio.sleep(prune_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if images is None or retention is None or not retention.active:
            yield
            return
        async with anyio.create_task_group() as group:
            group.start_soon(prune_periodically)
            yield
            group.cancel_scope.cancel()

    app = FastAPI(
        title="garbage-classifier monitoring collector",
        version="1",
        default_response_class=SafeJSONResponse,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics
    app.state.images = images
    app.state.prune_images = prune_now
    limiter = anyio.CapacityLimiter(max_concurrent_events)
    if auth.allow_unauthenticated_feedback and not auth.feedback:
        log.warning(
            "!!! /feedback accepts labels from ANYONE who can reach it "
            "(--allow-unauthenticated-feedback): for local development only; set %s or "
            "--token-file anywhere else !!!",
            TOKEN_ENV,
        )
    if not auth.events:
        log.info("/events takes events without a token: restrict who reaches it (NetworkPolicy)")

    @app.exception_handler(StarletteHTTPException)
    async def client_mistake(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in error.errors()
        ]
        return _error(422, "invalid request: " + "; ".join(problems[:5]))

    @app.exception_handler(StoreError)
    async def store_failed(request: Request, error: StoreError) -> JSONResponse:
        reference = _reference()
        log.error(
            "store failure [%s] on %s %s: %s", reference, request.method, request.url.path, error
        )
        if request.url.path == EVENTS_PATH:
            metrics.errors.labels(reason="store").inc()
        return _error(
            503,
            f"the inference store is unavailable; retry later (reference {reference})",
            {"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        reference = _reference()
        log.error(
            "internal error [%s] on %s %s",
            reference,
            request.method,
            request.url.path,
            exc_info=error,
        )
        return _error(
            500, f"internal error; the collector's log has it under reference {reference}"
        )

    def keep_images(readings: Sequence[ItemReading]) -> list[dict[str, Any]]:
        """Record and store the readable images of a request; return each row's values.

        A failed write leaves that row's ``image_sha256`` empty (see the module's docstring).

        Raises:
            StoreError: The ``images`` table cannot be written (nothing was stored).
        """
        rows = [dict(r.features) for r in readings]
        for row, reading in zip(rows, readings, strict=True):
            if reading.dhash is not None:
                row["image_dhash"] = reading.dhash
        if images is None:
            return rows
        pending = {r.sha256: r.image for r in readings if r.sha256 and r.image is not None}
        if not pending:
            return rows
        stored: set[str] = set()
        with image_lock:
            seen = datetime.now(UTC).replace(tzinfo=None)
            store.record_images({sha: len(data) for sha, data in pending.items()}, seen)
            for sha, data in pending.items():
                try:
                    _, written = images.save(data)
                except ImageStoreError as e:
                    metrics.image_errors.labels(operation="put").inc()
                    log.warning("image %s logged without its bytes: %s", sha[:12], e)
                    continue
                stored.add(sha)
                metrics.images_stored.labels(result="written" if written else "duplicate").inc()
        for row, reading in zip(rows, readings, strict=True):
            if reading.sha256 in stored:
                row["image_sha256"] = reading.sha256
        return rows

    def prepare(event: InferenceEvent) -> _Prepared:
        where = f"event {_short(event.inference_id)} ({event.kind})"
        try:
            if event.kind == "request":
                payload = parse_request(event.data, event.content_type)
                meta = _meta(event)
                meta.check()
                readings = []
                for item in payload.items:
                    started = time.perf_counter()
                    readings.append(read_item(item, keep_image=images is not None))
                    metrics.feature_seconds.observe(time.perf_counter() - started)
                unreadable = sum(1 for r in readings if "feature_error" in r.features)
                return _Prepared(
                    event,
                    lambda: store.record_request(meta, keep_images(readings)),
                    {
                        "id": event.inference_id,
                        "type": "request",
                        "protocol": payload.protocol,
                        "images": len(readings),
                        "unreadable": unreadable,
                    },
                    images=len(readings),
                    unreadable=unreadable,
                )
            response = parse_response(event.data, classes)
            model_id = ":".join(p for p in (response.model_name, response.model_version) if p)
            meta = _meta(event, model_id)
            meta.check()
            predictions = [(p.label, p.score, p.probabilities) for p in response.items]
            for label, _, _ in predictions:
                check_text("prediction", label)
            return _Prepared(
                event,
                lambda: store.record_response(meta, predictions),
                {
                    "id": event.inference_id,
                    "type": "response",
                    "protocol": response.protocol,
                    "predictions": len(predictions),
                },
            )
        except PayloadError as e:
            metrics.errors.labels(reason="bad_payload").inc()
            raise _EventRejected(f"{where}: {e}") from e
        except InvalidRecordError as e:
            metrics.errors.labels(reason="bad_field").inc()
            raise _EventRejected(f"{where}: {_ATTRIBUTES.get(e.field, e.field)} {e.problem}") from e

    def process(headers: Mapping[str, str], body: bytes) -> list[dict[str, Any]]:
        """Parse and check every event of the request, then store them (all or none refused)."""
        try:
            parsed = parse_cloudevents(headers, body)
        except CloudEventError as e:
            metrics.errors.labels(reason="not_a_cloudevent").inc()
            raise HTTPException(400, str(e)) from e
        try:
            prepared = [prepare(event) for event in parsed]
        except _EventRejected as e:
            raise HTTPException(400, str(e)) from e
        for ready in prepared:
            ready.write()
            metrics.events.labels(type=ready.event.kind, mode=ready.event.mode).inc()
            if ready.event.kind == "request":
                metrics.images.labels(status="ok").inc(ready.images - ready.unreadable)
                if ready.unreadable:
                    metrics.images.labels(status="unreadable").inc(ready.unreadable)
        return [ready.summary for ready in prepared]

    @app.post(EVENTS_PATH, status_code=202)
    async def events(request: Request) -> JSONResponse:
        if auth.events:
            try:
                _authenticate(auth.events, request.headers.get("authorization"))
            except HTTPException as e:
                metrics.errors.labels(reason="unauthorized").inc()
                raise e
        try:
            body = await _read_body(request, max_body_bytes, "event body")
        except HTTPException as e:
            if e.status_code == 413:
                metrics.errors.labels(reason="too_large").inc()
            raise
        headers = dict(request.headers)
        results = await anyio.to_thread.run_sync(process, headers, body, limiter=limiter)
        return JSONResponse({"accepted": len(results), "events": results}, status_code=202)

    def record(entries: list[Feedback], labeller: str) -> list[dict[str, Any]]:
        now = datetime.now(UTC).replace(tzinfo=None)
        results: list[dict[str, Any]] = []
        for f in entries:
            matched = store.record_feedback(
                f.inference_id, f.item, f.label, now, labeller, selection=f.selection
            )
            result: dict[str, Any] = {
                "inference_id": f.inference_id,
                "item": f.item,
                "matched": matched,
            }
            if not matched:
                logged = store.items_logged(f.inference_id)
                result["logged_items"] = logged
            metrics.feedback.labels(result="matched" if matched else "unknown").inc()
            results.append(result)
        return results

    @app.post(FEEDBACK_PATH)
    async def feedback(request: Request) -> JSONResponse:
        if auth.feedback:
            try:
                labeller = _authenticate(auth.feedback, request.headers.get("authorization"))
            except HTTPException as e:
                metrics.feedback.labels(
                    result="unauthenticated" if e.status_code == 401 else "forbidden"
                ).inc()
                raise e
        else:
            labeller = ANONYMOUS
        usage = '{"inference_id": "...", "label": "glass", "item": 0} or a list of them'
        body = await _read_body(request, MAX_FEEDBACK_BYTES, "feedback body")
        try:
            raw = load_json(body, "the feedback body")
        except PayloadError as e:
            metrics.feedback.labels(result="invalid").inc()
            raise HTTPException(400, f"{e}; send JSON: {usage}") from e
        entries = raw if isinstance(raw, list) else [raw]
        problems: list[str] = []
        if not entries:
            problems.append(f"the feedback list is empty; send {usage}")
        elif len(entries) > MAX_FEEDBACK_ENTRIES:
            problems.append(f"{len(entries)} labels in one request; at most {MAX_FEEDBACK_ENTRIES}")
        parsed: list[Feedback] = []
        for index, entry in enumerate(entries[:MAX_FEEDBACK_ENTRIES]):
            try:
                parsed.append(Feedback.model_validate(entry))
            except ValidationError as e:
                problems += _validation_problems(e, index if isinstance(raw, list) else None)
        if problems:
            metrics.feedback.labels(result="invalid").inc()
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            raise HTTPException(422, f"invalid feedback: {shown}. Expected {usage}")
        for index, f in enumerate(parsed):
            try:
                check_text("inference_id", f.inference_id, required=True)
            except InvalidRecordError as e:
                problems.append(f"entry {index}: {e}")
        if problems:
            metrics.feedback.labels(result="invalid").inc()
            raise HTTPException(422, f"invalid feedback: {'; '.join(problems[:5])}")
        unknown_labels = sorted({f.label for f in parsed} - set(classes))
        if unknown_labels:
            metrics.feedback.labels(result="invalid").inc()
            shown_labels = [_short(label, 40) for label in unknown_labels[:5]]
            raise HTTPException(
                422, f"unknown labels {shown_labels}; the model's classes are {classes}"
            )
        results = await run_in_threadpool(record, parsed, labeller)
        if not any(r["matched"] for r in results):
            out_of_range = [r for r in results if r.get("logged_items")]
            if out_of_range:
                first = out_of_range[0]
                raise HTTPException(
                    422,
                    f"inference {_short(first['inference_id'])} logged {first['logged_items']} "
                    f"images, so item must be 0..{first['logged_items'] - 1}, not {first['item']}",
                )
            missing = ", ".join(f"{_short(r['inference_id'])}[{r['item']}]" for r in results[:5])
            raise HTTPException(
                404,
                f"no logged prediction for {missing}; feedback must name the ce-id (request id) "
                "of a logged inference and the image's position in its batch. If the inference "
                "is recent, its events may still be on the way: retry in a few seconds",
            )
        return JSONResponse(
            {
                "matched": sum(r["matched"] for r in results),
                "labeller": labeller,
                "results": results,
            }
        )

    @app.get(IMAGES_PATH + "/{sha256}")
    async def image(request: Request, sha256: str) -> Response:
        if auth.feedback:
            _authenticate(auth.feedback, request.headers.get("authorization"))
        digest = sha256.lower()
        try:
            check_sha256(digest)
        except InvalidDigestError as e:
            raise HTTPException(422, f"{e}; got {len(sha256)} characters") from e
        if images is None:
            raise HTTPException(404, "this collector keeps no images: start it with --image-store")
        try:
            data = await run_in_threadpool(images.get, digest)
        except ImageNotFoundError as e:
            raise HTTPException(
                404,
                f"no stored image {digest[:12]}...: it was never logged, was unreadable, or "
                "retention deleted it (its row and labels are kept)",
            ) from e
        except ImageStoreError as e:
            reference = _reference()
            metrics.image_errors.labels(operation="get").inc()
            log.error("image store failure [%s] reading %s: %s", reference, digest[:12], e)
            return _error(
                503,
                f"the image store is unavailable; retry later (reference {reference})",
                {"Retry-After": "5"},
            )
        kind = media_type(data)
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600",
            "ETag": f'"{digest}"',
        }
        if kind == OCTET_STREAM:
            headers["Content-Disposition"] = f'attachment; filename="{digest}"'
        return Response(data, media_type=kind, headers=headers)

    @app.get("/accuracy")
    async def accuracy(window: str = Query("24h", description="e.g. 1h, 24h, 7d")) -> JSONResponse:
        try:
            span = parse_window(window)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        since = datetime.now(UTC).replace(tzinfo=None) - span
        frame = await run_in_threadpool(
            store.load_window,
            since,
            None,
            columns=["prediction", "true_label", "label_selection"],
            labelled_only=True,
        )
        return JSONResponse({"window": window, **live_accuracy(frame, classes)})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            rows = await run_in_threadpool(store.count)
        except Exception as e:  # any driver error means not ready
            reference = _reference()
            log.warning("not ready [%s]: %s", reference, e)
            return JSONResponse(
                {
                    "status": "unavailable",
                    "error": f"the inference store cannot be reached (reference {reference})",
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready", "rows": rows})

    return app
