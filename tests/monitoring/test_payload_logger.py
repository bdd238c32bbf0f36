"""The local payload logger: KServe-format events reach the collector; it never blocks or raises."""

from __future__ import annotations

import asyncio

import pytest
from monitoring_helpers import make_jpeg, v1_request, v1_response
from support import free_port

from monitoring.payload_logger import PayloadLogger

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


@pytest.mark.integration
def test_events_arrive_at_the_collector_and_match(collector_server) -> None:
    async def scenario() -> tuple[list[str], PayloadLogger]:
        logger = PayloadLogger(f"{collector_server.url}/events", namespace="local")
        await logger.start()
        ids = [
            logger.log(v1_request([make_jpeg((90, 40, 40), i)]), v1_response(["trash"], CLASSES))
            for i in range(3)
        ]
        ids.append(
            logger.log(
                v1_request([make_jpeg((90, 40, 40), 9)]),
                v1_response(["glass"], CLASSES),
                inference_id="client-given-id",
            )
        )
        await logger.stop(drain_seconds=10)
        return ids, logger

    ids, logger = asyncio.run(scenario())
    assert ids[-1] == "client-given-id" and len(set(ids)) == 4
    assert (logger.stats.sent, logger.stats.failed, logger.stats.dropped) == (8, 0, 0)
    rows = collector_server.store.load_window().set_index("inference_id")
    assert sorted(rows.index) == sorted(ids)
    assert rows.loc["client-given-id", "prediction"] == "glass"
    assert rows["brightness"].notna().all()
    assert (rows["namespace"] == "local").all() and (rows["component"] == "predictor").all()


def test_unreachable_collector_neither_blocks_nor_raises() -> None:
    async def scenario() -> PayloadLogger:
        logger = PayloadLogger(
            f"http://127.0.0.1:{free_port()}/events", queue_size=4, workers=1, timeout=0.5
        )
        for _ in range(50):  # a plain call, no await: it can only touch the in-memory queue
            logger.log(b'{"instances": []}', b'{"predictions": []}')
        await asyncio.sleep(0)  # let the lazily scheduled start run
        await logger.stop(drain_seconds=3)
        return logger

    assert not asyncio.iscoroutinefunction(PayloadLogger.log)
    logger = asyncio.run(scenario())
    assert logger.stats.dropped >= 90  # the queue holds 4 events: the rest are dropped, not awaited
    assert logger.stats.queued + logger.stats.dropped == 100
    assert logger.stats.sent == 0 and logger.stats.failed >= 1


def test_logging_outside_an_event_loop_is_harmless() -> None:
    logger = PayloadLogger("http://127.0.0.1:9/events")
    event_id = logger.log(b"{}", None)
    assert event_id and logger.stats.queued == 1 and not logger.running
