"""``garbage serve --logger-url``: the real model server logs each request to the real collector,
counts on its /metrics, and hands the logger its --logger-* settings."""

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
import typer
from monitoring_helpers import make_jpeg
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, wait_for_port

from cli.serve import logger_hook
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


def test_the_logger_flags_reach_the_logger_and_a_bad_spill_folder_stops_the_server(
    tmp_path: Path, capsys
) -> None:
    settings = {
        "model_name": "garbage-classifier",
        "max_spill_bytes": 10_000_000,
        "max_queue_bytes": 1_000_000,
        "max_queue_events": 50,
        "timeout": 2.5,
    }
    hook = logger_hook("http://127.0.0.1:9/events", spill_dir=tmp_path / "a" / "b", **settings)
    emitter = hook.logger
    assert emitter.spill is not None and emitter.spill.max_bytes == 10_000_000
    assert emitter.spill.folder.parent == tmp_path / "a" / "b"
    assert (emitter.max_queue_bytes, emitter.max_queue_events, emitter.timeout) == (
        1_000_000,
        50,
        2.5,
    )
    emitter.spill.close()
    without = {**settings, "max_spill_bytes": 0}
    no_spill = logger_hook("http://127.0.0.1:9/events", spill_dir=tmp_path / "c", **without)
    assert no_spill.logger.spill is None and not (tmp_path / "c").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(typer.Exit):
        logger_hook("http://127.0.0.1:9/events", spill_dir=blocker / "spill", **settings)
    assert "cannot create the payload logger's spill folder" in capsys.readouterr().err


def _payload_counters(metrics_text: str) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "garbage_payload_events_total"
    }


@pytest.mark.integration
def test_served_predictions_reach_the_collector(
    collector_server, collector_auth_header: dict[str, str], tiny_model_dir: Path, tmp_path: Path
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
            "--logger-spill-dir",
            str(tmp_path / "spill"),
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
            headers=collector_auth_header,
        )
        assert feedback.status_code == 200 and feedback.json()["matched"] == 1
        counters = _payload_counters(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        assert counters["delivered"] >= 2
        assert counters["dropped"] == counters["rejected"] == 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert not list((tmp_path / "spill").rglob("*.event"))  # everything went out
