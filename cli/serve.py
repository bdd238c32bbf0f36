"""``garbage serve``: the KServe model server the container runs, started from the CLI.

The serving settings' flags (``--max-batch-size``, ...) are generated from the settings schema
(:func:`serving.settings.setting_flags`), as ``python -m serving``'s are. This is where serving
and monitoring meet: ``--logger-url`` hands the server monitoring's payload logger.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail
from serving.settings import SettingFlag, setting_flags


def _option(flag: SettingFlag) -> inspect.Parameter:
    dashed = flag.name.replace("_", "-")
    declaration = f"--{dashed}/--no-{dashed}" if flag.type is bool else f"--{dashed}"
    return inspect.Parameter(
        flag.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,  # unset: the environment variable, else the setting's default
        annotation=Annotated[flag.type | None, typer.Option(declaration, help=flag.help)],
    )


def with_setting_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per serving setting in place of its ``**settings``.

    typer reads a command's options from its signature, so the signature is rewritten; the
    options arrive in ``**settings``.
    """
    fixed = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*fixed, *(_option(flag) for flag in setting_flags())]
    )
    return command


@with_setting_flags
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model folder, .onnx file, KServe /mnt/models layout, or MLflow URI "
            "(models:/garbage-classifier@champion). Default: the registry's champion.",
        ),
    ] = None,
    http_port: Annotated[int, typer.Option(help="REST port: v1, v2, readiness, /metrics.")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC (v2) port.")] = 8081,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="REST server processes; 1 is best on a small machine (micro-batching)."
        ),
    ] = 1,
    grpc: Annotated[bool, typer.Option("--grpc/--no-grpc", help="Serve gRPC too.")] = True,
    latency_log: Annotated[
        bool,
        typer.Option(
            "--latency-log/--no-latency-log", help="KServe's per-request latency log line."
        ),
    ] = False,
    logger_url: Annotated[
        str | None,
        typer.Option(
            "--logger-url",
            help="Post KServe payload-logger CloudEvents of every request to this collector "
            "URL, e.g. http://127.0.0.1:8082/events (default: off; on Kubernetes the KServe "
            "agent logs instead).",
        ),
    ] = None,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
    **settings: Any,
) -> None:
    """Serve the champion (or --model) over KServe REST v1/v2 and gRPC until stopped."""
    from garbage.core.classifier import ModelLoadError
    from serving.server import build_model, resolve, serve_model
    from serving.settings import ServingSettings, SettingsError

    try:
        serving_settings = ServingSettings.from_sources(**settings)
    except SettingsError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        model_dir = resolve(model, config, profile=profile, overrides=set_)
        hook = None
        if logger_url:
            from monitoring.payload_logger import CloudEventsHook

            hook = CloudEventsHook(logger_url, inference_service=serving_settings.model_name)
        loaded = build_model(model_dir, serving_settings, workers=workers, on_prediction=hook)
    except ModelLoadError as e:
        raise fail(f"error: {e}") from e
    typer.echo(
        f"serving {model_dir} as '{serving_settings.model_name}' on http://0.0.0.0:{http_port} "
        f"(REST v1/v2, /metrics)" + (f" and grpc :{grpc_port}" if grpc else "")
    )
    serve_model(
        loaded,
        http_port=http_port,
        grpc_port=grpc_port,
        workers=workers,
        enable_grpc=grpc,
        enable_latency_logging=latency_log,
    )
