"""``garbage serve`` / ``python -m serving`` start-up: options, clear errors, several workers."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from support import REPO_ROOT
from typer.testing import CliRunner

from serving.cli import serve

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


@pytest.mark.integration
def test_module_entry_point_reports_a_missing_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model_dir", str(tmp_path / "none")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "does not exist" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_rest_workers_each_serve_the_model(tiny_model_dir: Path, sample_images) -> None:
    """With --workers 2 KServe spawns REST processes; each reloads the model and gets our routes."""
    http_port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model_dir",
            str(tiny_model_dir),
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(_free_port()),
            "--workers",
            "2",
            "--enable_latency_logging",
            "false",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, "the server exited"
            try:
                if (
                    httpx.get(f"{base}/v2/models/garbage-classifier/ready", timeout=1).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline
            time.sleep(0.3)
        body = {"instances": [{"b64": base64.b64encode(sample_images[0]).decode()}]}
        with httpx.Client(base_url=base) as client:  # new connections spread over the workers
            for _ in range(4):
                assert (
                    client.post("/v1/models/garbage-classifier:predict", json=body).status_code
                    == 200
                )
                metadata = httpx.get(f"{base}/v2/models/garbage-classifier").json()
                assert "classes" in metadata["parameters"]  # our route, not KServe's generic one
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
