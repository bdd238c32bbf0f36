"""``garbage train``: fetch, validate, split and train one model (also each Katib trial)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load
from garbage.training.tune import TRIAL_CONFIG_ENV


def train(
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
    config_json: Annotated[
        str | None,
        typer.Option(
            envvar=TRIAL_CONFIG_ENV,
            help="A whole config as JSON (what a Katib trial is given), instead of --config; "
            "--set still applies on top.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where the data and best.pt go; default: <work_dir>/train."),
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="The MLflow run's name.")] = None,
) -> None:
    """Train one model on the pipeline's split, tracked in MLflow; print each epoch's metrics.

    Every epoch prints a line that Katib's StdOut metrics collector reads: an RFC 3339 timestamp,
    then epoch=N val_macro_f1=... val_accuracy=... val_loss=... (this is the entry point of the
    trials of garbage tune --katib).
    """
    from garbage.training.data.fetch import DataFetchError
    from garbage.training.data.validate import DataValidationError
    from garbage.training.registry import RegistryError
    from garbage.training.steps import train_step
    from garbage.training.tune import katib_metric_line, prepare_data

    if config_json is not None and config is not None:
        raise fail(f"give --config or --config-json (${TRIAL_CONFIG_ENV}), not both", code=2)
    if config_json is not None:
        try:
            json.loads(config_json)
        except json.JSONDecodeError as e:
            raise fail(
                f"--config-json (${TRIAL_CONFIG_ENV}) is not JSON: {e}; pass a config as "
                "Config.model_dump_json() writes it",
                code=2,
            ) from e
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"  # JSON is YAML: the config file layer takes it
            path.write_text(config_json)
            cfg = load(path, profile, set_)
    else:
        cfg = load(config, profile, set_)
    folder = out or cfg.work_dir / "train"
    typer.echo(f"tracking: {cfg.mlflow_tracking_uri}")
    try:
        data = prepare_data(cfg, folder / "data")
        summary = train_step(
            cfg,
            data.images_dir,
            data.manifest_csv,
            folder / "model",
            run_name=run_name,
            on_epoch=lambda epoch, metrics: typer.echo(katib_metric_line(epoch, metrics)),
            tags={"garbage.command": "garbage train"},
        )
    except (DataFetchError, DataValidationError, RegistryError) as e:
        raise fail(str(e)) from e
    typer.echo(
        f"best epoch {summary['best_epoch']}: validation macro-F1 "
        f"{summary['best_val_macro_f1']:.4f}; checkpoint {summary['checkpoint']}"
    )
