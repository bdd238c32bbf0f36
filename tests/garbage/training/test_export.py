"""ONNX export: parity with PyTorch, metadata in the graph, the inference contract."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import CLASSES, jpeg_bytes

from garbage.core.classifier import (
    ModelIntegrityError,
    ModelLoadError,
    OnnxClassifier,
    combined_digest,
    find_model_file,
)
from garbage.core.config import load_config
from garbage.training.export import PARITY_TOLERANCE, ExportParityError, export_onnx
from garbage.training.model import build_model
from garbage.training.train import load_checkpoint, save_checkpoint


def test_exported_logits_match_pytorch(tiny_model_dir: Path) -> None:
    metadata = json.loads((tiny_model_dir / "metadata.json").read_text())
    assert metadata["parity_max_abs_diff"] <= PARITY_TOLERANCE
    checkpoint = tiny_model_dir.parent / "best.pt"
    model, _ = load_checkpoint(checkpoint)
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu")
    pixels = np.stack(
        [classifier.preprocess(jpeg_bytes((30 * i, 200, 90), seed=i)) for i in range(5)]
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
    assert np.max(np.abs(classifier.logits(pixels) - expected)) <= PARITY_TOLERANCE


def test_model_carries_classes_size_and_preprocessing(tiny_model_dir: Path) -> None:
    classifier = OnnxClassifier.load(tiny_model_dir)
    assert classifier.classes == CLASSES
    assert (classifier.height, classifier.width) == (64, 64)
    assert "normalisation is inside the graph" in classifier.metadata["input"]
    inputs = classifier.session.get_inputs()
    assert [(i.name, i.type) for i in inputs] == [("image", "tensor(uint8)")]
    assert inputs[0].shape[1:] == [64, 64, 3]


def test_probabilities_are_a_distribution_for_any_batch_size(tiny_model_dir: Path) -> None:
    classifier = OnnxClassifier.load(tiny_model_dir)
    for n in (1, 3, 17):
        probabilities = classifier.predict_pixels(np.zeros((n, 64, 64, 3), dtype=np.uint8))
        assert probabilities.shape == (n, len(CLASSES))
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    results = classifier.predict_bytes([jpeg_bytes((200, 10, 10))])
    assert results[0].label in CLASSES
    assert results[0].score == max(results[0].probabilities.values())


def test_parity_failure_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(profile="smoke", environ={})
    model = build_model("efficientnet_lite0", len(CLASSES), pretrained=False)
    save_checkpoint(tmp_path / "best.pt", model, CLASSES, config, {})
    monkeypatch.setattr("garbage.training.export.PARITY_TOLERANCE", -1.0)  # nothing can pass
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "metadata.json").write_text("{}")  # an earlier export's
    with pytest.raises(ExportParityError, match="not used"):
        export_onnx(tmp_path / "best.pt", tmp_path / "export")
    assert not (tmp_path / "export" / "metadata.json").exists()


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model\.onnx"):
        find_model_file(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxClassifier.load(tmp_path / "nowhere")


def test_export_records_the_digest_of_every_file_the_model_loads(tiny_model_dir: Path) -> None:
    metadata = json.loads((tiny_model_dir / "metadata.json").read_text())
    model_bytes = (tiny_model_dir / "model.onnx").read_bytes()
    assert metadata["files"] == {"model.onnx": hashlib.sha256(model_bytes).hexdigest()}
    assert metadata["digest"] == combined_digest(metadata["files"])
    assert OnnxClassifier.load(tiny_model_dir, device="cpu").digest == metadata["digest"]


def test_exported_weights_moved_to_an_external_file_are_refused_until_sealed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The weights are in model.onnx; moved out (as MLflow stores them), model.onnx changes."""
    import onnx

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    onnx.save_model(
        onnx.load(str(folder / "model.onnx")),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
    )
    with pytest.raises(ModelIntegrityError, match=r"model\.onnx does not match"):
        OnnxClassifier.load(folder, device="cpu")
