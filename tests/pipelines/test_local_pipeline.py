"""The whole pipeline through kfp.local on a small subset of the real TrashNet archive."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from support import DEV_ARCHIVE_SHA256
from typer.testing import CliRunner

from cli.app import app
from garbage.core.config import load_config


@pytest.mark.integration
def test_pipeline_runs_end_to_end_and_leaves_a_champion(
    dev_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GARBAGE_DATA_SOURCE", str(dev_archive))
    monkeypatch.setenv("GARBAGE_DATA_SHA256", DEV_ARCHIVE_SHA256)
    work = tmp_path / "work"
    runner = CliRunner()
    result = runner.invoke(
        app, ["pipeline", "run", "--profile", "smoke", "--set", f"work_dir={work}"]
    )
    assert result.exit_code == 0, result.output
    assert "version 1 promoted to champion" in result.stdout
    # What a person reads: a line per step and the gate's decision; the step logs go to files.
    shown = result.stdout.splitlines()
    assert len(shown) < 60
    for number, step in enumerate(["fetch data", "validate data", "split data", "train"], 1):
        assert any(line.startswith(f"[{number}/8] {step} done in") for line in shown), step
    assert "[8/8] register and promote done in" in result.stdout
    assert "executor_input" not in result.stdout
    (logs,) = (work / "kfp" / "logs").iterdir()
    assert "executor_input" in (logs / "train-model.log").read_text()

    config = load_config(profile="smoke", overrides=[f"work_dir={work}"])
    uri = config.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("garbage-classifier", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    assert run.data.params["train.epochs"] == "1"
    for key in ("test_accuracy", "test_macro_f1", "val_macro_f1", "onnx_parity_max_abs_diff"):
        assert key in run.data.metrics
    assert run.data.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/misclassified.png",
        "evaluation/metrics.json",
    } <= artifacts

    downloaded = mlflow.artifacts.download_artifacts(
        "models:/garbage-classifier@champion", dst_path=str(tmp_path / "champion")
    )
    files = {p.relative_to(downloaded).as_posix() for p in Path(downloaded).rglob("*")}
    assert {"model.onnx", "metadata.json", "MLmodel", "reference/reference.parquet"} <= files

    # `garbage predict` defaults to the champion just registered.
    images = next(work.joinpath("data", "extracted").iterdir())
    predicted = runner.invoke(
        app,
        [
            "predict",
            "--profile",
            "smoke",
            "--set",
            f"work_dir={work}",
            str(next(images.rglob("glass"))),
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(records) > 100 and all(r["label"] in config.data.classes for r in records)
