"""``garbage tune``: hyperparameter search, here with Optuna or on a cluster with Katib."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, SetOption, fail, load
from garbage.core.config import ConfigError, load_config


def tune(
    config: ConfigOption = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Config profile: default, gpu or smoke (default: default; with --katib: gpu, "
            "or default with --cpu-only)."
        ),
    ] = None,
    set_: SetOption = None,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1, help="Finished trials wanted in all (default: tune.trials); a re-run resumes."
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(
            help="Study (with --katib: Experiment) name; default: derived from the config."
        ),
    ] = None,
    katib: Annotated[
        bool,
        typer.Option(
            "--katib", help="Write a Katib Experiment for a cluster instead of running here."
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="With --katib: the Experiment YAML to write.")] = Path(
        "work/tune/experiment.yaml"
    ),
    namespace: Annotated[
        str, typer.Option(help="With --katib: the namespace of the Experiment and its trials.")
    ] = "kubeflow",
    cpu_only: Annotated[
        bool,
        typer.Option(
            "--cpu-only",
            help="With --katib: trials for a cluster without GPUs (kind), sized like the "
            "pipeline's train step there.",
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="With --katib: MLflow tracking server as the trials see it; default: the "
            "config's, else the manifests' in-cluster server."
        ),
    ] = None,
) -> None:
    """Search the hyperparameters of tune.space: Optuna here (resumable), or a Katib Experiment.

    Here, each trial trains on the same split, reports its validation macro-F1 every epoch to a
    median pruner and is a nested MLflow run of the study's run; the best parameters go to
    <work_dir>/tune/best.yaml, which --config takes (garbage pipeline run --config ...).
    """
    if katib:
        _katib(config, profile, set_, trials, study_name, out, namespace, cpu_only, tracking_uri)
        return
    from garbage.training.data.fetch import DataFetchError
    from garbage.training.data.validate import DataValidationError
    from garbage.training.registry import RegistryError
    from garbage.training.tune import TuneError, run_study

    cfg = load(config, profile or "default", set_)
    typer.echo(f"tracking: {cfg.mlflow_tracking_uri}")
    try:
        result = run_study(cfg, trials=trials, name=study_name)
    except (TuneError, DataFetchError, DataValidationError, RegistryError) as e:
        raise fail(str(e)) from e
    typer.echo(
        f"study {result.study_name}: {result.complete} complete, {result.pruned} pruned, "
        f"{result.failed} failed ({result.ran} run now; storage {result.storage})\n"
        f"best: trial {result.best_trial}, {cfg.tune.metric} {result.best_value:.4f}\n"
        f"best config: {result.best_config}  (garbage pipeline run --config "
        f"{result.best_config})\n"
        f"trials: {result.trials_csv}\nplot: {result.plot}"
    )
    if result.failed:
        typer.echo(f"{result.failed} failed trial(s) do not count: run again to make up for them")


def _katib(
    config: Path | None,
    profile: str | None,
    overrides: list[str] | None,
    trials: int | None,
    name: str | None,
    out: Path,
    namespace: str,
    cpu_only: bool,
    tracking_uri: str | None,
) -> None:
    from pipelines.katib import KatibError, build_experiment, write_experiment
    from pipelines.training import CPU_CLUSTER, GPU_CLUSTER

    extra = [f"tune.trials={trials}"] if trials is not None else []
    try:
        cfg = load_config(
            config,
            [*(overrides or []), *extra],
            profile=profile or ("default" if cpu_only else "gpu"),
        )
    except ConfigError as e:
        raise fail(str(e), code=2) from e
    try:
        experiment = build_experiment(
            cfg,
            name=name,
            namespace=namespace,
            resources=CPU_CLUSTER if cpu_only else GPU_CLUSTER,
            tracking_uri=tracking_uri,
        )
    except KatibError as e:
        raise fail(str(e)) from e
    write_experiment(out, experiment)
    typer.echo(f"{out}\nstart it: kubectl apply -f {out}")
