"""Prometheus metrics: the collector's own series, live accuracy, and the drift job's results.

Names (all prefixed ``garbage_``; the serving side owns ``garbage_predictions_total`` etc.):

Collector (scraped from ``/metrics``):
    ``garbage_monitoring_events_total{type,mode}``: CloudEvents accepted.
    ``garbage_monitoring_event_errors_total{reason}``: events rejected or only partly readable.
    ``garbage_monitoring_logged_images_total{status}``: images logged (``ok``/``unreadable``).
    ``garbage_monitoring_feedback_total{result}``: label feedback
    (``matched``/``unknown``/``invalid``).
    ``garbage_monitoring_feature_seconds``: time to extract one image's features.
    ``garbage_live_accuracy{window}``, ``garbage_live_recall{window,label}``,
    ``garbage_live_labelled{window}``: computed from the store at scrape time.

Drift job (pushed to a Pushgateway and written as a text file):
    ``garbage_drift_detected``, ``garbage_drift_share``, ``garbage_drift_window_size``,
    ``garbage_drift_feature_score{feature}``, ``garbage_drift_feature_detected{feature}``,
    ``garbage_drift_embedding_share``, ``garbage_drift_last_run_timestamp_seconds``,
    ``garbage_drift_window_accuracy``, ``garbage_drift_window_recall{label}``,
    ``garbage_drift_window_labelled``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import push_to_gateway
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
        self.feature_seconds = Histogram(
            "garbage_monitoring_feature_seconds",
            "Time to decode one image and extract its features.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


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
        now = datetime.now(UTC).replace(tzinfo=None)
        for name, span in self.windows.items():
            frame = self.store.load_window(
                since=now - span, columns=["prediction", "true_label"], labelled_only=True
            )
            stats = live_accuracy(frame, self.classes)
            labelled.add_metric([name], float(stats["labelled"]))
            if stats["accuracy"] is not None:
                accuracy.add_metric([name], float(stats["accuracy"]))
            for label, value in stats["recall"].items():
                if value is not None:
                    recall.add_metric([name, label], float(value))
        yield accuracy
        yield recall
        yield labelled


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


def push(
    registry: CollectorRegistry,
    gateway: str,
    job: str = DRIFT_JOB,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> None:
    """Replace this job's metrics on a Pushgateway (``http://host:9091``).

    Raises:
        PushError: The gateway is unreachable or refused the push.
    """
    try:
        push_to_gateway(
            gateway,
            job=job,
            registry=registry,
            grouping_key=dict(grouping_key or {}),
            timeout=timeout,
        )
    except OSError as e:  # urllib errors derive from OSError
        raise PushError(f"cannot push drift metrics to {gateway}: {e}") from e
