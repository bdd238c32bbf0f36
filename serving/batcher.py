"""Micro-batching: concurrent requests share one model call, each caller gets its own rows.

One worker task per event loop takes what is queued, up to ``max_batch_size`` images, runs the
model in a dedicated thread (so the event loop keeps accepting and decoding requests) and hands
every caller its slice of the result. While a call runs, new requests queue up and form the next
batch, so under load batches grow by themselves; ``max_wait_s`` only decides how long an
under-full batch waits for company when the model is idle (0: never, the lowest latency).

A submission is either pixels or a function that produces them (:data:`Deferred`), which the
model thread calls just before the model call: for a lone request on an idle model that saves a
thread hand-off (decoding elsewhere first gains nothing when there is nothing to overlap with).
If that function raises, only its caller gets the error; the rest of the batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

Deferred = Callable[[], np.ndarray]
"""Produces one submission's pixels (``uint8 [N, H, W, 3]``) on the model thread."""


@dataclass
class _Item:
    pixels: np.ndarray | Deferred
    images: int
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Group concurrent :meth:`submit` calls into calls of ``run_batch``.

    Args:
        run_batch: The model: ``uint8 [N, H, W, 3]`` in, one result row per image out. It is
            called in ``executor``, one call at a time.
        max_batch_size: Most images per call; a larger submission is split.
        max_wait_s: How long an under-full batch waits for more submissions while the model is
            idle.
        executor: Where ``run_batch`` runs; a single-thread executor keeps calls serialised.
        on_batch: Called with ``(images, seconds)`` after each model call (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float,
        executor: Executor,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._executor = executor
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._pending_images = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    @property
    def idle(self) -> bool:
        """Nothing queued and no model call running: a submission now runs at once."""
        return not self._pending and not self._running

    async def submit(self, pixels: np.ndarray | Deferred, images: int = 1) -> np.ndarray:
        """Run the model on ``pixels`` together with concurrent submissions.

        Args:
            pixels: ``uint8 [N, H, W, 3]``, or a :data:`Deferred` producing them.
            images: ``N`` for a :data:`Deferred` (at most ``max_batch_size``); ignored otherwise.

        Returns:
            One result row per image. Whatever ``pixels`` or the model raised is raised here.
        """
        if callable(pixels):
            return await self._enqueue(pixels, images)
        if len(pixels) > self.max_batch_size:
            parts = [
                pixels[i : i + self.max_batch_size]
                for i in range(0, len(pixels), self.max_batch_size)
            ]
            return np.concatenate(await asyncio.gather(*(self.submit(p) for p in parts)))
        return await self._enqueue(pixels, len(pixels))

    async def _enqueue(self, pixels: np.ndarray | Deferred, images: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        item = _Item(pixels, images, loop.create_future())
        self._pending.append(item)
        self._pending_images += images
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop the worker; callers still waiting get ``RuntimeError``."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._fail_pending(RuntimeError("the model server is shutting down"))

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        # A new event loop (a fresh server process or test): start over on it.
        self._fail_pending(RuntimeError("the event loop that owned these requests stopped"))
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._worker = loop.create_task(self._work(), name="garbage-micro-batcher")

    def _fail_pending(self, error: Exception) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(error)
        self._pending_images = 0

    async def _work(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0 and self._pending_images < self.max_batch_size:
                await self._wait_for_more()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _wait_for_more(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        deadline = self._loop.time() + self.max_wait_s
        while self._pending_images < self.max_batch_size:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                # Waiting on an Event (not on the queue) can be cancelled without losing items.
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._pending:
            n = self._pending[0].images
            if batch and size + n > self.max_batch_size:
                break
            item = self._pending.popleft()
            self._pending_images -= n
            if item.future.done():  # the caller went away (cancelled)
                continue
            batch.append(item)
            size += n
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        assert self._loop is not None
        start = time.perf_counter()
        self._running = True
        try:
            results, inputs = await self._loop.run_in_executor(
                self._executor, self._call_model, [item.pixels for item in batch]
            )
        except asyncio.CancelledError:  # close() while the model ran
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the model server is shutting down"))
            raise
        except Exception as e:  # the model failed: every caller of this batch gets the error
            images = sum(item.images for item in batch)
            logger.exception("model call on a batch of %d images failed", images)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            self._running = False
        if self._on_batch is not None and results is not None:
            self._on_batch(len(results), time.perf_counter() - start)
        offset = 0
        for item, pixels in zip(batch, inputs, strict=True):
            if isinstance(pixels, Exception):
                if not item.future.done():
                    item.future.set_exception(pixels)
                continue
            assert results is not None  # some pixels were produced, so the model ran
            if not item.future.done():
                item.future.set_result(results[offset : offset + len(pixels)])
            offset += len(pixels)

    def _call_model(
        self, inputs: list[np.ndarray | Deferred]
    ) -> tuple[np.ndarray | None, list[np.ndarray | Exception]]:
        """On the model thread: produce deferred pixels, then one model call on all of them.

        Returns:
            The model's rows (None when no submission had pixels) and, per submission, its
            pixels or the exception its :data:`Deferred` raised.
        """
        produced: list[np.ndarray | Exception] = []
        for pixels in inputs:
            try:
                produced.append(pixels() if callable(pixels) else pixels)
            except Exception as e:  # that caller's problem (e.g. a corrupt image), not the batch's
                produced.append(e)
        arrays = [p for p in produced if not isinstance(p, Exception)]
        if not arrays:
            return None, produced
        return self._run_batch(arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), produced
