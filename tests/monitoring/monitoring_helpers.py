"""Helpers for the monitoring tests: payload-logger events as KServe sends them."""

from __future__ import annotations

import base64
import json

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
#: Class names of the ``relabelled_model_dir`` fixture's model: none of them is one of TrashNet's.
RELABELLED = ["bottle", "can", "carton", "jar", "bag", "other"]


def kserve_headers(
    event_id: str,
    kind: str,
    content_type: str = "application/json",
    isvc: str = "garbage-classifier",
) -> dict[str, str]:
    """Headers exactly as KServe's logger worker sends them (binary mode, cloudevents sdk-go v2).

    Mirrors pkg/logger/worker.go: id, type, source, the inferenceservicename, namespace,
    component and endpoint extensions, metadata as JSON, the request's content type, and a
    nanosecond RFC 3339 time as Go formats it.
    """
    return {
        "Ce-Specversion": "1.0",
        "Ce-Id": event_id,
        "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Time": "2026-11-26T04:20:31.123456789Z",
        "Ce-Inferenceservicename": isvc,
        "Ce-Namespace": "garbage",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "",
        "Ce-Metadata": "{}",
        "Content-Type": content_type,
        "Traceparent": "00-7cebb2ae49d33626845711ad585c850c-78b57bf5baf7151f-00",
    }


def v1_request(images: list[bytes]) -> bytes:
    """A v1 predict body with TF-Serving style base64 instances."""
    return json.dumps(
        {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]}
    ).encode()


def v1_response(labels: list[str], classes: list[str]) -> bytes:
    """A v1 response with label, score and probabilities per image."""
    predictions = []
    for label in labels:
        probs = {c: (0.9 if c == label else 0.02) for c in classes}
        predictions.append({"label": label, "score": 0.9, "probabilities": probs})
    return json.dumps({"predictions": predictions}).encode()


def make_jpeg(
    color: tuple[int, int, int], seed: int = 0, size: tuple[int, int] = (112, 84), fmt: str = "JPEG"
) -> bytes:
    """A small noisy image of one dominant colour, encoded (different seeds, different bytes)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(
        np.array(color, dtype=np.int16) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()
