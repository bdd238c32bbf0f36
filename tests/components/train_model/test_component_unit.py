"""``train_model``: the best checkpoint and its history, the summary metrics, the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from kfp import dsl
from mlflow import MlflowClient

from garbage.core.config import Config


def test_train_writes_the_best_checkpoint_and_returns_the_run(
    trained: dict[str, Any], pipeline_config: Config
) -> None:
    folder = Path(trained["model"].path)
    assert {"best.pt", "history.json", "train_summary.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "train_summary.json").read_text())
    assert trained["run_id"] == summary["run_id"]
    assert trained["model"].metadata == {"framework": "pytorch", "file": "best.pt", **summary}

    history = json.loads((folder / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [1]  # the smoke profile: one epoch
    checkpoint = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    assert checkpoint["classes"] == pipeline_config.data.classes
    assert (checkpoint["image_height"], checkpoint["image_width"]) == (64, 64)

    metrics = trained["metrics"].metadata
    assert set(metrics) == {"best_val_macro_f1", "best_epoch", "train_images_per_second"}
    assert metrics["best_epoch"] == 1
    assert metrics["best_val_macro_f1"] == history[0]["val_macro_f1"]
    assert 0.0 <= metrics["best_val_macro_f1"] <= 1.0
    assert metrics["train_images_per_second"] > 0


def test_train_tracks_the_run_in_mlflow(
    trained: dict[str, Any], pipeline_config: Config, manifest: dsl.Dataset
) -> None:
    client = MlflowClient(tracking_uri=pipeline_config.mlflow_tracking_uri)
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1"
    assert run.data.params["model.image_height"] == "64"
    assert run.data.tags["data.sha256"] == pipeline_config.data.sha256
    assert run.data.metrics["best_val_macro_f1"] == trained["metrics"].metadata["best_val_macro_f1"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/split_summary.json", f"data/{Path(manifest.path).name}"} <= logged
