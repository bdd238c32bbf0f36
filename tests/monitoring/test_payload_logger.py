"""The local payload logger: KServe-format events reach the collector, are retried, spilled to
disk while it is away and sent in order when it is back, and none is lost without being counted.

Most cases run against :class:`StubSink`, a stand-in for the collector on a real loopback socket
that answers as each test scripts it (503 then 202, 429 with ``Retry-After``, 400, never): the
real collector cannot be made to answer a given status on cue. "Down" is a port nobody listens
on. The real collector receives the events in the integration case.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from monitoring_helpers import make_jpeg, v1_request, v1_response
from prometheus_client import CollectorRegistry, generate_latest
from support import free_port

from monitoring.metrics import PAYLOAD_OUTCOMES, PayloadLoggerMetrics
from monitoring.payload_logger import PayloadLogger, _Clock, _retry_after

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 10.0}
"""Backoff short enough for tests (the defaults are 0.1 s to 5 s). The timeout stays long, so
that a loaded CI machine never turns a slow answer into an extra retry; the one case about
timeouts sets its own."""

Answer = tuple[int, dict[str, str]]


class StubSink:
    """A stand-in collector: a real HTTP server on loopback answering ``answer(event)``.

    ``answer`` gets ``{"id", "type", "time", "body"}`` and returns ``(status, headers)``, or None
    to never answer (the connection stays open until the sink closes). Every attempt is kept in
    ``received``.
    """

    def __init__(self, answer: Callable[[dict], Answer | None] = lambda e: (202, {})) -> None:
        self.answer = answer
        self.received: list[dict] = []
        self.closed = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                event = {
                    "id": self.headers.get("Ce-Id"),
                    "type": self.headers.get("Ce-Type", "").rsplit(".", 1)[-1],
                    "time": self.headers.get("Ce-Time"),
                    "auth": self.headers.get("Authorization"),
                    "body": self.rfile.read(length),
                }
                sink.received.append(event)
                reply = sink.answer(event)
                if reply is None:
                    sink.closed.wait(30)
                    return
                status, headers = reply
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Callable[..., StubSink]]:
    made: list[StubSink] = []

    def make(answer: Callable[[dict], Answer | None] = lambda e: (202, {})) -> StubSink:
        made.append(StubSink(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _logger(url: str, **options) -> PayloadLogger:
    """A logger counting into a registry of its own (the test reads it)."""
    options = {**FAST, **options}
    return PayloadLogger(url, metrics=PayloadLoggerMetrics(CollectorRegistry()), **options)


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        await asyncio.sleep(0.01)


def _counter(logger: PayloadLogger, outcome: str) -> float:
    value = logger.metrics.registry.get_sample_value(
        "garbage_payload_events_total", {"outcome": outcome}
    )
    assert value is not None
    return value


# -- retries ----------------------------------------------------------------------------------


def test_retriable_answers_are_retried_with_the_same_event(sink) -> None:
    script = iter([(503, {}), (429, {"Retry-After": "0"}), (500, {})])
    stub = sink(lambda e: next(script, (202, {})) if e["type"] == "request" else (202, {}))

    async def scenario() -> PayloadLogger:
        logger = _logger(stub.url, attempts=5, workers=1, token="t0ken-for-the-events")
        await logger.start()
        logger.log(b'{"instances": []}', b'{"predictions": []}', inference_id="same-1")
        await _until(lambda: logger.stats.delivered == 2)
        await logger.stop()
        return logger

    logger = asyncio.run(scenario())
    requests = [e for e in stub.received if e["type"] == "request"]
    assert len(requests) == 4  # three refusals, then accepted
    assert {e["id"] for e in requests} == {"same-1"}
    assert len({e["time"] for e in requests}) == 1  # the event is fixed when logged
    assert {e["auth"] for e in stub.received} == {"Bearer t0ken-for-the-events"}
    assert (logger.stats.retried, logger.stats.delivered, logger.stats.rejected) == (3, 2, 0)
    assert _counter(logger, "retried") == 3 and _counter(logger, "delivered") == 2


def test_a_client_error_is_rejected_once_counted_and_logged(sink, caplog) -> None:
    stub = sink(lambda e: (400, {}) if e["type"] == "request" else (202, {}))

    async def scenario() -> PayloadLogger:
        logger = _logger(stub.url)
        logger.log(b"not json", b'{"predictions": []}', inference_id="bad-1")
        await asyncio.sleep(0)  # the first log() schedules the start
        await _until(lambda: logger.stats.delivered + logger.stats.rejected == 2)
        await logger.stop()
        return logger

    with caplog.at_level(logging.ERROR, logger="monitoring.payload_logger"):
        logger = asyncio.run(scenario())
    assert [e["type"] for e in stub.received].count("request") == 1  # never sent again
    assert (logger.stats.rejected, logger.stats.delivered, logger.stats.retried) == (1, 1, 0)
    assert _counter(logger, "rejected") == 1
    assert "REJECTED event bad-1 (request): HTTP 400" in caplog.text


def test_backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after() -> None:
    clock = _Clock(0.1, 2.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 2.0), (30, 2.0)]:
        delays = [clock.delay(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not fixed
    assert 1.5 <= clock.delay(1, retry_after=1.5) <= 1.5
    assert clock.delay(1, retry_after=60) == 2.0  # capped
    assert _retry_after("7") == 7.0 and _retry_after("soon") is None
    assert 0 <= _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# -- the collector away: spill, drain in order, restart -----------------------------------------


def _log_many(logger: PayloadLogger, count: int, prefix: str) -> list[str]:
    return [
        logger.log(b'{"instances": [%d]}' % i, b'{"predictions": []}', inference_id=f"{prefix}{i}")
        for i in range(count)
    ]


def test_the_spill_takes_over_while_the_collector_is_down_and_drains_in_order(
    sink, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}/events"

    async def while_down() -> PayloadLogger:
        logger = _logger(down, spill_dir=tmp_path / "spill", workers=2)
        await logger.start()
        ids = _log_many(logger, 5, "a")
        await _until(lambda: not logger.sink_available and not logger._memory)
        ids += _log_many(logger, 5, "b")  # straight to the spill now
        await logger.stop(drain_seconds=0.1)
        assert ids == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        return logger

    first = asyncio.run(while_down())
    assert first.stats.delivered == 0 and first.stats.dropped == 0
    assert first.stats.spilled == 20 and first.queue_sizes()["memory"] == (0, 0)
    [folder] = [p for p in (tmp_path / "spill").iterdir() if p.is_dir()]
    assert len(list(folder.glob("*.event"))) == 20

    stub = sink()

    async def back() -> PayloadLogger:  # a new process would do the same: adopt, send, delete
        logger = _logger(stub.url, spill_dir=tmp_path / "spill", workers=1)
        assert logger.queue_sizes()["spill"][0] == 20
        await logger.start()
        await _until(lambda: logger.stats.delivered == 20)
        await logger.stop()
        return logger

    second = asyncio.run(back())
    order = [(e["id"], e["type"]) for e in stub.received]
    expected = [(f"{p}{i}", t) for p in "ab" for i in range(5) for t in ("request", "response")]
    assert order == expected  # one sender: exactly the order they were logged in
    assert second.queue_sizes()["spill"] == (0, 0)
    assert not list((tmp_path / "spill").rglob("*.event"))


def test_the_collector_coming_back_ends_the_outage_without_a_restart(sink) -> None:
    up = threading.Event()
    stub = sink(lambda e: (202, {}) if up.is_set() else (503, {"Retry-After": "0"}))

    async def scenario() -> PayloadLogger:
        logger = _logger(stub.url, backoff_max=0.05)
        await logger.start()
        _log_many(logger, 10, "x")
        await _until(lambda: not logger.sink_available)
        up.set()
        await _until(lambda: logger.stats.delivered == 20)
        assert logger.sink_available
        await logger.stop()
        return logger

    logger = asyncio.run(scenario())
    assert logger.stats.retried >= 3 and logger.stats.dropped == 0
    assert sorted({e["id"] for e in stub.received}) == sorted(f"x{i}" for i in range(10))


def test_without_a_spill_a_full_queue_drops_and_counts_every_event(caplog) -> None:
    async def scenario() -> PayloadLogger:
        logger = _logger(f"http://127.0.0.1:{free_port()}/events", max_queue_events=4)
        for _ in range(50):  # a plain call, no await: it can only touch the in-memory queue
            logger.log(b'{"instances": []}', b'{"predictions": []}')
        await asyncio.sleep(0)
        await logger.stop(drain_seconds=0.5)
        return logger

    assert not asyncio.iscoroutinefunction(PayloadLogger.log)
    with caplog.at_level(logging.ERROR, logger="monitoring.payload_logger"):
        logger = asyncio.run(scenario())
    stats = logger.stats
    assert stats.logged == 100 and stats.delivered == 0 and stats.spilled == 0
    assert stats.dropped == 100  # 96 at once, the 4 held ones when it stopped
    assert _counter(logger, "dropped") == 100
    assert "DROPPED" in caplog.text and "no spill" in caplog.text


def test_memory_is_bounded_in_bytes_and_the_spill_in_bytes_too(tmp_path: Path) -> None:
    body = b"x" * 100_000

    async def scenario() -> tuple[PayloadLogger, list[tuple[int, int]]]:
        logger = _logger(
            f"http://127.0.0.1:{free_port()}/events",
            max_queue_bytes=350_000,
            spill_dir=tmp_path,
            max_spill_bytes=1_000_000,
            attempts=1000,  # the collector never counts as away: memory fills, then the spill
        )
        seen = []
        for _ in range(20):
            logger.log(body, None)
            seen.append((logger.queue_sizes()["memory"][1], logger.queue_sizes()["spill"][1]))
        await logger.stop(drain_seconds=0)
        return logger, seen

    logger, seen = asyncio.run(scenario())
    assert max(memory for memory, _ in seen) <= 350_000
    assert max(spill for _, spill in seen) <= 1_000_000
    assert logger.stats.spilled >= 9 and logger.stats.dropped >= 1
    assert logger.stats.logged == 20 == logger.stats.spilled + logger.stats.dropped


def test_a_sink_that_never_answers_costs_neither_latency_nor_unbounded_memory(
    sink, tmp_path: Path
) -> None:
    stub = sink(lambda e: None)

    async def scenario() -> tuple[PayloadLogger, float]:
        logger = _logger(stub.url, timeout=0.2, attempts=1, spill_dir=tmp_path, workers=2)
        await logger.start()
        slowest = 0.0
        for i in range(200):
            started = time.perf_counter()
            await logger.submit(b"y" * 10_000, b"{}", inference_id=f"h{i}")
            slowest = max(slowest, time.perf_counter() - started)
            assert logger.queue_sizes()["memory"][1] <= logger.max_queue_bytes
            await asyncio.sleep(0.001)
        await _until(lambda: not logger.sink_available)
        await logger.stop(drain_seconds=0.1)
        return logger, slowest

    logger, slowest = asyncio.run(scenario())
    assert slowest < 0.5  # submit never waits for the sink (spill writes included)
    assert logger.stats.delivered == 0 and logger.stats.dropped == 0
    assert logger.stats.spilled >= 400  # an event parked as the logger stops may be written twice
    assert len(list(tmp_path.rglob("*.event"))) == 400


def test_a_clean_stop_sends_or_spills_everything_queued(sink, tmp_path: Path) -> None:
    stub = sink()

    async def scenario(url: str, spill: Path | None) -> PayloadLogger:
        logger = _logger(url, spill_dir=spill)
        await logger.start()
        _log_many(logger, 30, "s")
        await logger.stop(drain_seconds=5)
        return logger

    sent = asyncio.run(scenario(stub.url, None))
    assert sent.stats.delivered == 60 and len(stub.received) == 60
    spilled = asyncio.run(scenario(f"http://127.0.0.1:{free_port()}/events", tmp_path))
    assert spilled.stats.spilled == 60 and spilled.stats.dropped == 0
    assert len(list(tmp_path.rglob("*.event"))) == 60


def test_logging_outside_an_event_loop_is_harmless() -> None:
    logger = _logger("http://127.0.0.1:9/events")
    event_id = logger.log(b"{}", None)
    assert event_id and logger.stats.logged == 1 and not logger.running
    assert logger.queue_sizes()["memory"][0] == 1


# -- the spill on disk ------------------------------------------------------------------------


# -- metrics ----------------------------------------------------------------------------------


def test_the_counters_and_queue_gauges_are_exported() -> None:
    registry = CollectorRegistry()
    metrics = PayloadLoggerMetrics(registry)
    logger = PayloadLogger("http://127.0.0.1:9/events", metrics=metrics)
    logger.log(b"12345", b"678")
    text = generate_latest(registry).decode()
    for outcome in PAYLOAD_OUTCOMES:
        assert f'garbage_payload_events_total{{outcome="{outcome}"}} 0.0' in text
    assert 'garbage_payload_queue_events{where="memory"} 2.0' in text
    assert 'garbage_payload_queue_events{where="spill"} 0.0' in text
    size = registry.get_sample_value("garbage_payload_queue_bytes", {"where": "memory"})
    assert size == sum(e.size for e in logger._memory) > 8
    del logger
    gc.collect()
    text = generate_latest(registry).decode()
    assert 'garbage_payload_queue_events{where="memory"} 0.0' in text  # gone with the logger


# -- the real collector -----------------------------------------------------------------------


@pytest.mark.integration
def test_events_arrive_at_the_collector_and_match(secured_collector) -> None:
    async def scenario() -> tuple[list[str], PayloadLogger]:
        logger = _logger(f"{secured_collector.url}/events", namespace="local")
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
        logger.log(b'{"instances": "not a list"}', None, inference_id="unusable")
        await logger.stop(drain_seconds=10)
        return ids, logger

    ids, logger = asyncio.run(scenario())
    assert ids[-1] == "client-given-id" and len(set(ids)) == 4
    stats = logger.stats
    assert (stats.delivered, stats.rejected, stats.dropped, stats.retried) == (8, 1, 0, 0)
    rows = secured_collector.store.load_window().set_index("inference_id")
    assert sorted(rows.index) == sorted(ids)
    assert rows.loc["client-given-id", "prediction"] == "glass"
    assert rows["brightness"].notna().all()
    assert (rows["namespace"] == "local").all() and (rows["component"] == "predictor").all()


# -- the cluster's durable path: KServe's agent -> Kafka broker -> Trigger -> collector ----------

EVENTING = REPO / "manifests" / "monitoring" / "eventing"
BROKER_INGRESS = "http://kafka-broker-ingress.knative-eventing.svc.cluster.local"


@pytest.fixture(scope="module")
def eventing_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The kind overlay with both eventing components, as an overlay that adds them renders."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed; it renders the kustomize trees")
    root = tmp_path_factory.mktemp("overlay-with-eventing")
    manifests = Path(os.path.relpath(REPO / "manifests", root))
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(manifests / "overlays" / "kind")],
                "components": [
                    str(manifests / "monitoring" / "eventing"),
                    str(manifests / "monitoring" / "eventing" / "logger-to-broker"),
                ],
            }
        )
    )
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(root)], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def _named(docs: list[dict], kind: str, name: str, namespace: str) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: found {len(found)}"
    return found[0]


def test_the_eventing_objects_validate_against_the_pinned_crds(eventing_docs) -> None:
    import kubernetes_validate
    from manifests.crd_schema import pinned_crds

    crds = pinned_crds()
    ours = [
        d
        for d in eventing_docs
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
        == "payload-logging"
    ]
    kinds = sorted(d["kind"] for d in ours)
    assert kinds == ["Broker", "Broker", "ConfigMap", "NetworkPolicy", "NetworkPolicy", "Trigger"]
    problems = []
    for doc in ours + [d for d in eventing_docs if d["kind"] == "InferenceService"]:
        if doc["kind"] in ("ConfigMap", "NetworkPolicy"):
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
        else:
            problems += crds.problems(doc)
    assert problems == []
    assert not crds.cel_rules("eventing.knative.dev/v1", "Broker")
    assert not crds.cel_rules("eventing.knative.dev/v1", "Trigger")


def test_the_logger_posts_to_a_kafka_broker_whose_trigger_retries_into_the_collector(
    eventing_docs,
) -> None:
    from manifests.cluster_model import predictor_pod, serving_objects
    from manifests.network_policy import Pod, connection_allowed

    from monitoring.collector import EVENTS_PATH

    isvc, runtime = serving_objects(eventing_docs)
    trigger = _named(
        eventing_docs, "Trigger", "garbage-payloads-to-collector", "garbage-monitoring"
    )
    namespace = trigger["metadata"]["namespace"]
    broker = _named(eventing_docs, "Broker", trigger["spec"]["broker"], namespace)
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    url = isvc["spec"]["predictor"]["logger"]["url"]
    assert url == f"{BROKER_INGRESS}/{namespace}/{broker['metadata']['name']}"
    assert isvc["spec"]["predictor"]["logger"]["mode"] == "all"
    for b in (broker, _named(eventing_docs, "Broker", "garbage-payloads-dead-letter", namespace)):
        ref = b["spec"]["config"]
        config = _named(eventing_docs, ref["kind"], ref["name"], ref["namespace"])
        assert {"bootstrap.servers", "default.topic.partitions"} <= set(config["data"])
        assert int(config["data"]["default.topic.replication.factor"]) >= 1
    subscriber = trigger["spec"]["subscriber"]
    service = _named(eventing_docs, "Service", subscriber["ref"]["name"], namespace)
    assert service["metadata"]["name"] == "garbage-collector" and subscriber["uri"] == EVENTS_PATH
    assert 80 in {p["port"] for p in service["spec"]["ports"]}  # a Service ref resolves to :80
    delivery = trigger["spec"]["delivery"]
    assert delivery["retry"] >= 5 and delivery["backoffPolicy"] == "exponential"
    dead = delivery["deadLetterSink"]["ref"]
    assert _named(eventing_docs, dead["kind"], dead["name"], dead["namespace"])
    assert dead["name"] != broker["metadata"]["name"]  # never back into the failing path

    collector = Pod("garbage-monitoring", {"app.kubernetes.io/name": "garbage-collector"})
    receiver = Pod("knative-eventing", {"app": "kafka-broker-receiver"})
    dispatcher = Pod("knative-eventing", {"app": "kafka-broker-dispatcher"})
    predictor = predictor_pod(isvc, runtime)
    assert connection_allowed(eventing_docs, predictor, receiver, 8080)
    assert connection_allowed(eventing_docs, dispatcher, collector, 8080)
    without = [d for d in eventing_docs if d["metadata"]["name"] != "collector-ingress-from-broker"]
    assert not connection_allowed(without, dispatcher, collector, 8080)
