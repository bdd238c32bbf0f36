"""The monitoring commands: ``drift`` and ``collector``.

``garbage`` registers them (``garbage drift``, ``garbage collector``) and so does
``python -m monitoring`` (:func:`build_app`), for an image that holds only the core and monitoring.
Both read the model (``--model``, by default the configured registry's champion, resolved by
:mod:`garbage.core.model_uri` with the config's tracking URI): its class names, and for the
drift job its predictions and reference profile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from garbage.core.config import PROFILES, Config, ConfigError, load_config
from monitoring.defaults import DEFAULT_DB_URL

MODEL_HELP = "Model folder, .onnx file or MLflow URI; default: the configured registry's champion."

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file.", exists=True, dir_okay=False),
]
ProfileOption = Annotated[
    str, typer.Option("--profile", help=f"Config profile: {', '.join(PROFILES)}.")
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a config key, e.g. --set work_dir=/data/work (repeatable)."
    ),
]
ModelOption = Annotated[str | None, typer.Option("--model", help=MODEL_HELP)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` in red on stderr; return the exit to raise."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _config(path: Path | None, profile: str, overrides: list[str] | None) -> Config:
    """The validated config, with an absolute work dir (exit 2 on an invalid one)."""
    try:
        loaded = load_config(path, overrides or [], profile=profile)
    except ConfigError as e:
        raise _fail(str(e), code=2) from e
    return loaded.model_copy(update={"work_dir": loaded.work_dir.resolve()})


def _model_dir(model: str | None, config: Config) -> Path:
    """The local folder of ``--model`` (exit 1 with the reason, e.g. no champion yet)."""
    from garbage.core.classifier import ModelLoadError
    from garbage.core.model_uri import resolve_model_dir

    try:
        return resolve_model_dir(model, config)
    except ModelLoadError as e:
        raise _fail(str(e)) from e


def drift(
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of images to use as the window.")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Collector store: SQLAlchemy URL or SQLite path.")
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="With --db: how far back, e.g. 30m, 1h, 24h, 7d.")
    ] = "1h",
    model: ModelOption = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Reference profile (parquet/CSV) or an MLflow URI such as runs:/ID/reference; "
            "default: the one the model carries (a registered version's reference/).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the reports and metrics.prom; default: <work_dir>/monitoring/drift.",
        ),
    ] = None,
    pushgateway: Annotated[
        str | None, typer.Option("--pushgateway", help="Pushgateway URL for the metrics.")
    ] = None,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write the HTML reports.")] = True,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many newest rows.")
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit with status 3 on drift.")
    ] = False,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    overrides: OverridesOption = None,
) -> None:
    """Compare recent traffic or a folder of images with the model's reference; print a summary."""
    from garbage.core.classifier import ModelLoadError
    from monitoring.drift import DriftInputError
    from monitoring.job import DriftJobError, check_window_source, run_drift_job
    from monitoring.metrics import PushError
    from monitoring.reference import ReferenceProfileError, resolve_reference
    from monitoring.store import StoreError

    logging.basicConfig(level=logging.WARNING)
    try:
        check_window_source(db, images)
    except DriftJobError as e:
        raise typer.BadParameter(str(e)) from e
    cfg = _config(config, profile, overrides)
    out = out or cfg.work_dir / "monitoring" / "drift"
    model_dir = _model_dir(model, cfg)
    try:
        profile_file = (
            resolve_reference(reference, out / "reference", cfg.mlflow_tracking_uri)
            if reference
            else None
        )
        summary = run_drift_job(
            model_dir,
            out,
            reference=profile_file,
            db_url=db,
            window=window,
            images=images,
            pushgateway=pushgateway,
            html=html,
            limit=limit,
        )
    except (DriftJobError, ReferenceProfileError, DriftInputError) as e:
        raise typer.BadParameter(str(e)) from e
    except (ModelLoadError, StoreError, PushError) as e:
        raise _fail(f"error: {e}") from e
    brief = {
        key: summary[key]
        for key in (
            "drift_detected",
            "drift_share",
            "window_size",
            "status",
            "verdict",
            "drifted_columns",
            "embedding_drift_share",
            "live_accuracy",
            "timings",
            "outputs",
            "pushed",
        )
    }
    typer.echo(json.dumps(brief, indent=2, default=str))
    if fail_on_drift and summary["drift_detected"]:
        raise typer.Exit(3)


def collector(
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (0.0.0.0 in a pod).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="GARBAGE_MONITORING_DB",
            help="SQLAlchemy URL (postgresql://...) or SQLite path.",
        ),
    ] = DEFAULT_DB_URL,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help=f"The served model, for its class names (read at start). {MODEL_HELP}"
        ),
    ] = None,
    windows: Annotated[
        str, typer.Option("--windows", help="Live-accuracy windows for /metrics.")
    ] = "1h,24h",
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="GARBAGE_COLLECTOR_TOKEN_FILE",
            dir_okay=False,
            help="File of feedback credentials, one name:token per line (a mounted Secret); "
            "adds to $GARBAGE_COLLECTOR_TOKEN. The name is recorded with every label.",
        ),
    ] = None,
    events_token_file: Annotated[
        Path | None,
        typer.Option(
            "--events-token-file",
            envvar="GARBAGE_COLLECTOR_EVENTS_TOKEN_FILE",
            dir_okay=False,
            help="File of name:token lines that /events then requires (with "
            "$GARBAGE_COLLECTOR_EVENTS_TOKEN); without either, /events is open.",
        ),
    ] = None,
    allow_unauthenticated_feedback: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated-feedback",
            help="Accept labels from anyone who can reach /feedback: local development only.",
        ),
    ] = False,
    image_store: Annotated[
        str | None,
        typer.Option(
            "--image-store",
            envvar="GARBAGE_IMAGE_STORE",
            help="Where logged images are kept, once each by SHA-256: a folder or an fsspec URL "
            "such as s3://bucket/prefix (endpoint and keys from AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). Default: the folder images beside a "
            "SQLite --db (work/monitoring/images), else <work_dir>/monitoring/images.",
        ),
    ] = None,
    keep_images_days: Annotated[
        float | None,
        typer.Option(
            "--keep-images-days",
            min=0,
            help="Delete unlabelled images last seen more than this many days ago (labelled "
            "ones are kept). Default: no age limit.",
        ),
    ] = None,
    keep_images_gb: Annotated[
        float | None,
        typer.Option(
            "--keep-images-gb",
            min=0,
            help="Keep the stored images under this many GB (10^9 bytes), deleting the least "
            "recently seen first, unlabelled before labelled. Default: no size limit.",
        ),
    ] = None,
    prune_interval: Annotated[
        str,
        typer.Option(
            "--prune-interval", help="How often retention runs while the collector runs (30m, 1h)."
        ),
    ] = "1h",
    prune_images_once: Annotated[
        bool,
        typer.Option(
            "--prune-images",
            help="Apply --keep-images-days/--keep-images-gb once, print what was deleted, exit "
            "(no server, no model needed).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    overrides: OverridesOption = None,
) -> None:
    """Run the monitoring collector: payload-logger CloudEvents in, features and labels stored.

    /feedback and /images need Authorization: Bearer <token>, the tokens coming from
    $GARBAGE_COLLECTOR_TOKEN and --token-file (name:token entries); without any, the collector
    does not start unless --allow-unauthenticated-feedback is given. Every readable logged image
    is kept in the image store (--image-store), within the retention limits.
    """
    import uvicorn

    from garbage.core.classifier import ModelLoadError, OnnxClassifier
    from monitoring.accuracy import parse_window
    from monitoring.collector import (
        EVENTS_TOKEN_ENV,
        TOKEN_ENV,
        CollectorAuth,
        TokenError,
        create_app,
        load_credentials,
    )
    from monitoring.images import (
        GB,
        ImageStore,
        ImageStoreError,
        Retention,
        default_image_store,
        prune_images,
    )
    from monitoring.store import InferenceStore, StoreError

    logging.basicConfig(  # uvicorn's own levels (trace) are below DEBUG
        level=logging.getLevelNamesMapping().get(log_level.upper(), logging.DEBUG),
        format="%(levelname)s %(name)s: %(message)s",
    )
    spans = [w.strip() for w in windows.split(",") if w.strip()]
    for span in spans:
        try:
            parse_window(span)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--windows") from e
    try:
        interval = parse_window(prune_interval).total_seconds()
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--prune-interval") from e
    retention = Retention(
        keep_days=keep_images_days,
        keep_bytes=int(keep_images_gb * GB) if keep_images_gb is not None else None,
    )
    if prune_images_once and not retention.active:
        raise typer.BadParameter(
            "give --keep-images-days and/or --keep-images-gb: the limits to apply",
            param_hint="--prune-images",
        )
    if not prune_images_once:
        try:
            auth = CollectorAuth(
                feedback=load_credentials(TOKEN_ENV, token_file),
                events=load_credentials(EVENTS_TOKEN_ENV, events_token_file),
                allow_unauthenticated_feedback=allow_unauthenticated_feedback,
            )
        except TokenError as e:
            raise _fail(f"error: {e}", code=2) from e
    cfg = _config(config, profile, overrides)
    try:
        images = ImageStore(image_store or default_image_store(db, cfg.work_dir))
    except ImageStoreError as e:
        raise _fail(f"error: {e}", code=2) from e
    if prune_images_once:
        try:
            store = InferenceStore(db)
            result = prune_images(store, images, retention)
        except (StoreError, ImageStoreError) as e:
            raise _fail(f"error: {e}") from e
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    model_dir = _model_dir(model, cfg)
    try:
        classes = OnnxClassifier.load(model_dir, device="cpu", intra_op_threads=1).classes
    except ModelLoadError as e:
        raise _fail(str(e)) from e
    try:
        store = InferenceStore(db)
    except StoreError as e:
        raise _fail(f"error: {e}") from e
    uvicorn.run(
        create_app(
            store,
            classes,
            auth=auth,
            windows=spans,
            images=images,
            retention=retention,
            prune_interval=interval,
        ),
        host=host,
        port=port,
        log_level=log_level,
    )


def build_app() -> typer.Typer:
    """A typer application with just the monitoring commands (``python -m monitoring``)."""
    app = typer.Typer(
        help="Garbage classifier monitoring: the collector and the drift job.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    app.command("collector")(collector)
    app.command("drift")(drift)
    return app
