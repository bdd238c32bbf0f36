"""Command functions for the ``garbage`` CLI: ``garbage drift`` and ``garbage collector``.

The lead wires them into ``pipelines/cli.py``::

    from monitoring.cli import collector, drift
    app.command("drift")(drift)
    app.command("collector")(collector)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from garbage.core.names import TRASHNET_CLASSES
from monitoring.defaults import DEFAULT_DB_URL

DEFAULT_OUT = Path("work/monitoring/drift")


def drift(
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Reference profile (parquet/CSV) of the champion, or an MLflow URI "
            "such as models:/garbage-classifier@champion.",
        ),
    ],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of images to use as the window.")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Collector store: SQLAlchemy URL or SQLite path.")
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="With --db: how far back, e.g. 30m, 1h, 24h, 7d.")
    ] = "1h",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the reports and metrics.prom.")
    ] = DEFAULT_OUT,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="With --images: model folder, adds the class mix."),
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
) -> None:
    """Compare recent traffic (or a folder of images) with the reference; print a JSON summary."""
    from monitoring.job import DriftJobError, run_drift_job
    from monitoring.metrics import PushError
    from monitoring.reference import ReferenceProfileError
    from monitoring.store import StoreError

    logging.basicConfig(level=logging.WARNING)
    try:
        summary = run_drift_job(
            reference,
            out,
            db_url=db,
            window=window,
            images=images,
            model_dir=model,
            pushgateway=pushgateway,
            html=html,
            limit=limit,
        )
    except (DriftJobError, ReferenceProfileError) as e:
        raise typer.BadParameter(str(e)) from e
    except (StoreError, PushError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
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
    classes: Annotated[
        str, typer.Option("--classes", help="Comma-separated class names.")
    ] = ",".join(TRASHNET_CLASSES),
    windows: Annotated[
        str, typer.Option("--windows", help="Live-accuracy windows for /metrics.")
    ] = "1h,24h",
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the monitoring collector: payload-logger CloudEvents in, features and labels stored."""
    import uvicorn

    from monitoring.accuracy import parse_window
    from monitoring.collector import create_app
    from monitoring.store import InferenceStore, StoreError

    names = [c.strip() for c in classes.split(",") if c.strip()]
    spans = [w.strip() for w in windows.split(",") if w.strip()]
    for span in spans:
        try:
            parse_window(span)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--windows") from e
    try:
        store = InferenceStore(db)
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    uvicorn.run(create_app(store, names, windows=spans), host=host, port=port, log_level=log_level)
