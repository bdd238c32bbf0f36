"""The whole site loop on a few images with the smoke profile, every part the real one.

``garbage pipeline run`` trains the champion; ``garbage serve --logger-url`` serves it to the
real collector (``garbage collector``, in its own process, keeping the images); site images go
through the server; ``garbage review`` picks them for labelling; a scripted annotator answers in
Label Studio's export format; ``garbage labels import`` sends the labels to ``/feedback`` with a
token; ``garbage retrain`` builds a dataset version and runs the real pipeline on it through
kfp.local, warm-started from the champion; the gate decides. A second ``garbage retrain`` on the
same labels trains nothing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from support import (
    CLASSES,
    COLORS,
    free_port,
    jpeg_bytes,
    make_archive,
    make_image_tree,
    wait_for_port,
)
from typer.testing import CliRunner

from cli.app import app
from garbage.core.config import Config, load_config
from garbage.core.model_uri import champion_uri, resolve_model_dir
from garbage.training.data.versions import open_store, version_manifest
from monitoring.store import InferenceStore

runner = CliRunner()
TOKEN = "site-loop-labeller-token-0123456789"
SITE_PER_CLASS = 2


@pytest.fixture
def loop(tmp_path: Path) -> dict[str, object]:
    """A tiny archive, the smoke config's overrides on it, and where the collector's store lies."""
    make_image_tree(tmp_path / "src" / "dataset", per_class=5)
    archive = make_archive(tmp_path / "src", tmp_path / "tiny.tar.gz")
    sets = [
        f"work_dir={tmp_path / 'work'}",
        f"data.source={archive}",
        f"data.sha256={hashlib.sha256(archive.read_bytes()).hexdigest()}",
        "retrain.min_new_labels=6",
    ]
    return {
        "sets": [part for value in sets for part in ("--set", value)],
        "config": load_config(profile="smoke", overrides=sets, environ={}),
        "db": str(tmp_path / "monitoring" / "inferences.db"),
        "tmp": tmp_path,
    }


def _process(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *command],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def serving(loop: dict[str, object]) -> Iterator[dict[str, object]]:
    """Once the champion exists: the collector and the model server logging to it."""

    def start(model_dir: Path) -> dict[str, object]:
        tmp = loop["tmp"]
        collector_port, server_port = free_port(), free_port()
        collector = _process(
            [
                *("collector", "--db", loop["db"], "--model", str(model_dir)),
                *("--port", str(collector_port), "--log-level", "warning"),
            ],
            tmp / "collector.log",
            env={"GARBAGE_COLLECTOR_TOKEN": f"site-team:{TOKEN}"},
        )
        processes.append(collector)
        wait_for_port(collector_port, timeout=120)
        url = f"http://127.0.0.1:{collector_port}"
        server = _process(
            [
                *("serve", "--model", str(model_dir), "--http-port", str(server_port), "--no-grpc"),
                *("--logger-url", f"{url}/events", "--logger-spill-dir", str(tmp / "spill")),
            ],
            tmp / "serve.log",
        )
        processes.append(server)
        wait_for_port(server_port, timeout=120)
        return {"collector": url, "server": f"http://127.0.0.1:{server_port}"}

    processes: list[subprocess.Popen] = []
    yield {"start": start}
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _predict(server: str, image: bytes, request_id: str) -> None:
    url = f"{server}/v1/models/garbage-classifier:predict"
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}}]}
    for _ in range(120):  # the server listens before the model reports ready
        answer = httpx.post(url, json=body, headers={"x-request-id": request_id}, timeout=30)
        if answer.status_code != 503:
            break
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text


def _wait_for_rows(db: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        store = InferenceStore(db, create=False)
        try:
            rows = store.load_window(columns=["inference_id", "prediction", "image_sha256"])
        finally:
            store.close()
        done = rows.dropna(subset=["prediction", "image_sha256"])
        if len(done) >= count or time.monotonic() > deadline:
            assert len(done) == count, rows
            return
        time.sleep(0.3)


def _annotate(tasks: list[dict], truth: dict[str, str]) -> list[dict]:
    """A scripted annotator: each task answered with the true label of its image."""
    exported = []
    for number, task in enumerate(tasks, 1):
        result = copy.deepcopy(task["predictions"][0]["result"])
        result[0]["value"]["choices"] = [truth[task["data"]["sha256"]]]
        annotation = {"id": number, "result": result, "was_cancelled": False}
        exported.append({**task, "id": number, "annotations": [annotation]})
    return exported


def _registry(config: Config) -> MlflowClient:
    return MlflowClient(config.mlflow_tracking_uri, config.mlflow_tracking_uri)


@pytest.mark.integration
def test_site_images_labelled_become_a_version_and_a_retrained_model(
    loop: dict[str, object], serving: dict[str, object]
) -> None:
    sets, config, db, tmp = loop["sets"], loop["config"], loop["db"], loop["tmp"]
    trained = runner.invoke(app, ["pipeline", "run", "--profile", "smoke", *sets])
    assert trained.exit_code == 0, trained.output
    champion_dir = resolve_model_dir(champion_uri(config), config)

    urls = serving["start"](champion_dir)
    truth = {}
    for i in range(SITE_PER_CLASS * len(CLASSES)):
        label = CLASSES[i % len(CLASSES)]
        image = jpeg_bytes(tuple(c // 2 for c in COLORS[label]), size=(40, 40), seed=900 + i)
        truth[hashlib.sha256(image).hexdigest()] = label
        _predict(urls["server"], image, f"site-{i}")
    _wait_for_rows(db, len(truth))

    tasks_file = tmp / "review" / "tasks.json"
    picked = runner.invoke(
        app,
        [
            *("review", "--db", db, "--total", str(len(truth)), "--near-duplicate", "-1"),
            *("--collector", urls["collector"], "--out", str(tasks_file)),
        ],
    )
    assert picked.exit_code == 0, picked.output
    tasks = json.loads(tasks_file.read_text())
    assert {t["data"]["sha256"] for t in tasks} == set(truth)
    image = httpx.get(tasks[0]["data"]["image"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert hashlib.sha256(image.content).hexdigest() == tasks[0]["data"]["sha256"]

    export = tmp / "review" / "export.json"
    export.write_text(json.dumps(_annotate(tasks, truth)))
    imported = runner.invoke(
        app,
        ["labels", "import", str(export), "--collector", urls["collector"]],
        env={"GARBAGE_COLLECTOR_TOKEN": TOKEN},
    )
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["imported"] == len(truth)

    retrained = runner.invoke(app, ["retrain", "--db", db, "--json", "--profile", "smoke", *sets])
    assert retrained.exit_code == 0, retrained.output
    report = json.loads(retrained.stdout)
    assert report["outcome"] == "retrained" and report["new_labels"] == len(truth)
    assert report["champion"]["version"] == "1"
    name = report["version"]["name"]
    manifest = version_manifest(open_store(config), name)
    site = manifest[manifest["source"] == "site"]
    assert dict(zip(site["sha256"], site["label"], strict=True)) == truth
    # The site's test slice is the review's random picks only: a uniform sample of the traffic.
    random_picks = {t["data"]["sha256"] for t in tasks if t["data"]["selection"] == "random"}
    site_test = set(site.loc[site["split"] == "test", "sha256"])
    assert site_test and site_test <= random_picks
    assert report["ledger"]["state"] == "succeeded"
    assert report["ledger"]["init_from"] == champion_uri(config)

    gate = report["gate"]
    assert gate["version"] == "2" and isinstance(gate["promote"], bool)
    assert {row["slice"] for row in gate["slices"]} == {"trashnet", "site"}
    client = _registry(config)
    candidate = client.get_model_version(config.registry.model_name, "2")
    assert candidate.tags["data.version"] == name
    run = client.get_run(candidate.run_id)
    assert run.data.params["train.init_from"] == champion_uri(config)
    inputs = run.inputs.dataset_inputs
    assert {(t.key, t.value) for d in inputs for t in d.tags} >= {("data.version", name)}

    again = runner.invoke(app, ["retrain", "--db", db, "--json", "--profile", "smoke", *sets])
    assert again.exit_code == 0, again.output
    outcome = json.loads(again.stdout)["outcome"]
    # Promoted: the champion holds every label, nothing is due. Not promoted: the same labels
    # build the same version, which was retrained already.
    assert outcome == ("not due" if gate["promote"] else "retrained already")
    assert len(client.search_model_versions(f"name='{config.registry.model_name}'")) == 2
