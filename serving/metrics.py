"""Prometheus series of the garbage model server, beside KServe's own on ``/metrics``.

=====================================  =========  ============================================
series                                 type       labels / meaning
=====================================  =========  ============================================
``garbage_predictions_total``          counter    ``model_name``, ``label``: images classified
``garbage_prediction_score``           histogram  ``model_name``: top-class probability
``garbage_batch_size``                 histogram  ``model_name``: images per model call
``garbage_batch_inference_seconds``    histogram  ``model_name``: duration of one model call
``garbage_request_images``             histogram  ``model_name``, ``protocol``: images per request
``garbage_rejected_requests_total``    counter    ``model_name``, ``reason``: 4xx answers
``garbage_nonfinite_outputs_total``    counter    ``model_name``: requests failed (500) on NaN or
                                                  infinite model outputs
``garbage_refused_connections_total``  counter    ``reason``: HTTP connections closed before a
                                                  request (slow or oversized head or body)
=====================================  =========  ============================================

The collectors are created on first use (not at import) and registered once per process in
prometheus_client's default registry, which KServe's ``/metrics`` endpoint serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Histogram

SCORE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ServingMetrics:
    """The server's own collectors."""

    predictions: Counter
    score: Histogram
    batch_size: Histogram
    batch_seconds: Histogram
    request_images: Histogram
    rejected: Counter
    nonfinite: Counter
    refused_connections: Counter


@cache
def serving_metrics() -> ServingMetrics:
    """The process-wide collectors, registered on the first call."""
    return ServingMetrics(
        predictions=Counter(
            "garbage_predictions_total",
            "Images classified, by predicted label.",
            ["model_name", "label"],
        ),
        score=Histogram(
            "garbage_prediction_score",
            "Probability of the predicted label.",
            ["model_name"],
            buckets=SCORE_BUCKETS,
        ),
        batch_size=Histogram(
            "garbage_batch_size",
            "Images per model call (micro-batch size).",
            ["model_name"],
            buckets=BATCH_BUCKETS,
        ),
        batch_seconds=Histogram(
            "garbage_batch_inference_seconds",
            "Duration of one model call.",
            ["model_name"],
            buckets=SECONDS_BUCKETS,
        ),
        request_images=Histogram(
            "garbage_request_images",
            "Images per inference request.",
            ["model_name", "protocol"],
            buckets=BATCH_BUCKETS,
        ),
        rejected=Counter(
            "garbage_rejected_requests_total",
            "Requests answered 400 / INVALID_ARGUMENT, by reason.",
            ["model_name", "reason"],
        ),
        nonfinite=Counter(
            "garbage_nonfinite_outputs_total",
            "Requests answered 500 / INTERNAL because the model's outputs were NaN or infinite.",
            ["model_name"],
        ),
        refused_connections=Counter(
            "garbage_refused_connections_total",
            "HTTP connections answered 408 / 431 and closed: head or body too slow, head too big.",
            ["reason"],
        ),
    )
