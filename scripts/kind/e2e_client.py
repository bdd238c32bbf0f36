"""In-cluster client of the kind e2e: calls the InferenceService through its predictor Service.

scripts/kind/e2e.sh runs this file as a Job in the namespace ``garbage-e2e-client`` from the
serving image (Python, httpx, Pillow and KServe's gRPC client are there), so the requests cross the
NetworkPolicies as any other in-cluster caller's would; ``kubectl port-forward`` would bypass them.
One REST v1 ``:predict`` and one v2 gRPC ``ModelInfer`` per image; both must answer a TrashNet
class with probabilities that sum to 1, and agree with each other. Prints one JSON line.

    python e2e_client.py --rest-url http://HOST:80 --grpc-target HOST:8081 [--images N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import httpx
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from garbage.core.names import MODEL_NAME, TRASHNET_CLASSES
from garbage.core.protocol import (
    BYTES_INPUT,
    CLASSES_PARAMETER,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    v1_request,
)

T = TypeVar("T")


class E2EError(Exception):
    """A call failed or answered something a working InferenceService would not."""


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the label and its probability (the highest one)."""

    protocol: str
    label: str
    score: float


def make_image(index: int) -> bytes:
    """A small JPEG, different for every ``index``."""
    color = ((40 * index) % 256, (160 + 25 * index) % 256, (90 + 60 * index) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (112, 84), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _check(protocol: str, probabilities: dict[str, float], label: str) -> Prediction:
    if label not in TRASHNET_CLASSES:
        raise E2EError(f"{protocol}: label {label!r} is not one of {', '.join(TRASHNET_CLASSES)}")
    total = sum(probabilities.values())
    if not math.isclose(total, 1.0, abs_tol=1e-3):
        raise E2EError(f"{protocol}: probabilities sum to {total:.5f}, not 1: {probabilities}")
    best = max(probabilities, key=lambda name: probabilities[name])
    if best != label:
        raise E2EError(f"{protocol}: label {label!r} is not the most probable class {best!r}")
    return Prediction(protocol, label, probabilities[label])


def predict_rest(client: httpx.Client, base_url: str, image: bytes) -> Prediction:
    """REST v1 ``/v1/models/<name>:predict`` with one base64 image."""
    url = f"{base_url.rstrip('/')}/v1/models/{MODEL_NAME}:predict"
    response = client.post(url, json=v1_request([image]))
    if response.status_code != 200:
        raise E2EError(f"REST: {url} answered {response.status_code}: {response.text[:500]}")
    prediction = response.json()["predictions"][0]
    return _check("rest", dict(prediction["probabilities"]), prediction["label"])


async def predict_grpc(target: str, image: bytes, timeout: float) -> Prediction:
    """Open inference protocol v2 ``ModelInfer`` over gRPC with one encoded image."""
    tensor = InferInput(BYTES_INPUT, [1], "BYTES")
    tensor.data = [image]
    client = InferenceGRPCClient(url=target, timeout=timeout)
    try:
        response = await client.infer(InferRequest(MODEL_NAME, [tensor]))
    finally:
        await client.close()
    outputs = {output.name: output for output in response.outputs}
    if {OUTPUT_LABEL, OUTPUT_PROBABILITIES} - outputs.keys():
        raise E2EError(
            f"gRPC: outputs {sorted(outputs)} lack {OUTPUT_LABEL}/{OUTPUT_PROBABILITIES}"
        )
    label = outputs[OUTPUT_LABEL].as_numpy().reshape(-1)[0]
    label = label.decode() if isinstance(label, bytes) else str(label)
    probabilities = outputs[OUTPUT_PROBABILITIES]
    row = probabilities.as_numpy().reshape(-1).tolist()
    parameters = probabilities.parameters
    if not parameters or CLASSES_PARAMETER not in parameters:
        raise E2EError(f"gRPC: the {OUTPUT_PROBABILITIES} output has no {CLASSES_PARAMETER!r}")
    classes = json.loads(parameters[CLASSES_PARAMETER].string_param)
    if len(classes) != len(row):
        raise E2EError(f"gRPC: {len(row)} probabilities but classes {classes}")
    return _check("grpc", dict(zip(classes, row, strict=True)), label)


def with_retries(call: Callable[[], T], what: str, deadline: float) -> T:
    """``call()``, retried on connection failures until ``deadline`` (a policy may lag)."""
    while True:
        try:
            return call()
        except E2EError:
            raise
        except Exception as error:  # transport errors of httpx and grpc alike
            if time.monotonic() > deadline:
                raise E2EError(
                    f"{what} did not connect: {error!r}. Is the namespace labelled "
                    "garbage-classifier/inference-client=true, and does the predictor's "
                    "NetworkPolicy admit it?"
                ) from error
            time.sleep(2)


def run(rest_url: str, grpc_target: str, images: int, timeout: float, wait: float) -> dict:
    """Call both protocols for ``images`` images; the summary printed as JSON."""
    deadline = time.monotonic() + wait
    results: list[Prediction] = []

    with httpx.Client(timeout=timeout) as client:
        for index in range(images):
            image = make_image(index)

            def rest_call(image: bytes = image) -> Prediction:
                return predict_rest(client, rest_url, image)

            def grpc_call(image: bytes = image) -> Prediction:
                return asyncio.run(predict_grpc(grpc_target, image, timeout))

            rest = with_retries(rest_call, "REST", deadline)
            grpc = with_retries(grpc_call, "gRPC", deadline)
            if rest.label != grpc.label or not math.isclose(rest.score, grpc.score, abs_tol=1e-4):
                raise E2EError(f"REST and gRPC disagree on image {index}: {rest} vs {grpc}")
            results += [rest, grpc]
    return {
        "rest_url": rest_url,
        "grpc_target": grpc_target,
        "predictions": [asdict(p) for p in results],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, call the model, print the summary; exit 1 with the reason."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest-url", required=True, help="http://HOST:PORT of the REST port")
    parser.add_argument("--grpc-target", required=True, help="HOST:PORT of the gRPC port")
    parser.add_argument("--images", type=int, default=3, help="images per protocol")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to retry connecting")
    args = parser.parse_args(argv)
    try:
        summary = run(args.rest_url, args.grpc_target, args.images, args.timeout, args.wait)
    except E2EError as error:
        print(f"e2e client: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
