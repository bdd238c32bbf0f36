"""``export_model``: an ONNX model with its metadata, parity-checked, that predicts as PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kfp import dsl
from mlflow import MlflowClient

from garbage.core.classifier import OnnxClassifier
from garbage.core.config import Config


def test_export_writes_the_model_and_its_metadata(
    exported: dsl.Model, trained: dict[str, Any], pipeline_config: Config
) -> None:
    folder = Path(exported.path)
    assert {"model.onnx", "metadata.json"} <= {p.name for p in folder.iterdir()}
    metadata = json.loads((folder / "metadata.json").read_text())
    assert exported.metadata == {
        "framework": "onnx",
        "file": "model.onnx",
        "parity_max_abs_diff": metadata["parity_max_abs_diff"],
    }
    assert 0 <= metadata["parity_max_abs_diff"] <= 1e-4 and metadata["parity_images"] > 0
    assert metadata["mlflow_run_id"] == trained["run_id"]
    assert metadata["data_sha256"] == pipeline_config.data.sha256
    assert metadata["classes"] == pipeline_config.data.classes
    assert (metadata["image_height"], metadata["image_width"]) == (64, 64)

    client = MlflowClient(tracking_uri=pipeline_config.mlflow_tracking_uri)
    logged = client.get_run(trained["run_id"]).data.metrics["onnx_parity_max_abs_diff"]
    assert logged == pytest.approx(metadata["parity_max_abs_diff"])


def test_the_exported_model_predicts_as_the_checkpoint_did(
    exported: dsl.Model, evaluated: dict[str, Any], fetched: dsl.Dataset
) -> None:
    # evaluate_model scored the PyTorch checkpoint on the test split
    torch_predictions = pd.read_csv(Path(evaluated["evaluation"].path) / "predictions.csv")
    classifier = OnnxClassifier.load(Path(exported.path), device="cpu")
    onnx_predictions = classifier.predict_bytes(
        [(Path(fetched.path) / p).read_bytes() for p in torch_predictions["path"]]
    )
    assert [p.label for p in onnx_predictions] == list(torch_predictions["predicted"])
    assert [p.score for p in onnx_predictions] == pytest.approx(
        list(torch_predictions["score"]), abs=1e-4
    )
