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

import typer

from components.config import TRASHNET_CLASSES
from monitoring.store import DEFAULT_DB_URL

DEFAULT_OUT = Path("work/monitoring/drift")


def drift(
    reference: str = typer.Option(..., "--reference", help="Reference profile (parquet/CSV) of the champion, "
                                  "or an MLflow URI such as models:/garbage-classifier@champion."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images to use as the window."),
    db: str | None = typer.Option(None, "--db", help="Collector store: SQLAlchemy URL or SQLite path."),
    window: str = typer.Option("1h", "--window", help="With --db: how far back, e.g. 30m, 1h, 24h, 7d."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Folder for the reports and metrics.prom."),
    model: Path | None = typer.Option(None, "--model", help="With --images: model folder, adds the class mix."),
    pushgateway: str | None = typer.Option(None, "--pushgateway", help="Pushgateway URL for the metrics."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write the HTML reports."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many newest rows."),
    fail_on_drift: bool = typer.Option(False, "--fail-on-drift", help="Exit with status 3 on drift."),
) -> None:
    """Compare recent traffic (or a folder of images) with the reference; print a JSON summary."""
    from monitoring.job import DriftJobError, run_drift_job
    from monitoring.metrics import PushError
    from monitoring.reference import ReferenceProfileError
    from monitoring.store import StoreError

    logging.basicConfig(level=logging.WARNING)
    try:
        summary = run_drift_job(reference, out, db_url=db, window=window, images=images, model_dir=model,
                                pushgateway=pushgateway, html=html, limit=limit)
    except (DriftJobError, ReferenceProfileError) as e:
        raise typer.BadParameter(str(e)) from e
    except (StoreError, PushError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    brief = {key: summary[key] for key in (
        "drift_detected", "drift_share", "window_size", "status", "verdict", "drifted_columns",
        "embedding_drift_share", "live_accuracy", "timings", "outputs", "pushed")}
    typer.echo(json.dumps(brief, indent=2, default=str))
    if fail_on_drift and summary["drift_detected"]:
        raise typer.Exit(3)


def collector(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 in a pod)."),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
    db: str = typer.Option(DEFAULT_DB_URL, "--db", envvar="GARBAGE_MONITORING_DB",
                           help="SQLAlchemy URL (postgresql://...) or SQLite path."),
    classes: str = typer.Option(",".join(TRASHNET_CLASSES), "--classes", help="Comma-separated class names."),
    windows: str = typer.Option("1h,24h", "--windows", help="Live-accuracy windows for /metrics."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the monitoring collector: KServe payload-logger CloudEvents in, features and labels stored."""
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
