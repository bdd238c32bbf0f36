"""The ``garbage`` application: every command group, registered in one place."""

from __future__ import annotations

import os

import typer

from cli import data, pipeline
from cli.deploy import deploy
from cli.predict import predict
from cli.retrain import retrain
from cli.serve import serve
from cli.train import train
from cli.tune import tune
from monitoring.cli import collector, drift
from monitoring.review_cli import labels_app, review

app = typer.Typer(
    help="Garbage classifier: data, pipeline, prediction, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def quiet_downloads() -> None:
    """What every command shares: model downloads without MLflow's per-file progress bar."""
    # A model is a few files: MLflow's per-file download bar would be most of the output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.command("train")(train)
app.command("tune")(tune)
app.command("predict")(predict)
app.command("serve")(serve)
app.command("collector")(collector)
app.command("drift")(drift)
app.command("review")(review)
app.add_typer(labels_app, name="labels")
app.command("deploy")(deploy)
app.command("retrain")(retrain)
