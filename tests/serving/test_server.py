"""The real model server (``python -m serving``) on 127.0.0.1, called by third-party clients.

One server process serves the whole module: KServe's own clients (InferenceRESTClient v1 and v2,
InferenceGRPCClient) and tritonclient (HTTP and gRPC) must get what ``OnnxClassifier.predict_bytes``
(the code behind ``garbage predict``) gives on the same images, and every bad input must get a
400 / INVALID_ARGUMENT that says what is wrong, after which the server still serves.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import InferInput, InferRequest

from garbage.core.classifier import OnnxClassifier

pytestmark = pytest.mark.integration

NAME = "garbage-classifier"
MAX_INSTANCES = 4
MAX_PAYLOAD = 256 * 1024
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, run_server):
    flags = [
        "--max_instances",
        str(MAX_INSTANCES),
        "--max_payload_bytes",
        str(MAX_PAYLOAD),
        "--max_image_pixels",
        str(MAX_PIXELS),
        "--max_batch_wait_ms",
        "20",
    ]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with run_server(tiny_model_dir, flags, log) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> OnnxClassifier:
    return OnnxClassifier.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def images(sample_images: list[bytes]) -> list[bytes]:
    """As many images as one request may carry."""
    return sample_images[:MAX_INSTANCES]


@pytest.fixture(scope="module")
def expected(reference: OnnxClassifier, images: list[bytes]) -> tuple[list[str], np.ndarray]:
    """What ``garbage predict`` gives: labels and probabilities (model's class order)."""
    predictions = reference.predict_bytes(images)
    return (
        [p.label for p in predictions],
        np.array([[p.probabilities[c] for c in reference.classes] for p in predictions]),
    )


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def _check(labels, probabilities, expected) -> None:
    assert [v.decode() if isinstance(v, bytes) else v for v in labels] == expected[0]
    np.testing.assert_allclose(
        np.asarray(probabilities, dtype=np.float64).reshape(expected[1].shape),
        expected[1],
        atol=1e-5,
    )


# -- predictions through every protocol and client ---------------------------------------------


def test_v1_with_kserve_rest_client(server, images, expected, reference) -> None:
    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v1"))
        return await client.infer(
            server.base,
            {"instances": [{"image_bytes": {"b64": _b64(b)}} for b in images]},
            model_name=NAME,
        )

    predictions = asyncio.run(call())["predictions"]
    _check(
        [p["label"] for p in predictions],
        [[p["probabilities"][c] for c in reference.classes] for p in predictions],
        expected,
    )
    assert [p["score"] for p in predictions] == [
        max(p["probabilities"].values()) for p in predictions
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary-extension"])
def test_v2_bytes_with_kserve_rest_client(server, images, expected, binary) -> None:
    tensor = InferInput("image_bytes", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:
        tensor.data = [_b64(b) for b in images]

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        return await client.infer(server.base, InferRequest(NAME, [tensor]), model_name=NAME)

    response = asyncio.run(call())
    outputs = {o.name: o for o in response.outputs}
    _check(outputs["label"].data, outputs["probabilities"].data, expected)
    np.testing.assert_allclose(outputs["score"].data, expected[1].max(axis=1), atol=1e-5)


def test_v2_pixels_with_kserve_rest_client(server, images, expected, reference) -> None:
    pixels = np.stack([reference.preprocess(b) for b in images])
    tensor = InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        return await client.infer(server.base, InferRequest(NAME, [tensor]), model_name=NAME)

    outputs = {o.name: o for o in asyncio.run(call()).outputs}
    _check(outputs["label"].data, outputs["probabilities"].data, expected)


@pytest.mark.parametrize("raw", [False, True], ids=["bytes_contents", "raw_input_contents"])
def test_grpc_with_kserve_grpc_client(server, images, expected, raw) -> None:
    tensor = InferInput("image_bytes", [len(images)], "BYTES")
    if raw:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:
        tensor.data = list(images)

    async def call():
        client = InferenceGRPCClient(url=server.grpc_url)
        try:
            return await client.infer(InferRequest(NAME, [tensor]))
        finally:
            await client.close()

    outputs = {o.name: o for o in asyncio.run(call()).outputs}
    _check(outputs["label"].as_numpy(), outputs["probabilities"].as_numpy(), expected)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http(server, images, expected, reference, binary) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_ready() and client.is_model_ready(NAME)
    encoded = triton_http.InferInput("image_bytes", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(b) for b in images]  # JSON BYTES carry base64
    encoded.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    pixels = np.stack([reference.preprocess(b) for b in images])
    raw = triton_http.InferInput("image", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [
        triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")
    ]
    for tensor in (encoded, raw):
        result = client.infer(NAME, [tensor], outputs=outputs)
        _check(result.as_numpy("label"), result.as_numpy("probabilities"), expected)


def test_tritonclient_grpc(server, images, expected, reference, tmp_path) -> None:
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"image{i}")
        files[-1].write_bytes(image)
    np.save(tmp_path / "pixels.npy", np.stack([reference.preprocess(b) for b in images]))
    probe = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("triton_grpc_probe.py")),
            server.grpc_url,
            NAME,
            *map(str, files),
            "--pixels",
            str(tmp_path / "pixels.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert [i["name"] for i in report["metadata"]["inputs"]] == ["image_bytes", "image"]
    assert [o["name"] for o in report["metadata"]["outputs"]] == ["label", "score", "probabilities"]
    for kind in ("bytes", "pixels"):
        _check(report[kind]["labels"], report[kind]["probabilities"], expected)
        assert json.loads(report[kind]["classes"]) == reference.classes
    assert report["wrong_input"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown input 'pixels'" in report["wrong_input"]["message"]


def test_concurrent_callers_each_get_their_own_result(server, sample_images, reference) -> None:
    expected = [p.label for p in reference.predict_bytes(sample_images)] * 3

    async def call_all():
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:

            async def one(image: bytes):
                response = await client.post(
                    f"/v1/models/{NAME}:predict", json={"instances": [{"b64": _b64(image)}]}
                )
                response.raise_for_status()
                return response.json()["predictions"][0]["label"]

            return await asyncio.gather(*(one(b) for b in sample_images * 3))

    before = _metric(server, "garbage_batch_size_count")
    assert asyncio.run(call_all()) == expected
    calls = _metric(server, "garbage_batch_size_count") - before
    assert 1 <= calls < len(expected), "concurrent requests should share model calls"


# -- metadata, readiness, metrics --------------------------------------------------------------


def test_metadata_and_readiness_of_every_protocol(server, reference) -> None:
    assert httpx.get(f"{server.base}/v1/models/{NAME}").json() == {"name": NAME, "ready": True}
    assert httpx.get(f"{server.base}/v2/models/{NAME}/ready").json()["ready"] is True
    assert httpx.get(f"{server.base}/v2/health/live").json() == {"live": True}
    meta = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}").get_model_metadata(
        NAME
    )
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "image_bytes": "BYTES",
        "image": "UINT8",
    }
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "label": [-1],
        "score": [-1],
        "probabilities": [-1, len(reference.classes)],
    }
    assert meta["parameters"]["classes"] == reference.classes
    assert meta["parameters"]["max_instances"] == MAX_INSTANCES
    with grpc.insecure_channel(server.grpc_url) as channel:
        grpc_meta = GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=NAME)
        )
    assert [i.name for i in grpc_meta.inputs] == ["image_bytes", "image"]
    assert [o.name for o in grpc_meta.outputs] == ["label", "score", "probabilities"]

    async def grpc_ready():
        client = InferenceGRPCClient(url=server.grpc_url)
        try:
            return await client.is_server_ready(), await client.is_model_ready(NAME)
        finally:
            await client.close()

    assert asyncio.run(grpc_ready()) == (True, True)
    unknown = httpx.get(f"{server.base}/v2/models/other/ready")
    assert unknown.status_code == 404


def _metric(server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_no_log_line_per_request_unless_asked_for(server, images) -> None:
    """Access and latency log lines are off by default (the two-worker test turns access on)."""
    body = {"instances": [{"b64": _b64(images[0])}]}
    for _ in range(3):
        assert httpx.post(f"{server.base}/v1/models/{NAME}:predict", json=body).status_code == 200
    log = server.log.read_text()
    assert "Application startup complete" in log  # the server logs, just not per request
    assert ":predict HTTP/1.1" not in log
    assert "preprocess_ms" not in log
    assert "kserve.io" not in log  # KServe's timing middleware


def test_metrics_expose_kserve_and_garbage_series(server, images) -> None:
    httpx.post(
        f"{server.base}/v1/models/{NAME}:predict", json={"instances": [{"b64": _b64(images[0])}]}
    ).raise_for_status()
    text = httpx.get(f"{server.base}/metrics").text
    for series in (
        "request_predict_seconds",
        "request_preprocess_seconds",
        "garbage_predictions_total",
        "garbage_prediction_score",
        "garbage_batch_size",
        "garbage_rejected_requests_total",
        "garbage_request_images",
    ):
        assert f"# TYPE {series}" in text, series


# -- bad input: each answered 400 / INVALID_ARGUMENT, then a good request is served ------------


def _v1(instances) -> dict:
    return {"instances": instances}


def _v1_image(image: bytes) -> dict:
    return _v1([{"image_bytes": {"b64": _b64(image)}}])


def _v2(inputs, **extra) -> dict:
    return {"inputs": inputs, **extra}


def _bytes_input(images: list[bytes], name: str = "image_bytes", shape=None) -> dict:
    return {
        "name": name,
        "datatype": "BYTES",
        "shape": shape or [len(images)],
        "data": [_b64(b) for b in images],
    }


V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"

# (id, path, body builder(bad_images, small_png) -> JSON object or raw bytes, reason, message part)
REST_CASES: list[tuple[str, str, Callable, str, str]] = [
    (
        "invalid-base64",
        V1,
        lambda b, p: _v1([{"image_bytes": {"b64": "@@not base64@@"}}]),
        "invalid_base64",
        "not valid base64",
    ),
    (
        "truncated-jpeg",
        V1,
        lambda b, p: _v1_image(b["truncated"]),
        "corrupt",
        "truncated or corrupt",
    ),
    ("not-an-image", V1, lambda b, p: _v1_image(b["not_an_image"]), "not_an_image", "not an image"),
    ("empty-image", V1, lambda b, p: _v1_image(b["empty"]), "empty", "empty"),
    ("format-not-allowed", V1, lambda b, p: _v1_image(b["gif"]), "format", "GIF is not allowed"),
    (
        "over-pixel-limit",
        V1,
        lambda b, p: _v1_image(b["over_pixel_limit"]),
        "too_large",
        f"over the limit of {MAX_PIXELS}",
    ),
    ("decompression-bomb", V1, lambda b, p: _v1_image(b["bomb"]), "too_large", "too large"),
    (
        "too-many-instances",
        V1,
        lambda b, p: _v1([{"b64": _b64(p)}] * (MAX_INSTANCES + 1)),
        "too_many_instances",
        f"over the limit of {MAX_INSTANCES}",
    ),
    (
        "payload-over-limit",
        V1,
        lambda b, p: _v1([{"b64": "A" * MAX_PAYLOAD}]),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    (
        "payload-far-over-limit",
        V1,
        lambda b, p: _v1([{"b64": "A" * (6 * MAX_PAYLOAD)}]),
        "payload_too_large",
        f"over the limit of {MAX_PAYLOAD} bytes",
    ),
    ("malformed-json-v1", V1, lambda b, p: b'{"instances": [', "malformed_json", "not valid JSON"),
    ("wrong-structure-v1", V1, lambda b, p: {"inputs": [1]}, "bad_request", '"instances"'),
    (
        "malformed-json-v2",
        V2,
        lambda b, p: b'{"inputs": [{"name"',
        "malformed_json",
        "not valid JSON",
    ),
    (
        "wrong-tensor-name",
        V2,
        lambda b, p: _v2([_bytes_input([p], name="img")]),
        "bad_tensor_name",
        "unknown input 'img'",
    ),
    (
        "wrong-dtype",
        V2,
        lambda b, p: _v2(
            [{"name": "image", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": [0.5] * 12}]
        ),
        "bad_dtype",
        "must have datatype UINT8",
    ),
    (
        "wrong-shape",
        V2,
        lambda b, p: _v2(
            [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 12}]
        ),
        "bad_shape",
        "[N, H, W, 3]",
    ),
    (
        "shape-disagrees-with-data",
        V2,
        lambda b, p: _v2([_bytes_input([p], shape=[3])]),
        "bad_shape",
        "but 1 elements",
    ),
    (
        "uint8-out-of-range",
        V2,
        lambda b, p: _v2(
            [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [0, 256, 9]}]
        ),
        "bad_tensor_data",
        "outside 0..255",
    ),
    (
        "unknown-output",
        V2,
        lambda b, p: _v2([_bytes_input([p])], outputs=[{"name": "logits"}]),
        "bad_tensor_name",
        "unknown output 'logits'",
    ),
    (
        "bytes-not-an-image-v2",
        V2,
        lambda b, p: _v2([_bytes_input([b["not_an_image"]])]),
        "not_an_image",
        "not an image",
    ),
]


@pytest.mark.parametrize(
    ("path", "build", "reason", "message"),
    [c[1:] for c in REST_CASES],
    ids=[c[0] for c in REST_CASES],
)
def test_bad_rest_input_gets_400_and_the_next_request_is_served(
    server, bad_images, small_png, images, path, build, reason, message
) -> None:
    before = _metric(server, "garbage_rejected_requests_total", reason=reason)
    body = build(bad_images, small_png)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        server.base + path,
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert _metric(server, "garbage_rejected_requests_total", reason=reason) == before + 1
    good = httpx.post(server.base + V1, json=_v1_image(images[0]), timeout=30)
    assert good.status_code == 200 and good.json()["predictions"][0]["label"]
    assert server.process.poll() is None


def _grpc_bytes(
    elements: list[bytes],
    name: str = "image_bytes",
    datatype: str = "BYTES",
    shape: list[int] | None = None,
) -> pb.ModelInferRequest:
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    return _grpc_tensor(name, datatype, shape or [len(elements)], raw)


def _grpc_tensor(name: str, datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    """One input tensor with raw contents exactly as given (no length prefixes)."""
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    return pb.ModelInferRequest(model_name=NAME, inputs=[tensor], raw_input_contents=[raw])


GRPC_CASES: list[tuple[str, Callable, str]] = [
    ("truncated-jpeg", lambda b, p: _grpc_bytes([b["truncated"]]), "truncated or corrupt"),
    ("not-an-image", lambda b, p: _grpc_bytes([b["not_an_image"]]), "not an image"),
    ("format-not-allowed", lambda b, p: _grpc_bytes([b["gif"]]), "GIF is not allowed"),
    ("decompression-bomb", lambda b, p: _grpc_bytes([b["bomb"]]), "too large"),
    (
        "too-many-instances",
        lambda b, p: _grpc_bytes([p] * (MAX_INSTANCES + 1)),
        f"over the limit of {MAX_INSTANCES}",
    ),
    (
        "payload-over-limit",
        lambda b, p: _grpc_bytes([b"\0" * (MAX_PAYLOAD + 1)]),
        f"over the limit of {MAX_PAYLOAD}",
    ),
    ("wrong-tensor-name", lambda b, p: _grpc_bytes([p], name="img"), "unknown input 'img'"),
    (
        "wrong-dtype",
        lambda b, p: _grpc_tensor("image", "FP32", [1, 1, 1, 3], b"\0" * 12),
        "must have datatype UINT8",
    ),
    (
        "wrong-shape",
        lambda b, p: _grpc_tensor("image", "UINT8", [1, 2, 2, 3], b"\0" * 5),
        "has 5 bytes of data",
    ),
    (
        "malformed-bytes-tensor",
        lambda b, p: _grpc_tensor("image_bytes", "BYTES", [1], b"\xff\xff\x00\x00abc"),
        "malformed BYTES tensor",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES]
)
def test_bad_grpc_input_gets_invalid_argument_and_the_next_request_is_served(
    server, bad_images, small_png, images, build, message
) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(build(bad_images, small_png), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details()
        good = stub.ModelInfer(_grpc_bytes([images[0]]), timeout=30)
        assert [o.name for o in good.outputs] == ["label", "score", "probabilities"]
    assert server.process.poll() is None
