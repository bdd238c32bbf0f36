"""``garbage retrain``: decides on the store's labels, builds a version, retrains it once.

The pipeline is a stand-in for :func:`pipelines.local.run_locally` (it records the config it is
given and writes the gate's ``decision.json`` and ``decision.md``); the real pipeline on a
retrain is covered by the whole-loop integration test. The champion lives in a real SQLite MLflow
registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import support
from mlflow import MlflowClient
from support import CLASSES, COLORS, jpeg_bytes, make_archive, make_image_tree
from typer.testing import CliRunner

from cli.app import app
from garbage.core.config import Config, load_config
from garbage.training.data.versions import DatasetStore, version_manifest
from monitoring.images import ImageStore
from monitoring.job import DriftWindow
from monitoring.store import InferenceStore
from pipelines.local import PipelineFailed, gate_record

runner = CliRunner()
OLD = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
SITE_IMAGES = 12


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    """A tiny archive (3 images per class), and a SQLite store with 12 labelled site images."""
    make_image_tree(tmp_path / "src" / "dataset", per_class=3)
    archive = make_archive(tmp_path / "src", tmp_path / "tiny.tar.gz")
    db = tmp_path / "monitoring" / "inferences.db"
    images = ImageStore(str(tmp_path / "monitoring" / "images"))  # the default beside the db
    rows = []
    for i in range(SITE_IMAGES):
        data = jpeg_bytes(COLORS[CLASSES[i % 6]], size=(48, 36), seed=7000 + i)
        rows.append(
            {
                "inference_id": f"r{i}",
                "item": 0,
                "ts": OLD - timedelta(minutes=5),
                "prediction": "paper",
                "true_label": CLASSES[i % 6],
                "label_time": OLD,
                "image_sha256": images.put(data),
            }
        )
    store = InferenceStore(str(db))
    store.insert_rows(pd.DataFrame(rows))
    store.close()
    return {
        "work": str(tmp_path / "work"),
        "archive": str(archive),
        "sha": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "db": str(db),
    }


def config_of(site: dict[str, str]) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={site['work']}"], environ={})


def retrain(site: dict[str, str], *args: str, min_labels: int = 5):
    """``garbage retrain --db DB ARGS`` on the smoke profile; the result."""
    sets = [
        f"work_dir={site['work']}",
        f"data.source={site['archive']}",
        f"data.sha256={site['sha']}",
        f"retrain.min_new_labels={min_labels}",
    ]
    options = [part for value in sets for part in ("--set", value)]
    return runner.invoke(
        app, ["retrain", "--db", site["db"], *args, "--profile", "smoke", *options]
    )


class PipelineStandIn:
    """A stand-in for ``pipelines.local.run_locally``: records each config, writes a gate result.

    With ``error``, it raises :class:`PipelineFailed` as a failed step does.
    """

    def __init__(self, folder: Path, error: str | None = None) -> None:
        self.folder = folder
        self.error = error
        self.configs: list[Config] = []

    def __call__(self, config: Config, out: object = None) -> Path:
        self.configs.append(config)
        if self.error is not None:
            raise PipelineFailed(self.error)
        markdown = self.folder / f"run-{len(self.configs)}" / "decision"
        record = gate_record(markdown)
        record.parent.mkdir(parents=True)
        decision = {"promote": True, "reason": "beats the champion", "version": "2"}
        record.write_text(json.dumps(decision))
        markdown.write_text("# Promotion gate: version 2 promoted\n")
        return markdown


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PipelineStandIn:
    stand_in = PipelineStandIn(tmp_path / "gate")
    monkeypatch.setattr("pipelines.local.run_locally", stand_in)
    return stand_in


@pytest.fixture
def champion(site: dict[str, str], tiny_model_dir: Path) -> Callable[[], dict[str, str]]:
    """Register the tiny model as champion v1 of the site's registry; return its aliases."""
    config = config_of(site)
    support.register_champion(config, tiny_model_dir)
    uri = config.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return lambda: support.aliases(client, config)


def ledger(site: dict[str, str], version: str) -> dict:
    return json.loads(
        (Path(site["work"]) / "datasets" / "retrains" / f"{version}.json").read_text()
    )


def test_not_due_says_why_and_runs_nothing(site: dict[str, str], pipeline: PipelineStandIn) -> None:
    result = retrain(site, min_labels=100)
    assert result.exit_code == 0, result.output
    assert "champion: none yet" in result.stdout
    assert "new labels: 12 of 12 labelled images" in result.stdout
    assert "drift: not checked (no champion to compare)" in result.stdout
    assert "12 new labels that the champion was not trained on (at least 100" in result.stdout
    assert "decision: not due" in result.stdout
    assert pipeline.configs == [] and not (Path(site["work"]) / "datasets" / "versions").exists()


def test_dry_run_builds_nothing(site: dict[str, str], pipeline: PipelineStandIn) -> None:
    result = retrain(site, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "decision: retrain due" in result.stdout and "dry run" in result.stdout
    assert pipeline.configs == [] and not (Path(site["work"]) / "datasets" / "versions").exists()


def test_due_builds_a_version_and_retrains_it_once(
    site: dict[str, str], pipeline: PipelineStandIn, champion: Callable[[], dict[str, str]]
) -> None:
    result = retrain(site, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outcome"] == "retrained" and report["decision"]["due"]
    assert report["champion"]["version"] == "1" and report["champion"]["data_version"] is None
    assert report["new_labels"] == SITE_IMAGES
    assert not report["drift"]["checked"]  # the champion carries no reference profile
    assert "carries no reference profile" in report["drift"]["note"]
    name = report["version"]["name"]
    manifest = version_manifest(DatasetStore(Path(site["work"]) / "datasets"), name)
    assert manifest.groupby("source").size().to_dict() == {"site": SITE_IMAGES, "trashnet": 18}

    [config] = pipeline.configs
    assert config.data.version == name
    assert config.train.init_from == "models:/garbage-classifier@champion"
    record = ledger(site, name)
    assert record == report["ledger"]
    assert record["state"] == "succeeded" and record["host"] == "local"
    assert record["champion_before"] == "1" and record["registered_version"] == "2"
    assert record["promoted"] is True and record["gate_reason"] == "beats the champion"
    assert record["trigger"][0].startswith("12 new labels")
    assert report["gate"]["version"] == "2"

    again = retrain(site)  # the same labels: the same version, retrained already
    assert again.exit_code == 0, again.output
    assert f"{name} was retrained already" in again.stdout and "--force" in again.stdout
    assert len(pipeline.configs) == 1

    forced = retrain(site, "--force")
    assert forced.exit_code == 0, forced.output
    assert "# Promotion gate: version 2 promoted" in forced.stdout
    assert len(pipeline.configs) == 2 and pipeline.configs[1].data.version == name
    assert ledger(site, name)["state"] == "succeeded"
    assert champion() == {"champion": "1"}  # only the pipeline's gate moves it


def test_a_failed_pipeline_keeps_the_champion(
    site: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    champion: Callable[[], dict[str, str]],
) -> None:
    failing = PipelineStandIn(
        tmp_path / "gate", error="pipeline failed in train (train):\n    RuntimeError: boom"
    )
    monkeypatch.setattr("pipelines.local.run_locally", failing)
    result = retrain(site)
    assert result.exit_code == 1, result.output
    assert "pipeline failed in train (train)" in result.stderr
    assert "champion v1 keeps serving" in result.stderr
    [config] = failing.configs
    record = ledger(site, config.data.version)
    assert record["state"] == "failed" and "RuntimeError: boom" in record["error"]
    assert champion() == {"champion": "1"}


def test_a_cluster_needs_a_shared_datasets_root(
    site: dict[str, str], pipeline: PipelineStandIn
) -> None:
    result = retrain(site, "--host", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.output
    assert "set data.datasets_root to a shared bucket" in result.stderr
    assert pipeline.configs == []


def test_drift_without_new_labels_trains_nothing_new(
    site: dict[str, str],
    pipeline: PipelineStandIn,
    champion: Callable[[], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = json.loads(retrain(site, "--json").stdout)
    name = first["version"]["name"]
    config = config_of(site)  # the retrain's model was promoted: the champion holds its labels
    client = MlflowClient(config.mlflow_tracking_uri, config.mlflow_tracking_uri)
    client.set_model_version_tag(config.registry.model_name, "1", "data.version", name)

    def drifted(*args: object, count: int, **kwargs: object) -> list[DriftWindow]:
        now = datetime.now(UTC).replace(tzinfo=None)
        return [DriftWindow(now, now, 50, True, "brightness drifted") for _ in range(count)]

    monkeypatch.setattr("monitoring.job.drift_flags", drifted)
    result = retrain(site)
    assert result.exit_code == 0, result.output
    assert f"trained on {name}" in result.stdout
    assert f"new labels: 0 of {SITE_IMAGES} labelled images" in result.stdout
    assert "drift in 3 of the last 3 windows" in result.stdout
    assert "decision: retrain due" in result.stdout
    assert f"nothing new: {name} is the dataset version champion v1 was trained on" in (
        result.stdout
    )
    assert len(pipeline.configs) == 1  # only the first retrain ran the pipeline
