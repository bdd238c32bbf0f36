"""Emit KServe payload-logger CloudEvents from a Python server (``garbage serve --logger-url``).

On Kubernetes the KServe agent sidecar logs every inference. Locally there is no sidecar, so the
model server can emit the same events itself: a request event and a response event per inference,
binary mode, the headers KServe's logger sets, sharing one ``Ce-Id``, and the request's content
type on both (as KServe does).

Inference must never wait for or fail because of logging: :meth:`PayloadLogger.log` only puts the
two events on a bounded in-memory queue (dropping them, and counting the drop, when it is full),
and background tasks post them with a short timeout, counting failures instead of raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from garbage.core.names import MODEL_NAME
from garbage.core.protocol import v1_request, v1_response, v2_pixels_body
from monitoring.events import binary_headers

log = logging.getLogger(__name__)


@dataclass
class LoggerStats:
    """What happened to the events handed to the logger."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0  # queue full
    failed: int = 0  # network error or non-2xx answer


@dataclass(frozen=True)
class _Event:
    event_id: str
    kind: str
    body: bytes
    content_type: str


class PayloadLogger:
    """Bounded, fire-and-forget CloudEvents emitter."""

    def __init__(
        self,
        url: str,
        *,
        inference_service: str = MODEL_NAME,
        namespace: str = "",
        component: str = "predictor",
        endpoint: str = "",
        source: str = "http://localhost:8080/",
        queue_size: int = 1000,
        workers: int = 2,
        timeout: float = 5.0,
    ) -> None:
        """Configure the emitter; nothing runs until :meth:`start` (or the first :meth:`log`).

        Args:
            url: The collector's events endpoint, e.g. ``http://127.0.0.1:8081/events``.
            inference_service: ``Ce-Inferenceservicename``.
            namespace: ``Ce-Namespace``.
            component: ``Ce-Component``.
            endpoint: ``Ce-Endpoint``.
            source: ``Ce-Source``.
            queue_size: Events held at most; more are dropped.
            workers: Concurrent senders.
            timeout: Seconds per post.
        """
        if queue_size < 2:
            raise ValueError("queue_size must hold at least one request and one response event")
        self.url = url
        self.meta: dict[str, Any] = {
            "inference_service": inference_service,
            "namespace": namespace,
            "component": component,
            "endpoint": endpoint,
            "source": source,
        }
        self.queue_size = queue_size
        self.workers = max(1, workers)
        self.timeout = timeout
        self.stats = LoggerStats()
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task] = []
        self._starting: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def running(self) -> bool:
        """True once the sender tasks run."""
        return bool(self._tasks)

    async def start(self) -> None:
        """Start the sender tasks on the running event loop (idempotent)."""
        if self._tasks:
            return
        self._client = httpx.AsyncClient(timeout=self.timeout)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"payload-logger-{i}")
            for i in range(self.workers)
        ]

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Give queued events up to ``drain_seconds`` to go out, then stop the senders."""
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def log(
        self,
        request_body: bytes,
        response_body: bytes | None,
        *,
        inference_id: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Queue the request and response events of one inference; never blocks, never raises.

        Args:
            request_body: The inference request as received.
            response_body: The response as sent (None: only the request is logged).
            inference_id: The request's ``Ce-Id`` if it had one; otherwise a new UUID is used.
            content_type: The request's content type (used for both events, like KServe).

        Returns:
            The inference id the events carry (to hand back to clients for label feedback).
        """
        event_id = inference_id or str(uuid.uuid4())
        try:
            if not self._tasks and self._starting is None:
                with contextlib.suppress(RuntimeError):  # no running loop: start() must be awaited
                    self._starting = asyncio.get_running_loop().create_task(self.start())
            events = [_Event(event_id, "request", request_body, content_type)]
            if response_body is not None:
                events.append(_Event(event_id, "response", response_body, content_type))
            if self._queue.maxsize - self._queue.qsize() < len(events):
                self.stats.dropped += len(events)
                return event_id
            for event in events:
                self._queue.put_nowait(event)
                self.stats.queued += 1
        except Exception:  # logging must never break inference
            self.stats.dropped += 1
            log.debug("payload logger could not queue an event", exc_info=True)
        return event_id

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            finally:
                self._queue.task_done()

    async def _send(self, event: _Event) -> None:
        headers = binary_headers(
            event.event_id, event.kind, content_type=event.content_type, **self.meta
        )
        try:
            assert self._client is not None
            response = await self._client.post(self.url, content=event.body, headers=headers)
        except (httpx.HTTPError, OSError) as e:
            self.stats.failed += 1
            log.warning(
                "payload logger: cannot post %s event %s to %s: %s",
                event.kind,
                event.event_id,
                self.url,
                e,
            )
            return
        if response.status_code >= 300:
            self.stats.failed += 1
            log.warning(
                "payload logger: %s answered %s for %s event %s: %s",
                self.url,
                response.status_code,
                event.kind,
                event.event_id,
                response.text[:200],
            )
        else:
            self.stats.sent += 1


def encode_request(inputs: list[bytes] | np.ndarray) -> tuple[bytes, str]:
    """A logged request body in an inference protocol the collector reads.

    Encoded files become a v1 body (``{"instances": [{"image_bytes": {"b64": ...}}]}``); a
    ``uint8 [N, H, W, 3]`` tensor a v2 body with the binary tensor extension (JSON header, then
    the raw pixels), which is far smaller than JSON numbers.
    """
    if isinstance(inputs, np.ndarray):
        body, _ = v2_pixels_body(inputs)
        return body, "application/octet-stream"
    return json.dumps(v1_request(inputs)).encode(), "application/json"


class CloudEventsHook:
    """A ``serving.model.PredictionHook`` that logs every answered request as KServe CloudEvents.

    ``garbage serve --logger-url URL`` passes one to the predictor. It holds only its settings
    when pickled (``--workers > 1`` sends the hook to each worker process); the emitter is made
    in the process that uses it, on first use.
    """

    def __init__(self, url: str, **options: Any) -> None:
        """Args: url: the collector's events endpoint; options: :class:`PayloadLogger` keywords."""
        self.url = url
        self.options = options
        self._logger: PayloadLogger | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = str(state["url"])
        self.options = dict(state["options"])
        self._logger = None

    @property
    def logger(self) -> PayloadLogger:
        """The emitter of this process."""
        if self._logger is None:
            self._logger = PayloadLogger(self.url, **self.options)
        return self._logger

    async def __call__(
        self, request_id: str, inputs: list[bytes] | np.ndarray, predictions: list
    ) -> None:
        """Queue the request and response events of one answered request (runs after the answer)."""
        emitter = self.logger
        if not emitter.running:
            await emitter.start()
        body, content_type = await asyncio.to_thread(encode_request, inputs)
        response = json.dumps(v1_response(p.to_dict() for p in predictions)).encode()
        emitter.log(body, response, inference_id=request_id, content_type=content_type)
