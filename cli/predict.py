"""``garbage predict``: classify image files and folders with an exported model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load


def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Model folder, .onnx file or MLflow URI; default: the registry's champion."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Classify images; print one JSON object per image: {"path", "label", "score"}."""
    from garbage.core.classifier import ModelLoadError, OnnxClassifier
    from garbage.core.model_uri import resolve_model_dir
    from garbage.core.predict import expand_paths, predict_files

    cfg = load(config, profile, set_)
    try:
        classifier = OnnxClassifier.load(resolve_model_dir(model, cfg))
    except ModelLoadError as e:
        raise fail(str(e)) from e
    failures = 0
    for record in predict_files(classifier, expand_paths(paths), batch_size):
        failures += "error" in record
        typer.echo(json.dumps(record))
    if failures:
        typer.secho(
            f"{failures} input(s) could not be classified", fg=typer.colors.YELLOW, err=True
        )
        raise typer.Exit(1)
