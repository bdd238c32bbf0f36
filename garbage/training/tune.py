"""Hyperparameter search with Optuna on the search space the config declares (``tune``).

A study lives in ``<work_dir>/tune/optuna.db`` (SQLite) under a name derived from the config, so
running it again resumes it: only the trials still missing run. The data are fetched, validated
and split once per study (the pipeline's own steps), so every trial is scored on the same
validation images. Each trial trains with the sampled parameters, reports the validation
macro-F1 of every epoch to a median pruner, and is a nested MLflow run under one parent run of
the study. The outcome is ``<work_dir>/tune/best.yaml``, a partial config of the tuned keys that
``--config`` takes, with ``trials.csv`` and ``optimization_history.png`` beside it.

:func:`prepare_data` and :func:`katib_metric_line` are also what a Katib trial runs (``garbage
train``, ``pipelines.katib``), with :func:`garbage.training.steps.train_step` like every trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import ValidationError

from garbage.core.config import CategoricalParam, Config, FloatParam, IntParam

if TYPE_CHECKING:
    import optuna

    from garbage.training.train import EpochCallback

TUNE_DIRNAME = "tune"
STORAGE_FILENAME = "optuna.db"
BEST_FILENAME = "best.yaml"
TRIALS_FILENAME = "trials.csv"
PLOT_FILENAME = "optimization_history.png"
#: The objective is maximized (``tune.metric`` is validation macro-F1).
DIRECTION: Literal["maximize"] = "maximize"
#: Reported besides the objective by :func:`katib_metric_line` (Katib's additional metrics).
ADDITIONAL_METRICS = ("val_accuracy", "val_loss")
#: MLflow tag of a trial's run: ``complete``, ``pruned`` or ``failed``.
STATE_TAG = "tune.state"
STUDY_TAG = "tune.study"
TRIAL_TAG = "tune.trial"
_PARENT_RUN_ATTR = "mlflow_parent_run_id"

#: The environment variable that hands a Katib trial its whole config as JSON (``garbage
#: train``; ``pipelines.katib`` sets it).
TRIAL_CONFIG_ENV = "GARBAGE_CONFIG_JSON"


class TuneError(RuntimeError):
    """A study cannot run, or has no completed trial to take the best parameters from."""


@dataclass(frozen=True)
class PreparedData:
    """The validated images and the split manifest that every trial of a study trains on."""

    images_dir: Path
    manifest_csv: Path


@dataclass(frozen=True)
class StudyResult:
    """What a call of :func:`run_study` did and where its outputs are."""

    study_name: str
    storage: str
    ran: int
    complete: int
    pruned: int
    failed: int
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_config: Path
    trials_csv: Path
    plot: Path
    parent_run_id: str


def tune_dir(config: Config) -> Path:
    """``<work_dir>/tune``: the study storage and its reports."""
    return config.work_dir / TUNE_DIRNAME


def storage_url(config: Config) -> str:
    """The Optuna storage of the work dir: ``sqlite:///<work_dir>/tune/optuna.db``."""
    return f"sqlite:///{(tune_dir(config) / STORAGE_FILENAME).resolve()}"


def study_name(config: Config) -> str:
    """A name that changes with everything a trial's result depends on.

    The data, split, model and training settings and the search space (``tune`` without the
    trial budget) go into a digest: the same config resumes the same study, another one starts
    a new study. The name is also a valid Kubernetes name (Katib's Experiment).
    """
    basis = config.model_dump(
        mode="json",
        exclude={
            "work_dir": True,
            "registry": True,
            "card": True,
            "tune": {"trials", "timeout_minutes", "parallel_trials"},
        },
    )
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]
    return f"tune-{config.model.backbone}-{digest}".replace("_", "-").lower()


def prepare_data(config: Config, out_dir: Path) -> PreparedData:
    """Fetch, validate and split the data with the pipeline's steps, into ``out_dir``.

    Raises:
        DataFetchError: The archive cannot be fetched or fails its checksum.
        DataValidationError: The images fail a hard validation check.
    """
    from garbage.training.steps import TABLE_FILENAME, fetch_step, split_step, validate_step

    images = out_dir / "images"
    reports = out_dir / "validation"
    reports.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    fetch_step(config, images)
    validate_step(config, images, reports)
    split_step(config, reports / TABLE_FILENAME, manifest)
    return PreparedData(images, manifest)


def suggest(trial: optuna.Trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Sample one value for every key of the search space (``tune.space``)."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, FloatParam):
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntParam):
            params[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step)
        elif isinstance(spec, CategoricalParam):
            params[key] = trial.suggest_categorical(key, spec.choices)
        else:
            raise TypeError(f"tune.space.{key}: unknown parameter spec {spec!r}")
    return params


def nested_tree(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.augment.hflip": True}`` -> ``{"train": {"augment": {"hflip": True}}}``."""
    tree: dict[str, Any] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def apply_params(config: Config, params: Mapping[str, Any]) -> Config:
    """``config`` with the dotted keys of ``params`` set, validated again.

    Raises:
        TuneError: The parameters make an invalid config (a combination the schema refuses).
    """
    tree = _merge(config.model_dump(mode="json"), nested_tree(params))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise TuneError(f"the trial parameters {dict(params)} make an invalid config: {e}") from e


def pruning_callback(trial: optuna.Trial, metric: str = "val_macro_f1") -> EpochCallback:
    """An ``on_epoch`` callback that reports ``metric`` to the trial; True (stop) when pruned.

    Training then stops after that epoch, its run ends as finished, and the objective raises
    ``optuna.TrialPruned`` (see :func:`train_trial`).
    """

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        if metric not in metrics:  # not validated at this epoch (train.validate_from)
            return False
        trial.report(metrics[metric], step=epoch)
        return bool(trial.should_prune())

    return on_epoch


def katib_metric_line(epoch: int, metrics: Mapping[str, float], now: datetime | None = None) -> str:
    r"""One epoch's metrics as Katib's StdOut collector reads them.

    An RFC 3339 timestamp first (Katib's early stopping orders the reports by it), then
    ``name=value`` pairs as Katib's default filter reads them,
    ``([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)``: fixed-point, never an exponent.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    names = ("val_macro_f1", *ADDITIONAL_METRICS)
    pairs = " ".join(f"{name}={metrics[name]:.6f}" for name in names if name in metrics)
    return f"{stamp} epoch={epoch} {pairs}"


def train_trial(
    trial: optuna.Trial, config: Config, data: PreparedData, out_dir: Path, study_name: str
) -> dict[str, Any]:
    """Train one trial as a nested MLflow run (:func:`garbage.training.steps.train_step`).

    The run's tag :data:`STATE_TAG` says ``complete``, ``pruned`` (the median pruner stopped it;
    the run ends as finished) or ``failed`` (an error while training, raised again, with
    ``tune.error``; the run ends as failed).

    Returns:
        The train step's summary (``best_val_macro_f1``, ``best_epoch``, ``run_id``, ...).

    Raises:
        optuna.TrialPruned: The pruner stopped the trial.
    """
    import optuna
    from mlflow import MlflowClient

    from garbage.training.steps import train_step

    metric = config.tune.metric
    tags = {STUDY_TAG: study_name, TRIAL_TAG: str(trial.number)}
    try:
        summary = train_step(
            config,
            data.images_dir,
            data.manifest_csv,
            out_dir,
            run_name=f"{study_name} trial {trial.number}",
            on_epoch=pruning_callback(trial, metric),
            tags=tags,
        )
    except Exception as e:
        client = MlflowClient()
        experiment = client.get_experiment_by_name(config.registry.experiment)
        runs = client.search_runs(  # the trial's run, ended as failed (none if it never started)
            [experiment.experiment_id] if experiment else [],
            filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' "
            f"and tags.`{TRIAL_TAG}` = '{trial.number}'",
        )
        for run in runs:
            client.set_tag(run.info.run_id, STATE_TAG, "failed")
            client.set_tag(run.info.run_id, "tune.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    trial.set_user_attr("mlflow_run_id", summary["run_id"])
    pruned = summary["stopped_early"]
    MlflowClient().set_tag(summary["run_id"], STATE_TAG, "pruned" if pruned else "complete")
    if pruned:
        epoch, value = max(trial.storage.get_trial(trial._trial_id).intermediate_values.items())
        raise optuna.TrialPruned(
            f"pruned at epoch {epoch}: {metric} {value:.4f} is below the median of earlier "
            "trials at that epoch"
        )
    return summary


def best_config_text(study: optuna.Study, metric: str, path: Path) -> str:
    """``best.yaml`` (at ``path``): the best trial's parameters as a nested partial config."""
    best = study.best_trial
    header = [
        f"# Best parameters of the Optuna study {study.study_name}: trial {best.number},",
        f"# {metric} {best.value:.4f} ({DIRECTION}d), of {len(study.trials)} trials.",
        "# Only the tuned keys: use it with the profile and settings the study ran on, e.g.",
        f"#   garbage pipeline run --config {path}",
    ]
    body = yaml.safe_dump(nested_tree(best.params), sort_keys=True, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def plot_history(study: optuna.Study, path: Path, metric: str) -> Path:
    """Each trial's value, the best so far, and where pruned trials stopped (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    complete = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.number,
    )
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        numbers = [t.number for t in complete]
        values = [float(t.value) for t in complete if t.value is not None]
        ax.scatter(numbers, values, color="tab:blue", label="trial")
        best, running = float("-inf"), []
        for value in values:
            best = max(best, value)
            running.append(best)
        ax.step(numbers, running, where="post", color="tab:red", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter(
            [t.number for t in pruned],
            last,
            marker="x",
            color="grey",
            label="pruned (last epoch reported)",
        )
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title(f"Optimization history: {study.study_name}")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _counts(study: optuna.Study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """One line for a finished trial: its state, value, the best so far, its parameters."""
    from optuna.trial import TrialState

    seconds = (
        f" in {(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s"
        if trial.datetime_complete and trial.datetime_start
        else ""
    )
    if trial.state == TrialState.COMPLETE:
        what = f"complete: {metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        epoch = max(trial.intermediate_values, default=0)
        value = trial.intermediate_values.get(epoch)
        what = f"pruned at epoch {epoch}" + (f": {metric} {value:.4f}" if value is not None else "")
    else:
        state = "failed" if trial.state == TrialState.FAIL else trial.state.name.lower()
        what = f"{state}: {trial.user_attrs.get('error', 'see the log above')}"
    try:
        best = f" (best {study.best_value:.4f}, trial {study.best_trial.number})"
    except ValueError:  # no completed trial yet
        best = ""
    return f"trial {trial.number} {what}{best}{seconds}; {_format_params(trial.params)}"


def _parent_run(study: optuna.Study, config: Config, experiment_id: str) -> Any:
    """Reopen the study's parent MLflow run, or start it (and record its id in the study)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from garbage.training.steps import flatten

    run_id = study.user_attrs.get(_PARENT_RUN_ATTR)
    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except MlflowException:
            pass  # another tracking store, or the run was deleted: start a new parent
    run = mlflow.start_run(experiment_id=experiment_id, run_name=f"tune {study.study_name}")
    study.set_user_attr(_PARENT_RUN_ATTR, run.info.run_id)
    mlflow.set_tags(
        {
            STUDY_TAG: study.study_name,
            "tune.storage": storage_url(config),
            "tune.kind": "study",
            "data.sha256": config.data.sha256,
        }
    )
    mlflow.log_params(flatten(config.model_dump(mode="json", exclude={"tune"})))
    mlflow.log_dict(config.model_dump(mode="json")["tune"], "tune/settings.json")
    return run


def run_study(
    config: Config,
    trials: int | None = None,
    name: str | None = None,
    progress: bool = True,
) -> StudyResult:
    """Run (or resume) the study of ``config`` until it has ``trials`` finished trials.

    Finished means complete or pruned; a failed trial (an exception while training) is recorded
    as failed, does not count, and the study goes on with the next one. Writes ``best.yaml``,
    ``trials.csv`` and ``optimization_history.png`` into ``<work_dir>/tune/`` and logs them to
    the study's parent MLflow run.

    Args:
        config: The validated config; ``config.tune`` holds the space, sampler and pruner.
        trials: Finished trials wanted in all (default: ``tune.trials``).
        name: The study's name (default: :func:`study_name`).
        progress: Show a progress bar over the trials (each finished trial also prints a line).

    Returns:
        The counts, the best trial and the paths of the reports.

    Raises:
        TuneError: The search space is empty, or no trial of the study completed.
    """
    tune = config.tune
    if not tune.space:
        raise TuneError(
            "tune.space is empty: declare the keys to search in a config file "
            "(see garbage/core/configs/default.yaml, tune.space)"
        )
    name = name or study_name(config)
    wanted = trials if trials is not None else tune.trials
    if wanted < 1:
        raise TuneError(f"trials must be at least 1, got {wanted}")

    import mlflow
    import optuna
    from tqdm import tqdm

    from garbage.training.registry import configure_tracking

    out = tune_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage_url(config)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=DIRECTION,
            load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=tune.pruner.n_startup_trials,
                n_warmup_steps=tune.pruner.n_warmup_steps,
            ),
        )
        # Seeded by the trials so far: a resumed study does not repeat the first run's samples.
        study.sampler = optuna.samplers.TPESampler(seed=tune.seed + len(study.trials))
        before = _counts(study)
        missing = max(0, wanted - before["complete"] - before["pruned"])
        experiment_id = configure_tracking(config)
        with _parent_run(study, config, experiment_id) as parent:
            if missing:
                data = prepare_data(config, out / name / "data")
                _optimize(study, config, data, missing, progress, tqdm)
            else:
                tqdm.write(f"study {name} has {wanted} finished trials already: nothing to run")
            counts = _counts(study)
            ran = sum(counts.values()) - sum(before.values())
            result = _report(study, config, out, parent.info.run_id, ran, counts)
            for path in (result.best_config, result.trials_csv, result.plot):
                mlflow.log_artifact(str(path), "tune")
            mlflow.log_metric("best_val_macro_f1", result.best_value)
            mlflow.set_tags({"tune.best_trial": str(result.best_trial), "tune.trials": str(wanted)})
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)


def _optimize(
    study: optuna.Study,
    config: Config,
    data: PreparedData,
    missing: int,
    progress: bool,
    tqdm: Any,
) -> None:
    """Run ``missing`` more trials of ``study`` (each a nested MLflow run)."""
    import optuna

    metric = config.tune.metric
    out = tune_dir(config)

    def objective(trial: optuna.Trial) -> float:
        try:
            params = suggest(trial, config.tune.space)
            trial_config = apply_params(config, params)
            with tempfile.TemporaryDirectory(prefix=f"trial-{trial.number}-", dir=out) as tmp:
                summary = train_trial(trial, trial_config, data, Path(tmp), study.study_name)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        return float(summary["best_val_macro_f1"])

    bar = tqdm(total=missing, desc=f"study {study.study_name}", unit="trial", disable=not progress)
    started = time.perf_counter()

    def on_finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(1)
        with contextlib.suppress(ValueError):  # no completed trial yet
            bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)
        tqdm.write(trial_line(study, trial, metric))

    timeout = config.tune.timeout_minutes * 60 if config.tune.timeout_minutes else None
    try:
        study.optimize(
            objective,
            n_trials=missing,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[on_finished],
            gc_after_trial=True,
        )
    finally:
        bar.close()
    tqdm.write(f"{missing} trial(s) in {time.perf_counter() - started:.0f} s")


def _report(
    study: optuna.Study,
    config: Config,
    out: Path,
    parent_run_id: str,
    ran: int,
    counts: dict[str, int],
) -> StudyResult:
    """Write trials.csv and the plot, then best.yaml (TuneError when no trial completed)."""
    metric = config.tune.metric
    trials_csv = out / TRIALS_FILENAME
    study.trials_dataframe().to_csv(trials_csv, index=False)
    plot = plot_history(study, out / PLOT_FILENAME, metric)
    if counts["complete"] == 0:
        raise TuneError(
            f"no trial of study {study.study_name} completed ({counts['pruned']} pruned, "
            f"{counts['failed']} failed; see {trials_csv}): fix the failures shown above, or "
            "raise tune.pruner.n_startup_trials, and run it again"
        )
    best_config = out / BEST_FILENAME
    best_config.write_text(best_config_text(study, metric, best_config))
    best = study.best_trial
    return StudyResult(
        study_name=study.study_name,
        storage=storage_url(config),
        ran=ran,
        complete=counts["complete"],
        pruned=counts["pruned"],
        failed=counts["failed"],
        best_trial=best.number,
        best_value=float(study.best_value),
        best_params=dict(best.params),
        best_config=best_config,
        trials_csv=trials_csv,
        plot=plot,
        parent_run_id=parent_run_id,
    )
