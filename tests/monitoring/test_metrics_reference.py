"""Drift metrics exposition, push errors, and the reference profile."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, train_manifest

from monitoring.features import FEATURE_COLUMNS
from monitoring.metrics import PushError, drift_registry, push, write_textfile
from monitoring.reference import ReferenceProfileError, build_reference, load_reference

SUMMARY = {
    "drift_detected": True,
    "drift_share": 0.2,
    "window_size": 250,
    "embedding_drift_share": 0.0625,
    "columns": {
        "brightness": {"score": 1.7, "drifted": True},
        "noise": {"score": 0.1, "drifted": False},
    },
    "live_accuracy": {"labelled": 40, "accuracy": 0.8, "recall": {"glass": 0.5, "trash": None}},
}


def test_drift_metrics_exposition(tmp_path: Path) -> None:
    path = write_textfile(drift_registry(SUMMARY), tmp_path / "m.prom")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
    assert samples[("garbage_drift_detected", ())] == 1.0
    assert samples[("garbage_drift_share", ())] == 0.2
    assert samples[("garbage_drift_window_size", ())] == 250
    assert samples[("garbage_drift_feature_score", (("feature", "brightness"),))] == 1.7
    assert samples[("garbage_drift_feature_detected", (("feature", "noise"),))] == 0.0
    assert samples[("garbage_drift_window_accuracy", ())] == 0.8
    assert samples[("garbage_drift_window_recall", (("label", "glass"),))] == 0.5
    assert (
        "garbage_drift_window_recall",
        (("label", "trash"),),
    ) not in samples  # no data: no sample
    assert samples[("garbage_drift_last_run_timestamp_seconds", ())] > 1.7e9


def test_push_to_a_closed_port_raises_a_clear_error() -> None:
    with pytest.raises(PushError, match="cannot push drift metrics"):
        push(drift_registry(SUMMARY), f"http://127.0.0.1:{free_port()}", timeout=2)


def test_build_reference_from_a_manifest(image_tree: Path, tmp_path: Path) -> None:
    files = sorted(p for p in image_tree.rglob("*.jpg"))
    manifest = pd.DataFrame(
        {
            "path": [p.relative_to(image_tree).as_posix() for p in files],
            "label": [p.parent.name for p in files],
            "sha256": "0" * 64,
            "split": ["train" if i % 4 else "test" for i in range(len(files))],
        }
    )
    out = build_reference(image_tree, manifest, tmp_path / "ref" / "reference.parquet")
    table = load_reference(out)
    assert len(table) == (manifest["split"] == "train").sum()
    assert set(FEATURE_COLUMNS) <= set(table.columns) and set(table["split"]) == {"train"}
    provenance = json.loads(out.with_suffix(".parquet.json").read_text())
    assert provenance["rows"] == len(table) and provenance["has_predictions"] is False
    csv = build_reference(image_tree, manifest, tmp_path / "reference.csv", splits=("test",))
    assert len(load_reference(csv)) == (manifest["split"] == "test").sum()


def test_build_reference_with_model_predictions(
    image_tree: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    manifest = train_manifest(image_tree).iloc[:12]
    table = load_reference(
        build_reference(image_tree, manifest, tmp_path / "r.parquet", model_dir=tiny_model_dir)
    )
    assert table["prediction"].notna().all() and table["score"].between(0, 1).all()


def test_reference_errors(image_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ReferenceProfileError, match="lacks columns"):
        build_reference(image_tree, pd.DataFrame({"path": []}), tmp_path / "r.parquet")
    manifest = pd.DataFrame(
        {
            "path": ["glass/missing.jpg"],
            "label": ["glass"],
            "sha256": ["0" * 64],
            "split": ["train"],
        }
    )
    with pytest.raises(ReferenceProfileError, match="cannot read reference image"):
        build_reference(image_tree, manifest, tmp_path / "r.parquet")
    with pytest.raises(ReferenceProfileError, match="no image in splits"):
        build_reference(image_tree, manifest, tmp_path / "r.parquet", splits=("val",))
    pd.DataFrame({"brightness": [1.0]}).to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(ReferenceProfileError, match="lacks feature columns"):
        load_reference(tmp_path / "partial.parquet")


@pytest.mark.integration
def test_reference_follows_an_mlflow_artifact_uri(image_tree: Path, tmp_path: Path) -> None:
    """The artifact is found through the tracking URI given, not MLflow's process-wide one."""
    import mlflow

    from monitoring.reference import resolve_reference

    manifest = train_manifest(image_tree).iloc[:8]
    built = build_reference(image_tree, manifest, tmp_path / "built" / "reference.parquet")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    try:
        # An explicit artifact location: the default (./mlruns) would write into the working
        # directory.
        experiment = mlflow.create_experiment(
            "reference-test", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(built), artifact_path="monitoring")
    finally:
        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI
    local = resolve_reference(
        f"runs:/{run.info.run_id}/monitoring", tmp_path / "download", tracking
    )
    assert local.name == "reference.parquet" and len(load_reference(local)) == 8
    assert resolve_reference(str(built), tmp_path, tracking) == built
    with pytest.raises(ReferenceProfileError, match="cannot download"):
        resolve_reference(f"runs:/{run.info.run_id}/nothing-here", tmp_path / "d2", tracking)
