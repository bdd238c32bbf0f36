"""The kserve.Model without a server (like KServe's sklearnserver tests), on the tiny real model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pickle
import re
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from PIL import Image
from prometheus_client import REGISTRY

from garbage.core.classifier import ModelLoadError, NonFiniteOutputError, OnnxClassifier
from serving.errors import InputRejected
from serving.model import GarbageClassifierModel
from serving.settings import ServingSettings

NAME = "garbage-classifier"


@pytest.fixture(scope="module")
def settings() -> ServingSettings:
    return ServingSettings(
        max_instances=8, max_payload_bytes=64 * 1024, max_image_pixels=1_000_000, max_batch_size=4
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: ServingSettings) -> GarbageClassifierModel:
    loaded = GarbageClassifierModel(NAME, tiny_model_dir, settings)
    loaded.load()
    yield loaded
    loaded.stop()


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> OnnxClassifier:
    """What ``garbage predict`` uses."""
    return OnnxClassifier.load(tiny_model_dir, device="cpu")


def call(model: GarbageClassifierModel, body, headers: dict[str, str] | None = None):
    response, _ = asyncio.run(model(body, headers=headers))
    return response


def v1_body(images: list[bytes]) -> dict:
    return {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]}


def probabilities(predictions, classes: list[str]) -> np.ndarray:
    """Rows of class probabilities in the model's class order."""
    return np.array([[p.probabilities[c] for c in classes] for p in predictions])


def bytes_tensor(images: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in images)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name.split("{")[0], _labels(name)) or 0.0


def _labels(name: str) -> dict[str, str]:
    if "{" not in name:
        return {}
    inner = name[name.index("{") + 1 : -1]
    return dict(part.split("=") for part in inner.split(","))


def test_ready_only_after_load_and_warm_up(tiny_model_dir: Path, settings: ServingSettings) -> None:
    fresh = GarbageClassifierModel(NAME, tiny_model_dir, settings)
    repository = ModelRepository()
    repository.update(fresh)
    dataplane = DataPlane(model_registry=repository)
    assert fresh.ready is False
    assert asyncio.run(dataplane.model_ready(NAME)) is False
    fresh.start()  # KServe calls start() on registration; it must not fake readiness
    assert asyncio.run(fresh.healthy()) is False
    assert fresh.load() is True
    assert asyncio.run(dataplane.model_ready(NAME)) is True
    fresh.stop()
    assert asyncio.run(dataplane.model_ready(NAME)) is False


def test_load_fails_clearly_without_a_model(tmp_path: Path) -> None:
    broken = GarbageClassifierModel(NAME, tmp_path)
    with pytest.raises(ModelLoadError, match=r"no model\.onnx"):
        broken.load()
    assert broken.ready is False


def test_v1_matches_predict_bytes(model, reference, sample_images) -> None:
    response = call(model, v1_body(sample_images))
    expected = reference.predict_bytes(sample_images)
    got = response["predictions"]
    assert [p["label"] for p in got] == [p.label for p in expected]
    assert set(got[0]["probabilities"]) == set(reference.classes)
    np.testing.assert_allclose([p["score"] for p in got], [p.score for p in expected], atol=1e-5)
    np.testing.assert_allclose(
        [[p["probabilities"][c] for c in reference.classes] for p in got],
        probabilities(expected, reference.classes),
        atol=1e-5,
    )


def test_v2_bytes_as_json_base64_and_as_binary(model, reference, sample_images) -> None:
    expected_predictions = reference.predict_bytes(sample_images)
    expected = probabilities(expected_predictions, reference.classes)
    as_json = InferRequest(
        NAME,
        [
            InferInput(
                "image_bytes",
                [len(sample_images)],
                "BYTES",
                data=[base64.b64encode(b).decode() for b in sample_images],
            )
        ],
    )
    binary = InferInput("image_bytes", [len(sample_images)], "BYTES")
    as_binary = InferRequest(NAME, [binary], raw_inputs=[bytes_tensor(sample_images)])
    for request in (as_json, as_binary):
        response = call(model, request)
        assert isinstance(response, InferResponse)
        outputs = {o.name: o for o in response.outputs}
        assert set(outputs) == {"label", "score", "probabilities"}
        np.testing.assert_allclose(outputs["probabilities"].data, expected, atol=1e-5)
        assert json.loads(outputs["probabilities"].parameters["classes"]) == reference.classes
        assert list(outputs["label"].data) == [p.label for p in expected_predictions]


def test_v2_pixels_at_model_size_and_resized(model, reference, sample_images) -> None:
    pixels = np.stack([reference.preprocess(b) for b in sample_images])
    request = InferRequest(
        NAME, [InferInput("image", list(pixels.shape), "UINT8")], raw_inputs=[pixels.tobytes()]
    )
    got = {o.name: o.data for o in call(model, request).outputs}
    np.testing.assert_allclose(got["probabilities"], reference.predict_pixels(pixels), atol=1e-5)
    # Full-size decoded pixels are resized exactly like the shared preprocessing does.
    full = np.asarray(Image.open(io.BytesIO(sample_images[0])).convert("RGB"))
    request = InferRequest(
        NAME, [InferInput("image", [1, *full.shape], "UINT8", data=full.reshape(-1).tolist())]
    )
    got = {o.name: o.data for o in call(model, request).outputs}
    np.testing.assert_allclose(
        got["probabilities"], reference.predict_pixels(pixels[:1]), atol=1e-5
    )


def test_grpc_request_with_raw_contents(model, reference, sample_images) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image_bytes", datatype="BYTES", shape=[len(sample_images)]
    )
    message = pb.ModelInferRequest(
        model_name=NAME, id="abc", inputs=[tensor], raw_input_contents=[bytes_tensor(sample_images)]
    )
    response = call(model, InferRequest.from_grpc(message))
    grpc_message = response.to_grpc()
    assert grpc_message.id == "abc"
    assert [o.name for o in grpc_message.outputs] == ["label", "score", "probabilities"]
    probs = np.frombuffer(grpc_message.raw_output_contents[2], dtype=np.float32).reshape(
        len(sample_images), -1
    )
    np.testing.assert_allclose(
        probs,
        reference.predict_pixels(np.stack([reference.preprocess(b) for b in sample_images])),
        atol=1e-5,
    )


def test_requested_outputs_and_request_id(model, sample_images) -> None:
    request = InferRequest(
        NAME,
        [
            InferInput(
                "image_bytes", [1], "BYTES", data=[base64.b64encode(sample_images[0]).decode()]
            )
        ],
        request_id="req-1",
        request_outputs=[RequestedOutput("label", {"binary_data": False})],
    )
    body, json_length = call(model, request).to_rest()
    assert json_length is None
    assert body["id"] == "req-1"
    assert [o["name"] for o in body["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("build", "kind", "message"),
    [
        (
            lambda b: {"instances": [{"image_bytes": {"b64": "not base64!"}}]},
            "invalid_base64",
            "not valid base64",
        ),
        (lambda b: v1_body([b["not_an_image"]]), "not_an_image", "not an image"),
        (lambda b: v1_body([b["empty"]]), "empty", "empty"),
        (lambda b: v1_body([b["gif"]]), "format", "GIF is not allowed"),
        (lambda b: v1_body([b["over_pixel_limit"]]), "too_large", "over the limit of 1000000"),
        (lambda b: v1_body([b["bomb"]]), "too_large", "too large"),
        (lambda b: v1_body([b["truncated"]]), "corrupt", "truncated or corrupt"),
        (lambda b: v1_body([b["not_an_image"]] * 9), "too_many_instances", "over the limit of 8"),
        (lambda b: {"inputs": []}, "bad_request", "instances"),
        (lambda b: {"instances": [{"image": "x"}]}, "bad_request", "instance 0 must be"),
        (
            lambda b: InferRequest(NAME, [InferInput("pixels", [1], "BYTES", data=["aGk="])]),
            "bad_tensor_name",
            "unknown input 'pixels'",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image", [1, 2, 2, 3], "FP32", data=[0.0] * 12)]
            ),
            "bad_dtype",
            "must have datatype UINT8",
        ),
        (
            lambda b: InferRequest(NAME, [InferInput("image", [1, 2, 2], "UINT8", data=[0] * 12)]),
            "bad_shape",
            "shape [N, H, W, 3]",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image", [1, 2, 2, 3], "UINT8", data=[0] * 11)]
            ),
            "bad_shape",
            "has 11 values",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image", [1, 2, 2, 3], "UINT8", data=[300] * 12)]
            ),
            "bad_tensor_data",
            "outside 0..255",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image", [1, 2, 2, 3], "UINT8", data=[0.5] * 12)]
            ),
            "bad_dtype",
            "integers",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image", [1, 2000, 2000, 3], "UINT8")], raw_inputs=[b"\x00" * 16]
            ),
            "too_large",
            "over the limit",
        ),
        (
            lambda b: InferRequest(NAME, [InferInput("image_bytes", [2], "BYTES", data=["aGk="])]),
            "bad_shape",
            "but 1 elements",
        ),
        (
            lambda b: InferRequest(
                NAME, [InferInput("image_bytes", [1], "BYTES")], raw_inputs=[b"\x05\x00"]
            ),
            "bad_tensor_data",
            "malformed BYTES tensor",
        ),
        (
            lambda b: InferRequest(
                NAME,
                [
                    InferInput("image_bytes", [1], "BYTES", data=["aGk="]),
                    InferInput("image", [1], "UINT8", data=[1]),
                ],
            ),
            "bad_request",
            "2 inputs",
        ),
        (
            lambda b: InferRequest(
                NAME,
                [InferInput("image_bytes", [1], "BYTES", data=["aGk="])],
                request_outputs=[RequestedOutput("logits")],
            ),
            "bad_tensor_name",
            "unknown output",
        ),
        (
            lambda b: InferRequest.from_grpc(
                pb.ModelInferRequest(
                    model_name=NAME,
                    inputs=[
                        pb.ModelInferRequest.InferInputTensor(
                            name="image_bytes", datatype="BYTES", shape=[1]
                        )
                    ],
                    raw_input_contents=[b"\x00" * (70 * 1024)],
                )
            ),
            "payload_too_large",
            "over the limit of 65536",
        ),
    ],
)
def test_bad_input_is_rejected_with_reason(
    model, sample_images, bad_images, build, kind, message
) -> None:
    before = sample(f"garbage_rejected_requests_total{{model_name={NAME},reason={kind}}}")
    with pytest.raises(InputRejected, match=re.escape(message)) as caught:
        call(model, build(bad_images))
    assert caught.value.kind == kind
    assert (
        sample(f"garbage_rejected_requests_total{{model_name={NAME},reason={kind}}}") == before + 1
    )
    # ... and the next good request is served normally.
    assert call(model, v1_body(sample_images[:1]))["predictions"][0]["label"]


def test_metrics_count_predictions_scores_and_batches(model, reference, sample_images) -> None:
    label = reference.predict_bytes(sample_images[:1])[0].label
    before = (
        sample(f"garbage_predictions_total{{label={label},model_name={NAME}}}"),
        sample(f"garbage_prediction_score_count{{model_name={NAME}}}"),
        sample(f"garbage_batch_size_sum{{model_name={NAME}}}"),
    )
    call(model, v1_body(sample_images[:1] * 3))
    assert sample(f"garbage_predictions_total{{label={label},model_name={NAME}}}") == before[0] + 3
    assert sample(f"garbage_prediction_score_count{{model_name={NAME}}}") == before[1] + 3
    assert sample(f"garbage_batch_size_sum{{model_name={NAME}}}") == before[2] + 3
    # KServe's own series are fed too.
    assert sample(f"request_predict_seconds_count{{model_name={NAME}}}") > 0


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(
    tiny_model_dir, reference, sample_images
) -> None:
    batching = GarbageClassifierModel(
        NAME, tiny_model_dir, ServingSettings(max_batch_size=32, max_batch_wait_ms=50)
    )
    batching.load()
    calls = []
    original = batching._batcher._run_batch
    batching._batcher._run_batch = lambda pixels: calls.append(len(pixels)) or original(pixels)

    async def many():
        return await asyncio.gather(*(batching(v1_body([image])) for image in sample_images))

    responses = asyncio.run(many())
    expected = reference.predict_bytes(sample_images)
    assert [r[0]["predictions"][0]["label"] for r in responses] == [p.label for p in expected]
    for (response, _), prediction in zip(responses, expected, strict=True):
        assert response["predictions"][0]["score"] == pytest.approx(prediction.score, abs=1e-5)
    assert sum(calls) == len(sample_images)
    assert len(calls) < len(sample_images)
    batching.stop()


def test_a_lone_image_is_decoded_on_the_model_thread_and_concurrent_ones_in_the_pool(
    tiny_model_dir, reference, sample_images
) -> None:
    serving = GarbageClassifierModel(NAME, tiny_model_dir, ServingSettings(max_batch_size=32))
    serving.load()
    threads: list[str] = []
    decode_one = serving._decode_one

    def recording_decode(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return decode_one(*args, **kwargs)

    serving._decode_one = recording_decode

    async def lone_then_concurrent():
        lone = await serving(v1_body(sample_images[:1]))
        together = await asyncio.gather(*(serving(v1_body([image])) for image in sample_images))
        return lone, together

    (lone, _), together = asyncio.run(lone_then_concurrent())
    serving.stop()
    assert threads[0].startswith("garbage-onnx")
    assert any(name.startswith("garbage-decode") for name in threads[1:])
    expected = reference.predict_bytes(sample_images)
    assert lone["predictions"][0]["label"] == expected[0].label
    assert [r["predictions"][0]["label"] for r, _ in together] == [p.label for p in expected]


def test_on_prediction_hook_gets_inputs_and_outputs_and_cannot_break_serving(
    tiny_model_dir, sample_images
) -> None:
    seen = []

    async def hook(request_id, inputs, predictions):
        seen.append((request_id, inputs, predictions))
        raise RuntimeError("the monitoring sink is down")

    hooked = GarbageClassifierModel(NAME, tiny_model_dir, on_prediction=hook)
    hooked.load()

    async def run():
        response, _ = await hooked(v1_body(sample_images[:2]), headers={"x-request-id": "r-42"})
        await asyncio.sleep(0)  # let the background hook run
        await asyncio.gather(*hooked._background)
        return response

    response = asyncio.run(run())
    assert len(response["predictions"]) == 2
    assert seen and seen[0][0] == "r-42"
    assert seen[0][1] == sample_images[:2]
    assert [p.label for p in seen[0][2]] == [p["label"] for p in response["predictions"]]
    hooked.stop()


def test_metadata_describes_inputs_outputs_and_classes(model, reference) -> None:
    inputs = {t["name"]: t for t in model.get_input_types()}
    assert inputs["image_bytes"]["datatype"] == "BYTES"
    assert inputs["image"] == {
        "name": "image",
        "datatype": "UINT8",
        "shape": [-1, reference.height, reference.width, 3],
    }
    outputs = {t["name"]: t for t in model.get_output_types()}
    assert outputs["probabilities"]["shape"] == [-1, len(reference.classes)]
    described = model.describe()
    assert described["classes"] == reference.classes
    assert described["max_instances"] == 8
    assert len(described["model_sha256"]) == 64


def test_model_pickles_for_worker_processes(model, sample_images) -> None:
    """KServe sends the model to --workers processes; there it loads at application start-up."""
    from kserve import model_server

    from serving.server import set_up_worker

    model.worker_setup = set_up_worker  # what serve_model does before KServe spawns workers
    copy = pickle.loads(pickle.dumps(model))
    assert copy is not model and copy.ready is False
    assert copy.load in model_server.app.router.on_startup
    paths = {getattr(r, "path", None) for r in model_server.app.router.routes}
    assert f"/v2/models/{NAME}/infer" in paths and f"/v1/models/{NAME}:predict" in paths
    copy.load()
    assert call(copy, v1_body(sample_images[:2])) == call(model, v1_body(sample_images[:2]))
    copy.stop()


def test_routes_go_in_front_of_kserves_generic_ones_and_replace_earlier_ones(model) -> None:
    from fastapi import FastAPI

    from serving.rest import install_routes

    app = FastAPI()
    app.add_api_route("/v2/models/{model_name}/infer", lambda: None, methods=["POST"])
    install_routes(app, model)
    install_routes(app, model)  # again: replaced, not duplicated
    paths = [getattr(r, "path", None) for r in app.router.routes]
    ours = paths.index(f"/v2/models/{NAME}/infer")
    assert ours < paths.index("/v2/models/{model_name}/infer")
    assert paths.count(f"/v2/models/{NAME}/infer") == 1
    assert paths.count(f"/v1/models/{NAME}:predict") == 1


def test_warm_up_covers_every_batch_size_where_shapes_are_tuned(model, reference) -> None:
    """On CUDA each new input shape is tuned on first use; the warm-up runs them all."""
    sizes = []

    class Recording:
        def __getattr__(self, name):
            return getattr(reference, name)

        def predict_pixels(self, pixels):
            sizes.append(len(pixels))
            return reference.predict_pixels(pixels)

    model._warm_up(Recording(), every_batch_size=True)
    assert sizes == [1, 2, 3, 4]  # max_batch_size of this module's settings
    sizes.clear()
    model._warm_up(Recording())
    assert sizes == [1, 4]


def test_a_model_output_that_is_not_finite_is_a_server_error_with_a_metric(
    nonfinite_model_dir: Path, sample_images, white_png
) -> None:
    """A real ONNX model that answers NaN for white images: loads (the warm-up is grey), fails
    the white request as NonFiniteOutputError (500 / INTERNAL), counts it, serves the next."""
    broken = GarbageClassifierModel(NAME, nonfinite_model_dir, ServingSettings(max_batch_size=4))
    broken.load()
    series = f"garbage_nonfinite_outputs_total{{model_name={NAME}}}"
    before = sample(series)
    with pytest.raises(NonFiniteOutputError, match="NaN or infinity"):
        call(broken, v1_body([white_png]))
    with pytest.raises(NonFiniteOutputError):
        call(broken, v1_body([sample_images[0], white_png]))  # the whole batch fails
    assert sample(series) == before + 2
    assert call(broken, v1_body(sample_images[:1]))["predictions"][0]["label"]
    broken.stop()


def test_liveness_and_readiness_follow_load_and_stop(tiny_model_dir: Path) -> None:
    fresh = GarbageClassifierModel(NAME, tiny_model_dir, ServingSettings(max_batch_size=2))
    assert (fresh.live, asyncio.run(fresh.healthy())) == (False, False)
    fresh.load()
    assert (fresh.live, asyncio.run(fresh.healthy())) == (True, True)
    fresh.stop()
    assert (fresh.live, asyncio.run(fresh.healthy())) == (False, False)
    fresh.load()  # a reload brings it back
    assert fresh.live
    fresh.stop()
