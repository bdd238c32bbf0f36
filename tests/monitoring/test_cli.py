"""``garbage drift`` and ``garbage collector`` as a user runs them: the real CLI, a champion
registered in a temporary SQLite MLflow store, no MLFLOW_TRACKING_URI; and ``python -m monitoring``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from monitoring_helpers import RELABELLED
from support import free_port, make_image_tree, train_manifest, wait_for_port
from typer.testing import CliRunner

from cli.app import app
from garbage.core.config import load_config
from monitoring.reference import build_reference

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def relabelled_images(tmp_path: Path) -> Path:
    """Eight images in a folder per class of the relabelled model."""
    return make_image_tree(tmp_path / "images", classes=RELABELLED)


@pytest.fixture
def champion_work_dir(
    tmp_path: Path,
    relabelled_model_dir: Path,
    relabelled_images: Path,
    register_champion,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A work dir whose embedded registry holds the relabelled model, with its reference, as
    champion. The test runs elsewhere: nothing may find the registry through the working
    directory (nor write MLflow's default ./mlflow.db into the checkout)."""
    monkeypatch.chdir(tmp_path)
    manifest = train_manifest(relabelled_images)
    reference = build_reference(
        relabelled_images,
        manifest,
        tmp_path / "reference" / "reference.parquet",
        model_dir=relabelled_model_dir,
    )
    work = tmp_path / "work"
    config = load_config(overrides=[f"work_dir={work}"], environ={})
    assert register_champion(config, relabelled_model_dir, reference) == "1"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    return work


def test_drift_on_images_with_no_other_flag_uses_the_champion_and_its_reference(
    champion_work_dir: Path, relabelled_images: Path
) -> None:
    result = runner.invoke(
        app, ["drift", "--images", str(relabelled_images), "--set", f"work_dir={champion_work_dir}"]
    )
    assert result.exit_code == 0, result.output
    out = champion_work_dir / "monitoring" / "drift"
    summary = json.loads(result.stdout)
    assert summary["window_size"] == 48 and summary["status"] == "insufficient_data"
    # Classes, true labels and predictions come from the champion's metadata, not TrashNet's.
    assert list(summary["live_accuracy"]["recall"]) == RELABELLED
    assert summary["live_accuracy"]["labelled"] == 48
    for name in ("drift_report.html", "drift_report.json", "drift_summary.json", "metrics.prom"):
        assert (out / name).is_file(), name
    assert (out / "live_accuracy.json").is_file()
    written = json.loads((out / "drift_summary.json").read_text())
    assert written["class_reference"] == "prediction"  # the reference carries the predictions
    assert written["reference_size"] == 48


def test_drift_reference_and_model_by_uri_use_the_configured_registry(
    champion_work_dir: Path, relabelled_images: Path, tmp_path: Path
) -> None:
    for extra in (
        ["--reference", "models:/garbage-classifier@champion"],
        ["--model", "models:/garbage-classifier/1"],
    ):
        result = runner.invoke(
            app,
            [
                "drift",
                "--images",
                str(relabelled_images),
                "-s",
                f"work_dir={champion_work_dir}",
                "--out",
                str(tmp_path / "out"),
                "--no-html",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["window_size"] == 48


def test_drift_without_a_champion_says_how_to_get_one(
    relabelled_images: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["drift", "--images", str(relabelled_images), "--set", f"work_dir={tmp_path / 'w'}"]
    )
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert "models:/garbage-classifier@champion" in line and "make run" in line
    assert not (tmp_path / "w" / "mlflow.db").exists()


def test_collector_without_a_champion_says_how_to_get_one(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["collector", "--db", str(tmp_path / "log.db"), "--set", f"work_dir={tmp_path}"],
        env={"GARBAGE_COLLECTOR_TOKEN": "labeller:test-token-0123456789"},
    )
    assert result.exit_code == 1
    assert "make run" in _one_line(result.stderr)


def test_python_m_monitoring_collector_checks_labels_against_the_model(
    relabelled_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "collector.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitoring",
            "collector",
            "--model",
            str(relabelled_model_dir),
            "--db",
            str(tmp_path / "log.db"),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env={**os.environ, "GARBAGE_COLLECTOR_TOKEN": "labeller:test-token-0123456789"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer test-token-0123456789"}
        anonymous = httpx.post(f"{url}/feedback", json={"inference_id": "none", "label": "bottle"})
        assert anonymous.status_code == 401, anonymous.text
        known = httpx.post(
            f"{url}/feedback", json={"inference_id": "none", "label": "bottle"}, headers=auth
        )
        assert known.status_code == 404, known.text  # a valid label, but nothing logged
        unknown = httpx.post(
            f"{url}/feedback", json={"inference_id": "none", "label": "glass"}, headers=auth
        )
        assert unknown.status_code == 422 and "unknown labels ['glass']" in unknown.json()["detail"]
        assert list(httpx.get(f"{url}/accuracy").json()["recall"]) == RELABELLED
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def test_python_m_monitoring_offers_both_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitoring", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "collector" in result.stdout and "drift" in result.stdout
    assert "python -m monitoring" in result.stdout
