"""``python -m serving`` start-up: clear errors, several workers, event loop, request logs."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import REPO_ROOT


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


@pytest.mark.integration
def test_two_rest_workers_each_serve_the_model(
    tiny_model_dir: Path, sample_images, run_server, tmp_path: Path
) -> None:
    """With --workers 2 KServe spawns REST processes; each reloads the model and gets our routes.

    The workers get the serving settings too: here the access log, off by default, is on.
    """
    body = {"instances": [{"b64": base64.b64encode(sample_images[0]).decode()}]}
    flags = ["--workers", "2", "--access_log", "true"]
    with run_server(tiny_model_dir, flags, tmp_path / "server.log") as server:
        for _ in range(4):
            with httpx.Client(base_url=server.base) as client:  # new connections, any worker
                predict = client.post("/v1/models/garbage-classifier:predict", json=body)
                assert predict.status_code == 200, predict.text
                metadata = client.get("/v2/models/garbage-classifier").json()
                assert "classes" in metadata["parameters"]  # our route, not KServe's generic one
        log = server.log.read_text()
    # uvicorn's access log writes the colon as is from 0.55 on, percent-encoded before.
    assert len(re.findall(r"garbage-classifier(?:%3A|:)predict HTTP/1\.1", log)) == 4


@pytest.fixture
def restore_event_loop_policy():
    yield
    asyncio.set_event_loop_policy(None)


@pytest.mark.usefixtures("restore_event_loop_policy")
def test_event_loop_flag_holds_for_one_worker() -> None:
    import uvloop

    from serving.server import use_event_loop

    assert use_event_loop("asyncio") == "asyncio"
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    assert use_event_loop("auto", workers=2) == "uvloop"  # uvicorn applies it to its workers
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    assert use_event_loop("auto") == "uvloop"
    assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    loop = asyncio.get_event_loop()  # KServe asks for it before asyncio.run
    assert isinstance(loop, uvloop.Loop)
    loop.close()


@pytest.fixture
def restore_access_logger():
    access = logging.getLogger("uvicorn.access")
    handlers, propagate = list(access.handlers), access.propagate
    yield access
    access.handlers, access.propagate = handlers, propagate


@pytest.mark.parametrize("asked", [False, True])
def test_request_logs_stay_only_when_asked_for(restore_access_logger, asked: bool) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from timing_asgi import TimingClient, TimingMiddleware

    from serving.server import quiet_request_logs

    timings = []

    class Recorder(TimingClient):
        def timing(self, metric_name, timing, tags) -> None:
            timings.append(metric_name)

    app = FastAPI()
    app.add_api_route("/ping", lambda: {"ok": True})
    app.add_middleware(TimingMiddleware, client=Recorder())
    restore_access_logger.addHandler(logging.NullHandler())
    quiet_request_logs(app, latency_log=asked, access_log=asked)
    with TestClient(app) as client:  # runs the start-up hooks
        assert client.get("/ping").json() == {"ok": True}
    assert bool(timings) is asked
    assert restore_access_logger.hasHandlers() is asked
