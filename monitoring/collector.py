"""The collector: an HTTP service receiving KServe payload-logger CloudEvents and label feedback.

Endpoints:
    ``POST /events``: CloudEvents (binary, structured or batched). A request event has its images
        decoded with the project's preprocessing and its features stored; a response event its
        predictions. Answers 202 with what was stored, 4xx with a reason for unusable events.
    ``POST /feedback``: true labels for logged predictions:
        ``{"inference_id": "...", "label": "glass", "item": 0}`` or a list of such objects.
    ``GET /accuracy?window=24h``: live accuracy and per-class recall as JSON.
    ``GET /metrics``: Prometheus text format (collector counters plus live accuracy).
    ``GET /healthz`` (process up) and ``GET /readyz`` (store reachable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from garbage.core.preprocessing import DEFAULT_MAX_PIXELS, InvalidImageError, decode_image
from monitoring.accuracy import live_accuracy, parse_window
from monitoring.events import CloudEventError, InferenceEvent, parse_cloudevents
from monitoring.features import pixel_features
from monitoring.metrics import CollectorMetrics, LiveAccuracyCollector
from monitoring.payloads import ImageItem, PayloadError, parse_request, parse_response
from monitoring.store import EventMeta, InferenceStore, StoreError

log = logging.getLogger(__name__)

EVENTS_PATH = "/events"
MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_WINDOWS = ("1h", "24h")


class Feedback(BaseModel):
    """One true label for one logged image."""

    inference_id: str = Field(min_length=1, max_length=200, description="The inference's ce-id.")
    label: str = Field(min_length=1, description="The true class.")
    item: int = Field(0, ge=0, description="The image's position in a batched request.")


def extract_item(
    item: ImageItem, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Mapping[str, float | str]:
    """Features of one request image, or ``{"feature_error": reason}`` when it cannot be read."""
    if item.error:
        return {"feature_error": item.error}
    if item.pixels is not None:
        try:
            return pixel_features(item.pixels)
        except ValueError:
            return {"feature_error": "bad_pixels"}
    try:
        image = decode_image(item.data or b"", max_pixels=max_pixels)
    except InvalidImageError as e:
        return {"feature_error": e.reason}
    return pixel_features(np.asarray(image, dtype=np.uint8))


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


def create_app(
    store: InferenceStore,
    classes: Sequence[str],
    *,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    max_body_bytes: int = MAX_BODY_BYTES,
    metrics: CollectorMetrics | None = None,
) -> FastAPI:
    """Build the collector application around a store.

    Args:
        store: Where logged inferences go.
        classes: The served model's classes, from its metadata (``OnnxClassifier.classes``):
            feedback labels are checked against them, live recall is reported for each.
        windows: Windows for the live-accuracy gauges, e.g. ``("1h", "24h")``.
        max_body_bytes: Larger event bodies are refused with 413.
        metrics: Metric holder (a fresh registry by default).
    """
    classes = list(classes)
    metrics = metrics or CollectorMetrics()
    metrics.registry.register(LiveAccuracyCollector(store, classes, windows))
    app = FastAPI(title="garbage-classifier monitoring collector", version="1")
    app.state.store = store
    app.state.metrics = metrics

    def handle(event: InferenceEvent) -> dict[str, object]:
        if event.kind == "request":
            payload = parse_request(event.data, event.content_type)
            rows = []
            for item in payload.items:
                started = time.perf_counter()
                row = extract_item(item)
                metrics.feature_seconds.observe(time.perf_counter() - started)
                rows.append(row)
            store.record_request(_meta(event), rows)
            unreadable = sum(1 for r in rows if "feature_error" in r)
            metrics.images.labels(status="ok").inc(len(rows) - unreadable)
            if unreadable:
                metrics.images.labels(status="unreadable").inc(unreadable)
            return {
                "id": event.inference_id,
                "type": "request",
                "protocol": payload.protocol,
                "images": len(rows),
                "unreadable": unreadable,
            }
        response = parse_response(event.data, classes)
        model_id = ":".join(p for p in (response.model_name, response.model_version) if p)
        store.record_response(
            _meta(event, model_id), [(p.label, p.score, p.probabilities) for p in response.items]
        )
        return {
            "id": event.inference_id,
            "type": "response",
            "protocol": response.protocol,
            "predictions": len(response.items),
        }

    @app.post(EVENTS_PATH, status_code=202)
    async def events(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            metrics.errors.labels(reason="too_large").inc()
            raise HTTPException(
                413, f"event body of {declared} bytes is over the {max_body_bytes}-byte limit"
            )
        body = await request.body()
        if len(body) > max_body_bytes:
            metrics.errors.labels(reason="too_large").inc()
            raise HTTPException(
                413, f"event body of {len(body)} bytes is over the {max_body_bytes}-byte limit"
            )
        try:
            parsed = parse_cloudevents(request.headers, body)
        except CloudEventError as e:
            metrics.errors.labels(reason="not_a_cloudevent").inc()
            raise HTTPException(400, str(e)) from e
        results = []
        for event in parsed:
            try:
                results.append(await run_in_threadpool(handle, event))
            except PayloadError as e:
                metrics.errors.labels(reason="bad_payload").inc()
                raise HTTPException(400, f"event {event.inference_id} ({event.kind}): {e}") from e
            except StoreError as e:
                metrics.errors.labels(reason="store").inc()
                log.error("store failure: %s", e)
                raise HTTPException(503, f"the inference store is unavailable: {e}") from e
            metrics.events.labels(type=event.kind, mode=event.mode).inc()
        return JSONResponse({"accepted": len(results), "events": results}, status_code=202)

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        try:
            raw = await request.json()
        except ValueError as e:
            metrics.feedback.labels(result="invalid").inc()
            raise HTTPException(
                400,
                "the feedback body must be JSON: "
                '{"inference_id": "...", "label": "glass", "item": 0} or a list',
            ) from e
        entries = raw if isinstance(raw, list) else [raw]
        if not entries:
            raise HTTPException(400, "empty feedback list")
        try:
            parsed = [Feedback.model_validate(e) for e in entries]
        except ValidationError as e:
            metrics.feedback.labels(result="invalid").inc()
            raise HTTPException(422, f"invalid feedback: {e.errors(include_url=False)}") from e
        unknown_labels = sorted({f.label for f in parsed} - set(classes))
        if unknown_labels:
            metrics.feedback.labels(result="invalid").inc()
            raise HTTPException(
                422, f"unknown labels {unknown_labels}; the model's classes are {classes}"
            )
        now = datetime.now(UTC).replace(tzinfo=None)
        results = []
        for f in parsed:
            try:
                matched = await run_in_threadpool(
                    store.record_feedback, f.inference_id, f.item, f.label, now
                )
            except StoreError as e:
                raise HTTPException(503, f"the inference store is unavailable: {e}") from e
            metrics.feedback.labels(result="matched" if matched else "unknown").inc()
            results.append({"inference_id": f.inference_id, "item": f.item, "matched": matched})
        if not any(r["matched"] for r in results):
            missing = ", ".join(f"{r['inference_id']}[{r['item']}]" for r in results)
            raise HTTPException(
                404,
                f"no logged prediction for {missing}; feedback must name the ce-id (request id) "
                "of a logged inference and the image's position in its batch. If the inference "
                "is recent, "
                "its events may still be on the way: retry in a few seconds",
            )
        return JSONResponse({"matched": sum(r["matched"] for r in results), "results": results})

    @app.get("/accuracy")
    async def accuracy(window: str = Query("24h", description="e.g. 1h, 24h, 7d")) -> JSONResponse:
        try:
            span = parse_window(window)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        since = datetime.now(UTC).replace(tzinfo=None) - span
        frame = await run_in_threadpool(
            store.load_window, since, None, columns=["prediction", "true_label"], labelled_only=True
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
            return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ready", "rows": rows})

    return app
