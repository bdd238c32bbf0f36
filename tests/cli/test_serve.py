"""``garbage serve``: its options (generated from the serving settings) and clear errors."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from cli.serve import serve

app = typer.Typer()
app.command("serve")(serve)
app.command("noop")(lambda: None)  # a second command keeps "serve" a sub-command, as in `garbage`


def test_help_lists_ports_model_and_limits() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--model",
        "--http-port",
        "--grpc-port",
        "--workers",
        "--max-batch-size",
        "--max-batch-wait-ms",
        "--max-instances",
        "--max-payload-bytes",
        "--max-image-pixels",
        "GARBAGE_SERVE_MAX_INSTANCES",
    ):
        assert option in result.output


def test_missing_model_fails_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_invalid_limit_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["serve", "--max-batch-size", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "max_batch_size" in result.output


def test_every_serving_setting_is_a_flag_of_both_command_lines(capsys) -> None:
    import pytest

    from serving.server import main
    from serving.settings import setting_flags

    ours = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).output
    with pytest.raises(SystemExit):
        main(["--help"])
    module = capsys.readouterr().out
    for flag in setting_flags():
        assert f"--{flag.name.replace('_', '-')}" in ours, flag.name
        assert f"GARBAGE_SERVE_{flag.name.upper()}" in ours, flag.name
        if flag.name != "model_name":  # KServe's parser owns --model_name
            assert f"--{flag.name}" in module, flag.name
    assert "--access-log" in ours and "--no-access-log" in ours
