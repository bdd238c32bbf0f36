"""``garbage pipeline run | compile | submit``: the training pipeline, locally or on a cluster."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load
from garbage.core.config import Config, ConfigError, load_config
from pipelines.submit import DEFAULT_EXPERIMENT, DEFAULT_SERVICE_ACCOUNT

app = typer.Typer(help="Run, compile and submit the training pipeline.", no_args_is_help=True)

CpuOnlyOption = Annotated[
    bool,
    typer.Option(
        "--cpu-only",
        help="Build the pipeline for a cluster without GPUs (kind): no GPU request, node "
        "selector or toleration; a train step that fits a small node.",
    ),
]
ClusterProfileOption = Annotated[
    str | None,
    typer.Option(
        help="Config profile: default, gpu or smoke (default: gpu; default with --cpu-only)."
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking server as the pods see it; default: the config's, else the "
        "manifests' in-cluster server."
    ),
]


@app.command("run")
def run(
    config: ConfigOption = None, profile: ProfileOption = "default", set_: SetOption = None
) -> None:
    """Run the whole pipeline locally through kfp.local, tracked in MLflow."""
    from pipelines.local import PipelineFailed, run_locally

    cfg = load(config, profile, set_)
    typer.echo(f"tracking: {cfg.mlflow_tracking_uri}")
    try:
        decision = run_locally(cfg)
    except PipelineFailed as e:
        raise fail(str(e)) from e
    typer.echo(decision.read_text())
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}")


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML to write.")] = Path(
        "work/garbage-pipeline.yaml"
    ),
    cpu_only: CpuOnlyOption = False,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
    profile: ClusterProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Compile the pipeline to KFP IR YAML, the config baked in as its default."""
    from pipelines.submit import SubmitError, compile_package

    cfg = _cluster_config(config, cluster_profile(profile, cpu_only), set_, tracking_uri)
    try:
        compile_package(output, cfg, cpu_only=cpu_only)
    except SubmitError as e:
        raise fail(str(e)) from e
    typer.echo(str(output))


@app.command("submit")
def submit(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="KFP_HOST",
            help="Kubeflow Pipelines API, e.g. http://localhost:8080 "
            "(kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80).",
        ),
    ],
    experiment: Annotated[
        str, typer.Option(help="Experiment to file the run under.")
    ] = DEFAULT_EXPERIMENT,
    config: ConfigOption = None,
    profile: ClusterProfileOption = None,
    set_: SetOption = None,
    tracking_uri: TrackingOption = None,
    run_name: Annotated[str | None, typer.Option(help="Run display name.")] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Kubeflow profile namespace (multi-user Kubeflow only).")
    ] = None,
    service_account: Annotated[
        str, typer.Option(help="Service account of the run's pods (manifests/base/rbac).")
    ] = DEFAULT_SERVICE_ACCOUNT,
    cpu_only: CpuOnlyOption = False,
    package: Annotated[
        Path | None,
        typer.Option(
            help="Submit this compiled pipeline YAML instead of compiling now.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            help="Let the last step publish the promoted champion as the KServe InferenceService."
        ),
    ] = True,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.", min=1)] = 7200,
    token: Annotated[
        str | None,
        typer.Option(envvar="KFP_TOKEN", help="Bearer token for an authenticated endpoint."),
    ] = None,
) -> None:
    """Start the train-to-deploy pipeline on a Kubeflow Pipelines cluster."""
    from pipelines.submit import SubmitError, submit_pipeline

    cfg = _cluster_config(config, cluster_profile(profile, cpu_only), set_, tracking_uri)
    try:
        result = submit_pipeline(
            host,
            cfg,
            experiment=experiment,
            run_name=run_name,
            namespace=namespace,
            service_account=service_account or None,
            cpu_only=cpu_only,
            package=package,
            wait=wait,
            timeout_s=timeout,
            existing_token=token,
            deploy=deploy,
        )
    except SubmitError as e:
        raise fail(str(e)) from e
    typer.echo(json.dumps(dataclasses.asdict(result), indent=2))


def cluster_profile(profile: str | None, cpu_only: bool) -> str:
    """The gpu profile asks for CUDA; a CPU-only cluster gets the default profile unless told."""
    return profile or ("default" if cpu_only else "gpu")


def _cluster_config(
    config: Path | None, profile: str, overrides: list[str] | None, tracking_uri: str | None
) -> Config:
    """The validated config as the cluster's pods see it (see ``pipelines.submit``)."""
    from pipelines.submit import cluster_config

    try:
        return cluster_config(load_config(config, overrides or [], profile=profile), tracking_uri)
    except ConfigError as e:
        raise fail(str(e), code=2) from e
