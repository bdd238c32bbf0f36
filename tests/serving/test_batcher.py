"""The micro-batcher on its own, with a stand-in model (a function of the pixels)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batcher import MicroBatcher


class RecordingModel:
    """Returns each image's first pixel as its row; records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.fail = fail
        self.release = threading.Event()
        self.release.set()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        self.batches.append(len(pixels))
        if self.fail:
            raise RuntimeError("the model broke")
        return pixels.reshape(len(pixels), -1)[:, :1].astype(np.float32)


def images(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(3, axis=3)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def test_requests_arriving_while_the_model_runs_form_one_batch(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=32, max_wait_s=0, executor=executor)

    async def scenario():
        model.release.clear()  # the first call blocks until the others have queued
        first = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(images(v, v))) for v in range(2, 7)]
        await asyncio.sleep(0.05)
        model.release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert model.batches == [1, 10]
    assert first.ravel().tolist() == [1]
    assert [r.ravel().tolist() for r in rest] == [[v, v] for v in range(2, 7)]


def test_batches_never_exceed_the_maximum_and_big_requests_are_split(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.05, executor=executor)

    async def scenario():
        return await asyncio.gather(
            batcher.submit(images(*range(10))), batcher.submit(images(50, 51, 52))
        )

    big, small = asyncio.run(scenario())
    assert big.ravel().tolist() == list(range(10))
    assert small.ravel().tolist() == [50, 51, 52]
    assert max(model.batches) <= 4 and sum(model.batches) == 13


def test_max_wait_gathers_requests_that_trickle_in(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.2, executor=executor)

    async def scenario():
        tasks = []
        for v in range(3):
            tasks.append(asyncio.ensure_future(batcher.submit(images(v))))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert model.batches == [3]
    assert [r.item() for r in results] == [0, 1, 2]


def test_without_wait_an_idle_model_runs_a_lone_request_at_once(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)

    async def scenario():
        out = []
        for v in range(3):
            out.append(await batcher.submit(images(v)))
        return out

    asyncio.run(scenario())
    assert model.batches == [1, 1, 1]


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_next_batch_runs(executor) -> None:
    model = RecordingModel(fail=True)
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.05, executor=executor)

    async def scenario():
        results = await asyncio.gather(
            batcher.submit(images(1)), batcher.submit(images(2)), return_exceptions=True
        )
        model.fail = False
        return results, await batcher.submit(images(3))

    failed, recovered = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert recovered.item() == 3


def test_deferred_pixels_are_produced_on_the_model_thread(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)
    threads = []

    def decode() -> np.ndarray:
        threads.append(threading.current_thread())
        return images(7)

    result = asyncio.run(batcher.submit(decode, images=1))
    assert result.item() == 7
    assert threads == [executor.submit(threading.current_thread).result()]
    assert model.batches == [1]


def test_a_failing_deferred_submission_fails_only_its_own_caller(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)

    def corrupt() -> np.ndarray:
        raise ValueError("not an image")

    async def scenario():
        model.release.clear()  # hold the first call so that the next three share one batch
        first = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(batcher.submit(images(2))),
            asyncio.ensure_future(batcher.submit(corrupt, images=1)),
            asyncio.ensure_future(batcher.submit(lambda: images(4, 5), images=2)),
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, (good, failed, deferred) = asyncio.run(scenario())
    assert first.item() == 1
    assert good.item() == 2
    assert isinstance(failed, ValueError)
    assert deferred.ravel().tolist() == [4, 5]
    assert model.batches == [1, 3]


def test_idle_only_while_nothing_is_queued_or_running(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)

    async def scenario():
        states = [batcher.idle]
        model.release.clear()
        call = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.05)
        states.append(batcher.idle)
        model.release.set()
        await call
        states.append(batcher.idle)
        return states

    assert asyncio.run(scenario()) == [True, False, True]


def test_a_caller_that_goes_away_does_not_disturb_the_others(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)

    async def scenario():
        model.release.clear()
        busy = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(images(2)))
        stays = asyncio.ensure_future(batcher.submit(images(3)))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        return await busy, await stays

    busy, stays = asyncio.run(scenario())
    assert (busy.item(), stays.item()) == (1, 3)
    assert model.batches == [1, 1]


def test_close_fails_waiting_callers(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)

    async def scenario():
        model.release.clear()
        waiting = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.05)
        await batcher.close()
        model.release.set()
        return await asyncio.gather(waiting, return_exceptions=True)

    (result,) = asyncio.run(scenario())
    assert isinstance(result, RuntimeError) and "shutting down" in str(result)


def test_works_again_on_a_new_event_loop(executor) -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0, executor=executor)
    assert asyncio.run(batcher.submit(images(4))).item() == 4
    assert asyncio.run(batcher.submit(images(5))).item() == 5


def test_rejects_a_zero_batch_size(executor) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(RecordingModel(), max_batch_size=0, max_wait_s=0, executor=executor)
