"""``garbage tune`` and ``garbage train``, driven as a user (or a Katib trial) would."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from support import make_archive, make_image_tree
from typer.testing import CliRunner

from cli.app import app
from garbage.core.config import load_config
from garbage.training.tune import TRIAL_CONFIG_ENV, storage_url

runner = CliRunner()
#: Katib v0.19's default StdOut filter (pkg/metricscollector/v1beta1/common/const.go).
KATIB_DEFAULT_FILTER = re.compile(r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)")
ALL_KEYS = (
    "train.learning_rate",
    "train.weight_decay",
    "train.label_smoothing",
    "model.dropout",
    "train.freeze_stages",
    "train.augment.color_jitter",
    "train.augment.scale_min",
)


@pytest.fixture(scope="module")
def smoke_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--profile smoke`` on a tiny synthetic archive (5 images a class), one work dir."""
    root = tmp_path_factory.mktemp("tune-cli")
    make_image_tree(root / "src" / "dataset", per_class=5)
    archive = make_archive(root / "src", root / "data.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    settings = [f"work_dir={root / 'work'}", f"data.source={archive}", f"data.sha256={digest}"]
    return ["--profile", "smoke", *[arg for s in settings for arg in ("--set", s)]]


def _config(args: list[str]) -> Any:
    overrides = [v for flag, v in zip(args[2::2], args[3::2], strict=True) if flag == "--set"]
    return load_config(profile="smoke", overrides=overrides, environ={})


@pytest.mark.integration
def test_tune_runs_two_trials_writes_best_yaml_and_resumes(smoke_args: list[str]) -> None:
    from mlflow import MlflowClient

    result = runner.invoke(app, ["tune", *smoke_args, "--trials", "2"])
    assert result.exit_code == 0, result.output
    config = _config(smoke_args)
    assert re.search(r"^trial 0 complete: val_macro_f1 \d\.\d{4} \(best", result.stdout, re.M)
    assert re.search(r"^trial 1 complete: val_macro_f1 ", result.stdout, re.M)
    assert "2 complete, 0 pruned, 0 failed (2 run now;" in result.stdout

    [summary] = optuna.get_all_study_summaries(storage_url(config))
    study = optuna.load_study(study_name=summary.study_name, storage=storage_url(config))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2

    client = MlflowClient(config.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(config.registry.experiment)
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tune.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["tune.trial"] for r in children) == ["0", "1"]
    assert {r.data.tags["tune.state"] for r in children} == {"complete"}
    assert all("val_macro_f1" in r.data.metrics for r in children)  # per-epoch metrics

    best = config.work_dir / "tune" / "best.yaml"
    assert f"--config {best}" in result.stdout
    tuned = load_config(path=best, profile="smoke", environ={})
    assert tuned.train.learning_rate == study.best_params["train.learning_rate"]
    assert tuned.model.dropout == study.best_params["model.dropout"]
    assert set(yaml.safe_load(best.read_text())) == {"train", "model"}

    again = runner.invoke(app, ["tune", *smoke_args, "--trials", "3"])
    assert again.exit_code == 0, again.output
    assert "3 complete, 0 pruned, 0 failed (1 run now;" in again.stdout
    assert "trial 0 " not in again.stdout and "trial 2 complete" in again.stdout
    assert (
        len(optuna.load_study(study_name=summary.study_name, storage=storage_url(config)).trials)
        == 3
    )


@pytest.mark.integration
def test_train_prints_katib_metric_lines_for_a_trial(
    smoke_args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    base = _config(smoke_args).model_copy(
        update={"train": _config(smoke_args).train.model_copy(update={"epochs": 2})}
    )
    monkeypatch.setenv(TRIAL_CONFIG_ENV, base.model_dump_json(exclude={"tune"}))
    result = runner.invoke(
        app,
        [
            "train",
            "--run-name",
            "tune-x-abcd1234",
            "--set",
            "train.learning_rate=0.0031",
            "--out",
            str(tmp_path / "trial"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "val_macro_f1=" in line]
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        stamp, rest = line.split(" ", 1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        metrics = {m.group(1): float(m.group(2)) for m in KATIB_DEFAULT_FILTER.finditer(rest)}
        assert metrics["epoch"] == epoch and 0 <= metrics["val_macro_f1"] <= 1
        assert {"val_accuracy", "val_loss"} <= set(metrics)
    assert (tmp_path / "trial" / "model" / "best.pt").is_file()
    client = MlflowClient(base.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(base.registry.experiment)
    [run] = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name = 'tune-x-abcd1234'"
    )
    assert run.data.params["train.learning_rate"] == "0.0031"
    assert run.info.status == "FINISHED"
    assert run.data.tags["garbage.command"] == "garbage train"
    assert "mlflow.source.git.commit" in run.data.tags  # the train step's lineage


def test_tune_katib_writes_the_experiment_for_the_cluster(tmp_path: Path) -> None:
    out = tmp_path / "k" / "experiment.yaml"
    result = runner.invoke(
        app,
        [
            *("tune", "--katib", "--cpu-only", "--trials", "5", "--out", str(out)),
            *("--namespace", "team-a", "--set", "train.epochs=4"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -f {out}" in result.stdout
    experiment = yaml.safe_load(out.read_text())
    assert experiment["kind"] == "Experiment"
    assert experiment["metadata"]["namespace"] == "team-a"
    assert experiment["spec"]["maxTrialCount"] == 5
    [container] = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]  # --cpu-only
    assert [p["name"] for p in experiment["spec"]["parameters"]] == list(ALL_KEYS)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert '"epochs":4' in env[TRIAL_CONFIG_ENV]


def test_a_bad_search_space_exits_2_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tune:\n  space:\n    data.source: {type: categorical, choices: [a, b]}\n")
    for extra in ([], ["--katib", "--out", str(tmp_path / "e.yaml")]):
        result = runner.invoke(app, ["tune", "--config", str(path), *extra])
        assert result.exit_code == 2
        assert "tune.space.data.source: cannot be tuned" in result.stderr


def test_an_empty_space_says_what_to_declare(tmp_path: Path) -> None:
    path = tmp_path / "none.yaml"
    path.write_text("tune:\n  space:\n" + "".join(f"    {k}: null\n" for k in ALL_KEYS))
    result = runner.invoke(
        app, ["tune", "--config", str(path), "--set", f"work_dir={tmp_path / 'w'}"]
    )
    assert result.exit_code == 1
    assert "tune.space is empty: declare the keys to search" in result.stderr


def test_train_refuses_a_config_json_that_is_not_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--config-json", "{not json"])
    assert result.exit_code == 2
    assert f"--config-json (${TRIAL_CONFIG_ENV}) is not JSON" in result.stderr
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    both = runner.invoke(app, ["train", "--config", str(path), "--config-json", "{}"])
    assert both.exit_code == 2
    assert "not both" in both.stderr
