"""``evaluate_model``: test metrics, confusion matrix, HTML report, the returned macro-F1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from kfp import dsl
from mlflow import MlflowClient

from garbage.core.config import Config


def test_evaluate_logs_the_test_metrics_and_returns_the_macro_f1(
    evaluated: dict[str, Any], pipeline_config: Config
) -> None:
    classes = pipeline_config.data.classes
    saved = json.loads((Path(evaluated["evaluation"].path) / "metrics.json").read_text())
    metrics = evaluated["metrics"].metadata
    assert set(metrics) == {"test_accuracy", "test_macro_f1"} | {
        f"test_recall_{c}" for c in classes
    }
    assert isinstance(evaluated["macro_f1"], float)
    assert evaluated["macro_f1"] == metrics["test_macro_f1"] == saved["macro_f1"]
    assert metrics["test_accuracy"] == saved["accuracy"]
    for name in classes:
        assert metrics[f"test_recall_{name}"] == saved["per_class"][name]["recall"]


def test_evaluate_publishes_the_confusion_matrix_of_the_test_split(
    evaluated: dict[str, Any], manifest: dsl.Dataset, pipeline_config: Config
) -> None:
    classes = pipeline_config.data.classes
    matrix = evaluated["confusion"].metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == classes
    rows = [row["row"] for row in matrix["rows"]]
    test = pd.read_csv(manifest.path).query("split == 'test'")
    # rows are true classes: each sums to that class's test images
    assert [sum(row) for row in rows] == [int((test["label"] == c).sum()) for c in classes]
    correct = sum(rows[i][i] for i in range(len(classes)))
    assert correct / len(test) == evaluated["metrics"].metadata["test_accuracy"]


def test_evaluate_writes_the_report_and_its_files(
    evaluated: dict[str, Any], manifest: dsl.Dataset
) -> None:
    folder = Path(evaluated["evaluation"].path)
    assert {
        "metrics.json",
        "predictions.csv",
        "report.html",
        "confusion_matrix.png",
        "misclassified.png",
    } <= {p.name for p in folder.iterdir()}
    report = Path(evaluated["report"].path).read_text()
    assert report == (folder / "report.html").read_text()
    assert report.startswith("<html>") and "macro-F1" in report
    predictions = pd.read_csv(folder / "predictions.csv")
    test = pd.read_csv(manifest.path).query("split == 'test'")
    assert sorted(predictions["path"]) == sorted(test["path"])


def test_evaluate_logs_to_the_training_run(
    evaluated: dict[str, Any], trained: dict[str, Any], pipeline_config: Config
) -> None:
    client = MlflowClient(tracking_uri=pipeline_config.mlflow_tracking_uri)
    run = client.get_run(trained["run_id"])
    assert run.data.metrics["test_macro_f1"] == evaluated["macro_f1"]
    logged = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/confusion_matrix.png"} <= logged
