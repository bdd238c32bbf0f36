"""``garbage serve``: the KServe model server the container runs, started from the CLI.

The serving settings' flags (``--max-batch-size``, ...) are generated from the settings schema
(:func:`serving.settings.setting_flags`), as ``python -m serving``'s are. This is where serving
and monitoring meet: ``--logger-url`` hands the server monitoring's payload logger, started and
stopped with the server (``--logger-*`` set its queue, spill and timeouts).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load
from monitoring.payload_logger import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_EVENTS,
    DEFAULT_TIMEOUT,
)
from monitoring.spill import DEFAULT_MAX_SPILL_BYTES
from serving.settings import SettingFlag, setting_flags

if TYPE_CHECKING:
    from monitoring.payload_logger import CloudEventsHook

#: The payload logger's bearer token for the collector's /events (never a command-line flag).
LOGGER_TOKEN_ENV = "GARBAGE_LOGGER_TOKEN"
#: The spill folder under the config's work dir unless --logger-spill-dir names one.
DEFAULT_SPILL_FOLDER = Path("monitoring") / "payload-spill"


def _option(flag: SettingFlag) -> inspect.Parameter:
    dashed = flag.name.replace("_", "-")
    declaration = f"--{dashed}/--no-{dashed}" if flag.type is bool else f"--{dashed}"
    return inspect.Parameter(
        flag.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,  # unset: the environment variable, else the setting's default
        annotation=Annotated[flag.type | None, typer.Option(declaration, help=flag.help)],
    )


def logger_hook(
    url: str,
    *,
    model_name: str,
    spill_dir: Path | None,
    max_spill_bytes: int,
    max_queue_bytes: int,
    max_queue_events: int,
    timeout: float,
    token: str | None = None,
) -> CloudEventsHook:
    """The payload-logger hook for ``garbage serve --logger-url``, its spill folder checked now.

    Raises:
        typer.Exit: The spill folder cannot be created or written (the message says which).
    """
    from monitoring.payload_logger import CloudEventsHook

    if spill_dir is not None and max_spill_bytes > 0:
        try:
            spill_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fail(f"error: cannot create the payload logger's spill folder: {e}") from e
        if not os.access(spill_dir, os.W_OK | os.X_OK):
            raise fail(
                f"error: the payload logger's spill folder {spill_dir} is not writable; give "
                "another with --logger-spill-dir, or --logger-max-spill-bytes 0 for no spill"
            )
    return CloudEventsHook(
        url,
        inference_service=model_name,
        spill_dir=str(spill_dir) if spill_dir is not None and max_spill_bytes > 0 else None,
        max_spill_bytes=max_spill_bytes,
        max_queue_bytes=max_queue_bytes,
        max_queue_events=max_queue_events,
        timeout=timeout,
        token=token,
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
    logger_spill_dir: Annotated[
        Path | None,
        typer.Option(
            "--logger-spill-dir",
            help="Where the payload logger keeps events, fsync'd, while the collector is away "
            "(sent, oldest first, when it is back, after a restart too). Default: "
            "<work dir>/monitoring/payload-spill.",
        ),
    ] = None,
    logger_max_spill_bytes: Annotated[
        int,
        typer.Option(
            "--logger-max-spill-bytes",
            min=0,
            help="Bytes the spill may hold; past it events are dropped (counted in "
            'garbage_payload_events_total{outcome="dropped"}). 0: no spill.',
        ),
    ] = DEFAULT_MAX_SPILL_BYTES,
    logger_max_queue_bytes: Annotated[
        int,
        typer.Option(
            "--logger-max-queue-bytes",
            min=1,
            help="Bytes of events the payload logger holds in memory; more go to the spill.",
        ),
    ] = DEFAULT_MAX_QUEUE_BYTES,
    logger_max_queue_events: Annotated[
        int,
        typer.Option(
            "--logger-max-queue-events",
            min=2,
            help="Events the payload logger holds in memory; more go to the spill.",
        ),
    ] = DEFAULT_MAX_QUEUE_EVENTS,
    logger_timeout: Annotated[
        float,
        typer.Option(
            "--logger-timeout",
            min=0.1,
            help="Seconds the collector has to answer one event before it is retried.",
        ),
    ] = DEFAULT_TIMEOUT,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
    **settings: Any,
) -> None:
    """Serve the champion (or --model) over KServe REST v1/v2 and gRPC until stopped.

    With --logger-url, the payload logger's token for the collector's /events comes from
    $GARBAGE_LOGGER_TOKEN when it is set.
    """
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
            spill = logger_spill_dir
            if spill is None:
                spill = load(config, profile, set_).work_dir / DEFAULT_SPILL_FOLDER
            hook = logger_hook(
                logger_url,
                model_name=serving_settings.model_name,
                spill_dir=spill,
                max_spill_bytes=logger_max_spill_bytes,
                max_queue_bytes=logger_max_queue_bytes,
                max_queue_events=logger_max_queue_events,
                timeout=logger_timeout,
                token=os.environ.get(LOGGER_TOKEN_ENV) or None,
            )
        loaded = build_model(model_dir, serving_settings, workers=workers, on_prediction=hook)
    except ModelLoadError as e:
        raise fail(f"error: {e}") from e
    typer.echo(
        f"serving {model_dir} as '{serving_settings.model_name}' on http://0.0.0.0:{http_port} "
        f"(REST v1/v2, /metrics)" + (f" and grpc :{grpc_port}" if grpc else "")
    )
    if hook is not None:
        from kserve import model_server

        # The server's own process (--workers 1): the logger starts with it (events spilled by
        # an earlier run go out at once) and its queue is sent or spilled when it stops. Worker
        # processes (--workers > 1) start theirs on their first request and spill at exit.
        model_server.app.router.on_startup.append(hook.start)
        model_server.app.router.on_shutdown.append(hook.aclose)
    serve_model(
        loaded,
        http_port=http_port,
        grpc_port=grpc_port,
        workers=workers,
        enable_grpc=grpc,
        enable_latency_logging=latency_log,
    )
