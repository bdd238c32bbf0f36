"""``garbage``: the project's one command line (typer). Make targets wrap it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from components.config import PROFILES, Config, ConfigError, load_config
from monitoring.cli import collector, drift
from pipelines.cluster_cli import deploy, submit
from serving.cli import serve

app = typer.Typer(
    help="Garbage classifier: data, pipeline, prediction, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Fetch and validate the dataset.", no_args_is_help=True)
pipeline_app = typer.Typer(
    help="Run, compile and submit the training pipeline.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.command("serve")(serve)
app.command("collector")(collector)
app.command("drift")(drift)
app.command("deploy")(deploy)
pipeline_app.command("submit")(submit)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file.", exists=True, dir_okay=False),
]
ProfileOption = Annotated[str, typer.Option(help=f"Config profile: {', '.join(PROFILES)}.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable)."
    ),
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _config(config: Path | None, profile: str, overrides: list[str] | None) -> Config:
    """Load and validate the config once; absolute work dir so subprocesses agree on it."""
    try:
        loaded = load_config(config, overrides or [], profile=profile)
    except ConfigError as e:
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    return loaded.model_copy(update={"work_dir": loaded.work_dir.resolve()})


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@data_app.command("fetch")
def data_fetch(
    config: ConfigOption = None, profile: ProfileOption = "default", set_: SetOption = None
) -> None:
    """Download (or copy) the archive, verify its sha256 and extract it into the cache."""
    from components.data.fetch import DataFetchError, fetch_dataset

    cfg = _config(config, profile, set_)
    try:
        root = fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
    except DataFetchError as e:
        raise _fail(str(e)) from e
    typer.echo(str(root))


@data_app.command("validate")
def data_validate(
    images: Annotated[
        Path | None, typer.Option(help="Folder of class folders; default: fetch.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the reports go.")] = Path("work/validation"),
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Validate the dataset; write validation.json and validation.md; exit 1 on a hard error."""
    from components.data.fetch import DataFetchError, fetch_dataset
    from components.data.validate import (
        DataValidationError,
        raise_for_errors,
        validate_dataset,
        write_report,
    )

    cfg = _config(config, profile, set_)
    try:
        root = images or fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
        report, _ = validate_dataset(root, cfg.data)
        json_path, md_path = write_report(report, out)
        typer.echo(report.to_markdown())
        typer.echo(f"reports: {json_path} {md_path}")
        raise_for_errors(report)
    except (DataFetchError, DataValidationError) as e:
        raise _fail(str(e)) from e


@pipeline_app.command("run")
def pipeline_run(
    config: ConfigOption = None, profile: ProfileOption = "default", set_: SetOption = None
) -> None:
    """Run the whole pipeline locally through kfp.local, tracked in MLflow."""
    from pipelines.local import run_locally

    cfg = _config(config, profile, set_)
    typer.echo(f"tracking: {cfg.mlflow_tracking_uri}")
    try:
        decision = run_locally(cfg)
    except RuntimeError as e:
        raise _fail(f"pipeline failed: {e}") from e
    typer.echo(decision.read_text())
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}")


@pipeline_app.command("compile")
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML to write.")] = Path(
        "work/garbage-pipeline.yaml"
    ),
    config: ConfigOption = None,
    profile: ProfileOption = "gpu",
    set_: SetOption = None,
) -> None:
    """Compile the pipeline to KFP IR YAML (the config's defaults baked in as parameters)."""
    from pipelines.training import compile_pipeline

    _config(config, profile, set_)  # validate before anything is written
    compile_pipeline(output)
    typer.echo(str(output))


@app.command("predict")
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
    from components.inference import ModelLoadError, OnnxClassifier
    from components.model_store import resolve_model_dir
    from components.predict import expand_paths, predict_files

    cfg = _config(config, profile, set_)
    try:
        classifier = OnnxClassifier.load(resolve_model_dir(model, cfg))
    except ModelLoadError as e:
        raise _fail(str(e)) from e
    failures = 0
    for record in predict_files(classifier, expand_paths(paths, IMAGE_SUFFIXES), batch_size):
        failures += "error" in record
        typer.echo(json.dumps(record))
    if failures:
        typer.secho(
            f"{failures} input(s) could not be classified", fg=typer.colors.YELLOW, err=True
        )
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m pipelines.cli``."""
    app()


if __name__ == "__main__":
    main()
