"""Options every config-reading command shares, and how a command reports a failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from garbage.core.config import PROFILES, Config, ConfigError, load_config

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


def load(config: Path | None, profile: str, overrides: list[str] | None) -> Config:
    """Load and validate the config once; absolute work dir so subprocesses agree on it.

    Raises:
        typer.Exit: Code 2 after printing what is wrong with the config.
    """
    try:
        loaded = load_config(config, overrides or [], profile=profile)
    except ConfigError as e:
        raise fail(str(e), code=2) from e
    return loaded.model_copy(update={"work_dir": loaded.work_dir.resolve()})


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` in red on stderr; return the exit to raise."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)
