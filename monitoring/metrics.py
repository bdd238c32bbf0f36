"""Prometheus metrics: the collector's own series, live accuracy, and the drift job's results.

Names (all prefixed ``garbage_``; the serving side owns ``garbage_predictions_total`` etc.):

Collector (scraped from ``/metrics``):
    ``garbage_monitoring_events_total{type,mode}``: CloudEvents accepted.
    ``garbage_monitoring_event_errors_total{reason}``: events rejected or only partly readable.
    ``garbage_monitoring_logged_images_total{status}``: images logged (``ok``/``unreadable``).
    ``garbage_monitoring_feedback_total{result}``: label feedback
    (``matched``/``unknown``/``invalid``).
    ``garbage_monitoring_feature_seconds``: time to extract one image's features.
    ``garbage_monitoring_stored_images_total{result}``: images of logged requests put into the
    image store: ``written``, or ``duplicate`` (the same bytes were stored already).
    ``garbage_monitoring_image_store_errors_total{operation}``: image store operations that
    failed (``put``: the event was logged without its image; ``get``, ``prune``).
    ``garbage_monitoring_pruned_images_total{reason}``: images deleted by retention (``age``,
    ``size``).
    ``garbage_monitoring_image_store_images``, ``garbage_monitoring_image_store_bytes``: images
    stored and their total size, as of the last retention run.
    ``garbage_live_accuracy{window}``, ``garbage_live_recall{window,label}``,
    ``garbage_live_labelled{window}``, and ``garbage_live_accuracy_random{window}`` with
    ``garbage_live_labelled_random{window}`` (over the random picks of ``garbage review`` only:
    the unbiased estimate): computed from the store at scrape time.

Payload logger (``garbage serve --logger-url``; on the model server's ``/metrics``):
    ``garbage_payload_events_total{outcome}``: what happened to the logged CloudEvents:
    ``delivered`` (the sink answered 2xx), ``rejected`` (it answered a 4xx other than 408/429:
    the event is not sent again), ``dropped`` (no room in memory and none in the spill: lost),
    and on the way ``retried`` (an attempt failed and will be repeated) and ``spilled``
    (written to the on-disk spill). Every event ends delivered, rejected or dropped, or waits in
    the queue or the spill.
    ``garbage_payload_queue_events{where}``, ``garbage_payload_queue_bytes{where}``: events
    waiting, ``where`` = ``memory`` or ``spill``.

Drift job (pushed to a Pushgateway and written as a text file):
    ``garbage_drift_detected``, ``garbage_drift_share``, ``garbage_drift_window_size``,
    ``garbage_drift_feature_score{feature}``, ``garbage_drift_feature_detected{feature}``,
    ``garbage_drift_embedding_share``, ``garbage_drift_last_run_timestamp_seconds``,
    ``garbage_drift_window_accuracy``, ``garbage_drift_window_recall{label}``,
    ``garbage_drift_window_labelled``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway
from prometheus_client.registry import Collector

from monitoring.accuracy import live_accuracy, parse_window

if TYPE_CHECKING:
    from monitoring.store import InferenceStore

DRIFT_JOB = "garbage-drift"


class CollectorMetrics:
    """The collector's counters, in a registry of their own (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "garbage_monitoring_events",
            "CloudEvents accepted.",
            ["type", "mode"],
            registry=self.registry,
        )
        self.errors = Counter(
            "garbage_monitoring_event_errors",
            "CloudEvents rejected or only partly readable, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.images = Counter(
            "garbage_monitoring_logged_images",
            "Images logged, by status.",
            ["status"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "garbage_monitoring_feedback",
            "Label feedback, by result.",
            ["result"],
            registry=self.registry,
        )
        self.images_stored = Counter(
            "garbage_monitoring_stored_images",
            "Images of logged requests put into the image store: written, or duplicate.",
            ["result"],
            registry=self.registry,
        )
        self.image_errors = Counter(
            "garbage_monitoring_image_store_errors",
            "Image store operations that failed (put: the event was logged without its image).",
            ["operation"],
            registry=self.registry,
        )
        self.images_pruned = Counter(
            "garbage_monitoring_pruned_images",
            "Images deleted by retention, by reason (age, size).",
            ["reason"],
            registry=self.registry,
        )
        self.image_store_images = Gauge(
            "garbage_monitoring_image_store_images",
            "Images in the image store at the last retention run.",
            registry=self.registry,
        )
        self.image_store_bytes = Gauge(
            "garbage_monitoring_image_store_bytes",
            "Total size of the images in the image store at the last retention run.",
            registry=self.registry,
        )
        self.feature_seconds = Histogram(
            "garbage_monitoring_feature_seconds",
            "Time to decode one image and extract its features.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


PAYLOAD_OUTCOMES = ("delivered", "retried", "spilled", "dropped", "rejected")
"""The ``outcome`` label values of ``garbage_payload_events_total``."""
QUEUE_PLACES = ("memory", "spill")
"""The ``where`` label values of the payload logger's queue gauges."""


class QueueReporter(Protocol):
    """What the queue gauges read from a payload logger."""

    def queue_sizes(self) -> Mapping[str, tuple[int, int]]:
        """``{where: (events, bytes)}`` for each of :data:`QUEUE_PLACES`."""
        ...


class _QueueGauges(Collector):
    """Sums the queues of the live payload loggers of this process at scrape time."""

    def __init__(self) -> None:
        self.loggers: weakref.WeakSet[QueueReporter] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        events = GaugeMetricFamily(
            "garbage_payload_queue_events",
            "Payload-logger events waiting to be sent, in memory or in the on-disk spill.",
            labels=["where"],
        )
        size = GaugeMetricFamily(
            "garbage_payload_queue_bytes",
            "Bytes of the payload-logger events waiting, in memory or in the on-disk spill.",
            labels=["where"],
        )
        totals = dict.fromkeys(QUEUE_PLACES, (0, 0))
        for logger in list(self.loggers):
            for where, (count, nbytes) in logger.queue_sizes().items():
                seen = totals.get(where, (0, 0))
                totals[where] = (seen[0] + count, seen[1] + nbytes)
        for where, (count, nbytes) in totals.items():
            events.add_metric([where], float(count))
            size.add_metric([where], float(nbytes))
        yield events
        yield size


class PayloadLoggerMetrics:
    """The payload logger's series: one event counter by outcome, the queue gauges."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the series in ``registry``: the process-wide default one unless given."""
        self.registry = REGISTRY if registry is None else registry
        self.events = Counter(
            "garbage_payload_events",
            "Payload-logger CloudEvents by outcome: delivered, retried, spilled, dropped, "
            "rejected.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in PAYLOAD_OUTCOMES:  # every series exists from the start, at 0
            self.events.labels(outcome=outcome)
        self._queues = _QueueGauges()
        self.registry.register(self._queues)

    def track(self, logger: QueueReporter) -> None:
        """Report ``logger``'s queue in the gauges for as long as it lives."""
        self._queues.loggers.add(logger)


@cache
def payload_logger_metrics() -> PayloadLoggerMetrics:
    """The process-wide payload-logger series (KServe's ``/metrics`` serves this registry)."""
    return PayloadLoggerMetrics()


class LiveAccuracyCollector(Collector):
    """Computes live accuracy and recall from the store whenever Prometheus scrapes."""

    def __init__(
        self, store: InferenceStore, classes: Sequence[str], windows: Sequence[str]
    ) -> None:
        self.store = store
        self.classes = list(classes)
        self.windows = {w: parse_window(w) for w in windows}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the live-accuracy gauges for every configured window."""
        accuracy = GaugeMetricFamily(
            "garbage_live_accuracy",
            "Share of labelled predictions that were right, per window.",
            labels=["window"],
        )
        recall = GaugeMetricFamily(
            "garbage_live_recall",
            "Per-class recall of labelled predictions.",
            labels=["window", "label"],
        )
        labelled = GaugeMetricFamily(
            "garbage_live_labelled",
            "Predictions that received a true label, per window.",
            labels=["window"],
        )
        random_accuracy = GaugeMetricFamily(
            "garbage_live_accuracy_random",
            "Share right of the labelled random picks of garbage review, per window: the "
            "unbiased estimate of accuracy on the traffic.",
            labels=["window"],
        )
        random_labelled = GaugeMetricFamily(
            "garbage_live_labelled_random",
            "Labelled random picks of garbage review, per window.",
            labels=["window"],
        )
        now = datetime.now(UTC).replace(tzinfo=None)
        for name, span in self.windows.items():
            frame = self.store.load_window(
                since=now - span,
                columns=["prediction", "true_label", "label_selection"],
                labelled_only=True,
            )
            stats = live_accuracy(frame, self.classes)
            labelled.add_metric([name], float(stats["labelled"]))
            random_labelled.add_metric([name], float(stats["random"]["labelled"]))
            if stats["accuracy"] is not None:
                accuracy.add_metric([name], float(stats["accuracy"]))
            if stats["random"]["accuracy"] is not None:
                random_accuracy.add_metric([name], float(stats["random"]["accuracy"]))
            for label, value in stats["recall"].items():
                if value is not None:
                    recall.add_metric([name, label], float(value))
        yield accuracy
        yield recall
        yield labelled
        yield random_accuracy
        yield random_labelled


def drift_registry(
    summary: Mapping[str, Any], timestamp: datetime | None = None
) -> CollectorRegistry:
    """A registry holding the drift job's results (see ``monitoring.drift.DriftResult.summary``)."""
    registry = CollectorRegistry()

    def gauge(
        name: str, doc: str, value: float | None, labels: Mapping[str, str] | None = None
    ) -> None:
        if value is None:
            return
        metric = gauges.get(name)
        if metric is None:
            metric = Gauge(name, doc, list(labels or {}), registry=registry)
            gauges[name] = metric
        (metric.labels(**labels) if labels else metric).set(float(value))

    gauges: dict[str, Gauge] = {}
    gauge(
        "garbage_drift_detected",
        "1 when the last drift run flagged drift.",
        1.0 if summary.get("drift_detected") else 0.0,
    )
    gauge(
        "garbage_drift_share",
        "Share of monitored columns that drifted in the last run.",
        summary.get("drift_share"),
    )
    gauge(
        "garbage_drift_window_size",
        "Rows in the window the last drift run examined.",
        summary.get("window_size"),
    )
    gauge(
        "garbage_drift_embedding_share",
        "Share of embedding components that drifted.",
        summary.get("embedding_drift_share"),
    )
    for column, info in (summary.get("columns") or {}).items():
        gauge(
            "garbage_drift_feature_score",
            "Drift score per monitored column (method in the report).",
            info.get("score"),
            {"feature": column},
        )
        gauge(
            "garbage_drift_feature_detected",
            "1 when the column drifted.",
            1.0 if info.get("drifted") else 0.0,
            {"feature": column},
        )
    live = summary.get("live_accuracy") or {}
    gauge(
        "garbage_drift_window_labelled",
        "Labelled predictions in the drift window.",
        live.get("labelled"),
    )
    gauge(
        "garbage_drift_window_accuracy",
        "Accuracy of labelled predictions in the drift window.",
        live.get("accuracy"),
    )
    for label, value in (live.get("recall") or {}).items():
        gauge(
            "garbage_drift_window_recall",
            "Per-class recall in the drift window.",
            value,
            {"label": label},
        )
    stamp = (timestamp or datetime.now(UTC)).timestamp()
    gauge("garbage_drift_last_run_timestamp_seconds", "Unix time of the last drift run.", stamp)
    return registry


def write_textfile(registry: CollectorRegistry, path: Path) -> Path:
    """Write the registry in the text format (node-exporter textfile collector, artifacts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(generate_latest(registry))
    return path


class PushError(RuntimeError):
    """The Pushgateway did not accept the metrics."""


#: The drift job's Pushgateway login (the Secret garbage-drift-pushgateway on the cluster).
PUSHGATEWAY_USERNAME_ENV = "GARBAGE_PUSHGATEWAY_USERNAME"
PUSHGATEWAY_PASSWORD_ENV = "GARBAGE_PUSHGATEWAY_PASSWORD"


def pushgateway_auth(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """The Pushgateway basic-auth login from the environment, or None when none is set.

    Raises:
        PushError: Only one of the two variables is set.
    """
    username = environ.get(PUSHGATEWAY_USERNAME_ENV)
    password = environ.get(PUSHGATEWAY_PASSWORD_ENV)
    if username and password:
        return username, password
    if username or password:
        raise PushError(
            f"set both {PUSHGATEWAY_USERNAME_ENV} and {PUSHGATEWAY_PASSWORD_ENV} (the "
            "Pushgateway's basic-auth login), or neither"
        )
    return None


def push(
    registry: CollectorRegistry,
    gateway: str,
    job: str = DRIFT_JOB,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    auth: tuple[str, str] | None = None,
) -> None:
    """Replace this job's metrics on a Pushgateway (``http://host:9091``).

    Args:
        registry: The metrics to push.
        gateway: The Pushgateway's URL.
        job: The ``job`` label the metrics are grouped under.
        grouping_key: More grouping labels.
        timeout: Seconds to wait for the gateway.
        auth: ``(username, password)`` for a gateway behind basic auth.

    Raises:
        PushError: The gateway is unreachable or refused the push.
    """
    handler: Callable[..., Callable[[], None]] = default_handler
    if auth is not None:
        handler = partial(basic_auth_handler, username=auth[0], password=auth[1])

    try:
        push_to_gateway(
            gateway,
            job=job,
            registry=registry,
            grouping_key=dict(grouping_key or {}),
            timeout=timeout,
            handler=handler,
        )
    except OSError as e:  # urllib errors derive from OSError
        raise PushError(f"cannot push drift metrics to {gateway}: {e}") from e
