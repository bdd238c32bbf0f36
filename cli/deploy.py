"""``garbage deploy``: publish a model as the KServe InferenceService from a workstation.

The pipeline's last step (``components/deploy_model``) does the same from inside the cluster. A
registered version (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) goes through
``garbage.release``: the champion alias moves once the InferenceService serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load
from garbage.core.names import MODEL_NAME
from garbage.deploy import ARTIFACTS_DESTINATION, DEFAULT_NAMESPACE


def deploy(
    model_uri: Annotated[
        str | None,
        typer.Option(
            "--model-uri",
            help="s3://... folder holding model.onnx, or an MLflow models:/ or runs:/ "
            "URI (needs --tracking-uri).",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="InferenceService name.")] = MODEL_NAME,
    namespace: Annotated[str, typer.Option(help="Serving namespace.")] = DEFAULT_NAMESPACE,
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
    show_status: Annotated[
        bool,
        typer.Option(
            "--status", help="Show what serves next to the registry's champion, and exit."
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
    ] = ARTIFACTS_DESTINATION,
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
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    overrides: SetOption = None,
) -> None:
    """Publish a model as the KServe InferenceService; roll back if it does not become Ready."""
    from garbage import release
    from garbage.deploy import DeployError, connect, publish_model
    from garbage.training.registry import RegistryError, version_of

    settings = load(config, profile, overrides)
    if tracking_uri:
        settings = settings.model_copy(
            update={"registry": settings.registry.model_copy(update={"tracking_uri": tracking_uri})}
        )
    if model_uri is None and not promote and not show_status:
        raise fail(
            "pass --model-uri s3://BUCKET/PATH (the folder holding model.onnx) or "
            f"models:/{settings.registry.model_name}/VERSION, --promote to finish a canary, or "
            "--status",
            code=2,
        )
    try:
        api = connect(str(kubeconfig) if kubeconfig else None, context)
        if show_status:
            for line in release.status(settings, name, namespace, api=api).lines():
                typer.echo(line)
            return
        if promote:
            result = release.promote(settings, name, namespace, timeout, api, poll_interval)
        elif (version := version_of(settings, str(model_uri))) is not None:
            result = release.release(
                settings,
                version,
                name,
                namespace,
                canary_percent=canary,
                timeout_s=timeout,
                artifacts_destination=artifacts_destination,
                api=api,
                poll_interval_s=poll_interval,
            )
        else:
            result = publish_model(
                str(model_uri),
                name=name,
                namespace=namespace,
                canary_percent=canary,
                timeout_s=timeout,
                tracking_uri=settings.mlflow_tracking_uri,
                artifacts_destination=artifacts_destination,
                api=api,
                poll_interval_s=poll_interval,
            )
    except (DeployError, RegistryError) as e:
        raise fail(str(e)) from e
    typer.echo(result.summary())
