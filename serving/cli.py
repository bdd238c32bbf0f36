"""``garbage serve``: the KServe model server the container runs, started from the CLI.

Wired into the ``garbage`` app with ``app.command("serve")(serving.cli.serve)``. KServe is
imported only when the command runs, so other ``garbage`` commands do not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
    model_name: Annotated[
        str | None,
        typer.Option(
            help="Name on the wire (env GARBAGE_SERVE_MODEL_NAME, default garbage-classifier)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (env GARBAGE_SERVE_DEVICE, default auto).")
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Most images per model call (env GARBAGE_SERVE_MAX_BATCH_SIZE, default 32)."
        ),
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="Wait for a fuller batch while the model is idle "
            "(env GARBAGE_SERVE_MAX_BATCH_WAIT_MS, default 0)."
        ),
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(
            help="ONNX Runtime threads (env GARBAGE_SERVE_INTRA_OP_THREADS, "
            "default CPUs / workers - 1, at least 1)."
        ),
    ] = None,
    decode_threads: Annotated[
        int | None,
        typer.Option(
            help="Image decode threads (env GARBAGE_SERVE_DECODE_THREADS, default CPUs / workers)."
        ),
    ] = None,
    max_instances: Annotated[
        int | None,
        typer.Option(help="Most images per request (env GARBAGE_SERVE_MAX_INSTANCES, default 64)."),
    ] = None,
    max_payload_bytes: Annotated[
        int | None,
        typer.Option(
            help="Largest request body / gRPC tensor payload "
            "(env GARBAGE_SERVE_MAX_PAYLOAD_BYTES, default 16 MiB)."
        ),
    ] = None,
    max_image_pixels: Annotated[
        int | None,
        typer.Option(
            help="Largest width x height per image "
            "(env GARBAGE_SERVE_MAX_IMAGE_PIXELS, default 40000000)."
        ),
    ] = None,
    allowed_formats: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated Pillow formats "
            "(env GARBAGE_SERVE_ALLOWED_FORMATS, default JPEG,PNG)."
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="uvicorn's access log line per request (env GARBAGE_SERVE_ACCESS_LOG, "
            "default off: about 0.15 ms of event-loop CPU per request).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Project config YAML (MLflow tracking URI, work dir)."),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Config profile: default, gpu or smoke.")
    ] = "default",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Config override section.key=value (repeatable)."),
    ] = None,
    logger_url: Annotated[
        str | None,
        typer.Option(
            "--logger-url",
            help="Post KServe payload-logger CloudEvents of every request to this collector "
            "URL, e.g. http://127.0.0.1:8082/events (default: off; on Kubernetes the KServe "
            "agent logs instead).",
        ),
    ] = None,
) -> None:
    """Serve the champion (or --model) over KServe REST v1/v2 and gRPC until stopped."""
    from components.inference import ModelLoadError
    from serving.settings import ServingSettings, SettingsError

    try:
        settings = ServingSettings.from_sources(
            model_name=model_name,
            device=device,
            max_batch_size=max_batch_size,
            max_batch_wait_ms=max_batch_wait_ms,
            intra_op_threads=intra_op_threads,
            decode_threads=decode_threads,
            max_instances=max_instances,
            max_payload_bytes=max_payload_bytes,
            max_image_pixels=max_image_pixels,
            allowed_formats=allowed_formats,
            access_log=access_log,
        )
    except SettingsError as e:
        raise typer.BadParameter(str(e)) from e
    from serving.server import build_model, resolve, serve_model

    try:
        model_dir = resolve(model, config, profile=profile, overrides=overrides)
        hook = None
        if logger_url:
            from monitoring.payload_logger import CloudEventsHook

            hook = CloudEventsHook(logger_url, inference_service=settings.model_name)
        loaded = build_model(model_dir, settings, workers=workers, on_prediction=hook)
    except ModelLoadError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(
        f"serving {model_dir} as '{settings.model_name}' on http://0.0.0.0:{http_port} "
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
