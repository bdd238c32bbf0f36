"""The `garbage` command line, driven as a user would (typer's runner, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support import jpeg_bytes, make_archive, make_image_tree
from typer.testing import CliRunner

from cli.app import app
from garbage.core.classifier import OnnxClassifier
from garbage.core.config import Config
from pipelines.submit import CLUSTER_TRACKING_URI

runner = CliRunner()


def test_predict_prints_one_json_object_per_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (folder / ("sub" if i else ".") / f"img{i}.jpg").write_bytes(jpeg_bytes(color, seed=i))
    single = tmp_path / "one.png"
    single.write_bytes(jpeg_bytes((90, 90, 90), fmt="PNG"))
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_model_dir), str(folder), str(single)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["img0.jpg", "img1.jpg", "img2.jpg", "one.png"]
    classifier = OnnxClassifier.load(tiny_model_dir)
    expected = classifier.predict_bytes([Path(r["path"]).read_bytes() for r in lines])
    for record, prediction in zip(lines, expected, strict=True):
        assert set(record) == {"path", "label", "score"}
        assert record["label"] == prediction.label
        assert abs(record["score"] - prediction.score) < 1e-5


def test_predict_reports_bad_files_and_keeps_going(tiny_model_dir: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg_bytes((10, 10, 10)))
    bad.write_bytes(b"not a jpeg")
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tiny_model_dir),
            str(bad),
            str(good),
            str(tmp_path / "missing.jpg"),
        ],
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records = {Path(r["path"]).name: r for r in lines}
    assert [Path(r["path"]).name for r in lines][:2] == ["bad.jpg", "good.jpg"]  # input order
    assert "label" in records["good.jpg"]
    assert "not an image" in records["bad.jpg"]["error"]
    assert records["missing.jpg"]["error"] == "no such file or folder"


def test_predict_without_a_champion_says_how_to_get_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--set", f"work_dir={tmp_path}", str(tmp_path)])
    assert result.exit_code == 1
    assert "make run" in result.stderr


def test_config_errors_exit_2_with_the_reason(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "--set", "train.epochs=-1"])
    assert result.exit_code == 2
    assert "train.epochs" in result.stderr


def test_data_fetch_and_validate(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    make_image_tree(tmp_path / "src" / "trashnet", per_class=10)
    archive = make_archive(tmp_path / "src", tmp_path / "a.tar.gz")
    monkeypatch.setenv("GARBAGE_DATA_SOURCE", str(archive))
    monkeypatch.setenv("GARBAGE_DATA_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    fetched = runner.invoke(app, ["data", "fetch", "--set", f"work_dir={tmp_path / 'w'}"])
    assert fetched.exit_code == 0, fetched.output
    assert Path(fetched.stdout.strip()).name == "trashnet"
    validated = runner.invoke(
        app,
        ["data", "validate", "--out", str(tmp_path / "v"), "--set", f"work_dir={tmp_path / 'w'}"],
    )
    assert validated.exit_code == 0, validated.output
    assert "Data validation: PASSED" in validated.stdout
    assert json.loads((tmp_path / "v" / "validation.json").read_text())["num_kept"] == 60


def test_pipeline_compile_writes_ir_with_a_gpu_train_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "compile", "--output", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "p.yaml").read_text()
    assert "garbage-classifier-train" in text
    assert "nvidia.com/gpu" in text


def test_pipeline_compile_bakes_the_config_into_the_parameter_defaults(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    root = next(yaml.safe_load_all(out.read_text()))["root"]
    baked = Config.model_validate_json(
        root["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    )
    assert baked.train.epochs == 2
    assert baked.train.device == "cuda" and baked.model.image_height == 240  # the gpu profile
    assert baked.mlflow_tracking_uri == CLUSTER_TRACKING_URI and not baked.work_dir.is_absolute()


def test_pipeline_compile_for_a_cpu_cluster_asks_for_no_gpu(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--cpu-only"])
    assert result.exit_code == 0, result.output
    assert "nvidia.com/gpu" not in out.read_text()
    root = next(yaml.safe_load_all(out.read_text()))["root"]
    baked = Config.model_validate_json(
        root["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    )
    assert baked.train.device == "auto"  # the default profile: no CUDA asked for


@pytest.mark.integration
def test_predict_finds_the_work_dirs_champion_in_a_fresh_process(
    smoke_config: Config, tiny_model_dir: Path, image_tree: Path, tmp_path: Path
) -> None:
    """As a user runs it: a new process, no MLFLOW_TRACKING_URI, the registry in the work dir."""
    import os
    import subprocess
    import sys

    import mlflow
    import pandas as pd

    from garbage.training.data.split import write_manifest
    from garbage.training.registry import configure_tracking
    from garbage.training.steps import register_step

    rows = [
        {"path": f"{c}/{c}{i}.jpg", "label": c, "sha256": f"{c}{i}", "split": "test"}
        for c in smoke_config.data.classes
        for i in range(2)
    ]
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    with mlflow.start_run(experiment_id=configure_tracking(smoke_config)) as run:
        run_id = run.info.run_id
    register_step(smoke_config, tiny_model_dir, image_tree, manifest, tmp_path / "gate", run_id)

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "predict",
            "--set",
            f"work_dir={smoke_config.work_dir}",
            str(image_tree / "glass" / "glass0.jpg"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Downloading artifacts" not in done.stderr  # no per-file progress bar from MLflow
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["label"] in smoke_config.data.classes
    assert list(elsewhere.iterdir()) == []  # no stray ./mlflow.db or ./mlruns
