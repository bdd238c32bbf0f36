"""``garbage serve --logger-url``: the real model server logs each request to the real collector."""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from monitoring_helpers import make_jpeg, wait_for_port
from support import free_port

from monitoring.payload_logger import CloudEventsHook, encode_request
from monitoring.payloads import parse_request

SERVE = (
    "import typer; from cli.serve import serve; app = typer.Typer(); app.command()(serve); "
    "app.command('noop')(lambda: None); app()"
)


def test_hook_encodes_both_input_kinds_and_pickles_without_its_emitter() -> None:
    jpeg = make_jpeg((10, 200, 10), 1)
    body, content_type = encode_request([jpeg])
    assert content_type == "application/json" and parse_request(body).items[0].data == jpeg
    pixels = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    body, content_type = encode_request(pixels)
    items = parse_request(body, content_type).items
    assert np.array_equal(items[1].pixels, pixels[1])
    hook = CloudEventsHook("http://127.0.0.1:9/events", namespace="x")
    assert hook.logger is not None
    copy = pickle.loads(pickle.dumps(hook))
    assert copy.url == hook.url and copy.options == {"namespace": "x"} and copy._logger is None


@pytest.mark.integration
def test_served_predictions_reach_the_collector(
    collector_server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--model",
            str(tiny_model_dir),
            "--http-port",
            str(port),
            "--no-grpc",
            "--logger-url",
            f"{collector_server.url}/events",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=120)
        url = f"http://127.0.0.1:{port}/v1/models/garbage-classifier:predict"
        images = [make_jpeg((235, 235, 225), 3), make_jpeg((60, 160, 90), 4)]
        body = {
            "instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]
        }
        for _ in range(60):  # the server listens before the model reports ready
            answer = httpx.post(url, json=body, headers={"x-request-id": "served-1"}, timeout=30)
            if answer.status_code != 503:
                break
            time.sleep(0.5)
        assert answer.status_code == 200, answer.text
        predicted = [p["label"] for p in answer.json()["predictions"]]
        deadline = time.monotonic() + 30
        rows = collector_server.store.load_window()
        # The request and the response event travel separately and may land in either order.
        while (
            len(rows) < 2 or rows[["prediction", "brightness"]].isna().any(axis=None)
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = collector_server.store.load_window()
        rows = rows.sort_values("item")
        assert list(rows["inference_id"]) == ["served-1", "served-1"]
        assert list(rows["prediction"]) == predicted
        assert rows["brightness"].iloc[0] > rows["brightness"].iloc[1]
        assert set(rows["inference_service"]) == {"garbage-classifier"}
        feedback = httpx.post(
            f"{collector_server.url}/feedback",
            json={"inference_id": "served-1", "item": 1, "label": "glass"},
        )
        assert feedback.status_code == 200 and feedback.json()["matched"] == 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
