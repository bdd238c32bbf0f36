"""``garbage data fetch`` and ``garbage data validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load

app = typer.Typer(help="Fetch and validate the dataset.", no_args_is_help=True)


@app.command("fetch")
def fetch(
    config: ConfigOption = None, profile: ProfileOption = "default", set_: SetOption = None
) -> None:
    """Download (or copy) the archive, verify its sha256 and extract it into the cache."""
    from garbage.training.data.fetch import DataFetchError, fetch_dataset

    cfg = load(config, profile, set_)
    try:
        root = fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
    except DataFetchError as e:
        raise fail(str(e)) from e
    typer.echo(str(root))


@app.command("validate")
def validate(
    images: Annotated[
        Path | None, typer.Option(help="Folder of class folders; default: fetch.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the reports go.")] = Path("work/validation"),
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Validate the dataset; write validation.json and validation.md; exit 1 on a hard error."""
    from garbage.training.data.fetch import DataFetchError, fetch_dataset
    from garbage.training.data.validate import (
        DataValidationError,
        raise_for_errors,
        validate_dataset,
        write_report,
    )

    cfg = load(config, profile, set_)
    try:
        root = images or fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
        report, _ = validate_dataset(root, cfg.data)
        json_path, md_path = write_report(report, out)
        typer.echo(report.to_markdown())
        typer.echo(f"reports: {json_path} {md_path}")
        raise_for_errors(report)
    except (DataFetchError, DataValidationError) as e:
        raise fail(str(e)) from e
