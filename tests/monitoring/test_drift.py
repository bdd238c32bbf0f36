"""Drift on real TrashNet images: a clean window passes, a strongly shifted one is flagged.

The reference holds the training split of the dev archive; windows are 200 test-split images
(never in the reference), as they are or strongly shifted (darker and blurred).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import ImageEnhance, ImageFilter
from typer.testing import CliRunner

from garbage.core.preprocessing import decode_image
from monitoring.cli import build_app
from monitoring.drift import CLASS_COLUMN, DriftSettings, compute_drift, write_reports
from monitoring.features import pixel_features
from monitoring.job import DriftJobError, run_drift_job
from monitoring.reference import ReferenceProfileError, load_reference
from monitoring.store import InferenceStore

WINDOW = 200


def _shift(data: bytes) -> bytes:
    image = decode_image(data).filter(ImageFilter.GaussianBlur(2))
    image = ImageEnhance.Brightness(image).enhance(0.5)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _folder(root: Path, images: list[tuple[str, bytes]], shift: bool = False) -> Path:
    for i, (label, data) in enumerate(images):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i}.jpg").write_bytes(_shift(data) if shift else data)
    return root


def _window(images: list[tuple[str, bytes]], seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    return [images[i] for i in rng.choice(len(images), WINDOW, replace=False)]


def _features(images: list[tuple[str, bytes]], shift: bool = False) -> pd.DataFrame:
    rows = []
    for label, data in images:
        row = pixel_features(np.asarray(decode_image(_shift(data) if shift else data)))
        row.update(prediction=label, true_label=label)
        rows.append(row)
    return pd.DataFrame(rows)


def test_clean_window_passes_and_shifted_window_is_flagged(
    reference_profile: Path, test_images
) -> None:
    reference = load_reference(reference_profile)
    window = _window(test_images)
    clean = compute_drift(reference, _features(window))
    assert clean.status == "no_drift" and not clean.drift_detected, json.dumps(
        clean.summary()["columns"]
    )
    assert clean.window_size == WINDOW and clean.class_reference == "label"
    shifted = compute_drift(reference, _features(window, shift=True))
    assert shifted.drift_detected and shifted.status == "drift"
    assert {"brightness", "sharpness"} <= set(shifted.drifted_columns)
    assert shifted.drift_share > clean.drift_share
    assert shifted.summary()["verdict"].startswith("DRIFT")


def test_class_mix_shift_is_flagged_through_predictions(
    reference_profile: Path, test_images
) -> None:
    reference = load_reference(reference_profile)
    current = _features(_window(test_images)).assign(prediction="glass")
    result = compute_drift(reference, current)
    assert result.columns[CLASS_COLUMN].drifted and result.drift_detected
    assert result.live_accuracy["accuracy"] < 0.5


def test_small_windows_get_no_verdict(reference_profile: Path, test_images) -> None:
    result = compute_drift(
        load_reference(reference_profile), _features(test_images[:20], shift=True)
    )
    assert result.status == "insufficient_data" and not result.drift_detected
    assert "not enough traffic" in result.verdict()


def test_evidently_report_agrees_with_the_decision(
    reference_profile: Path, test_images, tmp_path: Path
) -> None:
    reference = load_reference(reference_profile)
    current = _features(_window(test_images, seed=1), shift=True)
    result = compute_drift(reference, current)
    written = write_reports(reference, current, result, tmp_path)
    assert result.extra["evidently_agrees"] is True
    html = written["report_html"].read_text()
    assert "Wasserstein distance (normed)" in html and "Jensen-Shannon distance" in html
    evidently = json.loads(written["report_json"].read_text())
    assert any(m["metric_name"].startswith("DriftedColumnsCount") for m in evidently["metrics"])
    assert written["accuracy_html"].is_file()  # labelled rows: the classification report
    summary = json.loads(written["summary"].read_text())
    assert summary["drift_detected"] is True and summary["window_size"] == WINDOW


def test_sampled_report_keeps_the_full_window_decision(
    reference_profile: Path, test_images, tmp_path
) -> None:
    reference = load_reference(reference_profile)
    current = _features(_window(test_images, seed=2))
    result = compute_drift(reference, current)
    write_reports(reference, current, result, tmp_path, html=False, max_report_rows=50)
    assert result.extra["report_rows"] == 50 and result.extra["evidently_agrees"] is None
    assert result.window_size == WINDOW and not (tmp_path / "drift_report.html").exists()


def test_cli_on_image_folders(
    model_reference_profile: Path, tiny_model_dir: Path, test_images, tmp_path: Path
) -> None:
    """The class mix: the model's predictions on the window against its own on the reference."""
    window = _window(test_images, seed=3)
    runner = CliRunner()
    model = ["--model", str(tiny_model_dir), "--reference", str(model_reference_profile)]
    clean = runner.invoke(
        build_app(),
        [
            "drift",
            *model,
            "--images",
            str(_folder(tmp_path / "clean", window)),
            "--out",
            str(tmp_path / "o1"),
        ],
    )
    assert clean.exit_code == 0, clean.output
    summary = json.loads(clean.output)
    assert summary["drift_detected"] is False and summary["window_size"] == WINDOW
    assert isinstance(summary["drift_share"], float)
    assert summary["live_accuracy"]["labelled"] == WINDOW
    shifted = runner.invoke(
        build_app(),
        [
            "drift",
            *model,
            "--images",
            str(_folder(tmp_path / "shifted", window, shift=True)),
            "--out",
            str(tmp_path / "o2"),
            "--fail-on-drift",
        ],
    )
    assert shifted.exit_code == 3, shifted.output
    assert json.loads(shifted.output)["drift_detected"] is True
    assert (tmp_path / "o2" / "drift_report.html").is_file()
    metrics = (tmp_path / "o2" / "metrics.prom").read_text()
    assert "garbage_drift_detected 1.0" in metrics
    assert 'garbage_drift_feature_detected{feature="brightness"} 1.0' in metrics
    assert f"garbage_drift_window_size {WINDOW}.0" in metrics


def _plain(output: str) -> str:
    """CLI output without the rich error box, on one line."""
    return " ".join(output.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def test_cli_usage_errors(reference_profile: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(
        build_app(),
        ["drift", "--reference", str(reference_profile), "--images", str(tmp_path), "--db", "x.db"],
    )
    assert both.exit_code == 2 and "exactly one window source" in _plain(both.output)
    missing = runner.invoke(
        build_app(),
        [
            "drift",
            "--model",
            str(tiny_model_dir),
            "--reference",
            str(tmp_path / "nope.parquet"),
            "--images",
            str(tmp_path),
        ],
    )
    assert missing.exit_code == 2 and "does not exist" in _plain(missing.output)
    bare = runner.invoke(
        build_app(), ["drift", "--model", str(tiny_model_dir), "--images", str(tmp_path)]
    )
    assert bare.exit_code == 2 and "carries no reference profile" in _plain(bare.output)
    with pytest.raises(ReferenceProfileError):
        load_reference(tmp_path / "nope.parquet")
    with pytest.raises(DriftJobError, match="no readable"):
        run_drift_job(tiny_model_dir, tmp_path / "o", reference=reference_profile, images=tmp_path)


@pytest.mark.integration
def test_job_on_the_store_with_window_and_pushgateway(
    reference_profile: Path, tiny_model_dir: Path, test_images, tmp_path: Path, pushgateway: str
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    frame = _features(_window(test_images, seed=4), shift=True)
    frame["inference_id"] = [f"r{i}" for i in range(len(frame))]
    frame["item"] = 0
    frame["ts"] = [now - timedelta(minutes=30)] * len(frame)
    old = frame.iloc[:10].assign(
        inference_id=lambda f: "old-" + f["inference_id"], ts=now - timedelta(hours=5)
    )
    store = InferenceStore(str(tmp_path / "log.db"))
    store.insert_rows(pd.concat([frame, old], ignore_index=True))
    store.close()
    summary = run_drift_job(
        tiny_model_dir,
        tmp_path / "out",
        reference=reference_profile,
        db_url=str(tmp_path / "log.db"),
        window="1h",
        pushgateway=pushgateway,
        html=False,
        now=now,
    )
    assert summary["window_size"] == WINDOW and summary["drift_detected"] and summary["pushed"]
    assert summary["live_accuracy"]["accuracy"] == 1.0
    pushed = httpx.get(f"{pushgateway}/metrics").text
    assert 'garbage_drift_detected{instance="",job="garbage-drift"} 1' in pushed
    assert (
        'garbage_drift_feature_score{feature="brightness",instance="",job="garbage-drift"}'
        in pushed
    )


def test_settings_are_honoured(reference_profile: Path, test_images) -> None:
    reference = load_reference(reference_profile)
    current = _features(_window(test_images, seed=5))
    strict = compute_drift(reference, current, DriftSettings(feature_threshold=0.0, min_window=10))
    assert strict.drift_detected and set(strict.drifted_columns) >= {"brightness", "contrast"}
    lenient = compute_drift(
        reference, current, DriftSettings(use_embedding=False, use_class_mix=False)
    )
    assert set(lenient.columns) == set(DriftSettings().features)
