"""Emit KServe payload-logger CloudEvents from a Python server (``garbage serve --logger-url``).

On Kubernetes the KServe agent sidecar logs every inference. Locally there is no sidecar, so the
model server can emit the same events itself: a request event and a response event per inference,
binary mode, the headers KServe's logger sets, sharing one ``Ce-Id``, and the request's content
type on both (as KServe does).

Inference never waits for the collector, and an event of an answered request is not lost
silently. Each event is fixed when it is logged (``Ce-Id``, ``Ce-Time``, body), so every attempt
sends the same event and the collector, which stores one row per ``(ce-id, item)``, takes a
repeated delivery as a no-op. It then

1. waits in a queue in memory, bounded in events and in bytes;
2. is posted by a few background senders, with a short timeout; a connection error, a timeout,
   a 5xx, 408 or 429 is retried with exponential backoff and jitter (a ``Retry-After`` is
   honoured); any other 4xx means the collector will never take it: it is *rejected*, counted,
   and its reason logged;
3. when the collector stays away (a few failed attempts), the queue moves to the on-disk spill
   (:class:`EventSpill`, bounded in bytes, every event fsync'd), new events go there directly,
   and one sender probes with the oldest event, backing off up to ``backoff_max``; once it is
   answered, the spill is sent in the order the events were logged, surviving a restart of the
   server in between;
4. only when memory and the spill are both full is an event *dropped*, counted, and the drop
   logged. A clean stop gives the queue ``drain_seconds`` to go out and spills the rest.

``garbage_payload_events_total{outcome}`` and the queue gauges (``monitoring.metrics``) count
all of it on the model server's ``/metrics``; the alert ``GarbagePayloadEventsDropped`` fires on
a drop or a rejection. What is still lost: the events in memory when the process is killed
without a chance to stop (``kill -9``, out of memory), at most the queue's bounds, usually the
last few milliseconds of traffic; run with a spill and a clean shutdown, the rest survives.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from garbage.core.names import MODEL_NAME
from garbage.core.protocol import v1_request, v1_response, v2_pixels_body
from monitoring.spill import DEFAULT_MAX_SPILL_BYTES, EventSpill, PayloadEvent

# httpx, the CloudEvents SDK (monitoring.events) and pandas (monitoring.metrics) are imported
# when a logger is made: `garbage`'s command line imports this module for the defaults above.
if TYPE_CHECKING:
    import httpx

    from monitoring.metrics import PayloadLoggerMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE_EVENTS = 1000
DEFAULT_MAX_QUEUE_BYTES = 32 * 2**20
DEFAULT_TIMEOUT = 5.0
DEFAULT_WORKERS = 2
DEFAULT_DRAIN_SECONDS = 5.0
#: Answers worth another attempt: the collector is restarting, overloaded or its store is away.
RETRY_STATUSES = frozenset({408, 429})
_DROP_LOG_INTERVAL = 10.0


@dataclass
class LoggerStats:
    """What happened to the events handed to one logger (the metric counts all of a process's).

    ``logged`` events end ``delivered``, ``rejected`` or ``dropped``, or are still queued or
    spilled; ``retried`` counts failed attempts, ``spilled`` writes to the spill.
    """

    logged: int = 0
    delivered: int = 0
    retried: int = 0
    spilled: int = 0
    dropped: int = 0
    rejected: int = 0


# -- the spill --------------------------------------------------------------------------------


@dataclass
class _Item:
    """An event a sender holds: from memory (``name`` None) or claimed from the spill."""

    event: PayloadEvent
    name: str | None = None


@dataclass(frozen=True)
class _Answer:
    outcome: str  # "delivered", "retry" or "rejected"
    reason: str = ""
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass
class _Clock:
    """The backoff schedule: ``initial * 2**(n-1)`` capped at ``maximum``, with jitter."""

    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``retry_after``: the sink's wish)."""
        ceiling = min(self.maximum, self.initial * 2 ** max(0, attempt - 1))
        wait = ceiling / 2 + self.rng.uniform(0, ceiling / 2)  # "equal jitter"
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.maximum))
        return wait


class PayloadLogger:
    """Sends CloudEvents to a sink without making inference wait, and loses none silently.

    See the module docstring for what happens to an event. Call :meth:`log` or :meth:`submit`
    on the event loop's thread (or, for :meth:`log`, with no loop running yet).
    """

    def __init__(
        self,
        url: str,
        *,
        inference_service: str = MODEL_NAME,
        namespace: str = "",
        component: str = "predictor",
        endpoint: str = "",
        source: str = "http://localhost:8080/",
        max_queue_events: int = DEFAULT_MAX_QUEUE_EVENTS,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        spill_dir: Path | str | None = None,
        max_spill_bytes: int = DEFAULT_MAX_SPILL_BYTES,
        workers: int = DEFAULT_WORKERS,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = 3,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        token: str | None = None,
        metrics: PayloadLoggerMetrics | None = None,
    ) -> None:
        """Configure the emitter and open its spill; nothing is sent until :meth:`start`.

        Args:
            url: The collector's events endpoint, e.g. ``http://127.0.0.1:8082/events``.
            inference_service: ``Ce-Inferenceservicename``.
            namespace: ``Ce-Namespace``.
            component: ``Ce-Component``.
            endpoint: ``Ce-Endpoint``.
            source: ``Ce-Source``.
            max_queue_events: Events held in memory at most.
            max_queue_bytes: Bytes of events held in memory at most.
            spill_dir: Folder for the on-disk spill (None, or ``max_spill_bytes`` 0: no spill,
                an event that finds the memory queue full is dropped).
            max_spill_bytes: Bytes the spill may hold.
            workers: Concurrent senders.
            timeout: Seconds per attempt (connect, write, answer).
            attempts: Failed attempts in a row after which the sink counts as away (its events
                go to the spill, one sender probes).
            backoff_initial: First backoff, in seconds; doubled on every failure.
            backoff_max: Longest backoff (and longest ``Retry-After`` honoured).
            token: Sent as ``Authorization: Bearer <token>`` (the collector's events token).
            metrics: Where to count (default: the process-wide series on ``/metrics``).

        Raises:
            ValueError: A bound too small to hold one inference's two events.
            monitoring.spill.SpillError: The spill folder cannot be used.
        """
        if max_queue_events < 2:
            raise ValueError("max_queue_events must hold at least one request and one response")
        if max_queue_bytes <= 0 or attempts < 1:
            raise ValueError("max_queue_bytes and attempts must be positive")
        self.url = url
        self.meta: dict[str, Any] = {
            "inference_service": inference_service,
            "namespace": namespace,
            "component": component,
            "endpoint": endpoint,
            "source": source,
        }
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.workers = max(1, workers)
        self.timeout = timeout
        self.attempts = attempts
        self.clock = _Clock(backoff_initial, backoff_max)
        self.stats = LoggerStats()
        from monitoring.events import binary_headers
        from monitoring.metrics import PAYLOAD_OUTCOMES, payload_logger_metrics

        self._binary_headers = binary_headers

        self._outcomes = frozenset(PAYLOAD_OUTCOMES)
        self.metrics = metrics or payload_logger_metrics()
        self.metrics.track(self)
        self.spill = (
            EventSpill(spill_dir, max_spill_bytes) if spill_dir and max_spill_bytes > 0 else None
        )
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._memory: deque[PayloadEvent] = deque()
        self._memory_bytes = 0
        self._seq = 0
        self._count_lock = threading.Lock()
        self._sink_ok = True
        self._failures = 0
        self._busy = 0  # events from memory being sent
        self._parking: asyncio.Future[list[PayloadEvent]] | None = None
        self._last_drop_log = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._at_exit = functools.partial(_spill_at_exit, weakref.ref(self))

    # -- state ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True once the sender tasks run."""
        return bool(self._tasks)

    @property
    def sink_available(self) -> bool:
        """False while the sink is away (its last attempts failed)."""
        return self._sink_ok

    def queue_sizes(self) -> dict[str, tuple[int, int]]:
        """``{"memory": (events, bytes), "spill": (events, bytes)}``."""
        spilled = (self.spill.depth, self.spill.bytes) if self.spill else (0, 0)
        return {"memory": (len(self._memory), self._memory_bytes), "spill": spilled}

    def _count(self, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._count_lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + n)
        if outcome in self._outcomes:
            self.metrics.events.labels(outcome=outcome).inc(n)

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- logging ------------------------------------------------------------------------------

    def _events(
        self,
        request_body: bytes,
        response_body: bytes | None,
        inference_id: str | None,
        content_type: str,
    ) -> tuple[str, list[PayloadEvent]]:
        event_id = inference_id or str(uuid.uuid4())
        now = datetime.now(UTC)
        bodies = [("request", request_body)]
        if response_body is not None:
            bodies.append(("response", response_body))
        events = []
        for kind, body in bodies:
            self._seq = max(self._seq + 1, time.time_ns())
            headers = self._binary_headers(
                event_id, kind, content_type=content_type, time=now, **self.meta
            )
            events.append(PayloadEvent(self._seq, headers, body))
        self._count("logged", len(events))
        return event_id, events

    def _fits_memory(self, event: PayloadEvent) -> bool:
        return (
            len(self._memory) < self.max_queue_events
            and self._memory_bytes + event.size <= self.max_queue_bytes
        )

    def _to_memory(self, event: PayloadEvent, *, front: bool = False) -> None:
        (self._memory.appendleft if front else self._memory.append)(event)
        self._memory_bytes += event.size

    def _admit(self, events: list[PayloadEvent]) -> list[PayloadEvent]:
        """Queue what goes to memory; return what must go to the spill (or be dropped).

        While the sink is away or the spill holds events, new events go to the spill too, so
        that they are durable and sent after the older ones.
        """
        disk_first = self.spill is not None and (not self._sink_ok or self.spill.depth > 0)
        rest = []
        for event in events:
            if not disk_first and self._fits_memory(event):
                self._to_memory(event)
            else:
                rest.append(event)
        return rest

    def _spill_events(self, events: Iterable[PayloadEvent]) -> list[PayloadEvent]:
        """Write ``events`` to the spill (any thread); return those that did not fit."""
        refused = []
        for event in events:
            try:
                stored = self.spill is not None and self.spill.put(event)
            except OSError as e:
                log.error("payload logger: cannot spill %s: %s", event.label, e)
                stored = False
            if stored:
                self._count("spilled")
            else:
                refused.append(event)
        return refused

    @property
    def _full_reason(self) -> str:
        if self.spill is None:
            return "memory queue full and no spill"
        return "memory queue full and spill full"

    def _hold_or_drop(self, events: list[PayloadEvent], reason: str) -> None:
        for event in events:
            if self._fits_memory(event):
                self._to_memory(event)
            else:
                self._drop(event, reason)

    def _drop(self, event: PayloadEvent, reason: str) -> None:
        self._count("dropped")
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.error(
                "payload logger: DROPPED event %s (%s); %d dropped so far. Memory queue "
                "%d events / %d bytes, spill %s",
                event.label,
                reason,
                self.stats.dropped,
                len(self._memory),
                self._memory_bytes,
                f"{self.spill.depth} events / {self.spill.bytes} bytes in {self.spill.folder}"
                if self.spill
                else "off",
            )

    def _ensure_started(self) -> None:
        if self._tasks or self._starting is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: start() must be awaited
            self._starting = asyncio.get_running_loop().create_task(self.start())

    def log(
        self,
        request_body: bytes,
        response_body: bytes | None,
        *,
        inference_id: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Queue the request and response events of one inference; never raises.

        It returns at once unless the events must go to the spill (the sink is away, or the
        memory queue is full): then it writes them before returning (:meth:`submit` writes them
        in a thread instead).

        Args:
            request_body: The inference request as received.
            response_body: The response as sent (None: only the request is logged).
            inference_id: The request's ``Ce-Id`` if it had one; otherwise a new UUID is used.
            content_type: The request's content type (used for both events, like KServe).

        Returns:
            The inference id the events carry (to hand back to clients for label feedback).
        """
        event_id, events = self._events(request_body, response_body, inference_id, content_type)
        try:
            self._ensure_started()
            rest = self._admit(events)
            if rest:
                self._hold_or_drop(self._spill_events(rest), self._full_reason)
        except Exception:  # logging must never break inference
            log.exception("payload logger could not queue the events of %s", event_id)
        self._notify()
        return event_id

    async def submit(
        self,
        request_body: bytes,
        response_body: bytes | None,
        *,
        inference_id: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Like :meth:`log`, with spill writes in a worker thread (the event loop never waits)."""
        event_id, events = self._events(request_body, response_body, inference_id, content_type)
        try:
            self._ensure_started()
            rest = self._admit(events)
            if rest:
                refused = await asyncio.to_thread(self._spill_events, rest)
                self._hold_or_drop(refused, self._full_reason)
        except Exception:
            log.exception("payload logger could not queue the events of %s", event_id)
        self._notify()
        return event_id

    def drop_unlogged(self, count: int, reason: str) -> None:
        """Count events of an answered request that could not even be built (and say why)."""
        self._count("logged", count)
        self._count("dropped", count)
        log.error("payload logger: DROPPED %d events: %s", count, reason)

    # -- senders ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the senders on the running event loop (idempotent); the spill drains first."""
        if self._tasks:
            return
        import httpx

        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=self.timeout)
        self._tasks = [
            asyncio.create_task(self._run(i), name=f"payload-logger-{i}")
            for i in range(self.workers)
        ]
        atexit.register(self._at_exit)
        if self.spill is not None and self.spill.depth:
            log.info(
                "payload logger: %d events (%d bytes) wait in %s from an earlier run; sending "
                "them first",
                self.spill.depth,
                self.spill.bytes,
                self.spill.folder,
            )

    async def stop(self, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
        """Give the memory queue up to ``drain_seconds`` to go out, then spill what is left.

        Without a spill (or with a full one) what is left is dropped, counted and logged.
        """
        loop = asyncio.get_running_loop()
        if self._tasks:
            deadline = loop.time() + drain_seconds
            while (self._memory or self._busy) and self._sink_ok and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert self._stopping is not None
            self._stopping.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            if self._parking is not None:
                await asyncio.wait({self._parking})
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
        left = list(self._memory)
        self._memory.clear()
        self._memory_bytes = 0
        if left:
            refused = await asyncio.to_thread(self._spill_events, left) if self.spill else left
            for event in refused:
                self._drop(event, "stopped with the event unsent and no room in a spill")
            log.info(
                "payload logger stopped: %d queued events spilled, %d dropped",
                len(left) - len(refused),
                len(refused),
            )
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        atexit.unregister(self._at_exit)
        if self.spill is not None:
            self.spill.close()

    async def _run(self, index: int) -> None:
        assert self._stopping is not None
        # Stopping is a flag as well as a cancellation: Python 3.11's wait_for can swallow a
        # cancellation that arrives as the awaited event fires.
        while not self._stopping.is_set():
            if self._sink_ok:
                item = await self._take()
                if item is None:
                    await self._idle()
                else:
                    await self._deliver(item)
            elif (
                self.spill is not None
                and self._memory
                and self._parking is None
                and self.spill.has_room(self._memory[0].size)
            ):
                await self._park_memory()
            elif index == 0:
                await self._probe()
            else:
                await self._idle()

    async def _idle(self) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _take(self) -> _Item | None:
        """The next event to send: memory first (older), then the oldest spilled one."""
        if self._memory:
            event = self._memory.popleft()
            self._memory_bytes -= event.size
            return _Item(event)
        if self.spill is None or not self.spill.pending:
            return None
        return await self._take_spilled()

    def _give_back(self, item: _Item) -> None:
        if item.name is not None:
            assert self.spill is not None
            self.spill.release(item.name)
        else:
            self._to_memory(item.event, front=True)
        self._notify()

    def _done(self, item: _Item, answer: _Answer) -> None:
        if item.name is not None:
            assert self.spill is not None
            self.spill.remove(item.name)
        if answer.outcome == "delivered":
            self._count("delivered")
            self._mark_ok()
        else:
            self._count("rejected")
            log.error(
                "payload logger: %s REJECTED event %s: %s; not sending it again",
                self.url,
                item.event.label,
                answer.reason,
            )

    def _mark_ok(self) -> None:
        if not self._sink_ok:
            log.warning(
                "payload logger: %s answers again; sending %d queued and %d spilled events",
                self.url,
                len(self._memory),
                self.spill.depth if self.spill else 0,
            )
        self._sink_ok = True
        self._failures = 0
        self._notify()

    def _mark_away(self, reason: str) -> None:
        if self._sink_ok:
            log.warning(
                "payload logger: %s is unreachable (%s); %s until it answers",
                self.url,
                reason,
                f"spilling events to {self.spill.folder}"
                if self.spill
                else "holding events in memory (no spill: they are dropped when it is full)",
            )
        self._sink_ok = False
        self._notify()

    async def _deliver(self, item: _Item) -> None:
        """Send one event, retrying while the sink is counted as available."""
        from_memory = item.name is None
        self._busy += from_memory
        try:
            attempt = 0
            while True:
                attempt += 1
                answer = await self._post(item.event)
                if answer.outcome != "retry":
                    self._done(item, answer)
                    return
                self._count("retried")
                self._failures += 1
                assert self._stopping is not None
                if self._stopping.is_set():
                    self._give_back(item)
                    return
                if attempt >= self.attempts or not self._sink_ok:
                    self._mark_away(answer.reason)
                    self._give_back(item)
                    return
                await self._sleep(self.clock.delay(attempt, answer.retry_after))
        except asyncio.CancelledError:
            self._give_back(item)
            raise
        finally:
            self._busy -= from_memory

    async def _probe(self) -> None:
        """While the sink is away: try the oldest event once, back off on failure."""
        if self.spill is not None and self.spill.pending:
            item = await self._take_spilled()
        elif self._memory:
            event = self._memory.popleft()
            self._memory_bytes -= event.size
            item = _Item(event)
        else:
            item = None
        if item is None:
            await self._idle()
            return
        try:
            answer = await self._post(item.event)
            if answer.outcome != "retry":
                self._done(item, answer)
                return
            self._count("retried")
            self._failures += 1
            self._give_back(item)
        except asyncio.CancelledError:
            self._give_back(item)
            raise
        await self._sleep(self.clock.delay(self._failures, answer.retry_after))

    async def _take_spilled(self) -> _Item | None:
        """Claim the oldest spilled event (read in a thread; released if cancelled meanwhile)."""
        spill = self.spill
        assert spill is not None
        reading = asyncio.ensure_future(asyncio.to_thread(spill.take))
        try:
            claimed = await asyncio.shield(reading)
        except asyncio.CancelledError:

            def release(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    spill.release(done.result()[0])

            reading.add_done_callback(release)
            raise
        if claimed is None:
            return None
        name, event = claimed
        if event is None:
            self._count("dropped")  # an unreadable file, logged by the spill
            return None
        return _Item(event, name)

    async def _park_memory(self) -> None:
        """Move the memory queue to the spill (the sink is away).

        The events leave memory once written, even when this sender is cancelled meanwhile
        (:meth:`stop` waits for the write), so none is spilled twice.
        """
        snapshot = list(self._memory)
        writing = asyncio.ensure_future(asyncio.to_thread(self._spill_events, snapshot))

        def written(done: asyncio.Future[list[PayloadEvent]]) -> None:
            self._parking = None
            if done.cancelled() or done.exception() is not None:
                return
            parked = {e.seq for e in snapshot} - {e.seq for e in done.result()}
            remaining = [e for e in self._memory if e.seq not in parked]
            self._memory = deque(remaining)
            self._memory_bytes = sum(e.size for e in remaining)

        self._parking = writing
        writing.add_done_callback(written)
        refused = await asyncio.shield(writing)
        if refused:
            await self._idle()  # the spill is full: wait for room rather than spin

    async def _post(self, event: PayloadEvent) -> _Answer:
        import httpx

        assert self._client is not None
        try:
            response = await self._client.post(
                self.url, content=event.body, headers={**event.headers, **self._auth}
            )
        except httpx.TimeoutException:
            return _Answer("retry", f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, OSError) as e:
            return _Answer("retry", f"{type(e).__name__}: {e}")
        status = response.status_code
        if 200 <= status < 300:
            return _Answer("delivered")
        if status >= 500 or status in RETRY_STATUSES:
            return _Answer(
                "retry", f"HTTP {status}", _retry_after(response.headers.get("retry-after"))
            )
        return _Answer("rejected", f"HTTP {status}: {response.text[:300]}")


def _spill_at_exit(ref: weakref.ReferenceType[PayloadLogger]) -> None:
    """At interpreter exit without :meth:`PayloadLogger.stop`: spill (or count) the queue."""
    logger = ref()
    if logger is None or not logger._memory:
        return
    left = list(logger._memory)
    logger._memory.clear()
    for event in logger._spill_events(left) if logger.spill else left:
        logger._drop(event, "the process exited with the event unsent")


# -- the prediction hook ----------------------------------------------------------------------


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

    ``garbage serve --logger-url URL`` passes one to the predictor and runs :meth:`start` and
    :meth:`aclose` with the server. It holds only its settings when pickled (``--workers > 1``
    sends the hook to each worker process); the emitter is made in the process that uses it, on
    first use.
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

    async def start(self) -> None:
        """Start the emitter now (at server start: events spilled by an earlier run go out)."""
        await self.logger.start()

    async def aclose(self, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
        """Stop the emitter: the queue is sent within ``drain_seconds`` or spilled."""
        if self._logger is not None:
            await self._logger.stop(drain_seconds)

    async def __call__(
        self, request_id: str, inputs: list[bytes] | np.ndarray, predictions: list
    ) -> None:
        """Queue the request and response events of one answered request (runs after the answer)."""
        emitter = self.logger
        if not emitter.running:
            await emitter.start()
        try:
            body, content_type = await asyncio.to_thread(encode_request, inputs)
            response = json.dumps(v1_response(p.to_dict() for p in predictions)).encode()
        except Exception as e:
            emitter.drop_unlogged(2, f"request {request_id} could not be encoded: {e!r}")
            return
        await emitter.submit(body, response, inference_id=request_id, content_type=content_type)
