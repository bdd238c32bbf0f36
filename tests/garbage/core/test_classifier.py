"""The ONNX Runtime classifier: verified loading, finite outputs, the batched-prediction loop."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import constant_onnx_model, jpeg_bytes, seal_model

from garbage.core.classifier import (
    MAX_METADATA_BYTES,
    ModelIntegrityError,
    ModelLoadError,
    ModelMetadata,
    NonFiniteOutputError,
    OnnxClassifier,
    combined_digest,
    external_data_files,
    predict_in_batches,
)
from garbage.core.preprocessing import decode_image


def test_threads_stop_spinning_when_a_call_returns(tiny_model_dir: Path) -> None:
    """Between calls the session leaves the CPUs to the rest of the process (a server decodes)."""
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu", intra_op_threads=2)
    for _ in range(5):
        classifier.predict_pixels(np.zeros((4, 64, 64, 3), dtype=np.uint8))
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.02  # spinning on after the call costs about 0.04 s


def test_the_batched_loop_calls_the_model_batch_size_images_at_a_time_in_order() -> None:
    calls: list[int] = []

    def model(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels[:, 0, 0, :1].astype(np.float32)  # each image's own first value

    images = (np.full((2, 2, 3), i, dtype=np.uint8) for i in range(7))  # read lazily
    rows = predict_in_batches(model, images, batch_size=3)
    assert calls == [3, 3, 1]
    assert rows[:, 0].tolist() == list(range(7))
    assert predict_in_batches(model, [], batch_size=3).shape == (0, 0)


def test_images_of_any_size_are_fitted_and_labelled_like_bytes_are(tiny_model_dir: Path) -> None:
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu")
    encoded = [jpeg_bytes((40 * i, 90, 200), size=(120 + 10 * i, 90), seed=i) for i in range(5)]
    decoded = [np.asarray(decode_image(data)) for data in encoded]
    by_pixels = classifier.predict_images(decoded, batch_size=2)
    by_bytes = classifier.predict_bytes(encoded, batch_size=4)
    assert [p.label for p in by_pixels] == [p.label for p in by_bytes]
    assert np.allclose([p.score for p in by_pixels], [p.score for p in by_bytes], atol=1e-6)
    assert all(set(p.probabilities) == set(classifier.classes) for p in by_pixels)


# -- verified loading -------------------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _metadata(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


def _set_location(folder: Path, location: str) -> None:
    """Point every external tensor of ``folder/model.onnx`` at ``location`` (digests untouched)."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(folder / "model.onnx"))


def _record_model_onnx_only(folder: Path) -> None:
    """metadata.json that records model.onnx as it is now and nothing else."""
    files = {"model.onnx": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()}
    metadata = {**_metadata(folder), "files": files, "digest": combined_digest(files)}
    (folder / "metadata.json").write_text(json.dumps(metadata))


def test_a_model_with_external_weights_loads_verified(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0, 2.0], external_data="weights.bin")
    metadata = _metadata(folder)
    assert set(metadata["files"]) == {"model.onnx", "weights.bin"}
    classifier = OnnxClassifier.load(folder, device="cpu")
    assert classifier.digest == metadata["digest"] == combined_digest(metadata["files"])
    expected = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    probabilities = classifier.predict_pixels(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    assert np.allclose(probabilities, expected, atol=1e-6)


def test_the_exported_model_loads_verified(tiny_model_dir: Path) -> None:
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu")
    assert classifier.digest == _metadata(tiny_model_dir)["digest"]


@pytest.mark.parametrize("changed", ["weights.bin", "model.onnx"])
def test_a_flipped_byte_in_any_file_the_model_loads_is_refused(
    tmp_path: Path, changed: str
) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0, 2.0], external_data="weights.bin")
    recorded = _metadata(folder)["files"][changed]
    _flip_a_byte(folder / changed)
    found = hashlib.sha256((folder / changed).read_bytes()).hexdigest()
    with pytest.raises(ModelIntegrityError) as raised:
        OnnxClassifier.load(folder, device="cpu", allow_unverified=True)  # never skips a check
    message = str(raised.value)
    assert str(folder / changed) in message
    assert recorded in message and found in message
    assert "download the model again" in message


def test_a_missing_external_weights_file_is_refused(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], external_data="weights.bin")
    (folder / "weights.bin").unlink()
    with pytest.raises(ModelIntegrityError, match=r"weights\.bin is missing"):
        OnnxClassifier.load(folder, device="cpu")


def test_an_external_file_that_metadata_does_not_record_is_refused(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], external_data="weights.bin")
    _record_model_onnx_only(folder)
    with pytest.raises(ModelIntegrityError, match=r"loads weights\.bin, which .* does not record"):
        OnnxClassifier.load(folder, device="cpu")


@pytest.mark.parametrize("location", ["../weights.bin", "/ABSOLUTE", "sub/../../weights.bin"])
@pytest.mark.parametrize("recorded", [True, False])
def test_external_data_outside_the_model_folder_is_refused(
    tmp_path: Path, location: str, recorded: bool
) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], external_data="weights.bin")
    (folder / "weights.bin").rename(tmp_path / "weights.bin")
    location = location.replace("/ABSOLUTE", str(tmp_path / "weights.bin"))
    _set_location(folder, location)
    if recorded:
        _record_model_onnx_only(folder)
    else:
        (folder / "metadata.json").unlink()
    with pytest.raises(ModelIntegrityError, match="not inside its folder") as raised:
        OnnxClassifier.load(folder, device="cpu", allow_unverified=not recorded)
    assert location in str(raised.value)


def test_external_data_through_a_link_that_leads_out_is_refused(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], external_data="weights.bin")
    (folder / "weights.bin").rename(tmp_path / "outside.bin")
    (folder / "weights.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(ModelIntegrityError, match="leads outside the model folder"):
        OnnxClassifier.load(folder, device="cpu")


def test_external_data_is_found_in_nested_graphs_too(tmp_path: Path) -> None:
    """The wire-format reader finds locations where ONNX Runtime would read them (subgraphs)."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, value: float) -> onnx.GraphProto:
        constant = numpy_helper.from_array(np.full((1, 2), value, dtype=np.float32), f"{name}_c")
        return helper.make_graph(
            [helper.make_node("Identity", [f"{name}_c"], [f"{name}_out"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 2])],
            [constant],
        )

    node = helper.make_node(
        "If", ["flag"], ["out"], then_branch=branch("yes", 1.0), else_branch=branch("no", 2.0)
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "nested"
    (folder / "sub").mkdir(parents=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="sub/branches.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    assert (folder / "sub" / "branches.bin").is_file()
    assert external_data_files(folder / "model.onnx") == ["sub/branches.bin"]


def test_a_file_that_is_not_an_onnx_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        external_data_files(tmp_path / "model.onnx")


def test_a_folder_that_records_no_digests_is_refused_unless_allowed(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], seal=False)  # an older export
    with pytest.raises(ModelIntegrityError, match="records no digests") as raised:
        OnnxClassifier.load(folder, device="cpu")
    assert "re-export" in str(raised.value).lower() and "allow_unverified" in str(raised.value)
    assert OnnxClassifier.load(folder, device="cpu", allow_unverified=True).digest is None
    (folder / "metadata.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"no metadata\.json beside"):
        OnnxClassifier.load(folder, device="cpu")
    assert OnnxClassifier.load(folder, device="cpu", allow_unverified=True).classes == ["c0", "c1"]


def test_metadata_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0])
    (folder / "metadata.json").write_text(json.dumps({**_metadata(folder), "classes": ["a", "b"]}))
    with pytest.raises(ModelIntegrityError, match=r"describes classes \['a', 'b'\]"):
        OnnxClassifier.load(folder, device="cpu")


GOOD = {"classes": ["a", "b"], "image_height": 64, "image_width": 64}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"classes": ["a"]}, "list of 2 to"),
        ({"classes": [f"c{i}" for i in range(1001)]}, "list of 2 to"),
        ({"classes": ["a", "x" * 65]}, "1 to 64 characters"),
        ({"classes": ["a", "line\nbreak"]}, "printable"),
        ({"classes": ["a", 3]}, "printable"),
        ({"classes": ["a", "a"]}, "repeat"),
        ({"image_height": 100_000}, "outside 8..4096"),
        ({"image_width": True}, "must be an integer"),
        ({"image_width": None}, "must be an integer"),
        ({"files": {"model.onnx": "0" * 63}, "digest": "0" * 64}, "not a lowercase hex"),
        ({"files": {"model.onnx": "0" * 64}}, "without a sha256 digest"),
        ({"files": {f"f{i}": "0" * 64 for i in range(65)}, "digest": "0" * 64}, "at most 64"),
    ],
)
def test_metadata_json_is_held_to_limits(tmp_path: Path, change: dict, words: str) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ModelLoadError, match=words):
        ModelMetadata.read(path)


def test_metadata_json_that_is_not_a_small_json_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(GOOD))
    assert ModelMetadata.read(path).classes == ["a", "b"]
    for text, words in [
        ("[1, 2]", "JSON object"),
        ("{", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        (json.dumps({**GOOD, "pad": "x" * MAX_METADATA_BYTES}), "larger than"),
    ]:
        path.write_text(text)
        with pytest.raises(ModelLoadError, match=words):
            ModelMetadata.read(path)


def test_a_sealed_model_changed_afterwards_and_sealed_again_loads(tmp_path: Path) -> None:
    """What the digests bind is the files: the same graph re-sealed after a change loads."""
    folder = constant_onnx_model(tmp_path / "m", [0.0, 1.0], external_data="weights.bin")
    first = OnnxClassifier.load(folder, device="cpu").digest
    _flip_a_byte(folder / "weights.bin")
    seal_model(folder)
    assert OnnxClassifier.load(folder, device="cpu").digest not in (None, first)


# -- outputs that are not finite -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_an_output_that_is_not_finite_raises(tmp_path: Path, bad: float) -> None:
    classifier = OnnxClassifier.load(constant_onnx_model(tmp_path / "m", [0.0, bad, 1.0]))
    pixels = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    for predict in (classifier.predict_pixels, classifier.logits):
        with pytest.raises(NonFiniteOutputError, match="NaN or infinity") as raised:
            predict(pixels)
        assert "3 of 3 images" in str(raised.value)
    with pytest.raises(NonFiniteOutputError):
        classifier.predict_bytes([jpeg_bytes((10, 20, 30))])


def test_a_minus_infinite_logit_is_refused_where_it_shows(tmp_path: Path) -> None:
    """Softmax turns a logit of -inf into a probability of 0: only the logits are not finite."""
    classifier = OnnxClassifier.load(constant_onnx_model(tmp_path / "m", [0.0, -math.inf]))
    pixels = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert classifier.predict_pixels(pixels).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(NonFiniteOutputError, match="in its logits for 2 of 2 images"):
        classifier.logits(pixels)
