"""Start the KServe model server with the garbage classifier (``python -m serving``, CLI)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from garbage.core.classifier import ModelLoadError
from garbage.core.names import MODEL_NAME
from serving.model import GarbageClassifierModel, PredictionHook
from serving.settings import ServingSettings, SettingsError, setting_flags

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "/mnt/models"
GRPC_LIMIT_HEADROOM = 2
"""gRPC's own message limit is kept at least this many times the body limit
(``ServingSettings.max_body_bytes``) so that a payload over the server's limit reaches the model
and gets INVALID_ARGUMENT with a message (a message over gRPC's limit gets RESOURCE_EXHAUSTED
from gRPC itself)."""


def build_model(
    model_dir: Path,
    settings: ServingSettings,
    *,
    workers: int = 1,
    on_prediction: PredictionHook | None = None,
) -> GarbageClassifierModel:
    """Create and load the predictor (ready when this returns).

    Raises:
        ModelLoadError: No usable model in ``model_dir``, or it failed the warm-up.
    """
    model = GarbageClassifierModel(
        settings.model_name, model_dir, settings, workers=workers, on_prediction=on_prediction
    )
    model.load()
    return model


def serve_model(
    model: GarbageClassifierModel,
    *,
    http_port: int = 8080,
    grpc_port: int = 8081,
    workers: int = 1,
    **server_options: Any,
) -> None:
    """Run the model server (:class:`serving.kserve_server.GarbageModelServer`) until stopped.

    KServe's ``ModelServer`` without the model repository API, with truthful health and with
    the REST read limits of ``model.settings`` (see :mod:`serving.kserve_server`).

    Args:
        model: A loaded predictor.
        http_port: REST (v1, v2), readiness and ``/metrics``.
        grpc_port: v2 gRPC.
        workers: REST server processes (KServe's ``--workers``); each reloads the model and
            gets its share of the CPUs (``thread_budget``). On a small machine 1 is best:
            micro-batching needs the requests in one process.
        server_options: More ``kserve.ModelServer`` arguments (``enable_grpc``, ``max_threads``,
            ``enable_latency_logging``, ...).
    """
    from kserve import model_server

    from serving.http_guard import ReadLimits
    from serving.kserve_server import GarbageModelServer
    from serving.rest import install_routes

    install_routes(model_server.app, model)
    model.worker_setup = set_up_worker
    use_event_loop(server_options.get("event_loop", model_server.args.event_loop), workers)
    quiet_request_logs(
        model_server.app,
        latency_log=server_options.get(
            "enable_latency_logging", model_server.args.enable_latency_logging
        ),
        access_log=model.settings.access_log,
    )
    # KServe's gRPC server reads its options from KServe's parsed command line.
    model_server.args.grpc_max_receive_message_length = max(
        model_server.args.grpc_max_receive_message_length,
        GRPC_LIMIT_HEADROOM * model.settings.max_body_bytes,
    )
    limits = ReadLimits(
        header_timeout_s=model.settings.header_timeout_s,
        body_timeout_s=model.settings.body_timeout_s,
    )
    GarbageModelServer(
        read_limits=limits,
        http_port=http_port,
        grpc_port=grpc_port,
        workers=workers,
        **server_options,
    ).start([model])


def use_event_loop(kind: str, workers: int = 1) -> str:
    """Make KServe's ``--event_loop`` (``auto``, ``asyncio``, ``uvloop``) hold with one worker too.

    KServe hands the choice to uvicorn, which applies it only when it runs the server itself
    (``--workers > 1``); with one worker KServe starts its servers through ``asyncio.run`` and
    the stdlib loop. Here the event-loop policy follows the flag, so ``auto`` means uvloop
    whenever it is installed, as KServe documents (its socket I/O and thread hand-offs cost the
    event loop 0.05-0.09 ms less CPU per request on this project's 2-CPU machines).

    Returns:
        The loop that will run: ``"uvloop"`` or ``"asyncio"``.
    """
    wanted = kind
    if kind == "auto":
        wanted = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if wanted != "uvloop" or workers > 1:
        return wanted
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # KServe asks for the current loop (to set its handlers) before asyncio.run makes its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    return wanted


def quiet_request_logs(app: FastAPI, *, latency_log: bool, access_log: bool) -> None:
    """Turn off, at application start-up, the per-request log lines that were not asked for.

    Latency logging (KServe's ``--enable_latency_logging``) is KServe's timing middleware plus
    its trace logger; the access log is uvicorn's line per request. Each costs the event loop CPU
    on every request (together about 0.2 ms per request on this project's 2-CPU machines) and
    request counts and latencies are in ``/metrics`` anyway. It runs at start-up because KServe
    (re)configures logging and adds its middleware when a server process starts.
    """

    def quiet() -> None:
        if not latency_log:
            from kserve.logging import trace_logger
            from timing_asgi import TimingMiddleware

            trace_logger.setLevel(logging.WARNING)
            app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
            app.middleware_stack = None  # rebuilt without it on the first request
        if not access_log:
            access = logging.getLogger("uvicorn.access")  # what uvicorn's --no-access-log does
            access.handlers = []
            access.propagate = False

    app.router.on_startup.append(quiet)


def set_up_worker(model: GarbageClassifierModel) -> None:
    """In a KServe REST worker process (``--workers > 1``): route to the rebuilt model.

    The model is loaded at the worker's application start-up, so that the worker answers its
    parent's liveness pings while the model loads (see ``serving.model.restore_in_worker``).
    """
    from kserve import model_server

    from serving.rest import install_routes

    install_routes(model_server.app, model)
    model_server.app.router.on_startup.append(model.load)
    quiet_request_logs(
        model_server.app,
        latency_log=model.enable_latency_logging,
        access_log=model.settings.access_log,
    )


def _parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m serving",
        parents=[model_server.parser],
        description="KServe model server for the garbage classifier (REST v1/v2, gRPC v2). "
        "Every setting also reads GARBAGE_SERVE_<NAME> from the environment.",
    )
    parser.set_defaults(
        model_name=os.environ.get("GARBAGE_SERVE_MODEL_NAME", MODEL_NAME),
        enable_latency_logging=False,  # KServe's default is on: 3 log lines per request
    )
    parser.add_argument(
        "--model_dir",
        default=os.environ.get("GARBAGE_SERVE_MODEL_DIR", DEFAULT_MODEL_DIR),
        help="Model folder (KServe's /mnt/models layout too) or .onnx file; an MLflow URI "
        "(models:/garbage-classifier@champion) where MLflow is installed (not in the serving "
        "image).",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="Project config YAML (for MLflow URIs: tracking URI, work dir).",
    )
    for flag in setting_flags():
        if flag.name != "model_name":  # KServe's own --model_name
            # A switch takes a value here, as KServe's flags do: --access_log true.
            kind = str if flag.type is bool else flag.type
            parser.add_argument(f"--{flag.name}", type=kind, default=None, help=flag.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m serving``; returns the exit code on a startup error."""
    args, _ = _parser().parse_known_args(argv)
    overrides = {
        name: getattr(args, name) for name in ServingSettings.model_fields if name != "model_name"
    }
    try:
        settings = ServingSettings.from_sources(model_name=args.model_name, **overrides)
        model_dir = resolve(args.model_dir, args.config)
        model = build_model(model_dir, settings, workers=args.workers)
    except (SettingsError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, SettingsError) else 1
    serve_model(
        model,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
    )
    return 0


def resolve(
    uri: str | None,
    config_path: str | Path | None = None,
    profile: str = "default",
    overrides: list[str] | None = None,
) -> Path:
    """The local model folder for ``uri`` (None: the registry's champion).

    Raises:
        ModelLoadError: Nothing usable there (the message says what to do).
    """
    from garbage.core.config import ConfigError, load_config
    from garbage.core.model_uri import resolve_model_dir

    try:
        config = load_config(config_path, overrides=overrides, profile=profile)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from e
    return resolve_model_dir(uri, config)
