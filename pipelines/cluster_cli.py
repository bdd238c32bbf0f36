"""Cluster commands of the ``garbage`` CLI, as plain functions that ``pipelines/cli.py`` registers.

``garbage pipeline submit --host URL`` starts the training pipeline on Kubeflow Pipelines;
``garbage deploy --model-uri s3://...`` publishes a model as the KServe InferenceService from a
workstation (the pipeline's deploy step does the same in the cluster).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from components.config import PROFILES, ConfigError, load_config


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
    ] = "garbage-classifier",
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config file.", exists=True, dir_okay=False),
    ] = None,
    profile: Annotated[str, typer.Option(help=f"Config profile: {', '.join(PROFILES)}.")] = "gpu",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking server as the pods see it; default: the config's, else the "
            "manifests' in-cluster server."
        ),
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="Run display name.")] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Kubeflow profile namespace (multi-user Kubeflow only).")
    ] = None,
    service_account: Annotated[
        str, typer.Option(help="Service account of the run's pods (manifests/base/rbac).")
    ] = "garbage-pipeline",
    cpu_only: Annotated[
        bool,
        typer.Option(
            "--cpu-only",
            help="Fit the pipeline to a cluster without GPUs (kind): no GPU request, "
            "node selector or toleration; small CPU/memory.",
        ),
    ] = False,
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
    from pipelines.submit import SubmitError, cluster_config, submit_pipeline

    try:
        cfg = cluster_config(load_config(config, set_ or [], profile=profile), tracking_uri)
    except ConfigError as e:
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
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
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from e
    typer.echo(
        json.dumps(
            {
                "run_id": result.run_id,
                "run_url": result.run_url,
                "experiment": result.experiment,
                "state": result.state,
            },
            indent=2,
        )
    )


def deploy(
    model_uri: Annotated[
        str | None,
        typer.Option(
            "--model-uri",
            help="s3://... folder holding model.onnx, or an MLflow models:/ or runs:/ "
            "URI (needs --tracking-uri).",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="InferenceService name.")] = "garbage-classifier",
    namespace: Annotated[str, typer.Option(help="Serving namespace.")] = "garbage-serving",
    canary: Annotated[
        int | None,
        typer.Option(
            "--canary",
            min=1,
            max=100,
            help="Percent of traffic for the new revision (Serverless mode only).",
        ),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote", help="Send all traffic to the current canary instead of deploying."
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Ready.", min=1)] = 600,
    tracking_uri: Annotated[
        str | None,
        typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking server, for MLflow URIs."),
    ] = None,
    artifacts_destination: Annotated[
        str | None,
        typer.Option(
            help="The MLflow server's --artifacts-destination, for proxied artifact URIs."
        ),
    ] = "s3://mlflow/artifacts",
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            envvar="KUBECONFIG", help="kubeconfig file; default: in-cluster or ~/.kube/config."
        ),
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between status reads.", min=0.01)
    ] = 2.0,
) -> None:
    """Publish a model as the KServe InferenceService; roll back if it does not become Ready."""
    from components.deploy import (
        DeployError,
        InferenceServiceDeployer,
        connect,
        resolve_storage_uri,
    )

    if model_uri is None and not promote:
        typer.secho(
            "pass --model-uri s3://BUCKET/PATH (the folder holding model.onnx), or "
            "--promote to finish a canary",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    try:
        storage_uri = (
            None
            if promote
            else resolve_storage_uri(str(model_uri), tracking_uri, artifacts_destination)
        )
        api = connect(str(kubeconfig) if kubeconfig else None, context)
        deployer = InferenceServiceDeployer(api, poll_interval_s=poll_interval)
        if storage_uri is None:
            result = deployer.promote(name, namespace, timeout)
        else:
            result = deployer.deploy(
                storage_uri,
                name=name,
                namespace=namespace,
                canary_percent=canary,
                timeout_s=timeout,
            )
    except DeployError as e:
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps(result.to_dict(), indent=2))
