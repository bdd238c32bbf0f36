"""The hyperparameter search: the space the schema validates, the study's pieces, a whole study.

The unit tests use Optuna in memory and no training; the integration test runs a study with a
FAKE training loop (the real data steps and the real MLflow store) to see every trial state.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from support import make_archive, make_image_tree

from garbage.core.config import (
    CategoricalParam,
    Config,
    ConfigError,
    FloatParam,
    IntParam,
    load_config,
)
from garbage.training import tune
from garbage.training.train import TrainResult

#: Katib v0.19's default StdOut filter (pkg/metricscollector/v1beta1/common/const.go).
KATIB_DEFAULT_FILTER = re.compile(r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)")


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(text)
    return path


# -- the search space in the schema ------------------------------------------------------------


def test_the_default_space_names_training_keys_with_their_kinds() -> None:
    space = load_config(environ={}).tune.space
    assert space["train.learning_rate"] == FloatParam(
        type="float", low=0.0005, high=0.005, log=True
    )
    assert isinstance(space["train.freeze_stages"], IntParam)
    assert {"train.weight_decay", "train.label_smoothing", "model.dropout"} <= set(space)
    assert {"train.augment.color_jitter", "train.augment.scale_min"} <= set(space)
    assert all(key.split(".")[0] in ("train", "model") for key in space)


def test_every_profile_validates_with_the_default_space() -> None:
    for profile in ("default", "gpu", "smoke"):
        assert load_config(profile=profile, environ={}).tune.space


def test_a_file_adds_to_the_space_and_null_drops_a_key(tmp_path: Path) -> None:
    path = _config_file(
        tmp_path,
        "tune:\n  space:\n    model.dropout: null\n"
        "    model.backbone: {type: categorical, choices: [efficientnet_lite0, resnet18]}\n",
    )
    space = load_config(path, environ={}).tune.space
    assert "model.dropout" not in space
    assert space["model.backbone"] == CategoricalParam(
        type="categorical", choices=["efficientnet_lite0", "resnet18"]
    )
    assert "train.learning_rate" in space


@pytest.mark.parametrize(
    ("key", "spec", "message"),
    [
        (
            "train.learning_rte",
            "{type: float, low: 0.1, high: 0.2}",
            "tune.space.train.learning_rte: not a config key: train has no 'learning_rte' "
            "(it has epochs, ",
        ),
        (
            "data.min_side",
            "{type: int, low: 32, high: 64}",
            "tune.space.data.min_side: cannot be tuned: name a key of model or train",
        ),
        ("split.seed", "{type: int, low: 1, high: 4}", "split are prepared once per study"),
        ("tune.seed", "{type: int, low: 1, high: 4}", "tune.space.tune.seed: cannot be tuned"),
        ("work_dir", "{type: categorical, choices: [a, b]}", "tune.space.work_dir: cannot be"),
        (
            "train.augment",
            "{type: categorical, choices: [a, b]}",
            "tune.space.train.augment: a section, not a value",
        ),
        (
            "train.epochs.x",
            "{type: int, low: 1, high: 4}",
            "not a config key: train.epochs is a value",
        ),
        (
            "train.learning_rate",
            "{type: float, low: 0.2, high: 0.1}",
            "low (0.2) must be below high (0.1)",
        ),
        ("train.epochs", "{type: int, low: 3, high: 3}", "low (3) must be below high (3)"),
        (
            "train.label_smoothing",
            "{type: float, low: 0.0, high: 0.1, log: true}",
            "log sampling needs low > 0, got low=0.0",
        ),
        (
            "train.epochs",
            "{type: int, low: 1, high: 6, step: 2}",
            "high - low (5) must be a multiple of step (2)",
        ),
        (
            "train.label_smoothing",
            "{type: float, low: 0.0, high: 1.5}",
            "tune.space.train.label_smoothing: 1.5 is not a valid value of train.label_smoothing "
            "(train.label_smoothing: Input should be less than 1)",
        ),
        (
            "train.epochs",
            "{type: float, low: 1.0, high: 5.0}",
            "tune.space.train.epochs: train.epochs takes integers: use type: int",
        ),
        (
            "train.device",
            "{type: categorical, choices: [cpu, tpu]}",
            "'tpu' is not a valid value of train.device (train.device: Input should be 'auto', "
            "'cpu' or 'cuda')",
        ),
        (
            "model.backbone",
            "{type: categorical, choices: [resnet18, resnet18]}",
            "choices must be unique",
        ),
        ("model.backbone", "{type: categorical, choices: [resnet18]}", "at least 2 items"),
        ("train.epochs", "{type: double, low: 1, high: 5}", "Input tag 'double' found using"),
    ],
)
def test_a_bad_space_fails_with_the_key_and_the_reason(
    tmp_path: Path, key: str, spec: str, message: str
) -> None:
    path = _config_file(tmp_path, f"tune:\n  space:\n    {key}: {spec}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert message in str(caught.value)


# -- a study's pieces --------------------------------------------------------------------------


def test_the_study_name_follows_what_a_trial_depends_on(smoke_config: Config) -> None:
    name = tune.study_name(smoke_config)
    assert re.fullmatch(r"tune-efficientnet-lite0-[0-9a-f]{8}", name)
    budget = smoke_config.model_copy(
        update={
            "tune": smoke_config.tune.model_copy(update={"trials": 99}),
            "work_dir": Path("/elsewhere"),
        }
    )
    assert tune.study_name(budget) == name  # more trials resume the same study
    epochs = smoke_config.model_copy(
        update={"train": smoke_config.train.model_copy(update={"epochs": 7})}
    )
    assert tune.study_name(epochs) != name
    narrower = smoke_config.model_copy(
        update={"tune": smoke_config.tune.model_copy(update={"space": {}})}
    )
    assert tune.study_name(narrower) != name


def test_the_storage_is_sqlite_in_the_work_dir(smoke_config: Config) -> None:
    expected = (smoke_config.work_dir / "tune" / "optuna.db").resolve()
    assert tune.storage_url(smoke_config) == f"sqlite:///{expected}"


def test_trial_parameters_set_nested_keys_and_are_validated(smoke_config: Config) -> None:
    params = {"train.learning_rate": 0.004, "train.augment.scale_min": 0.6, "model.dropout": 0.3}
    trial = tune.apply_params(smoke_config, params)
    assert trial.train.learning_rate == 0.004
    assert trial.train.augment.scale_min == 0.6
    assert trial.model.dropout == 0.3
    assert trial.train.epochs == smoke_config.train.epochs
    with pytest.raises(tune.TuneError, match="make an invalid config"):
        tune.apply_params(smoke_config, {"model.dropout": 1.5})


def test_suggest_samples_each_kind_within_its_bounds(tmp_path: Path) -> None:
    path = _config_file(
        tmp_path,
        "tune:\n  space:\n"
        "    model.backbone: {type: categorical, choices: [efficientnet_lite0, resnet18]}\n"
        "    train.epochs: {type: int, low: 2, high: 8, step: 2}\n",
    )
    space = load_config(path, environ={}).tune.space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        params = tune.suggest(trial, space)
        assert set(params) == set(space)
        assert 0.0005 <= params["train.learning_rate"] <= 0.005
        assert params["train.epochs"] in (2, 4, 6, 8)
        assert params["model.backbone"] in ("efficientnet_lite0", "resnet18")
        assert isinstance(params["train.freeze_stages"], int)
        assert trial.distributions["train.learning_rate"].log is True  # type: ignore[attr-defined]
        study.tell(trial, 0.5)


def _study_with_a_good_trial() -> optuna.Study:
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )
    study.add_trial(
        optuna.trial.create_trial(
            value=0.9,
            intermediate_values={1: 0.8, 2: 0.9},
            params={"train.learning_rate": 0.001},
            distributions={
                "train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
            },
        )
    )
    return study


def test_the_pruning_callback_stops_a_trial_below_the_median() -> None:
    study = _study_with_a_good_trial()
    trial = study.ask()
    on_epoch = tune.pruning_callback(trial)
    assert on_epoch(1, {"val_macro_f1": 0.2, "val_loss": 2.0}) is True  # stop here
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.2}


def test_the_pruning_callback_lets_a_good_trial_go_on() -> None:
    study = _study_with_a_good_trial()
    trial = study.ask()
    on_epoch = tune.pruning_callback(trial)
    assert on_epoch(1, {"val_macro_f1": 0.85}) is False
    assert on_epoch(2, {"val_macro_f1": 0.95}) is False
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.85, 2: 0.95}


def test_the_metric_line_reads_as_katib_reads_it() -> None:
    now = datetime(2026, 12, 1, 21, 44, 44, 123456, tzinfo=UTC)
    metrics = {"val_macro_f1": 0.91234567, "val_accuracy": 0.93, "val_loss": 1e-7, "lr": 1e-3}
    line = tune.katib_metric_line(3, metrics, now=now)
    stamp, rest = line.split(" ", 1)
    assert stamp == "2026-12-01T21:44:44.123456Z"
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == now  # RFC 3339
    found = {m.group(1): m.group(2) for m in KATIB_DEFAULT_FILTER.finditer(rest)}
    assert found == {
        "epoch": "3",
        "val_macro_f1": "0.912346",
        "val_accuracy": "0.930000",
        "val_loss": "0.000000",  # fixed-point: Katib's filter reads no exponent
    }


def _study_with_trials() -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="tune-test")
    distributions = {
        "train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "train.augment.scale_min": optuna.distributions.FloatDistribution(0.5, 0.9),
        "train.freeze_stages": optuna.distributions.IntDistribution(1, 4),
    }
    for value, lr in ((0.7, 0.001), (0.9, 0.003)):
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                intermediate_values={1: value - 0.1, 2: value},
                params={
                    "train.learning_rate": lr,
                    "train.augment.scale_min": 0.6,
                    "train.freeze_stages": 2,
                },
                distributions=distributions,
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1: 0.3},
            params={
                "train.learning_rate": 0.009,
                "train.augment.scale_min": 0.8,
                "train.freeze_stages": 4,
            },
            distributions=distributions,
        )
    )
    return study


def test_best_yaml_is_a_partial_config_that_load_config_takes(tmp_path: Path) -> None:
    study = _study_with_trials()
    path = tmp_path / "best.yaml"
    path.write_text(tune.best_config_text(study, "val_macro_f1", path))
    text = path.read_text()
    assert text.startswith("# Best parameters of the Optuna study tune-test: trial 1,\n")
    assert "# val_macro_f1 0.9000 (maximized), of 3 trials." in text
    assert yaml.safe_load(text) == {
        "train": {"learning_rate": 0.003, "freeze_stages": 2, "augment": {"scale_min": 0.6}}
    }
    config = load_config(path=path, profile="smoke", environ={})
    assert config.train.learning_rate == 0.003
    assert config.train.augment.scale_min == 0.6
    assert config.train.epochs == 1  # everything else from the profile


def test_a_line_per_finished_trial_says_its_state_and_the_best(tmp_path: Path) -> None:
    study = _study_with_trials()
    complete, _, pruned = study.trials
    assert tune.trial_line(study, complete, "val_macro_f1").startswith(
        "trial 0 complete: val_macro_f1 0.7000 (best 0.9000, trial 1)"
    )
    line = tune.trial_line(study, pruned, "val_macro_f1")
    assert line.startswith("trial 2 pruned at epoch 1: val_macro_f1 0.3000 (best 0.9000")
    assert "train.learning_rate=0.009, train.augment.scale_min=0.8" in line


def test_an_empty_space_is_refused_before_anything_runs(smoke_config: Config) -> None:
    empty = smoke_config.model_copy(
        update={"tune": smoke_config.tune.model_copy(update={"space": {}})}
    )
    with pytest.raises(tune.TuneError, match=r"tune\.space is empty"):
        tune.run_study(empty, trials=1)
    assert not (smoke_config.work_dir / "tune").exists()


# -- a whole study, with a FAKE training loop --------------------------------------------------


class FakeTraining:
    """Stands in for ``train_model``: completes, fails or reports poorly, one call after the other.

    Each call reports up to three epochs through ``on_epoch`` and stops when it says so, like the
    real loop, so the pruner and the MLflow logging see what they would.
    """

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls = 0
        self.learning_rates: list[float] = []

    def __call__(
        self,
        config: Config,
        images_root,
        train_items,
        val_items,
        out_dir,
        on_epoch,
        init_checkpoint=None,
        train_sources=None,
    ):
        what = self.script[self.calls]
        assert train_sources is None or len(train_sources) == len(train_items)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "best.pt").write_bytes(b"stand-in checkpoint")
        self.calls += 1
        self.learning_rates.append(config.train.learning_rate)
        assert train_items and val_items and (images_root / train_items[0][0]).is_file()
        if what == "fail":
            raise RuntimeError("CUDA out of memory (fake)")
        values = [0.80, 0.85, 0.90] if what == "good" else [0.10, 0.11, 0.12]
        seen: list[float] = []
        for epoch, value in enumerate(values, 1):
            seen.append(value)
            if on_epoch(epoch, {"val_macro_f1": value, "val_loss": 1 - value}):
                return TrainResult(Path(out_dir) / "best.pt", epoch, max(seen), stopped_early=True)
        return TrainResult(Path(out_dir) / "best.pt", 3, max(values))


@pytest.fixture
def study_config(tmp_path: Path) -> Config:
    make_image_tree(tmp_path / "src" / "dataset", per_class=5)
    archive = make_archive(tmp_path / "src", tmp_path / "data.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    return load_config(
        profile="smoke",
        overrides=[
            f"work_dir={tmp_path / 'work'}",
            f"data.source={archive}",
            f"data.sha256={digest}",
            "tune.pruner.n_startup_trials=1",
            "tune.pruner.n_warmup_steps=1",
        ],
        environ={},
    )


def _runs(config: Config) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(config.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(config.registry.experiment)
    return {
        run.data.tags.get("tune.trial", "parent"): run
        for run in client.search_runs([experiment.experiment_id])
    }


@pytest.mark.integration
def test_a_study_records_every_trial_state_and_resumes(
    study_config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    fake = FakeTraining(["good", "fail", "poor", "good"])
    monkeypatch.setattr("garbage.training.train.train_model", fake)

    first = tune.run_study(study_config, trials=3, progress=False)
    # Three trials ran: one completed, one failed (and did not stop the study), one was pruned.
    assert (first.ran, first.complete, first.failed, first.pruned) == (3, 1, 1, 1)
    assert first.best_trial == 0 and first.best_value == pytest.approx(0.90)
    out = capsys.readouterr().out
    assert "trial 0 complete: val_macro_f1 0.9000 (best 0.9000, trial 0)" in out
    assert "trial 1 failed: RuntimeError: CUDA out of memory (fake)" in out
    assert "trial 2 pruned at epoch 1: val_macro_f1 0.1000" in out

    runs = _runs(study_config)
    parent = runs.pop("parent")
    assert parent.data.tags["tune.study"] == first.study_name
    assert parent.data.tags["tune.best_trial"] == "0"
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent.info.run_id}
    assert {k: r.data.tags["tune.state"] for k, r in runs.items()} == {
        "0": "complete",
        "1": "failed",
        "2": "pruned",
    }
    assert (
        runs["1"].info.status == "FAILED" and "out of memory" in runs["1"].data.tags["tune.error"]
    )
    assert runs["2"].info.status == "FINISHED"  # pruned is an outcome, not an error
    assert runs["0"].data.params["train.learning_rate"] == str(fake.learning_rates[0])
    assert runs["0"].data.metrics["best_val_macro_f1"] == pytest.approx(0.90)
    assert {"mlflow.source.git.commit", "data.version"} <= set(runs["0"].data.tags)  # lineage
    assert (
        yaml.safe_load(first.best_config.read_text())["train"]["learning_rate"]
        == (fake.learning_rates[0])
    )
    assert len(first.trials_csv.read_text().splitlines()) == 1 + 3
    assert first.plot.read_bytes().startswith(b"\x89PNG")
    artifacts = {
        a.path
        for a in MlflowClient(study_config.mlflow_tracking_uri).list_artifacts(
            parent.info.run_id, "tune"
        )
    }
    assert artifacts == {
        "tune/settings.json",  # the space, sampler and pruner the study ran with
        "tune/best.yaml",
        "tune/trials.csv",
        "tune/optimization_history.png",
    }

    # Three wanted, two finished (the failure does not count): a re-run makes up for it alone.
    again = tune.run_study(study_config, trials=3, progress=False)
    assert (again.ran, again.complete, again.failed, again.pruned) == (1, 2, 1, 1)
    assert again.parent_run_id == first.parent_run_id  # the same parent run, reopened
    assert fake.calls == 4
    assert len(set(fake.learning_rates)) == 4  # the resumed sampler repeats no sample
    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    assert len(study.trials) == 4
